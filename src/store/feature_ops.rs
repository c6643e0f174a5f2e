//! The state transitions of the durable features (timers, events, cancellation, child
//! runs, deadlines, retention). An extension of [`super::transitions`]: only its `apply`
//! calls into here, on the writer thread, inside the batch's transaction (a savepoint per
//! command, so each command below is atomic).
//!
//! Invariants (in addition to those of `transitions`):
//! - Every write on behalf of a claimed run is fenced by `(id, owner, epoch, 'running')`;
//!   the fence is checked first and a miss is `LeaseLost` with nothing written.
//! - Consuming an event and journaling it happen in one command: an event is delivered into
//!   exactly one journal entry (`events.consumed_seq`), or stays unconsumed.
//! - A run that parks itself (event, child) is suspended *in the same command* that found
//!   nothing to deliver, so a `SendEvent` or a child's completion committed afterwards always
//!   sees it suspended and wakes it (`ready_at = now`).
//! - Suspension notes name what a run waits for; wake-ups match on them exactly.

use super::error::{StoreError, StoreResult};
use super::transitions::{
    claimed_row, enqueue, fenced, park_undecodable, sql, suspend, Claimed, Done, Fence, Op, FENCE,
};
use rusqlite::{params, Connection, OptionalExtension};

/// What an `AwaitEvent` or `AwaitChild` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaited {
    /// Delivered and journaled: the payload (event JSON, or the child's encoded output).
    Delivered(Vec<u8>),
    /// Journaled as failed: the wait timed out, or the child failed or was cancelled.
    Failed(String),
    /// Nothing yet: the run is now suspended (the caller must stop and write nothing more).
    Waiting,
    /// A cancel was requested: the run (and its descendants) ended `cancelled` in this
    /// command instead (the caller must stop and write nothing more).
    Cancelled,
}

/// The note of a run suspended waiting for event `name` (wake-ups match on it).
pub fn event_note(name: &str) -> String {
    format!("waiting for event '{name}'")
}

/// The note of a run suspended waiting for child `child_id`. Migration 2's trigger
/// `runs_wake_parent` builds the same text.
pub fn child_note(child_id: i64) -> String {
    format!("waiting for child {child_id}")
}

/// A stored schedule.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub workflow: String,
    pub version: i64,
    pub input: Vec<u8>,
    pub queue: String,
    pub catch_up: bool,
    pub next_due: i64,
}

/// Schedules due at `now` (read-only; firing is `Op::FireSchedule`).
pub fn due_schedules(conn: &Connection, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRow>> {
    conn.prepare_cached(
        "SELECT name, cron, workflow, version, input, queue, catch_up, next_due FROM schedules
         WHERE next_due <= ?1 ORDER BY next_due LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map(params![now, limit], |r| {
            Ok(ScheduleRow {
                name: r.get(0)?,
                cron: r.get(1)?,
                workflow: r.get(2)?,
                version: r.get(3)?,
                input: r.get(4)?,
                queue: r.get(5)?,
                catch_up: r.get(6)?,
                next_due: r.get(7)?,
            })
        })?
        .collect()
    })
    .map_err(sql("reading due schedules"))
}

/// Statuses after which nothing of a run runs again.
pub const FINAL: &str = "('completed', 'failed', 'cancelled')";

/// Check the fence; answers whether a cancel was requested for the run (the caller ends
/// the run `cancelled` at this boundary instead of doing what it was asked).
fn check_fence(conn: &Connection, fence: &Fence) -> StoreResult<bool> {
    let cancel_requested: Option<i64> = conn
        .prepare_cached(&format!("SELECT cancel_requested FROM runs WHERE {FENCE}"))
        .and_then(|mut s| {
            s.query_row(params![fence.run_id, &*fence.owner, fence.epoch], |r| {
                r.get(0)
            })
            .optional()
        })
        .map_err(sql("checking a fence"))?;
    match cancel_requested {
        Some(flag) => Ok(flag != 0),
        None => fenced(0, fence).map(|_| false),
    }
}

/// Descendants of `?1` (and `?1` itself). `UNION`, not `UNION ALL`: a run already in the
/// tree is not walked again, so the walk ends even if `parent_id` forms a cycle (bad data),
/// after at most one row per run.
const TREE: &str = "WITH RECURSIVE tree(id) AS (
        SELECT ?1 UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id)";

/// Request cancellation of `run_id` and its descendants: mark every unfinished one
/// `cancel_requested`, and end `cancelled` at once those not running (a running one ends at
/// its next boundary: its engine's poller sets its stop flag, and every transition that
/// would suspend it ends it instead).
pub(crate) fn cancel_tree(conn: &Connection, run_id: i64, now: i64) -> StoreResult<()> {
    conn.prepare_cached(&format!(
        "{TREE} UPDATE runs SET cancel_requested = 1, updated_at = ?2
         WHERE id IN (SELECT id FROM tree) AND status NOT IN {FINAL}"
    ))
    .and_then(|mut s| s.execute(params![run_id, now]))
    .map_err(sql("requesting cancellation"))?;
    conn.prepare_cached(&format!(
        "{TREE} UPDATE runs SET status = 'cancelled', error = 'cancelled', note = NULL,
                owner = NULL, lease_expires_at = NULL, finished_at = ?2, updated_at = ?2
         WHERE id IN (SELECT id FROM tree)
           AND status IN ('pending', 'suspended', 'blocked', 'blocked_version')"
    ))
    .and_then(|mut s| s.execute(params![run_id, now]))
    .map_err(sql("cancelling runs"))?;
    Ok(())
}

/// End a claimed run `cancelled` (fenced) and cancel its descendants, in this command.
pub(crate) fn finish_cancelled(
    conn: &Connection,
    fence: &Fence,
    reason: &str,
    now: i64,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached(&format!(
            "UPDATE runs SET status = 'cancelled', error = ?4, note = NULL, owner = NULL,
                    lease_expires_at = NULL, finished_at = ?5, updated_at = ?5 WHERE {FENCE}"
        ))
        .and_then(|mut s| {
            s.execute(params![
                fence.run_id,
                &*fence.owner,
                fence.epoch,
                reason,
                now
            ])
        })
        .map_err(sql("cancelling a run"))?;
    fenced(n, fence)?;
    cancel_tree(conn, fence.run_id, now)
}

/// The answer of a command that parked the run: suspended, or ended `cancelled` by
/// `suspend` (the answer of `transitions::suspend`).
fn parked(cancelled: bool) -> StoreResult<Done> {
    Ok(Done::Awaited(if cancelled {
        Awaited::Cancelled
    } else {
        Awaited::Waiting
    }))
}

/// The answer of a feature command that found a cancel requested: the run ended instead.
fn ended_cancelled(conn: &Connection, fence: &Fence, now: i64) -> StoreResult<Done> {
    finish_cancelled(conn, fence, "cancelled", now)?;
    Ok(Done::Awaited(Awaited::Cancelled))
}

struct NewEntry<'a> {
    seq: i64,
    name: &'a str,
    kind: &'static str,
    completed: bool,
    output: Option<&'a [u8]>,
    error: Option<&'a str>,
}

/// Insert a journal entry (write-once). The caller checked the fence in this transaction.
fn insert_entry(conn: &Connection, run_id: i64, e: NewEntry<'_>, now: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            run_id,
            e.seq,
            e.name,
            e.kind,
            if e.completed { "completed" } else { "failed" },
            e.output,
            e.error,
            now
        ])
    })
    .map_err(|err| match &err {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::JournalConflict { run_id, seq: e.seq }
        }
        _ => StoreError::sqlite("recording a journal entry", err),
    })?;
    Ok(())
}

/// Part of `Op::Claim`: runs parked as `blocked_version` whose `workflow@version` this
/// claimer registers become pending again, so a build that has the version claims them.
pub fn unpark_known_versions(conn: &Connection, workflows_json: &str, now: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE runs SET status = 'pending', note = NULL, updated_at = ?2
         WHERE status = 'blocked_version'
           AND (workflow || '@' || version) IN (SELECT value FROM json_each(?1))",
    )
    .and_then(|mut s| s.execute(params![workflows_json, now]))
    .map_err(sql("unparking runs of known versions"))?;
    Ok(())
}

/// Claim up to `limit` runs from queues that have a concurrency limit, never more per queue
/// than its limit minus its runs already `running` (counted in this same write transaction,
/// so the limit holds across engine processes). Part of `Op::Claim`.
pub fn claim_limited(
    conn: &Connection,
    owner: &str,
    limit: i64,
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    let queues: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT q.name, q.concurrency - (SELECT count(*) FROM runs r
                                             WHERE r.queue = q.name AND r.status = 'running')
             FROM queues q",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .map_err(sql("reading queue limits"))?;
    let mut out = Vec::new();
    for (queue, free) in queues {
        let want = free.min(limit - out.len() as i64);
        if want <= 0 {
            continue;
        }
        let mut stmt = conn
            .prepare_cached(
                "UPDATE runs SET status = 'running', owner = ?1, epoch = epoch + 1,
                        lease_expires_at = ?2, updated_at = ?3, note = NULL
                 WHERE id IN (SELECT id FROM runs
                              WHERE status = 'pending' AND queue = ?6 AND ready_at <= ?3
                                AND (workflow || '@' || version) IN (SELECT value FROM json_each(?4))
                              ORDER BY priority DESC, ready_at, id LIMIT ?5)
                 RETURNING id, workflow, version, input, epoch, interruptions, deadline_at, cancel_requested",
            )
            .map_err(sql("preparing a queue claim"))?;
        let rows = stmt
            .query_map(
                params![owner, now + lease_ms, now, workflows_json, want, queue],
                claimed_row,
            )
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(sql("claiming from a limited queue"))?;
        drop(stmt);
        let rows = park_undecodable(conn, owner, rows, now)?;
        out.extend(rows);
        if out.len() as i64 >= limit {
            break;
        }
    }
    Ok(out)
}

/// Apply one feature command (see the variants of [`Op`]).
pub fn apply(conn: &Connection, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::Timer {
            fence,
            seq,
            name,
            wake,
            suspend: then_suspend,
        } => {
            if check_fence(conn, &fence)? {
                return ended_cancelled(conn, &fence, now);
            }
            let bytes = crate::codec::encode_i64(wake);
            insert_entry(
                conn,
                fence.run_id,
                NewEntry {
                    seq,
                    name: &name,
                    kind: "sleep",
                    completed: true,
                    output: Some(&bytes),
                    error: None,
                },
                now,
            )?;
            if then_suspend && wake > now {
                return parked(suspend(
                    conn,
                    &fence,
                    wake,
                    &format!("sleeping until {wake}"),
                    now,
                )?);
            }
            Ok(Done::Unit)
        }
        Op::AwaitEvent {
            fence,
            seq,
            name,
            deadline,
        } => {
            if check_fence(conn, &fence)? {
                return ended_cancelled(conn, &fence, now);
            }
            let event: Option<(i64, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT id, payload FROM events WHERE run_id = ?1 AND name = ?2
                       AND consumed_seq IS NULL ORDER BY id LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(params![fence.run_id, name], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql("looking for an event"))?;
            if let Some((id, payload)) = event {
                conn.prepare_cached(
                    "UPDATE events SET consumed_seq = ?2 WHERE id = ?1 AND consumed_seq IS NULL",
                )
                .and_then(|mut s| s.execute(params![id, seq]))
                .map_err(sql("consuming an event"))?;
                insert_entry(
                    conn,
                    fence.run_id,
                    NewEntry {
                        seq,
                        name: &name,
                        kind: "event",
                        completed: true,
                        output: Some(&payload),
                        error: None,
                    },
                    now,
                )?;
                return Ok(Done::Awaited(Awaited::Delivered(payload)));
            }
            if now >= deadline {
                let reason = format!("timed out waiting for event '{name}'");
                insert_entry(
                    conn,
                    fence.run_id,
                    NewEntry {
                        seq,
                        name: &name,
                        kind: "event",
                        completed: false,
                        output: None,
                        error: Some(&reason),
                    },
                    now,
                )?;
                return Ok(Done::Awaited(Awaited::Failed(reason)));
            }
            parked(suspend(conn, &fence, deadline, &event_note(&name), now)?)
        }
        Op::SendEvent {
            run_id,
            name,
            payload,
        } => {
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![run_id], |r| r.get(0)).optional())
                .map_err(sql("reading a run's status"))?;
            match status.as_deref() {
                None => return Err(StoreError::NotFound { run_id }),
                Some(s @ ("completed" | "failed" | "cancelled")) => {
                    return Err(StoreError::RunFinished {
                        run_id,
                        status: s.to_string(),
                    })
                }
                Some(_) => {}
            }
            conn.prepare_cached(
                "INSERT INTO events(run_id, name, payload, sent_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![run_id, name, payload, now]))
            .map_err(sql("keeping an event"))?;
            let event_id = conn.last_insert_rowid();
            let woke = conn
                .prepare_cached(
                    "UPDATE runs SET ready_at = ?2, updated_at = ?2
                     WHERE id = ?1 AND status = 'suspended' AND note = ?3 AND ready_at > ?2",
                )
                .and_then(|mut s| s.execute(params![run_id, now, event_note(&name)]))
                .map_err(sql("waking a run for an event"))?;
            Ok(Done::Sent {
                event_id,
                woke: woke > 0,
            })
        }
        Op::Cancel { run_id } => {
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![run_id], |r| r.get(0)).optional())
                .map_err(sql("reading a run's status"))?;
            if status.is_none() {
                return Err(StoreError::NotFound { run_id });
            }
            cancel_tree(conn, run_id, now)?;
            let status: String = conn
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![run_id], |r| r.get(0)))
                .map_err(sql("reading a run's status"))?;
            Ok(Done::Cancel { status })
        }
        Op::FinishCancelled { fence, reason } => {
            finish_cancelled(conn, &fence, &reason, now)?;
            Ok(Done::Unit)
        }
        Op::StartChild {
            fence,
            seq,
            name,
            run,
        } => {
            let cancel_requested = check_fence(conn, &fence)?;
            let (id, _) = enqueue(conn, &run, now)?;
            let bytes = crate::codec::encode_i64(id);
            insert_entry(
                conn,
                fence.run_id,
                NewEntry {
                    seq,
                    name: &name,
                    kind: "child",
                    completed: true,
                    output: Some(&bytes),
                    error: None,
                },
                now,
            )?;
            if cancel_requested {
                // The child is created and journaled (replay agrees), then ends `cancelled`
                // with its parent, as a descendant: nothing of it runs.
                return ended_cancelled(conn, &fence, now);
            }
            Ok(Done::Run { id, created: true })
        }
        Op::AwaitChild {
            fence,
            seq,
            name,
            child_id,
        } => {
            if check_fence(conn, &fence)? {
                return ended_cancelled(conn, &fence, now);
            }
            let child: Option<(String, Option<Vec<u8>>, Option<String>)> = conn
                .prepare_cached(
                    "SELECT status, output, error FROM runs WHERE id = ?1 AND parent_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![child_id, fence.run_id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .map_err(sql("reading a child run"))?;
            let failed = |reason: String| -> StoreResult<Done> {
                insert_entry(
                    conn,
                    fence.run_id,
                    NewEntry {
                        seq,
                        name: &name,
                        kind: "join",
                        completed: false,
                        output: None,
                        error: Some(&reason),
                    },
                    now,
                )?;
                Ok(Done::Awaited(Awaited::Failed(reason)))
            };
            match child {
                None => failed(format!("child run {child_id} does not exist")),
                Some((status, output, _)) if status == "completed" => {
                    let output = output.unwrap_or_default();
                    insert_entry(
                        conn,
                        fence.run_id,
                        NewEntry {
                            seq,
                            name: &name,
                            kind: "join",
                            completed: true,
                            output: Some(&output),
                            error: None,
                        },
                        now,
                    )?;
                    Ok(Done::Awaited(Awaited::Delivered(output)))
                }
                Some((status, _, error)) if status == "failed" || status == "cancelled" => {
                    failed(format!(
                        "child run {child_id} {status}: {}",
                        error.unwrap_or_default()
                    ))
                }
                Some(_) => parked(suspend(conn, &fence, i64::MAX, &child_note(child_id), now)?),
            }
        }
        Op::ExpireDeadlines { limit } => {
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET status = 'failed', note = NULL, finished_at = ?1, updated_at = ?1,
                            error = 'deadline passed (deadline_at ' || deadline_at || ' ms) before the run finished'
                     WHERE id IN (SELECT id FROM runs WHERE deadline_at <= ?1 AND finished_at IS NULL
                                    AND status IN ('pending', 'suspended') LIMIT ?2)",
                )
                .and_then(|mut s| s.execute(params![now, limit]))
                .map_err(sql("expiring deadlines"))?;
            Ok(Done::Count(n))
        }
        Op::Purge { before, limit } => {
            let ids: Vec<i64> = conn
                .prepare_cached(&format!(
                    "SELECT id FROM runs r WHERE finished_at <= ?1 AND status IN {FINAL}
                       AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_id
                                         AND p.status NOT IN {FINAL})
                     ORDER BY finished_at LIMIT ?2"
                ))
                .and_then(|mut s| {
                    s.query_map(params![before, limit], |r| r.get(0))?
                        .collect::<Result<_, _>>()
                })
                .map_err(sql("choosing runs to purge"))?;
            for table in [
                "DELETE FROM steps WHERE run_id = ?1",
                "DELETE FROM attempts WHERE run_id = ?1",
                "DELETE FROM events WHERE run_id = ?1",
                "DELETE FROM runs WHERE id = ?1",
            ] {
                let mut stmt = conn
                    .prepare_cached(table)
                    .map_err(sql("preparing a purge"))?;
                for id in &ids {
                    stmt.execute(params![id]).map_err(sql("purging a run"))?;
                }
            }
            Ok(Done::Count(ids.len()))
        }
        Op::IncrementalVacuum { pages } => {
            // The pragma returns no rows; step it to completion, then report what is left.
            let mut stmt = conn
                .prepare(&format!("PRAGMA incremental_vacuum({})", pages.max(1)))
                .map_err(sql("vacuuming"))?;
            let mut rows = stmt.query([]).map_err(sql("vacuuming"))?;
            while rows.next().map_err(sql("vacuuming"))?.is_some() {}
            let free: i64 = conn
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                .map_err(sql("reading the free-page count"))?;
            Ok(Done::Count(free as usize))
        }
        Op::SetQueueLimit { queue, concurrency } => {
            match concurrency {
                Some(n) => conn
                    .prepare_cached(
                        "INSERT INTO queues(name, concurrency) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET concurrency = excluded.concurrency",
                    )
                    .and_then(|mut s| s.execute(params![queue, n.max(0)])),
                None => conn
                    .prepare_cached("DELETE FROM queues WHERE name = ?1")
                    .and_then(|mut s| s.execute(params![queue])),
            }
            .map_err(sql("setting a queue limit"))?;
            Ok(Done::Unit)
        }
        Op::ParkUnknownVersions {
            names_json,
            workflows_json,
            limit,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET status = 'blocked_version', updated_at = ?3,
                            note = 'workflow ''' || workflow || ''' version ' || version
                                   || ' is not registered in this build (it has other versions of '
                                   || workflow || '); a build that registers version ' || version
                                   || ' will claim it'
                     WHERE id IN (SELECT id FROM runs
                                  WHERE status = 'pending' AND ready_at <= ?3
                                    AND workflow IN (SELECT value FROM json_each(?1))
                                    AND (workflow || '@' || version) NOT IN (SELECT value FROM json_each(?2))
                                  LIMIT ?4)",
                )
                .and_then(|mut s| s.execute(params![&*names_json, &*workflows_json, now, limit]))
                .map_err(sql("parking runs of unknown versions"))?;
            Ok(Done::Count(n))
        }
        Op::PutSchedule(row) => {
            conn.prepare_cached(
                "INSERT INTO schedules(name, cron, workflow, version, input, queue, catch_up, next_due, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
                 ON CONFLICT(name) DO UPDATE SET cron = excluded.cron, workflow = excluded.workflow,
                     version = excluded.version, input = excluded.input, queue = excluded.queue,
                     catch_up = excluded.catch_up, updated_at = excluded.updated_at,
                     next_due = CASE WHEN schedules.cron = excluded.cron THEN schedules.next_due
                                     ELSE excluded.next_due END",
            )
            .and_then(|mut s| {
                s.execute(params![
                    row.name,
                    row.cron,
                    row.workflow,
                    row.version,
                    row.input,
                    row.queue,
                    row.catch_up,
                    row.next_due,
                    now
                ])
            })
            .map_err(sql("saving a schedule"))?;
            Ok(Done::Unit)
        }
        Op::FireSchedule {
            name,
            due,
            next,
            run,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE schedules SET next_due = ?3, updated_at = ?4 WHERE name = ?1 AND next_due = ?2",
                )
                .and_then(|mut s| s.execute(params![name, due, next, now]))
                .map_err(sql("advancing a schedule"))?;
            if n == 0 {
                // Another engine fired this due time first (or the schedule changed).
                return Ok(Done::Count(0));
            }
            let (id, created) = enqueue(conn, &run, now)?;
            Ok(Done::Run { id, created })
        }
        other => Err(StoreError::sqlite(
            "applying a feature command",
            rusqlite::Error::InvalidParameterName(format!("not a feature command: {other:?}")),
        )),
    }
}
