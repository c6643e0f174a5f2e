//! Engines and leases: registering, heartbeats, claims, reclaims.
//!
//! Applied only through [`super::apply`], on the writer thread, inside the batch's
//! transaction (a savepoint per command). The invariants are those of [`super`].

use super::*;
use crate::store::error::{StoreError, StoreResult};
#[allow(unused_imports)]
use rusqlite::{params, Connection, OptionalExtension};

/// Apply one command of this family.
pub(super) fn apply(conn: &Connection, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::RegisterEngine(e) => {
            conn.prepare_cached(
                "INSERT INTO engines(id, pid, pid_start, boot_id, started_at, beat, beat_at) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?5)",
            )
            .and_then(|mut s| s.execute(params![&*e.id, e.pid, e.pid_start as i64, e.boot_id, now]))
            .map_err(sql("registering the engine"))?;
            Ok(Done::Unit)
        }
        Op::StopEngine { owner } => {
            conn.prepare_cached("UPDATE engines SET stopped_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![&*owner, now]))
                .map_err(sql("stopping the engine"))?;
            Ok(Done::Unit)
        }
        Op::Claim {
            owner,
            limit,
            workflows_json,
            lease_ms,
        } => {
            conn.prepare_cached(WAKE_SQL)
                .and_then(|mut s| s.execute(params![now]))
                .map_err(sql("waking suspended runs"))?;
            // Every `pending` run is due: a run waiting for a time is `suspended` (enqueue with
            // a future ready_at, retry backoff) and becomes pending only once due. So the claim
            // does not compare ready_at with `now` again: after the wall clock jumps back, runs
            // that were already due stay claimable instead of stalling for the jump's length.
            unpark_known_versions(conn, &workflows_json, now)?;
            let claimed = claim_ready(conn, &owner, limit, &workflows_json, lease_ms, now)?;
            Ok(Done::Claimed(claimed))
        }
        Op::Heartbeat { owner, lease_ms } => {
            let alive = conn
                .prepare_cached("UPDATE engines SET beat = beat + 1, beat_at = ?2 WHERE id = ?1 AND stopped_at IS NULL")
                .and_then(|mut s| s.execute(params![&*owner, now]))
                .map_err(sql("recording a heartbeat"))?;
            if alive == 0 {
                // Our engine row is gone: someone judged us dead. Every lease is lost.
                return Err(StoreError::LeaseLost {
                    run_id: 0,
                    epoch: 0,
                });
            }
            let n = conn
                .prepare_cached(HEARTBEAT_SQL)
                .and_then(|mut s| s.execute(params![&*owner, now + lease_ms]))
                .map_err(sql("extending leases"))?;
            Ok(Done::Count(n))
        }
        Op::Probe { owner } => {
            conn.prepare_cached("UPDATE engines SET beat_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![&*owner, now]))
                .map_err(sql("probing the storage"))?;
            Ok(Done::Unit)
        }
        Op::Reclaim {
            run_id,
            epoch,
            reason,
            poison_limit,
        } => {
            let n = reclaim(conn, run_id, epoch, &reason, poison_limit, now)?;
            Ok(Done::Reclaimed(n))
        }
        Op::ReclaimMany {
            owner,
            judged_beat,
            runs,
            reason,
            poison_limit,
        } => {
            if !fence_incarnation(conn, &owner, judged_beat, now)? {
                return Ok(Done::Runs(
                    runs.iter().map(|&(id, _)| (id, false)).collect(),
                ));
            }
            let mut out = Vec::with_capacity(runs.len());
            for (run_id, epoch) in runs {
                out.push((
                    run_id,
                    reclaim(conn, run_id, epoch, &reason, poison_limit, now)?,
                ));
            }
            Ok(Done::Runs(out))
        }
        Op::NoteUnrunnable {
            workflows_json,
            note,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET note = ?2 || workflow || '@' || version
                     WHERE status = 'pending' AND ready_at <= ?3 AND note IS NULL
                       AND (workflow || '@' || version) NOT IN (SELECT value FROM json_each(?1))",
                )
                .and_then(|mut s| s.execute(params![&*workflows_json, note, now]))
                .map_err(sql("noting unrunnable runs"))?;
            Ok(Done::Count(n))
        }
        Op::ForgetEngine { id } => {
            conn.prepare_cached(
                "DELETE FROM engines WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM runs WHERE owner = ?1 AND status = 'running')",
            )
            .and_then(|mut s| s.execute(params![id]))
            .map_err(sql("forgetting an engine"))?;
            Ok(Done::Unit)
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::write::leases"
        ))),
    }
}

/// Wake due suspended runs. `INDEXED BY`: the planner otherwise picks `runs_status` and
/// reads every suspended run instead of only the due ones.
pub const WAKE_SQL: &str =
    "UPDATE runs INDEXED BY runs_wake SET status = 'pending', note = NULL, updated_at = ?1
     WHERE status = 'suspended' AND ready_at <= ?1";

/// Claim up to ?5 ready runs in one statement. `INDEXED BY runs_claim`: the partial index is
/// already in claim order, so the claim walks it and stops at the limit; without the hint
/// the planner picks `runs_status`, reads every pending run and sorts them (O(pending) per
/// claim). `LIMIT +?5`: with a plain `?5` the bundled SQLite (3.54) plans with the limit's
/// value and prepares the statement again at every execution (parsing and planning: most
/// of the writer thread's own time per claim). Both checked by tests/query_plans.rs.
pub const CLAIM_SQL: &str = "UPDATE runs SET status = 'running', owner = ?1, epoch = epoch + 1,
                            lease_expires_at = ?2, updated_at = ?3, note = NULL
                     WHERE id IN (SELECT id FROM runs INDEXED BY runs_claim
                                  WHERE status = 'pending'
                                    AND (workflow || '@' || version) IN (SELECT value FROM json_each(?4))
                                    AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = runs.queue)
                                  ORDER BY priority DESC, ready_at, id LIMIT +?5)
                     RETURNING id, workflow, version, input, epoch, interruptions, deadline_at, cancel_requested";

/// Decode one row of a claim's `RETURNING id, workflow, version, input, epoch,
/// interruptions, deadline_at, cancel_requested`, leniently: a column of the wrong type makes this row
/// `Err((run_id, reason))` instead of failing the claim of every other run.
pub(crate) fn claimed_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<Claimed, (i64, String)>> {
    use crate::store::queries::decode::{blob, int, opt_int, text};
    let run_id: i64 = r.get(0)?; // the rowid: always an integer
    let decoded = (|| {
        Ok(Claimed {
            run_id,
            workflow: text(r, 1, "runs.workflow")?,
            version: int(r, 2, "runs.version")?,
            input: blob(r, 3, "runs.input")?,
            epoch: int(r, 4, "runs.epoch")?,
            interruptions: int(r, 5, "runs.interruptions")?,
            deadline_at: opt_int(r, 6, "runs.deadline_at")?,
            // Decoded here so a bad value parks the run instead of failing a later read,
            // releasing the run, claiming it again.
            cancel_requested: int(r, 7, "runs.cancel_requested")? != 0,
        })
    })();
    Ok(decoded.map_err(|e: crate::store::queries::decode::BadColumn| (run_id, e.to_string())))
}

/// Part of a claim: runs just claimed (in this transaction) whose row could not be decoded
/// are parked `blocked` with the reason, once, in the same transaction; the others are
/// returned. So bad data stops only its own run, and it is not claimed again in a loop.
pub(crate) fn park_undecodable(
    conn: &Connection,
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
                conn.prepare_cached(
                    "UPDATE runs SET status = 'blocked', note = ?3, owner = NULL, lease_expires_at = NULL,
                            updated_at = ?4
                     WHERE id = ?1 AND owner = ?2 AND status = 'running'",
                )
                .and_then(|mut s| s.execute(params![run_id, owner, note, now]))
                .map_err(sql("parking an undecodable run"))?;
            }
        }
    }
    Ok(out)
}

/// Extend the leases of every run an engine holds (partial index `runs_owner`).
pub const HEARTBEAT_SQL: &str =
    "UPDATE runs INDEXED BY runs_owner SET lease_expires_at = ?2 WHERE owner = ?1 AND status = 'running'";

/// Fence the incarnation `owner` for a reclaim judged on heartbeat value `judged_beat`:
/// true if the reclaim may go on (the fence holds: the counter did not move since the
/// judgement, or the owner still has no engine row when none was judged).
pub(super) fn fence_incarnation(
    conn: &Connection,
    owner: &str,
    judged_beat: Option<i64>,
    now: i64,
) -> StoreResult<bool> {
    match judged_beat {
        Some(beat) => {
            let n = conn
                .prepare_cached(
                    "UPDATE engines SET stopped_at = coalesce(stopped_at, ?3)
                     WHERE id = ?1 AND beat = ?2",
                )
                .and_then(|mut s| s.execute(params![owner, beat, now]))
                .map_err(sql("fencing a dead owner"))?;
            Ok(n == 1)
        }
        None => {
            let exists = conn
                .prepare_cached("SELECT 1 FROM engines WHERE id = ?1")
                .and_then(|mut s| s.exists(params![owner]))
                .map_err(sql("fencing a dead owner"))?;
            Ok(!exists)
        }
    }
}

/// Guarded reclaim of one run: only if it is still `running` at the epoch the reaper read.
pub(super) fn reclaim(
    conn: &Connection,
    run_id: i64,
    epoch: i64,
    reason: &str,
    poison_limit: i64,
    now: i64,
) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE runs SET
                status = CASE WHEN interruptions + 1 > ?3 THEN 'failed' ELSE 'pending' END,
                error = CASE WHEN interruptions + 1 > ?3
                             THEN 'interrupted ' || (interruptions + 1) || ' times; last: ' || ?4
                             ELSE error END,
                finished_at = CASE WHEN interruptions + 1 > ?3 THEN ?5 ELSE NULL END,
                interruptions = interruptions + 1, last_interruption = ?4,
                owner = NULL, epoch = epoch + 1, lease_expires_at = NULL, updated_at = ?5
             WHERE id = ?1 AND status = 'running' AND epoch = ?2",
        )
        .and_then(|mut s| s.execute(params![run_id, epoch, poison_limit, reason, now]))
        .map_err(sql("reclaiming a run"))?;
    Ok(n == 1)
}

/// The claim proper (part of `Op::Claim`, and all of a worker's claim of its next run):
/// up to `limit` pending runs of registered workflows, queues with a concurrency limit
/// first (bounded by their limits), then the rest.
pub(crate) fn claim_ready(
    conn: &Connection,
    owner: &Arc<str>,
    limit: i64,
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    let mut limited = claim_limited(conn, owner, limit, workflows_json, lease_ms, now)?;
    let limit = limit - limited.len() as i64;
    if limit <= 0 {
        return Ok(limited);
    }
    let mut stmt = conn
        .prepare_cached(CLAIM_SQL)
        .map_err(sql("preparing the claim"))?;
    let rows = stmt
        .query_map(
            params![&**owner, now + lease_ms, now, workflows_json, limit],
            claimed_row,
        )
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(sql("claiming runs"))?;
    drop(stmt);
    let rows = park_undecodable(conn, owner, rows, now)?;
    limited.extend(rows);
    Ok(limited)
}

/// Claim these runs by id, each only if it is pending, of a workflow in `workflows_json`
/// and in a queue without a concurrency limit (a limited queue's runs are claimed in order
/// by `claim_limited`, which keeps the limit).
pub(crate) fn claim_runs(
    conn: &Connection,
    owner: &Arc<str>,
    ids: &[i64],
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    let mut rows = Vec::with_capacity(ids.len());
    for &id in ids {
        let mut stmt = conn
            .prepare_cached(CLAIM_ONE_SQL)
            .map_err(sql("preparing a claim by id"))?;
        let got = stmt
            .query_map(
                params![&**owner, now + lease_ms, now, workflows_json, id],
                claimed_row,
            )
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(sql("claiming a run by id"))?;
        rows.extend(got);
    }
    park_undecodable(conn, owner, rows, now)
}

/// Claim run ?5 if it is claimable by this engine (see `claim_runs`).
pub const CLAIM_ONE_SQL: &str = "UPDATE runs SET status = 'running', owner = ?1, epoch = epoch + 1,
                            lease_expires_at = ?2, updated_at = ?3, note = NULL
                     WHERE id = +?5 AND status = 'pending'
                       AND (workflow || '@' || version) IN (SELECT value FROM json_each(?4))
                       AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = runs.queue)
                     RETURNING id, workflow, version, input, epoch, interruptions, deadline_at, cancel_requested";

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
    // Every pending run is due (a run waiting for a time is `suspended`; the plain claim
    // relies on it too): `ready_at` only orders, it is not compared with our clock, which
    // may have jumped back since the run was made pending.
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
                              WHERE status = 'pending' AND queue = ?6
                                AND (workflow || '@' || version) IN (SELECT value FROM json_each(?4))
                              ORDER BY priority DESC, ready_at, id LIMIT +?5)
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
