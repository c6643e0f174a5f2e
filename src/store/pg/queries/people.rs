//! Read-only queries on PostgreSQL, what clients, the CLI and the console read: the same answers as SQLite's
//! `store/queries.rs`.
//!
//! Invariants: nothing here writes; each query is one statement (or a few, each seeing the
//! latest commits); a value that cannot be read parks or names its own run, never failing
//! a statement for every run.

use super::core::{run_cols, run_row};
use crate::store::error::StoreResult;
use crate::store::pg::conn::{col, pg, Db};
use crate::store::views::{
    EngineInfo, EventInfo, QueueInfo, RunQuery, RunTotals, ScheduleInfo, StepDurations,
};
use crate::store::views::{RunChange, RunFilter, RunRow, DURATION_BUCKETS_MS};
use postgres::types::ToSql;
use postgres::Row;

/// Rows of [`run_cols!`] (the engine's reader of a run row, [`run_row`]).
fn run_rows(rows: Vec<Row>) -> StoreResult<Vec<RunRow>> {
    rows.iter().map(run_row).collect()
}

/// Up to `limit` runs with id greater than `after`, optionally of one status.
pub fn runs_page(
    db: &mut Db<'_>,
    status: Option<&str>,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<RunRow>> {
    const SQL: &str = concat!(
        "SELECT ",
        run_cols!(),
        " FROM runs WHERE id > $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY id LIMIT $3"
    );
    run_rows(db.query("listing runs", SQL, &[&after, &status, &limit])?)
}

/// The conditions of [`list`] (`$1` cursor, `$2` statuses, `$3` workflow, `$4` key prefix,
/// `$5`/`$6` created range, `$7` limit); the cursor's comparison and the order come after.
macro_rules! list_sql {
    ($cmp:literal, $order:literal) => {
        concat!(
            "SELECT ",
            run_cols!(),
            " FROM runs
             WHERE ($1::bigint IS NULL OR id ",
            $cmp,
            " $1)
               AND ($2::text[] IS NULL OR status = ANY($2))
               AND ($3::text IS NULL OR workflow = $3)
               AND ($4::text IS NULL OR starts_with(idempotency_key, $4))
               AND ($5::bigint IS NULL OR created_at >= $5)
               AND ($6::bigint IS NULL OR created_at < $6)
             ORDER BY id ",
            $order,
            " LIMIT $7"
        )
    };
}

/// Runs matching `filter`, in id order (newest first if asked), at most `filter.limit`.
/// The key prefix is matched with `starts_with` (exact, whatever the database's collation).
pub fn list(db: &mut Db<'_>, filter: &RunFilter) -> StoreResult<Vec<RunRow>> {
    const OLDEST_FIRST: &str = list_sql!(">", "ASC");
    const NEWEST_FIRST: &str = list_sql!("<", "DESC");
    let statuses: Option<Vec<&str>> =
        (!filter.statuses.is_empty()).then(|| filter.statuses.iter().map(|s| s.as_str()).collect());
    let limit = i64::from(filter.effective_limit());
    let sql = if filter.newest_first {
        NEWEST_FIRST
    } else {
        OLDEST_FIRST
    };
    let rows = db.query(
        "listing runs",
        sql,
        &[
            &filter.cursor,
            &statuses,
            &filter.workflow,
            &filter.key_prefix,
            &filter.created_from_ms,
            &filter.created_before_ms,
            &limit,
        ],
    )?;
    run_rows(rows)
}

/// Up to `limit` run state changes after change `after`, oldest first.
pub fn changes(db: &mut Db<'_>, after: i64, limit: i64) -> StoreResult<Vec<RunChange>> {
    // Only settled rows (see `settled_before`), in order: stop at the first unsettled one.
    const SQL: &str = "SELECT seq, run_id, status, at, ins_us < $3 FROM run_changes
                       WHERE seq > $1 ORDER BY seq LIMIT $2";
    let horizon = settled_before(db)?;
    let rows = db.query("reading run changes", SQL, &[&after, &limit, &horizon])?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let run_id: i64 = col(r, 1, 0, "run_changes.run_id")?;
        if !col::<bool>(r, 4, run_id, "run_changes.ins_us")? {
            break;
        }
        let status: String = col(r, 2, run_id, "run_changes.status")?;
        out.push(RunChange {
            seq: col(r, 0, run_id, "run_changes.seq")?,
            run_id,
            status: status.parse().ok(),
            at: col(r, 3, run_id, "run_changes.at")?,
        });
    }
    Ok(out)
}

/// The newest settled change's sequence number (0 when none): a reader starting here misses
/// nothing that commits later.
pub fn last_change(db: &mut Db<'_>) -> StoreResult<i64> {
    const SQL: &str = "SELECT coalesce(max(seq), 0)::bigint FROM run_changes WHERE ins_us < $1";
    let horizon = settled_before(db)?;
    let r = db.query_one("reading run changes", SQL, &[&horizon])?;
    col(&r, 0, 0, "run_changes.seq")
}

/// The change log's settling horizon (server microseconds). Sequence numbers are taken at
/// insert and become visible at commit, so a change can commit after one with a higher
/// number: a reader that moved past the higher one would never see it (SQLite's single
/// writer cannot do this). A row inserted before every transaction now open began (and
/// before now) is settled: every lower number was taken earlier still, by a transaction
/// that has ended, so it is visible now or never will be (rolled back). Read in its own
/// statement, before the rows: the rows' snapshot is then taken after it. Only waymark's
/// own sessions count (their `application_name` starts with `waymark`, see `PgStore::open`):
/// a session someone left open in a transaction does not hold the log back. Transactions of
/// other roles show no start time unless this role may read all statistics
/// (`pg_read_all_stats`): run engines and clients as one role, or grant it.
fn settled_before(db: &mut Db<'_>) -> StoreResult<i64> {
    const SQL: &str = "SELECT (extract(epoch FROM coalesce(least(min(xact_start), clock_timestamp()), clock_timestamp())) * 1000000)::bigint
                       FROM pg_stat_activity
                       WHERE datname = current_database() AND pid <> pg_backend_pid()
                         AND xact_start IS NOT NULL AND application_name LIKE 'waymark%'";
    let r = db.query_one("reading the change log's horizon", SQL, &[])?;
    col(&r, 0, 0, "the change log's horizon")
}

/// Up to `limit` runs matching `filter`, newest first, with ids below `before` (keyset
/// paging). Like SQLite's, the statement names only the conditions given, so the planner
/// can use `runs_status`, `runs_parent` or walk the primary key backwards (the first page
/// costs `limit` rows, not the table): a statement built at run time, not cached.
pub fn runs_filtered(
    db: &mut Db<'_>,
    filter: &RunQuery,
    before: Option<i64>,
    limit: i64,
) -> StoreResult<Vec<RunRow>> {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    // `cond` names its parameter `$`; the number is filled in.
    let mut push = |cond: &str, v: Box<dyn ToSql + Sync>| {
        args.push(v);
        conds.push(cond.replace('$', &format!("${}", args.len())));
    };
    if let Some(b) = before {
        push("id < $", Box::new(b));
    }
    if let Some(s) = filter.status {
        push("status = $", Box::new(s.as_str().to_string()));
    }
    if let Some(w) = &filter.workflow {
        push("workflow = $", Box::new(w.clone()));
    }
    if let Some(p) = filter.key_prefix.as_ref().filter(|p| !p.is_empty()) {
        // A prefix match that holds under any collation (a `>= p AND < p || U+10FFFF`
        // range, as on SQLite, would follow the database's collation order here).
        push("starts_with(idempotency_key, $)", Box::new(p.clone()));
    }
    if let Some(t) = filter.created_from {
        push("created_at >= $", Box::new(t));
    }
    if let Some(t) = filter.created_to {
        push("created_at < $", Box::new(t));
    }
    if let Some(p) = filter.parent {
        push("parent_id = $", Box::new(p));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    args.push(Box::new(limit));
    let sql = format!(
        "SELECT {} FROM runs {where_} ORDER BY id DESC LIMIT ${}",
        run_cols!(),
        args.len()
    );
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a).collect();
    let rows = db
        .client()
        .query(sql.as_str(), &params)
        .map_err(pg("listing runs"))?;
    run_rows(rows)
}

/// Every engine incarnation on the database, newest first, with the runs each holds.
pub fn engines(db: &mut Db<'_>) -> StoreResult<Vec<EngineInfo>> {
    const SQL: &str =
        "SELECT e.id, e.pid, e.boot_id, e.started_at, e.beat, e.beat_at, e.stopped_at,
                (SELECT count(*) FROM runs WHERE owner = e.id AND status = 'running')
         FROM engines e ORDER BY e.started_at DESC LIMIT 256";
    let rows = db.query("reading engines", SQL, &[])?;
    rows.iter()
        .map(|r| {
            Ok(EngineInfo {
                id: col(r, 0, 0, "engines.id")?,
                pid: col(r, 1, 0, "engines.pid")?,
                host: col(r, 2, 0, "engines.boot_id")?,
                started_at: col(r, 3, 0, "engines.started_at")?,
                beat: col(r, 4, 0, "engines.beat")?,
                beat_at: col(r, 5, 0, "engines.beat_at")?,
                stopped_at: col(r, 6, 0, "engines.stopped_at")?,
                runs_held: col(r, 7, 0, "runs held")?,
            })
        })
        .collect()
}

/// Every queue with a limit or with pending or running runs.
pub fn queues(db: &mut Db<'_>) -> StoreResult<Vec<QueueInfo>> {
    const SQL: &str = "SELECT name, max(lim), sum(running)::bigint, sum(pending)::bigint FROM (
             SELECT name, concurrency AS lim, 0::bigint AS running, 0::bigint AS pending FROM queues
             UNION ALL
             SELECT queue, NULL, count(*), 0 FROM runs WHERE status = 'running' GROUP BY queue
             UNION ALL
             SELECT queue, NULL, 0, count(*) FROM runs WHERE status = 'pending' GROUP BY queue) q
         GROUP BY name ORDER BY name LIMIT 1024";
    let rows = db.query("reading queues", SQL, &[])?;
    rows.iter()
        .map(|r| {
            Ok(QueueInfo {
                name: col(r, 0, 0, "queues.name")?,
                limit: col(r, 1, 0, "queues.concurrency")?,
                running: col(r, 2, 0, "running")?,
                pending: col(r, 3, 0, "pending")?,
            })
        })
        .collect()
}

/// Every schedule, soonest first.
pub fn schedules(db: &mut Db<'_>) -> StoreResult<Vec<ScheduleInfo>> {
    const SQL: &str = "SELECT name, cron, workflow, next_due, catch_up FROM schedules
         ORDER BY next_due LIMIT 1024";
    let rows = db.query("reading schedules", SQL, &[])?;
    rows.iter()
        .map(|r| {
            Ok(ScheduleInfo {
                name: col(r, 0, 0, "schedules.name")?,
                cron: col(r, 1, 0, "schedules.cron")?,
                workflow: col(r, 2, 0, "schedules.workflow")?,
                next_due: col(r, 3, 0, "schedules.next_due")?,
                catch_up: col::<i64>(r, 4, 0, "schedules.catch_up")? != 0,
            })
        })
        .collect()
}

/// The events sent to a run (at most 1024, oldest first).
pub fn events_of(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<EventInfo>> {
    const SQL: &str = "SELECT id, name, sent_at, consumed_seq, payload FROM events
         WHERE run_id = $1 ORDER BY id LIMIT 1024";
    let rows = db.query("reading events", SQL, &[&run_id])?;
    rows.iter()
        .map(|r| {
            Ok(EventInfo {
                id: col(r, 0, run_id, "events.id")?,
                name: col(r, 1, run_id, "events.name")?,
                sent_at: col(r, 2, run_id, "events.sent_at")?,
                consumed_seq: col(r, 3, run_id, "events.consumed_seq")?,
                payload: col(r, 4, run_id, "events.payload")?,
            })
        })
        .collect()
}

// The statement of `step_durations` names nine buckets, `$1[1]` to `$1[9]`.
const _: () = assert!(DURATION_BUCKETS_MS.len() == 9);

/// Attempt durations by step name and outcome, bucketed by [`DURATION_BUCKETS_MS`] (one
/// pass over `attempts`; the bounds are the statement's parameter, so they live in one
/// place). Attempts that never ended count in no bucket, as on SQLite.
pub fn step_durations(db: &mut Db<'_>) -> StoreResult<Vec<StepDurations>> {
    macro_rules! bucket {
        ($i:literal) => {
            concat!(
                ", count(*) FILTER (WHERE ended_at - started_at <= ($1::bigint[])[",
                $i,
                "])"
            )
        };
    }
    const SQL: &str = concat!(
        "SELECT name, coalesce(outcome, 'none'), count(ended_at),
                coalesce(sum(ended_at - started_at), 0)::bigint",
        bucket!(1),
        bucket!(2),
        bucket!(3),
        bucket!(4),
        bucket!(5),
        bucket!(6),
        bucket!(7),
        bucket!(8),
        bucket!(9),
        " FROM attempts GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 4096"
    );
    let bounds: Vec<i64> = DURATION_BUCKETS_MS.to_vec();
    let rows = db.query("reading attempt durations", SQL, &[&bounds])?;
    rows.iter()
        .map(|r| {
            let buckets = (0..DURATION_BUCKETS_MS.len())
                .map(|i| col(r, 4 + i, 0, "bucket count"))
                .collect::<StoreResult<Vec<i64>>>()?;
            Ok(StepDurations {
                name: col(r, 0, 0, "attempts.name")?,
                outcome: col(r, 1, 0, "attempts.outcome")?,
                count: col(r, 2, 0, "ended attempts")?,
                sum_ms: col(r, 3, 0, "duration sum")?,
                buckets,
            })
        })
        .collect()
}

/// Totals for metrics: interruptions, interrupted attempts, live engines (not stopped, beat
/// within `live_ms` of `now`).
pub fn run_totals(db: &mut Db<'_>, now: i64, live_ms: i64) -> StoreResult<RunTotals> {
    const SQL: &str = "SELECT (SELECT coalesce(sum(interruptions), 0)::bigint FROM runs),
                (SELECT count(*) FROM attempts a WHERE a.ended_at IS NULL AND NOT EXISTS
                    (SELECT 1 FROM runs r WHERE r.id = a.run_id AND r.status = 'running'
                     AND r.owner = a.owner AND r.epoch = a.epoch)),
                (SELECT count(*) FROM engines WHERE stopped_at IS NULL AND beat_at >= $1)";
    let since = now - live_ms;
    let r = db.query_one("reading totals", SQL, &[&since])?;
    Ok(RunTotals {
        interruptions: col(&r, 0, 0, "interruptions")?,
        attempts_interrupted: col(&r, 1, 0, "interrupted attempts")?,
        engines_live: col(&r, 2, 0, "live engines")?,
    })
}
