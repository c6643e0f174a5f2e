//! Every state transition of a run, each one guarded SQL statement (or two in one savepoint).
//!
//! This module is the only place that changes `runs`, `steps`, `attempts` and `engines`.
//!
//! Invariants:
//! - Every write made on behalf of a claimed run is guarded by `(id, owner, epoch,
//!   status='running')`; a guard that matches no row is [`StoreError::LeaseLost`].
//! - Every claim and every reclaim bumps `epoch`, so a stale owner's fence never matches again.
//! - A reclaim is guarded by the `(status, epoch)` the reaper read: a run that completed or was
//!   reclaimed in between is left alone (the reclaim reports `false`).
//! - Journal entries are write-once: a plain INSERT keyed by `(run_id, seq)`; a second
//!   write is [`StoreError::JournalConflict`], never an upsert.
//!
//! Run states: `pending` (due, claimable), `running` (leased), `suspended`
//! (woken to pending at `ready_at`), and the final `completed`, `failed`, `cancelled`;
//! `blocked` (undecodable data, waits for `resume`) and `blocked_version`.

use super::error::{StoreError, StoreResult};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;

/// Who may write for a claimed run: the owner and the epoch it claimed with.
#[derive(Debug, Clone)]
pub struct Fence {
    pub run_id: i64,
    pub owner: Arc<str>,
    pub epoch: i64,
}

/// A run to enqueue.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: String,
    pub version: i64,
    pub input: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub queue: String,
    pub priority: i64,
    /// Not before this time (ms); `None` means now.
    pub ready_at: Option<i64>,
    pub parent_id: Option<i64>,
    pub deadline_at: Option<i64>,
}

/// A run this engine just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub run_id: i64,
    pub workflow: String,
    pub version: i64,
    pub input: Vec<u8>,
    pub epoch: i64,
    pub interruptions: i64,
    pub deadline_at: Option<i64>,
}

/// A journal entry to record.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: i64,
    pub name: String,
    pub kind: &'static str,
    pub completed: bool,
    pub attempts: i64,
    pub output: Option<Vec<u8>>,
    pub error: Option<String>,
}

/// A live engine incarnation.
#[derive(Debug, Clone)]
pub struct EngineRow {
    pub id: Arc<str>,
    pub pid: u32,
    pub pid_start: u64,
    pub boot_id: String,
}

/// A closed set of write commands, applied by the writer thread.
#[derive(Debug)]
pub enum Op {
    RegisterEngine(EngineRow),
    StopEngine {
        owner: Arc<str>,
    },
    Enqueue(NewRun),
    EnqueueMany(Vec<NewRun>),
    /// Wake due suspended runs, then claim up to `limit` pending runs whose
    /// `workflow@version` is in `workflows_json` (a JSON array).
    Claim {
        owner: Arc<str>,
        limit: i64,
        workflows_json: Arc<str>,
        lease_ms: i64,
    },
    Heartbeat {
        owner: Arc<str>,
        lease_ms: i64,
    },
    /// A small write that proves the storage accepts commits again (after a storage
    /// failure); it renews no lease and moves no heartbeat counter.
    Probe {
        owner: Arc<str>,
    },
    Checkpoint {
        fence: Fence,
        entry: Entry,
    },
    AttemptStart {
        fence: Fence,
        seq: i64,
        attempt: i64,
        name: String,
        pid: Option<u32>,
        pid_start: Option<u64>,
    },
    AttemptEnd {
        fence: Fence,
        seq: i64,
        attempt: i64,
        outcome: &'static str,
        reason: String,
    },
    /// What a child-step attempt left besides its outcome: its captured logs (bounded by
    /// the engine) and the memory-cap mechanism it ran under. Fenced like the attempt.
    AttemptDetail {
        fence: Fence,
        seq: i64,
        attempt: i64,
        logs: String,
        memory_cap: Option<String>,
    },
    Complete {
        fence: Fence,
        output: Vec<u8>,
    },
    Fail {
        fence: Fence,
        error: String,
    },
    Suspend {
        fence: Fence,
        until: i64,
        note: String,
    },
    Release {
        fence: Fence,
    },
    Block {
        fence: Fence,
        status: &'static str,
        note: String,
    },
    Reclaim {
        run_id: i64,
        epoch: i64,
        reason: String,
        poison_limit: i64,
    },
    /// [`Op::Reclaim`] for many runs of one dead owner in one command (recovery of
    /// thousands of runs costs one commit, not one each). Answers `Done::Runs` with
    /// `(run_id, reclaimed)` in order.
    ///
    /// The judgement and the fence are one atomic act: with `judged_beat`, the transaction
    /// first fences the owner's incarnation (`engines.stopped_at`) only if its heartbeat
    /// counter still reads the value the reaper judged; if it moved (the owner renewed after
    /// the judgement), nothing is reclaimed. A fenced incarnation's heartbeat fails from then
    /// on, so it never renews those leases again. Without `judged_beat` (the owner has no
    /// engine row) nothing is reclaimed if a row for it appeared meanwhile.
    ReclaimMany {
        owner: Arc<str>,
        judged_beat: Option<i64>,
        runs: Vec<(i64, i64)>,
        reason: String,
        poison_limit: i64,
    },
    /// Move a `blocked` run back to pending (operator asked to retry it).
    Resume {
        run_id: i64,
    },
    /// Mark pending runs nobody here can run with a note (they stay claimable by other builds).
    NoteUnrunnable {
        workflows_json: Arc<str>,
        note: String,
    },
    /// Delete stopped or dead engine rows that hold no runs.
    ForgetEngine {
        id: String,
    },
    // ---- durable features (issue 6); implemented in `feature_ops` ----
    /// Journal a timer at `seq` (its wake-up time `wake`); with `suspend` and `wake` in the
    /// future, also suspend the run until then. One transaction, fenced.
    Timer {
        fence: Fence,
        seq: i64,
        name: String,
        wake: i64,
        suspend: bool,
    },
    /// Deliver the oldest unconsumed event `name` into journal entry `seq`; or record a
    /// timeout once `deadline` passed; or suspend the run until `deadline`. Fenced.
    AwaitEvent {
        fence: Fence,
        seq: i64,
        name: String,
        deadline: i64,
    },
    /// Keep an event for a run; wake the run if it is suspended waiting for `name`.
    SendEvent {
        run_id: i64,
        name: String,
        payload: Vec<u8>,
    },
    /// Request cancellation of a run and its descendants: those not running end
    /// `cancelled` at once, running ones are flagged (`cancel_requested`).
    Cancel {
        run_id: i64,
    },
    /// End a claimed run as `cancelled` (fenced).
    FinishCancelled {
        fence: Fence,
        reason: String,
    },
    /// Enqueue a child run (idempotent by its key) and journal its id at `seq`. Fenced.
    StartChild {
        fence: Fence,
        seq: i64,
        name: String,
        run: NewRun,
    },
    /// Journal the outcome of a finished child at `seq`, or suspend the parent until the
    /// child finishes (a trigger wakes it). Fenced.
    AwaitChild {
        fence: Fence,
        seq: i64,
        name: String,
        child_id: i64,
    },
    /// Fail up to `limit` pending or suspended runs whose deadline passed.
    ExpireDeadlines {
        limit: i64,
    },
    /// Delete up to `limit` runs finished before `before` (and not children of unfinished
    /// runs) with their journal, attempts and events.
    Purge {
        before: i64,
        limit: i64,
    },
    /// Return up to `pages` free pages to the file system (`PRAGMA incremental_vacuum`).
    IncrementalVacuum {
        pages: i64,
    },
    /// Set (`Some`) or remove (`None`) the concurrency limit of a queue: at most that many
    /// of its runs are `running` at once, across every engine sharing the file.
    SetQueueLimit {
        queue: String,
        concurrency: Option<i64>,
    },
    /// Park as `blocked_version` the due pending runs of workflows this build knows by name
    /// (`names_json`) but not at their version (`workflows_json` = known `name@version`s).
    /// A build that has the version unparks them in its claim (see `Claim`).
    ParkUnknownVersions {
        names_json: Arc<str>,
        workflows_json: Arc<str>,
        limit: i64,
    },
    /// Create or replace a schedule (`next_due` = its first due time).
    PutSchedule(super::feature_ops::ScheduleRow),
    /// Fire a schedule for `due`: only if its `next_due` is still `due`, move it to `next`
    /// and enqueue `run` (idempotency key `sched:NAME:DUE`), in one transaction.
    FireSchedule {
        name: String,
        due: i64,
        next: i64,
        run: NewRun,
    },
}

/// What a command returns.
#[derive(Debug)]
pub enum Done {
    Unit,
    Run {
        id: i64,
        created: bool,
    },
    Runs(Vec<(i64, bool)>),
    Claimed(Vec<Claimed>),
    Count(usize),
    Reclaimed(bool),
    /// Answer of `AwaitEvent` / `AwaitChild`.
    Awaited(super::feature_ops::Awaited),
    /// Answer of `Cancel`: the run's status afterwards.
    Cancel {
        status: String,
    },
    /// Answer of `SendEvent`.
    Sent {
        event_id: i64,
        woke: bool,
    },
}

pub(crate) fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(context, e)
}

pub(crate) fn fenced(changed: usize, fence: &Fence) -> StoreResult<Done> {
    if changed == 1 {
        Ok(Done::Unit)
    } else {
        Err(StoreError::LeaseLost {
            run_id: fence.run_id,
            epoch: fence.epoch,
        })
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
/// claim). Checked by tests/query_plans.rs.
pub const CLAIM_SQL: &str = "UPDATE runs SET status = 'running', owner = ?1, epoch = epoch + 1,
                            lease_expires_at = ?2, updated_at = ?3, note = NULL
                     WHERE id IN (SELECT id FROM runs INDEXED BY runs_claim
                                  WHERE status = 'pending'
                                    AND (workflow || '@' || version) IN (SELECT value FROM json_each(?4))
                                    AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = runs.queue)
                                  ORDER BY priority DESC, ready_at, id LIMIT ?5)
                     RETURNING id, workflow, version, input, epoch, interruptions, deadline_at, cancel_requested";

/// Decode one row of a claim's `RETURNING id, workflow, version, input, epoch,
/// interruptions, deadline_at, cancel_requested`, leniently: a column of the wrong type makes this row
/// `Err((run_id, reason))` instead of failing the claim of every other run.
pub(crate) fn claimed_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<Claimed, (i64, String)>> {
    use super::queries::decode::{blob, int, opt_int, text};
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
        })
        // Read again right after the claim (Features::admit): checked here so a bad value
        // parks the run instead of failing that read, releasing the run, claiming it again.
        .and_then(|c| int(r, 7, "runs.cancel_requested").map(|_| c))
    })();
    Ok(decoded.map_err(|e: super::queries::decode::BadColumn| (run_id, e.to_string())))
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

pub(crate) const FENCE: &str = "id = ?1 AND owner = ?2 AND epoch = ?3 AND status = 'running'";

/// Apply one command inside the writer's open transaction. `now` is the batch's wall time (ms).
pub fn apply(conn: &Connection, op: Op, now: i64) -> StoreResult<Done> {
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
        Op::Enqueue(run) => {
            let (id, created) = enqueue(conn, &run, now)?;
            Ok(Done::Run { id, created })
        }
        Op::EnqueueMany(runs) => {
            let mut out = Vec::with_capacity(runs.len());
            for run in &runs {
                out.push(enqueue(conn, run, now)?);
            }
            Ok(Done::Runs(out))
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
            super::feature_ops::unpark_known_versions(conn, &workflows_json, now)?;
            // Queues with a concurrency limit first (bounded by their limits), then the rest.
            let mut limited = super::feature_ops::claim_limited(
                conn,
                &owner,
                limit,
                &workflows_json,
                lease_ms,
                now,
            )?;
            let limit = limit - limited.len() as i64;
            let mut stmt = conn
                .prepare_cached(CLAIM_SQL)
                .map_err(sql("preparing the claim"))?;
            let rows = stmt
                .query_map(
                    params![&*owner, now + lease_ms, now, &*workflows_json, limit],
                    claimed_row,
                )
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(sql("claiming runs"))?;
            drop(stmt);
            let rows = park_undecodable(conn, &owner, rows, now)?;
            limited.extend(rows);
            Ok(Done::Claimed(limited))
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
        Op::Checkpoint { fence, entry } => {
            let n = conn
                .prepare_cached(&format!(
                    "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error, recorded_at)
                     SELECT ?1, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
                     WHERE EXISTS (SELECT 1 FROM runs WHERE {FENCE})"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        fence.run_id,
                        &*fence.owner,
                        fence.epoch,
                        entry.seq,
                        entry.name,
                        entry.kind,
                        if entry.completed { "completed" } else { "failed" },
                        entry.attempts,
                        entry.output,
                        entry.error,
                        now
                    ])
                })
                .map_err(|e| match &e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        StoreError::JournalConflict { run_id: fence.run_id, seq: entry.seq }
                    }
                    _ => StoreError::sqlite("recording a step checkpoint", e),
                })?;
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
            let n = conn
                .prepare_cached(&format!(
                    "INSERT OR IGNORE INTO attempts(run_id, seq, attempt, name, owner, epoch, pid, pid_start, started_at)
                     SELECT ?1, ?4, ?5, ?6, ?2, ?3, ?7, ?8, ?9
                     WHERE EXISTS (SELECT 1 FROM runs WHERE {FENCE})"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        fence.run_id, &*fence.owner, fence.epoch, seq, attempt, name,
                        pid, pid_start.map(|p| p as i64), now
                    ])
                })
                .map_err(sql("recording a step attempt"))?;
            fenced(n, &fence)
        }
        Op::AttemptEnd {
            fence,
            seq,
            attempt,
            outcome,
            reason,
        } => {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE attempts SET ended_at = ?7, outcome = ?6, reason = ?8
                     WHERE run_id = ?1 AND seq = ?4 AND attempt = ?5 AND outcome IS NULL
                       AND EXISTS (SELECT 1 FROM runs WHERE {FENCE})"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        fence.run_id,
                        &*fence.owner,
                        fence.epoch,
                        seq,
                        attempt,
                        outcome,
                        now,
                        reason
                    ])
                })
                .map_err(sql("ending a step attempt"))?;
            if n == 0 {
                // Either the lease is gone or the attempt row was never written (in-process
                // steps record attempts only when they fail): insert it, still fenced.
                let n = conn
                    .prepare_cached(&format!(
                        "INSERT OR IGNORE INTO attempts(run_id, seq, attempt, name, owner, epoch, started_at, ended_at, outcome, reason)
                         SELECT ?1, ?4, ?5, '', ?2, ?3, ?7, ?7, ?6, ?8
                         WHERE EXISTS (SELECT 1 FROM runs WHERE {FENCE})"
                    ))
                    .and_then(|mut s| {
                        s.execute(params![fence.run_id, &*fence.owner, fence.epoch, seq, attempt, outcome, now, reason])
                    })
                    .map_err(sql("ending a step attempt"))?;
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
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE attempts SET logs = ?6, memory_cap = ?7
                     WHERE run_id = ?1 AND seq = ?4 AND attempt = ?5
                       AND EXISTS (SELECT 1 FROM runs WHERE {FENCE})"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        fence.run_id,
                        &*fence.owner,
                        fence.epoch,
                        seq,
                        attempt,
                        logs,
                        memory_cap
                    ])
                })
                .map_err(sql("recording a step attempt's logs"))?;
            fenced(n, &fence)
        }
        Op::Complete { fence, output } => {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE runs SET status = 'completed', output = ?4, error = NULL, owner = NULL,
                            lease_expires_at = NULL, finished_at = ?5, updated_at = ?5 WHERE {FENCE}"
                ))
                .and_then(|mut s| s.execute(params![fence.run_id, &*fence.owner, fence.epoch, output, now]))
                .map_err(sql("completing a run"))?;
            fenced(n, &fence)
        }
        Op::Fail { fence, error } => {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE runs SET status = 'failed', error = ?4, owner = NULL,
                            lease_expires_at = NULL, finished_at = ?5, updated_at = ?5 WHERE {FENCE}"
                ))
                .and_then(|mut s| s.execute(params![fence.run_id, &*fence.owner, fence.epoch, error, now]))
                .map_err(sql("failing a run"))?;
            fenced(n, &fence)
        }
        Op::Suspend { fence, until, note } => {
            suspend(conn, &fence, until, &note, now)?;
            Ok(Done::Unit)
        }
        Op::Release { fence } => {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE runs SET status = 'pending', owner = NULL, lease_expires_at = NULL,
                            updated_at = ?4 WHERE {FENCE}"
                ))
                .and_then(|mut s| s.execute(params![fence.run_id, &*fence.owner, fence.epoch, now]))
                .map_err(sql("releasing a run"))?;
            fenced(n, &fence)
        }
        Op::Block {
            fence,
            status,
            note,
        } => {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE runs SET status = ?4, note = ?5, owner = NULL, lease_expires_at = NULL,
                            updated_at = ?6 WHERE {FENCE}"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        fence.run_id,
                        &*fence.owner,
                        fence.epoch,
                        status,
                        note,
                        now
                    ])
                })
                .map_err(sql("blocking a run"))?;
            fenced(n, &fence)
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
        Op::Resume { run_id } => {
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET status = 'pending', note = NULL, ready_at = ?2, updated_at = ?2
                     WHERE id = ?1 AND status IN ('blocked', 'blocked_version')",
                )
                .and_then(|mut s| s.execute(params![run_id, now]))
                .map_err(sql("resuming a run"))?;
            if n == 0 {
                return Err(StoreError::NotFound { run_id });
            }
            Ok(Done::Unit)
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
        op @ (Op::Timer { .. }
        | Op::AwaitEvent { .. }
        | Op::SendEvent { .. }
        | Op::Cancel { .. }
        | Op::FinishCancelled { .. }
        | Op::StartChild { .. }
        | Op::AwaitChild { .. }
        | Op::ExpireDeadlines { .. }
        | Op::Purge { .. }
        | Op::IncrementalVacuum { .. }
        | Op::SetQueueLimit { .. }
        | Op::ParkUnknownVersions { .. }
        | Op::PutSchedule(_)
        | Op::FireSchedule { .. }) => super::feature_ops::apply(conn, op, now),
    }
}

/// Fence the incarnation `owner` for a reclaim judged on heartbeat value `judged_beat`:
/// true if the reclaim may go on (the fence holds: the counter did not move since the
/// judgement, or the owner still has no engine row when none was judged).
fn fence_incarnation(
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
fn reclaim(
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

pub(crate) fn enqueue(conn: &Connection, run: &NewRun, now: i64) -> StoreResult<(i64, bool)> {
    if let Some(key) = &run.idempotency_key {
        let existing: Option<i64> = conn
            .prepare_cached("SELECT id FROM runs WHERE idempotency_key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(sql("looking up an idempotency key"))?;
        if let Some(id) = existing {
            return Ok((id, false));
        }
    }
    let ready_at = run.ready_at.unwrap_or(now);
    let status = if ready_at > now {
        "suspended"
    } else {
        "pending"
    };
    conn.prepare_cached(
        "INSERT INTO runs(workflow, version, input, status, idempotency_key, queue, priority,
                          ready_at, parent_id, deadline_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            run.workflow,
            run.version,
            run.input,
            status,
            run.idempotency_key,
            run.queue,
            run.priority,
            ready_at,
            run.parent_id,
            run.deadline_at,
            now
        ])
    })
    .map_err(sql("enqueueing a run"))?;
    Ok((conn.last_insert_rowid(), true))
}

/// running -> suspended until `until` (fenced). Shared by retries, sleeps, event and child
/// waits. A run whose cancel was requested (`cancel_requested = 1`, set by `Cancel` while it
/// ran) is not suspended: the same guarded statement ends it `cancelled`, and its
/// descendants are cancelled with it, so a cancel racing a wait is never lost (nothing
/// polls suspended runs for flags). Answers `true` if the run ended cancelled.
pub(crate) fn suspend(
    conn: &Connection,
    fence: &Fence,
    until: i64,
    note: &str,
    now: i64,
) -> StoreResult<bool> {
    let ended: Option<String> = conn
        .prepare_cached(&format!(
            "UPDATE runs SET
                    status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'suspended' END,
                    ready_at = CASE WHEN cancel_requested = 1 THEN ready_at ELSE ?4 END,
                    note = CASE WHEN cancel_requested = 1 THEN NULL ELSE ?5 END,
                    error = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE error END,
                    finished_at = CASE WHEN cancel_requested = 1 THEN ?6 ELSE finished_at END,
                    owner = NULL, lease_expires_at = NULL, updated_at = ?6
             WHERE {FENCE} RETURNING status"
        ))
        .and_then(|mut s| {
            s.query_row(
                params![fence.run_id, &*fence.owner, fence.epoch, until, note, now],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(sql("suspending a run"))?;
    match ended.as_deref() {
        None => fenced(0, fence).map(|_| false),
        Some("cancelled") => {
            super::feature_ops::cancel_tree(conn, fence.run_id, now)?;
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}
