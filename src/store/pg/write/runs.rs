//! PostgreSQL: a run's own life — starting, journaling steps and attempts, and how a
//! claimed run ends (SQLite's `store/write/runs.rs`, statement for statement).
//!
//! Beyond the invariants of [`super`]:
//! - A fenced write that is not an `UPDATE` of the run itself (a journal entry, an
//!   attempt row) takes the run's row `FOR SHARE` in the same statement: a reclaim (an
//!   `UPDATE` of that row) either commits before it, and the write finds no fence and
//!   writes nothing, or waits for its commit.
//! - A key's run is created once under concurrency: `INSERT ... ON CONFLICT DO NOTHING`,
//!   then the winner's row is read (committed: the insert waited for it).

use super::*;
use crate::store::write::{Fence, NewRun, OnKeyConflict};

/// The fence as a locking CTE `f` (run `$1`, owner `$2`, epoch `$3`).
macro_rules! fence_cte {
    () => {
        "WITH f AS (SELECT id FROM runs
                    WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'
                    FOR SHARE) "
    };
}

/// Apply one command of this family.
pub(super) fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::Enqueue(run) => {
            let (id, created) = enqueue(db, &run, now)?;
            Ok(Done::Run { id, created })
        }
        Op::EnqueueMany(runs) => {
            let mut out = Vec::with_capacity(runs.len());
            for run in &runs {
                out.push(enqueue(db, run, now)?);
            }
            Ok(Done::Runs(out))
        }
        Op::Start(runs) => {
            let mut out = Vec::with_capacity(runs.len());
            for (run, policy) in &runs {
                out.push(start(db, run, *policy, now)?);
            }
            Ok(Done::Runs(out))
        }
        Op::Retry { run_id, from_seq } => {
            let id = retry(db, run_id, from_seq, now)?;
            Ok(Done::Run { id, created: true })
        }
        Op::Checkpoint { fence, entry } => {
            let status = if entry.completed {
                "completed"
            } else {
                "failed"
            };
            let result = db.exec(
                "recording a step checkpoint",
                concat!(
                    fence_cte!(),
                    "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error,
                                       recorded_at)
                     SELECT f.id, $4::bigint, $5::text, $6::text, $7::text, $8::bigint,
                            $9::bytea, $10::text, $11::bigint FROM f"
                ),
                &[
                    &fence.run_id,
                    &&*fence.owner,
                    &fence.epoch,
                    &entry.seq,
                    &entry.name,
                    &entry.kind,
                    &status,
                    &entry.attempts,
                    &entry.output,
                    &entry.error,
                    &now,
                ],
            );
            let n = match result {
                Err(e) if sqlstate(&e) == Some("23505") => {
                    return Err(StoreError::JournalConflict {
                        run_id: fence.run_id,
                        seq: entry.seq,
                    })
                }
                other => other?,
            };
            fenced(n, &fence)
        }
        Op::AttemptStart {
            fence,
            seq,
            attempt,
            name,
            pid,
            pid_start,
        } => {
            let n = db.exec(
                "recording a step attempt",
                concat!(
                    fence_cte!(),
                    "INSERT INTO attempts(run_id, seq, attempt, name, owner, epoch, pid, pid_start,
                                          started_at)
                     SELECT f.id, $4::bigint, $5::bigint, $6::text, $2::text, $3::bigint,
                            $7::bigint, $8::bigint, $9::bigint FROM f
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &fence.run_id,
                    &&*fence.owner,
                    &fence.epoch,
                    &seq,
                    &attempt,
                    &name,
                    &pid.map(i64::from),
                    &pid_start.map(|p| p as i64),
                    &now,
                ],
            )?;
            fenced(n, &fence)
        }
        Op::AttemptEnd {
            fence,
            seq,
            attempt,
            outcome,
            reason,
        } => {
            let n = db.exec(
                "ending a step attempt",
                concat!(
                    fence_cte!(),
                    "UPDATE attempts SET ended_at = $7::bigint, outcome = $6::text, reason = $8::text
                     WHERE run_id = $1 AND seq = $4 AND attempt = $5 AND outcome IS NULL
                       AND EXISTS (SELECT 1 FROM f)"
                ),
                &[
                    &fence.run_id,
                    &&*fence.owner,
                    &fence.epoch,
                    &seq,
                    &attempt,
                    &outcome,
                    &now,
                    &reason,
                ],
            )?;
            if n == 0 {
                // Either the lease is gone or the attempt row was never written (in-process
                // steps record attempts only when they fail): insert it, still fenced.
                let n = db.exec(
                    "ending a step attempt",
                    concat!(
                        fence_cte!(),
                        "INSERT INTO attempts(run_id, seq, attempt, name, owner, epoch, started_at,
                                              ended_at, outcome, reason)
                         SELECT f.id, $4::bigint, $5::bigint, '', $2::text, $3::bigint,
                                $7::bigint, $7::bigint, $6::text, $8::text FROM f
                         ON CONFLICT DO NOTHING"
                    ),
                    &[
                        &fence.run_id,
                        &&*fence.owner,
                        &fence.epoch,
                        &seq,
                        &attempt,
                        &outcome,
                        &now,
                        &reason,
                    ],
                )?;
                return fenced(n, &fence);
            }
            Ok(Done::Unit)
        }
        Op::AttemptDetail {
            fence,
            seq,
            attempt,
            logs,
            memory_cap,
        } => {
            let n = db.exec(
                "recording a step attempt's logs",
                concat!(
                    fence_cte!(),
                    "UPDATE attempts SET logs = $6::text, memory_cap = $7::text
                     WHERE run_id = $1 AND seq = $4 AND attempt = $5
                       AND EXISTS (SELECT 1 FROM f)"
                ),
                &[
                    &fence.run_id,
                    &&*fence.owner,
                    &fence.epoch,
                    &seq,
                    &attempt,
                    &logs,
                    &memory_cap,
                ],
            )?;
            fenced(n, &fence)
        }
        Op::Complete { fence, output } => finish(db, &fence, "completed", Some(&output), None, now),
        Op::Fail { fence, error } => finish(db, &fence, "failed", None, Some(&error), now),
        Op::Suspend { fence, until, note } => {
            suspend(db, &fence, until, &note, now)?;
            Ok(Done::Unit)
        }
        Op::Release { fence } => {
            let n = db.exec(
                "releasing a run",
                "UPDATE runs SET status = 'pending', owner = NULL, lease_expires_at = NULL,
                        updated_at = $4
                 WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'",
                &[&fence.run_id, &&*fence.owner, &fence.epoch, &now],
            )?;
            fenced(n, &fence)
        }
        Op::Block {
            fence,
            status,
            note,
        } => {
            let n = db.exec(
                "blocking a run",
                "UPDATE runs SET status = $4, note = $5, owner = NULL, lease_expires_at = NULL,
                        updated_at = $6
                 WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'",
                &[
                    &fence.run_id,
                    &&*fence.owner,
                    &fence.epoch,
                    &status,
                    &note,
                    &now,
                ],
            )?;
            fenced(n, &fence)
        }
        Op::Resume { run_id } => {
            let n = db.exec(
                "resuming a run",
                "UPDATE runs SET status = 'pending', note = NULL, ready_at = $2, updated_at = $2
                 WHERE id = $1 AND status IN ('blocked', 'blocked_version')",
                &[&run_id, &now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound { run_id });
            }
            Ok(Done::Unit)
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::pg::write::runs"
        ))),
    }
}

/// [`enqueue`] under a key-conflict policy: an existing run under the key is returned only
/// if it is of the same workflow with the same input bytes, or the policy says so. The
/// existing run is compared after the insert found it (so a run committed by another
/// engine in between is judged like one found before).
fn start(
    db: &mut Db<'_>,
    run: &NewRun,
    policy: OnKeyConflict,
    now: i64,
) -> StoreResult<(i64, bool)> {
    let (id, created) = enqueue(db, run, now)?;
    let (Some(key), OnKeyConflict::Error, false) = (&run.idempotency_key, policy, created) else {
        return Ok((id, created));
    };
    let same: Option<bool> = db
        .query_opt(
            "looking up an idempotency key",
            "SELECT workflow = $2 AND version = $3 AND input = $4 FROM runs WHERE id = $1",
            &[&id, &run.workflow, &run.version, &run.input],
        )?
        .map(|r| get(&r, 0, "looking up an idempotency key"))
        .transpose()?;
    match same {
        Some(true) => Ok((id, false)),
        _ => Err(StoreError::KeyConflict {
            key: key.clone(),
            existing_run: id,
        }),
    }
}

/// Insert a run (or find the run its idempotency key already names: `(id, false)`).
pub(crate) fn enqueue(db: &mut Db<'_>, run: &NewRun, now: i64) -> StoreResult<(i64, bool)> {
    if let Some(key) = &run.idempotency_key {
        if let Some(id) = key_run(db, key)? {
            return Ok((id, false));
        }
    }
    let ready_at = run.ready_at.unwrap_or(now);
    let status = if ready_at > now {
        "suspended"
    } else {
        "pending"
    };
    let inserted = db.query_opt(
        "enqueueing a run",
        "INSERT INTO runs(workflow, version, input, status, idempotency_key, queue, priority,
                          ready_at, parent_id, deadline_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        &[
            &run.workflow,
            &run.version,
            &run.input,
            &status,
            &run.idempotency_key,
            &run.queue,
            &run.priority,
            &ready_at,
            &run.parent_id,
            &run.deadline_at,
            &now,
        ],
    )?;
    if let Some(r) = inserted {
        return Ok((get(&r, 0, "starting a run")?, true));
    }
    // Another transaction committed a run under the key since we looked.
    match &run.idempotency_key {
        Some(key) => match key_run(db, key)? {
            Some(id) => Ok((id, false)),
            None => Err(StoreError::Internal(format!(
                "idempotency key {key:?}: the insert conflicted but no run holds the key"
            ))),
        },
        None => Err(StoreError::Internal(
            "a run without a key was not inserted".into(),
        )),
    }
}

fn key_run(db: &mut Db<'_>, key: &str) -> StoreResult<Option<i64>> {
    db.query_opt(
        "looking up an idempotency key",
        "SELECT id FROM runs WHERE idempotency_key = $1",
        &[&key],
    )?
    .map(|r| get(&r, 0, "looking up an idempotency key"))
    .transpose()
}

/// A new run from finished run `run_id` (see `Op::Retry`), in the caller's transaction.
fn retry(db: &mut Db<'_>, run_id: i64, from_seq: Option<i64>, now: i64) -> StoreResult<i64> {
    // Locked: two retries of one run hand its children over one after the other.
    let status: Option<String> = db
        .query_opt(
            "reading a run to retry",
            "SELECT status FROM runs WHERE id = $1 FOR UPDATE",
            &[&run_id],
        )?
        .map(|r| get(&r, 0, "reading a run to retry"))
        .transpose()?;
    match status.as_deref() {
        None => return Err(StoreError::NotFound { run_id }),
        Some("completed" | "failed" | "cancelled") => {}
        Some(other) => {
            return Err(StoreError::RunNotFinished {
                run_id,
                status: other.to_string(),
            })
        }
    }
    // Retry: everything before the first failed entry. Restart: everything before from_seq.
    let cut: i64 = match from_seq {
        Some(seq) => seq,
        None => db
            .query_one(
                "finding the failed step of a run",
                "SELECT coalesce(min(seq), 9223372036854775807) FROM steps
                 WHERE run_id = $1 AND status <> 'completed'",
                &[&run_id],
            )?
            .try_get(0)
            .map_err(|e| StoreError::Internal(format!("finding the failed step: {e}")))?,
    };
    let new_id = db.query_one(
        "starting a retry",
        "INSERT INTO runs(workflow, version, input, status, queue, priority, ready_at,
                              retry_of, created_at, updated_at)
             SELECT workflow, version, input, 'pending', queue, priority, $2, id, $2, $2
             FROM runs WHERE id = $1 RETURNING id",
        &[&run_id, &now],
    )?;
    let new_id: i64 = get(&new_id, 0, "starting a retry")?;
    // Copies, not moves: the old run's journal stays as it was (write-once).
    db.exec(
        "copying a journal",
        "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error, recorded_at,
                           copied_from)
         SELECT $2, seq, name, kind, status, attempts, output, error, recorded_at, run_id
         FROM steps WHERE run_id = $1 AND seq < $3",
        &[&run_id, &new_id, &cut],
    )?;
    adopt_children(db, run_id, new_id, cut)?;
    Ok(new_id)
}

/// A copied `child` entry names a child of the old run: the child becomes the new run's
/// (see SQLite's `adopt_children`). Only a child still under the old run moves; an entry
/// that does not decode is left alone.
fn adopt_children(db: &mut Db<'_>, old: i64, new: i64, cut: i64) -> StoreResult<()> {
    let entries: Vec<(i64, Option<Vec<u8>>)> = db
        .query(
            "reading the child entries of a retried run",
            "SELECT seq, output FROM steps
             WHERE run_id = $1 AND seq < $2 AND kind = 'child' AND status = 'completed'
             ORDER BY seq",
            &[&old, &cut],
        )?
        .iter()
        .map(|r| {
            Ok((
                get(r, 0, "copying child entries")?,
                get(r, 1, "copying child entries")?,
            ))
        })
        .collect::<StoreResult<_>>()?;
    for (seq, output) in entries {
        let bytes = output.unwrap_or_default();
        let Ok(child) = crate::codec::decode::<i64>(&bytes, crate::codec::PAYLOAD_BYTES_MAX) else {
            log::warn!("retry of run {old}: child entry (seq {seq}) does not decode; not adopted");
            continue;
        };
        db.exec(
            "handing a child over to a retry",
            "UPDATE runs SET parent_id = $3 WHERE id = $1 AND parent_id = $2",
            &[&child, &old, &new],
        )?;
    }
    Ok(())
}

/// running -> suspended until `until` (fenced). Shared by retries, sleeps, event and child
/// waits. A run whose cancel was requested is not suspended: the same guarded statement
/// ends it `cancelled`, and its descendants are cancelled with it. Answers `true` if the
/// run ended cancelled.
pub(crate) fn suspend(
    db: &mut Db<'_>,
    fence: &Fence,
    until: i64,
    note: &str,
    now: i64,
) -> StoreResult<bool> {
    let ended: Option<String> = db
        .query_opt(
            "suspending a run",
            "UPDATE runs SET
                    status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'suspended' END,
                    ready_at = CASE WHEN cancel_requested = 1 THEN ready_at ELSE $4::bigint END,
                    note = CASE WHEN cancel_requested = 1 THEN NULL ELSE $5::text END,
                    error = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE error END,
                    finished_at = CASE WHEN cancel_requested = 1 THEN $6::bigint ELSE finished_at END,
                    owner = NULL, lease_expires_at = NULL, updated_at = $6::bigint
             WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'
             RETURNING status",
            &[&fence.run_id, &&*fence.owner, &fence.epoch, &until, &note, &now],
        )?
        .map(|r| get(&r, 0, "ending a run"))
        .transpose()?;
    match ended.as_deref() {
        None => fenced(0, fence).map(|_| false),
        Some("cancelled") => {
            super::cancel::cancel_tree(db, fence.run_id, now)?;
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}

/// running -> `status` (`completed` with `output`, or `failed` with `error`), fenced. A run
/// whose cancel was requested while it ran ends `cancelled` instead, with its descendants,
/// in the same guarded statement.
fn finish(
    db: &mut Db<'_>,
    fence: &Fence,
    status: &str,
    output: Option<&[u8]>,
    error: Option<&str>,
    now: i64,
) -> StoreResult<Done> {
    let context = if status == "failed" {
        "failing a run"
    } else {
        "completing a run"
    };
    let ended: Option<String> = db
        .query_opt(
            context,
            "UPDATE runs SET
                    status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE $4::text END,
                    output = CASE WHEN cancel_requested = 1 THEN output
                                  ELSE coalesce($5::bytea, output) END,
                    error = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE $6::text END,
                    owner = NULL, lease_expires_at = NULL, finished_at = $7, updated_at = $7
             WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'
             RETURNING status",
            &[
                &fence.run_id,
                &&*fence.owner,
                &fence.epoch,
                &status,
                &output,
                &error,
                &now,
            ],
        )?
        .map(|r| get(&r, 0, "ending a run"))
        .transpose()?;
    match ended.as_deref() {
        None => fenced(0, fence),
        Some("cancelled") => {
            super::cancel::cancel_tree(db, fence.run_id, now)?;
            Ok(Done::Unit)
        }
        Some(_) => Ok(Done::Unit),
    }
}
