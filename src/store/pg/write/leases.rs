//! PostgreSQL: engines and leases — registering, heartbeats, claims, reclaims (SQLite's
//! `store/write/leases.rs`, statement for statement).
//!
//! Beyond the invariants of [`super`]:
//! - A claim takes its rows with `FOR UPDATE SKIP LOCKED` inside `ARRAY(...)` (evaluated
//!   once, so the `LIMIT` holds), re-checking `status = 'pending'` on the row it locked:
//!   two engines never claim one run, and neither waits for the other.
//! - A queue with a concurrency limit is claimed from only after its `queues` row is
//!   locked (`FOR UPDATE`), and its running runs are counted by a later statement (a
//!   fresh snapshot, after the lock): two engines cannot both take its last slot.
//! - Rows claimed together are answered in claim order (priority, ready time, id).

use super::*;
use crate::store::pg::conn::{col, get};
use crate::store::write::Claimed;
use postgres::Row;
use std::sync::Arc;

/// `workflow@version` of a `runs` row is in the JSON array of strings `$N`.
macro_rules! known {
    ($n:literal) => {
        concat!(
            "(workflow || '@' || version::text) = ANY(ARRAY(SELECT jsonb_array_elements_text($",
            $n,
            "::text::jsonb)))"
        )
    };
}

/// Columns a claim returns (decoded by [`claimed_row`]).
macro_rules! claim_returning {
    () => {
        " RETURNING id, workflow, version, input, epoch, interruptions, deadline_at, cancel_requested,
                    priority, ready_at"
    };
}

/// Apply one command of this family.
pub(super) fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::RegisterEngine(e) => {
            db.exec(
                "registering the engine",
                "INSERT INTO engines(id, pid, pid_start, boot_id, started_at, beat, beat_at)
                 VALUES ($1, $2, $3, $4, $5, 0, $5)",
                &[
                    &&*e.id,
                    &i64::from(e.pid),
                    &(e.pid_start as i64),
                    &e.boot_id,
                    &now,
                ],
            )?;
            Ok(Done::Unit)
        }
        Op::StopEngine { owner } => {
            db.exec(
                "stopping the engine",
                "UPDATE engines SET stopped_at = $2 WHERE id = $1",
                &[&&*owner, &now],
            )?;
            Ok(Done::Unit)
        }
        Op::Claim {
            owner,
            limit,
            workflows_json,
            lease_ms,
        } => {
            db.exec("waking suspended runs", WAKE_SQL, &[&now])?;
            // Every `pending` run is due (see SQLite's claim): no ready_at test here.
            unpark_known_versions(db, &workflows_json, now)?;
            let claimed = claim_ready(db, &owner, limit, &workflows_json, lease_ms, now)?;
            Ok(Done::Claimed(claimed))
        }
        Op::Heartbeat { owner, lease_ms } => {
            let alive = db.exec(
                "recording a heartbeat",
                "UPDATE engines SET beat = beat + 1, beat_at = $2 WHERE id = $1 AND stopped_at IS NULL",
                &[&&*owner, &now],
            )?;
            if alive == 0 {
                // Our engine row is gone or fenced: someone judged us dead. Every lease is lost.
                return Err(StoreError::LeaseLost {
                    run_id: 0,
                    epoch: 0,
                });
            }
            let n = db.exec(
                "extending leases",
                HEARTBEAT_SQL,
                &[&&*owner, &(now + lease_ms)],
            )?;
            Ok(Done::Count(n as usize))
        }
        Op::Probe { owner } => {
            db.exec(
                "probing the storage",
                "UPDATE engines SET beat_at = $2 WHERE id = $1",
                &[&&*owner, &now],
            )?;
            Ok(Done::Unit)
        }
        Op::Reclaim {
            run_id,
            epoch,
            reason,
            poison_limit,
        } => Ok(Done::Reclaimed(reclaim(
            db,
            run_id,
            epoch,
            &reason,
            poison_limit,
            now,
        )?)),
        Op::ReclaimMany {
            owner,
            judged_beat,
            runs,
            reason,
            poison_limit,
        } => {
            if !fence_incarnation(db, &owner, judged_beat, now)? {
                return Ok(Done::Runs(
                    runs.iter().map(|&(id, _)| (id, false)).collect(),
                ));
            }
            // Rows are locked in id order (as every command locking several runs does),
            // the answer keeps the order asked.
            let mut order: Vec<usize> = (0..runs.len()).collect();
            order.sort_by_key(|&i| runs[i].0);
            let mut done = vec![false; runs.len()];
            for i in order {
                let (run_id, epoch) = runs[i];
                done[i] = reclaim(db, run_id, epoch, &reason, poison_limit, now)?;
            }
            Ok(Done::Runs(
                runs.iter().zip(done).map(|(&(id, _), r)| (id, r)).collect(),
            ))
        }
        Op::NoteUnrunnable {
            workflows_json,
            note,
        } => {
            let n = db.exec(
                "noting unrunnable runs",
                concat!(
                    "UPDATE runs SET note = $2::text || workflow || '@' || version::text
                     WHERE status = 'pending' AND ready_at <= $3 AND note IS NULL
                       AND NOT ",
                    known!(1)
                ),
                &[&&*workflows_json, &note, &now],
            )?;
            Ok(Done::Count(n as usize))
        }
        Op::ForgetEngine { id } => {
            db.exec(
                "forgetting an engine",
                "DELETE FROM engines WHERE id = $1
                 AND NOT EXISTS (SELECT 1 FROM runs WHERE owner = $1 AND status = 'running')",
                &[&id],
            )?;
            Ok(Done::Unit)
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::pg::write::leases"
        ))),
    }
}

/// Wake due suspended runs.
pub const WAKE_SQL: &str = "UPDATE runs SET status = 'pending', note = NULL, updated_at = $1
     WHERE status = 'suspended' AND ready_at <= $1";

/// Extend the leases of every run an engine holds.
pub const HEARTBEAT_SQL: &str =
    "UPDATE runs SET lease_expires_at = $2 WHERE owner = $1 AND status = 'running'";

/// Claim up to `$5` ready runs of queues without a limit in one statement.
pub const CLAIM_SQL: &str = concat!(
    "UPDATE runs SET status = 'running', owner = $1, epoch = epoch + 1,
            lease_expires_at = $2, updated_at = $3, note = NULL
     WHERE status = 'pending' AND id = ANY(ARRAY(
         SELECT id FROM runs
         WHERE status = 'pending' AND ",
    known!(4),
    "
           AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = runs.queue)
         ORDER BY priority DESC, ready_at, id LIMIT $5
         FOR UPDATE SKIP LOCKED))",
    claim_returning!()
);

/// Claim run `$5` if it is claimable by this engine (see [`claim_runs`]).
pub const CLAIM_ONE_SQL: &str = concat!(
    "UPDATE runs SET status = 'running', owner = $1, epoch = epoch + 1,
            lease_expires_at = $2, updated_at = $3, note = NULL
     WHERE id = $5 AND status = 'pending' AND ",
    known!(4),
    "
       AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = runs.queue)",
    claim_returning!()
);

/// Claim up to `$5` ready runs of limited queue `$6` (its row locked by the caller).
const CLAIM_QUEUE_SQL: &str = concat!(
    "UPDATE runs SET status = 'running', owner = $1, epoch = epoch + 1,
            lease_expires_at = $2, updated_at = $3, note = NULL
     WHERE status = 'pending' AND id = ANY(ARRAY(
         SELECT id FROM runs
         WHERE status = 'pending' AND queue = $6 AND ",
    known!(4),
    "
         ORDER BY priority DESC, ready_at, id LIMIT $5
         FOR UPDATE SKIP LOCKED))",
    claim_returning!()
);

/// One claimed row, with its claim-order key `(priority, ready_at)`.
type ClaimedRow = (Result<Claimed, (i64, String)>, (i64, i64));

/// Decode one row of a claim's `RETURNING` leniently: a column that does not read makes
/// this row `Err((run_id, reason))` instead of failing the claim of every other run.
fn claimed_row(r: &Row) -> StoreResult<ClaimedRow> {
    let run_id: i64 = get(r, 0, "claiming runs")?;
    let order = (
        r.try_get::<_, i64>(8).unwrap_or(0),
        r.try_get::<_, i64>(9).unwrap_or(0),
    );
    let decoded = (|| {
        Ok(Claimed {
            run_id,
            workflow: col(r, 1, run_id, "runs.workflow")?,
            version: col(r, 2, run_id, "runs.version")?,
            input: col(r, 3, run_id, "runs.input")?,
            epoch: col(r, 4, run_id, "runs.epoch")?,
            interruptions: col(r, 5, run_id, "runs.interruptions")?,
            deadline_at: col(r, 6, run_id, "runs.deadline_at")?,
            cancel_requested: col::<i64>(r, 7, run_id, "runs.cancel_requested")? != 0,
        })
    })();
    Ok((
        decoded.map_err(|e: StoreError| (run_id, e.to_string())),
        order,
    ))
}

/// Decode a claim's rows and put them in claim order (`RETURNING` has none).
fn claimed_rows(rows: Vec<Row>) -> StoreResult<Vec<Result<Claimed, (i64, String)>>> {
    let mut rows: Vec<ClaimedRow> = rows.iter().map(claimed_row).collect::<Result<_, _>>()?;
    rows.sort_by_key(|(c, (priority, ready_at))| {
        let id = match c {
            Ok(c) => c.run_id,
            Err((id, _)) => *id,
        };
        (std::cmp::Reverse(*priority), *ready_at, id)
    });
    Ok(rows.into_iter().map(|(c, _)| c).collect())
}

/// Part of a claim: runs just claimed (in this transaction) whose row could not be decoded
/// are parked `blocked` with the reason, once, in the same transaction; the others are
/// returned. So bad data stops only its own run, and it is not claimed again in a loop.
pub(crate) fn park_undecodable(
    db: &mut Db<'_>,
    owner: &str,
    rows: Vec<Result<Claimed, (i64, String)>>,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            Ok(c) => out.push(c),
            Err((run_id, reason)) => {
                let note = format!(
                    "run {run_id} cannot be claimed: its row has data this build cannot read ({reason}); \
                     fix the row, then `waymark resume {run_id}`"
                );
                log::error!("{note}");
                db.exec(
                    "parking an undecodable run",
                    "UPDATE runs SET status = 'blocked', note = $3, owner = NULL,
                            lease_expires_at = NULL, updated_at = $4
                     WHERE id = $1 AND owner = $2 AND status = 'running'",
                    &[&run_id, &owner, &note, &now],
                )?;
            }
        }
    }
    Ok(out)
}

/// Fence the incarnation `owner` for a reclaim judged on heartbeat value `judged_beat`:
/// true if the reclaim may go on (the counter did not move since the judgement, or the
/// owner still has no engine row when none was judged). The `UPDATE` waits for a heartbeat
/// in flight and re-checks `beat` on the row it committed.
pub(crate) fn fence_incarnation(
    db: &mut Db<'_>,
    owner: &str,
    judged_beat: Option<i64>,
    now: i64,
) -> StoreResult<bool> {
    match judged_beat {
        Some(beat) => {
            let n = db.exec(
                "fencing a dead owner",
                "UPDATE engines SET stopped_at = coalesce(stopped_at, $3)
                 WHERE id = $1 AND beat = $2",
                &[&owner, &beat, &now],
            )?;
            Ok(n == 1)
        }
        None => {
            // Lock the row if one appeared, so a registration racing us is seen.
            let exists = db.query_opt(
                "fencing a dead owner",
                "SELECT 1 FROM engines WHERE id = $1 FOR UPDATE",
                &[&owner],
            )?;
            Ok(exists.is_none())
        }
    }
}

/// Guarded reclaim of one run: only if it is still `running` at the epoch the reaper read;
/// past `poison_limit` interruptions it ends `failed`.
pub(crate) fn reclaim(
    db: &mut Db<'_>,
    run_id: i64,
    epoch: i64,
    reason: &str,
    poison_limit: i64,
    now: i64,
) -> StoreResult<bool> {
    let n = db.exec(
        "reclaiming a run",
        "UPDATE runs SET
            status = CASE WHEN interruptions + 1 > $3 THEN 'failed' ELSE 'pending' END,
            error = CASE WHEN interruptions + 1 > $3
                         THEN 'interrupted ' || (interruptions + 1)::text || ' times; last: ' || $4::text
                         ELSE error END,
            finished_at = CASE WHEN interruptions + 1 > $3 THEN $5::bigint ELSE NULL END,
            interruptions = interruptions + 1, last_interruption = $4::text,
            owner = NULL, epoch = epoch + 1, lease_expires_at = NULL, updated_at = $5::bigint
         WHERE id = $1 AND status = 'running' AND epoch = $2",
        &[&run_id, &epoch, &poison_limit, &reason, &now],
    )?;
    Ok(n == 1)
}

/// The claim proper (part of `Op::Claim`, and all of a worker's claim of its next run):
/// up to `limit` pending runs of registered workflows, queues with a concurrency limit
/// first (bounded by their limits), then the rest.
pub(crate) fn claim_ready(
    db: &mut Db<'_>,
    owner: &Arc<str>,
    limit: i64,
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    // Claim in index order: walk `runs_claim` (or `runs_queue_claim`) from its head and
    // stop at the limit, never read and sort every pending run. The planner's estimates
    // (an unanalyzed queues table, the known-workflow filter) otherwise choose a bitmap
    // scan of every pending run and a sort, O(queue depth) per claim: 20,000 queued runs
    // drained at a fraction of the commit rate (`waymark bench --db`, PW2). Sorting stays
    // possible (there is always an index that gives the order), only priced out, and only
    // in this transaction.
    db.batch("planning a claim", "SET LOCAL enable_sort = off")?;
    let mut limited = claim_limited(db, owner, limit, workflows_json, lease_ms, now)?;
    let limit = limit - limited.len() as i64;
    if limit <= 0 {
        return Ok(limited);
    }
    let rows = db.query(
        "claiming runs",
        CLAIM_SQL,
        &[&&**owner, &(now + lease_ms), &now, &workflows_json, &limit],
    )?;
    let rows = claimed_rows(rows)?;
    let rows = park_undecodable(db, owner, rows, now)?;
    limited.extend(rows);
    Ok(limited)
}

/// Claim these runs by id, each only if it is pending, of a workflow in `workflows_json`
/// and in a queue without a concurrency limit (a limited queue's runs are claimed in order
/// by [`claim_limited`], which keeps the limit).
pub(crate) fn claim_runs(
    db: &mut Db<'_>,
    owner: &Arc<str>,
    ids: &[i64],
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    let mut rows = Vec::with_capacity(ids.len());
    for &id in ids {
        let got = db.query(
            "claiming a run by id",
            CLAIM_ONE_SQL,
            &[&&**owner, &(now + lease_ms), &now, &workflows_json, &id],
        )?;
        rows.extend(claimed_rows(got)?);
    }
    park_undecodable(db, owner, rows, now)
}

/// Part of `Op::Claim`: runs parked as `blocked_version` whose `workflow@version` this
/// claimer registers become pending again, so a build that has the version claims them.
pub(crate) fn unpark_known_versions(
    db: &mut Db<'_>,
    workflows_json: &str,
    now: i64,
) -> StoreResult<()> {
    db.exec(
        "unparking runs of known versions",
        concat!(
            "UPDATE runs SET status = 'pending', note = NULL, updated_at = $2
             WHERE status = 'blocked_version' AND ",
            known!(1)
        ),
        &[&workflows_json, &now],
    )?;
    Ok(())
}

/// Claim up to `limit` runs from queues that have a concurrency limit, never more per queue
/// than its limit minus its runs already `running`. Each queue's row is locked before its
/// running runs are counted (a later statement, so it sees every claim committed before the
/// lock was granted): the limit holds across engines on several hosts. Queues are locked
/// in name order (no deadlock between two claimers).
pub(crate) fn claim_limited(
    db: &mut Db<'_>,
    owner: &str,
    limit: i64,
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    let mut out = Vec::new();
    if limit <= 0 {
        return Ok(out);
    }
    // Only queues with a pending run this engine could take are locked. Every pending run
    // is due (see `Op::Claim`): `ready_at` is not compared with our clock, which may be
    // behind the clock of the host that wrote it. The lateral `LIMIT 1` looks into each
    // limited queue by its index (`runs_queue_claim`), never through every pending run.
    let queues: Vec<String> = db
        .query(
            "reading queue limits",
            concat!(
                "SELECT q.name FROM queues q
                 CROSS JOIN LATERAL (
                     SELECT 1 FROM runs WHERE status = 'pending' AND queue = q.name AND ",
                known!(1),
                "
                     LIMIT 1) AS waiting
                 WHERE q.concurrency > 0
                 ORDER BY q.name"
            ),
            &[&workflows_json],
        )?
        .iter()
        .map(|r| get(r, 0, "reading queue limits"))
        .collect::<StoreResult<_>>()?;
    for queue in queues {
        let Some(concurrency) = db.query_opt(
            "locking a queue",
            "SELECT concurrency FROM queues WHERE name = $1 FOR UPDATE",
            &[&queue],
        )?
        else {
            continue; // its limit was removed meanwhile: the plain claim takes its runs
        };
        let concurrency: i64 = get(&concurrency, 0, "locking a queue")?;
        let running: i64 = db
            .query_one(
                "counting a queue's running runs",
                "SELECT count(*) FROM runs WHERE queue = $1 AND status = 'running'",
                &[&queue],
            )?
            .try_get(0)
            .map_err(|e| StoreError::Internal(format!("counting a queue's running runs: {e}")))?;
        let want = (concurrency - running).min(limit - out.len() as i64);
        if want <= 0 {
            continue;
        }
        let rows = db.query(
            "claiming from a limited queue",
            CLAIM_QUEUE_SQL,
            &[
                &owner,
                &(now + lease_ms),
                &now,
                &workflows_json,
                &want,
                &queue,
            ],
        )?;
        let rows = claimed_rows(rows)?;
        out.extend(park_undecodable(db, owner, rows, now)?);
        if out.len() as i64 >= limit {
            break;
        }
    }
    Ok(out)
}
