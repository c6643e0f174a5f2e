//! Every change to run state, as guarded SQL, applied by the writer thread: the commands
//! ([`Op`]), their answers ([`Done`]), the guards and the fenced helpers here; each family
//! of transitions in its own file (`leases`, `runs`, `waits`, `cancel`, `admin`). Nothing
//! else in the crate writes to the database.
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
//!
//! Invariants of the durable waits (`waits`, `cancel`):
//! - The fence is checked first and a miss is `LeaseLost` with nothing written.
//! - Consuming an event and journaling it happen in one command: an event is delivered into
//!   exactly one journal entry (`events.consumed_seq`), or stays unconsumed.
//! - A run that parks itself (event, child) is suspended *in the same command* that found
//!   nothing to deliver, so a `SendEvent` or a child's completion committed afterwards always
//!   sees it suspended and wakes it (`ready_at = now`).
//! - Suspension notes name what a run waits for; wake-ups match on them exactly.

mod admin;
mod cancel;
mod leases;
mod runs;
mod waits;

pub use leases::{CLAIM_ONE_SQL, CLAIM_SQL, HEARTBEAT_SQL, WAKE_SQL};
pub use waits::{child_note, event_note};

// Shared between families (each family reaches them through `use super::*`).
use cancel::{cancel_tree, finish_cancelled};
use runs::{enqueue, suspend};

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

impl NewRun {
    /// A run of `workflow` at `version` with `input`, due now, in the default queue at
    /// priority 0, with no key, parent or deadline (set the fields for anything else).
    pub fn new(workflow: &str, version: i64, input: Vec<u8>) -> NewRun {
        NewRun {
            workflow: workflow.into(),
            version,
            input,
            idempotency_key: None,
            queue: "default".into(),
            priority: 0,
            ready_at: None,
            parent_id: None,
            deadline_at: None,
        }
    }
}

/// What starting a run does when its idempotency key already names a run.
///
/// The same workflow with the same input bytes always returns the existing run (starting
/// twice is harmless); this policy decides the case of a *different* input or workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnKeyConflict {
    /// Fail with `KeyConflict { key, existing_run }`; nothing is started (the default).
    #[default]
    Error,
    /// Return the existing run's id, ignoring the new input.
    ReturnExisting,
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
    /// A cancel was requested (read in the claim's own transaction).
    pub cancel_requested: bool,
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

/// How an execution slice of a claimed run ends (each a fenced transition).
#[derive(Debug)]
pub enum Ending {
    /// The workflow returned this output.
    Complete(Vec<u8>),
    /// The run failed with this error.
    Fail(String),
    /// Suspended until a time (a retry's backoff).
    Suspend { until: i64, note: String },
    /// Given back to `pending` (shutdown, lease expiry, storage failure).
    Release,
    /// Parked (`blocked` or `blocked_version`) with a note.
    Block { status: &'static str, note: String },
    /// Ended `cancelled` with a reason.
    Cancelled(String),
}

impl Ending {
    /// The command that records this ending for `fence`.
    pub fn into_op(self, fence: Fence) -> Op {
        match self {
            Ending::Complete(output) => Op::Complete { fence, output },
            Ending::Fail(error) => Op::Fail { fence, error },
            Ending::Suspend { until, note } => Op::Suspend { fence, until, note },
            Ending::Release => Op::Release { fence },
            Ending::Block { status, note } => Op::Block {
                fence,
                status,
                note,
            },
            Ending::Cancelled(reason) => Op::FinishCancelled { fence, reason },
        }
    }
}

/// A claim for an owner made in the same transaction as another change (a worker that
/// just ended a run claims its next one).
#[derive(Debug, Clone)]
pub struct ClaimNext {
    pub owner: Arc<str>,
    pub limit: i64,
    pub workflows_json: Arc<str>,
    pub lease_ms: i64,
    /// Also wake due suspended runs and unpark known versions first, as `Op::Claim` does
    /// (the caller does it every poll interval, not at every claim).
    pub sweep: bool,
    /// Claim only the runs the batch's `Start` just created (if claimable: pending, a
    /// registered workflow, a queue without a limit), not the next runs in claim order.
    /// A targeted claim is one row lookup; a claim in order walks past every pending run
    /// of a workflow this engine lacks (measured: 100,000 starts of an unregistered
    /// workflow on an engine with idle workers slowed to a crawl).
    pub only_started: bool,
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
#[derive(Debug, Clone)]
pub enum Op {
    RegisterEngine(EngineRow),
    StopEngine {
        owner: Arc<str>,
    },
    Enqueue(NewRun),
    EnqueueMany(Vec<NewRun>),
    /// Start runs (one transaction), each with its key-conflict policy: a key naming a run
    /// of another workflow or input is `KeyConflict` under [`OnKeyConflict::Error`].
    Start(Vec<(NewRun, OnKeyConflict)>),
    /// Start a new run from a finished one: same workflow, version, input, queue and
    /// priority, `retry_of` = the old run; its journal starts with copies of the old run's
    /// entries before `from_seq` (all entries before the first failed one when `None`).
    /// Nothing of the old run changes; the children its copied `child` entries name (if
    /// still its own) become the new run's (`parent_id`). Answers `Done::Run`.
    Retry {
        run_id: i64,
        from_seq: Option<i64>,
    },
    /// Wake due suspended runs, then claim up to `limit` pending runs whose
    /// `workflow@version` is in `workflows_json` (a JSON array).
    Claim {
        owner: Arc<str>,
        limit: i64,
        workflows_json: Arc<str>,
        lease_ms: i64,
    },
    /// Apply `ops` in order as one unit (the first error is the answer and nothing of
    /// them is written), then, if they all applied, claim `next` in its own savepoint (a
    /// failing claim is logged and claims nothing; it never undoes `ops`). Answers
    /// `Done::Batch` (no claimed run without `next`). Used to record deferred checkpoints with a
    /// run's ending and to let the worker that ended a run claim its next one, in one
    /// commit instead of three.
    Batch {
        ops: Vec<Op>,
        next: Option<ClaimNext>,
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
    ///
    /// With `upto`, only an event with id <= `upto` is delivered (the one the caller read
    /// and checked); an unconsumed event it has not seen (any, with `upto = None`) makes the
    /// run look again at once (suspended with `ready_at = now`) instead of being delivered.
    AwaitEvent {
        fence: Fence,
        seq: i64,
        name: String,
        deadline: i64,
        upto: Option<i64>,
    },
    /// Set aside event `event_id` (its payload does not decode as the type the run waits
    /// for: `consumed_seq = 0`, never delivered) and park the run `blocked` with `note`.
    /// One transaction, fenced.
    RejectEvent {
        fence: Fence,
        event_id: i64,
        note: String,
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
    PutSchedule(super::write::ScheduleRow),
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
    Awaited(super::write::Awaited),
    /// Answer of `Cancel`: the run's status afterwards.
    Cancel {
        status: String,
    },
    /// Answer of `SendEvent`.
    Sent {
        event_id: i64,
        woke: bool,
    },
    /// Answer of `Batch`: each command's answer in order, and the runs claimed after them.
    Batch {
        answers: Vec<Done>,
        claimed: Vec<Claimed>,
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

pub(crate) const FENCE: &str = "id = ?1 AND owner = ?2 AND epoch = ?3 AND status = 'running'";

/// What an `AwaitEvent` or `AwaitChild` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaited {
    /// Delivered and journaled: the payload (event JSON, or the child's encoded output).
    Delivered(Vec<u8>),
    /// Journaled as failed: the wait timed out, or the child failed or was cancelled.
    Failed(String),
    /// Nothing yet: the run is now suspended, or pending to look again at an event it has
    /// not checked (the caller must stop and write nothing more).
    Waiting,
    /// A cancel was requested: the run (and its descendants) ended `cancelled` in this
    /// command instead (the caller must stop and write nothing more).
    Cancelled,
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
         WHERE next_due <= ?1 ORDER BY next_due LIMIT +?2",
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
pub(super) fn check_fence(conn: &Connection, fence: &Fence) -> StoreResult<bool> {
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

pub(super) struct NewEntry<'a> {
    seq: i64,
    name: &'a str,
    kind: &'static str,
    completed: bool,
    output: Option<&'a [u8]>,
    error: Option<&'a str>,
}

/// Insert a journal entry (write-once). The caller checked the fence in this transaction.
pub(super) fn insert_entry(
    conn: &Connection,
    run_id: i64,
    e: NewEntry<'_>,
    now: i64,
) -> StoreResult<()> {
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

/// The family of transitions (one file each, in both stores) that applies a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Batch,
    Leases,
    Runs,
    Waits,
    Cancel,
    Admin,
}

impl Op {
    /// Which family applies this command (the one routing both stores use).
    pub fn family(&self) -> Family {
        match self {
            Op::Batch { .. } => Family::Batch,
            Op::RegisterEngine(_)
            | Op::StopEngine { .. }
            | Op::Claim { .. }
            | Op::Heartbeat { .. }
            | Op::Probe { .. }
            | Op::Reclaim { .. }
            | Op::ReclaimMany { .. }
            | Op::NoteUnrunnable { .. }
            | Op::ForgetEngine { .. } => Family::Leases,
            Op::Enqueue(_)
            | Op::EnqueueMany(_)
            | Op::Start(_)
            | Op::Retry { .. }
            | Op::Checkpoint { .. }
            | Op::AttemptStart { .. }
            | Op::AttemptEnd { .. }
            | Op::AttemptDetail { .. }
            | Op::Complete { .. }
            | Op::Fail { .. }
            | Op::Suspend { .. }
            | Op::Release { .. }
            | Op::Block { .. }
            | Op::Resume { .. } => Family::Runs,
            Op::Timer { .. }
            | Op::AwaitEvent { .. }
            | Op::RejectEvent { .. }
            | Op::SendEvent { .. }
            | Op::StartChild { .. }
            | Op::AwaitChild { .. } => Family::Waits,
            Op::Cancel { .. }
            | Op::FinishCancelled { .. }
            | Op::ExpireDeadlines { .. }
            | Op::ParkUnknownVersions { .. } => Family::Cancel,
            Op::Purge { .. }
            | Op::IncrementalVacuum { .. }
            | Op::SetQueueLimit { .. }
            | Op::PutSchedule(_)
            | Op::FireSchedule { .. } => Family::Admin,
        }
    }
}

/// Apply one command inside the writer's open transaction. `now` is the batch's wall time (ms).
pub fn apply(conn: &Connection, op: Op, now: i64) -> StoreResult<Done> {
    match op.family() {
        Family::Batch => match op {
            Op::Batch { ops, next } => batch(conn, ops, next, now),
            _ => Err(StoreError::Internal("a batch that is not Op::Batch".into())),
        },
        Family::Leases => leases::apply(conn, op, now),
        Family::Runs => runs::apply(conn, op, now),
        Family::Waits => waits::apply(conn, op, now),
        Family::Cancel => cancel::apply(conn, op, now),
        Family::Admin => admin::apply(conn, op, now),
    }
}

/// `Op::Batch`: see its docs.
fn batch(conn: &Connection, ops: Vec<Op>, next: Option<ClaimNext>, now: i64) -> StoreResult<Done> {
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        answers.push(apply(conn, op, now)?);
    }
    let Some(next) = next else {
        return Ok(Done::Batch {
            answers,
            claimed: Vec::new(),
        });
    };
    crate::store::writer::cached(conn, "SAVEPOINT claim_next")
        .map_err(sql("opening a savepoint"))?;
    let started: Vec<i64> = if next.only_started {
        answers
            .iter()
            .flat_map(|a| match a {
                Done::Runs(v) => v
                    .iter()
                    .filter(|(_, created)| *created)
                    .map(|(id, _)| *id)
                    .collect(),
                _ => Vec::new(),
            })
            .take(next.limit.max(0) as usize)
            .collect()
    } else {
        Vec::new()
    };
    let claimed = if next.only_started {
        leases::claim_runs(
            conn,
            &next.owner,
            &started,
            &next.workflows_json,
            next.lease_ms,
            now,
        )
        .map(Done::Claimed)
    } else if next.sweep {
        apply(
            conn,
            Op::Claim {
                owner: next.owner,
                limit: next.limit,
                workflows_json: next.workflows_json,
                lease_ms: next.lease_ms,
            },
            now,
        )
    } else {
        leases::claim_ready(
            conn,
            &next.owner,
            next.limit,
            &next.workflows_json,
            next.lease_ms,
            now,
        )
        .map(Done::Claimed)
    };
    match claimed {
        Ok(Done::Claimed(claimed)) => {
            crate::store::writer::cached(conn, "RELEASE claim_next")
                .map_err(sql("releasing a savepoint"))?;
            Ok(Done::Batch { answers, claimed })
        }
        other => {
            if let Err(e) = &other {
                log::warn!("claiming the next run with an ending failed: {e}");
            }
            crate::store::writer::cached(conn, "ROLLBACK TO claim_next")
                .and_then(|()| crate::store::writer::cached(conn, "RELEASE claim_next"))
                .map_err(sql("rolling back a savepoint"))?;
            Ok(Done::Batch {
                answers,
                claimed: Vec::new(),
            })
        }
    }
}
