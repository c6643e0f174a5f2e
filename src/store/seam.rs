//! The storage seam: every guarded transition and every query the engine, the workflow
//! context and the protocol tests need, as one trait with plain Rust types in its
//! signatures (no SQLite type). [`Store`] (SQLite) implements it today; another store
//! (PostgreSQL) implements the same methods with the same guards.
//!
//! Contract of every implementation (what the conformance tests check):
//! - A write for a claimed run is fenced by `(run id, owner, epoch, status = running)`;
//!   zero rows matched is [`StoreError::LeaseLost`] and nothing is written.
//! - Claims and reclaims bump the epoch; a reclaim is guarded by the epoch (and, for a
//!   whole owner, the heartbeat value) the reaper judged, in the same transaction.
//! - Journal entries are write-once: a second entry for `(run, seq)` is
//!   [`StoreError::JournalConflict`].
//! - An answer is given only after the change is durable (committed).
//! - Bad data in one run's rows is [`StoreError::Undecodable`] for that run only.

use super::error::{StoreError, StoreResult};
use super::queries::{self, OwnerRow};
use super::views::{AttemptRow, RunChange, RunFilter, RunRow, StepRow};
use super::views::{
    EngineInfo, EventInfo, QueueInfo, RunQuery, RunTotals, ScheduleInfo, StepDurations,
};
use super::watch::ChangeWatch;
use super::write::OnKeyConflict;
use super::write::{Awaited, ScheduleRow};
use super::write::{ClaimNext, Claimed, Done, Ending, EngineRow, Entry, Fence, NewRun, Op};
use super::Store;
use std::sync::Arc;

/// A run started (or found by its idempotency key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The run's id.
    pub id: i64,
    /// `false` when the idempotency key named an existing run.
    pub created: bool,
}

/// The answer of starting a child run from a running parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStart {
    /// The child exists (created now, or earlier by this same journal entry).
    Started(i64),
    /// A cancel was requested: the child was created already cancelled and the parent
    /// ended `cancelled` in the same transaction.
    ParentCancelled,
}

/// The answer of sending an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The event's id.
    pub event_id: i64,
    /// A run waiting for it was woken.
    pub woke: bool,
}

/// Every transition and query, one method each. See the module docs for the contract.
pub trait Storage: Send + Sync + std::fmt::Debug {
    // ---- engines and leases
    /// Record a new engine incarnation.
    fn register_engine(&self, engine: EngineRow) -> StoreResult<()>;
    /// Mark an incarnation stopped (clean shutdown).
    fn stop_engine(&self, owner: &Arc<str>) -> StoreResult<()>;
    /// Delete a stopped incarnation that holds nothing.
    fn forget_engine(&self, id: &str) -> StoreResult<()>;
    /// Renew the leases of `owner` and bump its heartbeat; the number of runs renewed.
    /// A fenced (stopped) incarnation gets `LeaseLost`.
    fn heartbeat(&self, owner: &Arc<str>, lease_ms: i64) -> StoreResult<usize>;
    /// A write that changes nothing visible, to learn whether storage works again.
    fn probe(&self, owner: &Arc<str>) -> StoreResult<()>;
    /// Claim up to `limit` due runs of the workflows in `workflows_json` for `owner`.
    fn claim(
        &self,
        owner: &Arc<str>,
        limit: i64,
        workflows_json: &Arc<str>,
        lease_ms: i64,
    ) -> StoreResult<Vec<Claimed>>;
    /// Take back run `run_id` from a dead owner if it is still at `epoch`.
    fn reclaim(
        &self,
        run_id: i64,
        epoch: i64,
        reason: String,
        poison_limit: i64,
    ) -> StoreResult<bool>;
    /// Take back `runs` of a dead `owner` if its heartbeat still equals `judged_beat`,
    /// fencing the incarnation in the same transaction; each run with whether it was taken.
    fn reclaim_many(
        &self,
        owner: &Arc<str>,
        judged_beat: Option<i64>,
        runs: Vec<(i64, i64)>,
        reason: String,
        poison_limit: i64,
    ) -> StoreResult<Vec<(i64, bool)>>;

    // ---- runs
    /// Start a run (idempotent by key).
    fn enqueue(&self, run: NewRun) -> StoreResult<Started>;
    /// Start many runs in one transaction.
    fn enqueue_many(&self, runs: Vec<NewRun>) -> StoreResult<Vec<Started>>;
    /// Start runs in one transaction, each under its key-conflict policy; a conflict under
    /// [`OnKeyConflict::Error`] is [`StoreError::KeyConflict`] and starts none of them.
    fn start_runs(&self, runs: Vec<(NewRun, OnKeyConflict)>) -> StoreResult<Vec<Started>>;
    /// [`Storage::start_runs`], then in the same commit claim as `next` says (an engine
    /// with an idle worker starts a run already claimed: no separate claim commit). A
    /// failing claim claims nothing and undoes nothing else.
    fn start_runs_claiming(
        &self,
        runs: Vec<(NewRun, OnKeyConflict)>,
        next: ClaimNext,
    ) -> StoreResult<(Vec<Started>, Vec<Claimed>)>;
    /// A new run from finished run `run_id` whose journal starts with copies of its entries
    /// before `from_seq` (before its first failed entry when `None`); the old run is not
    /// changed. [`StoreError::RunNotFinished`] unless it is completed, failed or cancelled.
    fn retry(&self, run_id: i64, from_seq: Option<i64>) -> StoreResult<i64>;
    /// Journal a step's result (fenced, write-once).
    fn checkpoint(&self, fence: &Fence, entry: Entry) -> StoreResult<()>;
    /// Record that an attempt of step `seq` runs in `(pid, pid_start)` (fenced).
    #[allow(clippy::too_many_arguments)]
    fn attempt_start(
        &self,
        fence: &Fence,
        seq: i64,
        attempt: i64,
        name: String,
        pid: Option<u32>,
        pid_start: Option<u64>,
    ) -> StoreResult<()>;
    /// Record how an attempt ended (fenced).
    fn attempt_end(
        &self,
        fence: &Fence,
        seq: i64,
        attempt: i64,
        outcome: &'static str,
        reason: String,
    ) -> StoreResult<()>;
    /// Store what an attempt left besides its outcome: its captured logs and the memory-cap
    /// mechanism (fenced).
    fn attempt_detail(
        &self,
        fence: &Fence,
        seq: i64,
        attempt: i64,
        logs: String,
        memory_cap: Option<String>,
    ) -> StoreResult<()>;
    /// Close an attempt in one commit: store its logs and memory-cap mechanism
    /// ([`Storage::attempt_detail`]), then how it ended ([`Storage::attempt_end`]); fenced,
    /// all or none.
    #[allow(clippy::too_many_arguments)]
    fn attempt_close(
        &self,
        fence: &Fence,
        seq: i64,
        attempt: i64,
        outcome: &'static str,
        reason: String,
        logs: String,
        memory_cap: Option<String>,
    ) -> StoreResult<()>;
    /// Record several journal entries in one commit (each write-once, fenced; all or none).
    fn checkpoints(&self, fence: &Fence, entries: Vec<Entry>) -> StoreResult<()>;
    /// End an execution slice in one commit: record `entries` (journal entries whose
    /// checkpoint was deferred to this point), then `ending`, all or none (fenced); then,
    /// if `next` is given, claim up to `next.limit` runs for `next.owner` as
    /// [`Storage::claim`] does. A failing claim claims nothing and undoes nothing else.
    fn finish(
        &self,
        fence: &Fence,
        entries: Vec<Entry>,
        ending: Ending,
        next: Option<ClaimNext>,
    ) -> StoreResult<Vec<Claimed>>;
    /// The run completed with `output` (fenced).
    fn complete(&self, fence: &Fence, output: Vec<u8>) -> StoreResult<()>;
    /// The run failed (fenced).
    fn fail(&self, fence: &Fence, error: String) -> StoreResult<()>;
    /// Suspend the run until `until` (fenced).
    fn suspend(&self, fence: &Fence, until: i64, note: String) -> StoreResult<()>;
    /// Give the run back to `pending` (fenced; shutdown).
    fn release(&self, fence: &Fence) -> StoreResult<()>;
    /// Park the run (`blocked` or `blocked_version`) with a note (fenced).
    fn block(&self, fence: &Fence, status: &'static str, note: String) -> StoreResult<()>;
    /// Send a parked run back to `pending`.
    fn resume(&self, run_id: i64) -> StoreResult<()>;
    /// Note on due runs no engine can run why they wait; the number noted.
    fn note_unrunnable(&self, workflows_json: &Arc<str>, note: String) -> StoreResult<usize>;

    // ---- durable waits, cancellation, children
    /// Journal a timer; `true` when the run stopped here (suspended, or ended cancelled).
    fn timer(
        &self,
        fence: &Fence,
        seq: i64,
        name: String,
        wake: i64,
        suspend: bool,
    ) -> StoreResult<bool>;
    /// Consume event `name` (only event `upto`, the one the caller checked)
    /// into journal entry `seq`, or suspend until `deadline` (when an unchecked event is
    /// there: pending at once, to look again).
    fn await_event(
        &self,
        fence: &Fence,
        seq: i64,
        name: String,
        deadline: i64,
        upto: Option<i64>,
    ) -> StoreResult<Awaited>;
    /// Set event `event_id` aside (never delivered) and park the run `blocked` with `note`.
    fn reject_event(&self, fence: &Fence, event_id: i64, note: String) -> StoreResult<()>;
    /// Send an event to a run.
    fn send_event(&self, run_id: i64, name: String, payload: Vec<u8>) -> StoreResult<Sent>;
    /// Request the run's cancel (and its descendants'); its status afterwards.
    fn cancel(&self, run_id: i64) -> StoreResult<String>;
    /// End a running run `cancelled` (fenced).
    fn finish_cancelled(&self, fence: &Fence, reason: String) -> StoreResult<()>;
    /// Start child run `run` from journal entry `seq` (fenced).
    fn start_child(
        &self,
        fence: &Fence,
        seq: i64,
        name: String,
        run: NewRun,
    ) -> StoreResult<ChildStart>;
    /// Consume child `child_id`'s end into journal entry `seq`, or suspend until it ends.
    fn await_child(
        &self,
        fence: &Fence,
        seq: i64,
        name: String,
        child_id: i64,
    ) -> StoreResult<Awaited>;
    /// Fail up to `limit` pending or suspended runs past their deadline; how many.
    fn expire_deadlines(&self, limit: i64) -> StoreResult<usize>;
    /// Park due runs of known workflows at versions nobody registers; how many.
    fn park_unknown_versions(
        &self,
        names_json: &Arc<str>,
        workflows_json: &Arc<str>,
        limit: i64,
    ) -> StoreResult<usize>;

    // ---- administration
    /// Delete up to `limit` runs finished before `before`; how many.
    fn purge(&self, before: i64, limit: i64) -> StoreResult<usize>;
    /// Give up to `pages` free pages back to the file system; the free pages left.
    fn incremental_vacuum(&self, pages: i64) -> StoreResult<usize>;
    /// Limit (or unlimit) how many runs of `queue` run at once.
    fn set_queue_limit(&self, queue: String, concurrency: Option<i64>) -> StoreResult<()>;
    /// Save a schedule.
    fn put_schedule(&self, row: ScheduleRow) -> StoreResult<()>;
    /// Fire schedule `name` at `due` (guarded by `next_due = due`), moving it to `next`;
    /// the run started, or `None` when another engine fired it first.
    fn fire_schedule(
        &self,
        name: String,
        due: i64,
        next: i64,
        run: NewRun,
    ) -> StoreResult<Option<Started>>;

    // ---- queries
    /// The run with this id.
    fn run(&self, run_id: i64) -> StoreResult<Option<RunRow>>;
    /// Up to `limit` runs after id `after`, optionally of one status.
    fn runs_page(&self, status: Option<&str>, after: i64, limit: i64) -> StoreResult<Vec<RunRow>>;
    /// Runs matching `filter`.
    fn list(&self, filter: &RunFilter) -> StoreResult<Vec<RunRow>>;
    /// Does run `run_id` exist?
    fn run_exists(&self, run_id: i64) -> StoreResult<bool>;
    /// The stored input of run `run_id` (`None`: no such run).
    fn run_input(&self, run_id: i64) -> StoreResult<Option<Vec<u8>>>;
    /// Up to `limit` run state changes after change `after`.
    fn changes(&self, after: i64, limit: i64) -> StoreResult<Vec<RunChange>>;
    /// The newest change's position (0 when none).
    fn last_change(&self) -> StoreResult<i64>;
    /// A watch that blocks until the database may have changed.
    fn watch(&self) -> StoreResult<Box<dyn ChangeWatch>>;
    /// The oldest unconsumed event `name` of a run: `(event id, payload)`.
    fn next_event(&self, run_id: i64, name: &str) -> StoreResult<Option<(i64, Vec<u8>)>>;
    /// The run's journal.
    fn journal(&self, run_id: i64) -> StoreResult<Vec<StepRow>>;
    /// The run's attempts.
    fn attempts(&self, run_id: i64) -> StoreResult<Vec<AttemptRow>>;
    /// The run's attempts that never ended but ran in a recorded process.
    fn open_attempts(&self, run_id: i64) -> StoreResult<Vec<AttemptRow>>;
    /// Runs per status.
    fn stats(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Engines holding runs, with their liveness facts.
    fn owners(&self) -> StoreResult<Vec<OwnerRow>>;
    /// Stopped engines holding nothing.
    fn idle_engines(&self) -> StoreResult<Vec<OwnerRow>>;
    /// `(id, epoch)` of the runs `owner` holds.
    fn runs_of_owner(&self, owner: &str) -> StoreResult<Vec<(i64, i64)>>;
    /// Where engine incarnation `id` runs (`boot/pid:[ns]`).
    fn engine_host(&self, id: &str) -> StoreResult<Option<String>>;
    /// Does the fence still hold (read, no write)?
    fn fence_holds(&self, fence: &Fence) -> StoreResult<bool>;
    /// Is any run claimable now by an engine with these workflows?
    fn claimable(&self, now: i64, workflows_json: &str) -> StoreResult<bool>;
    /// Was a cancel requested for the run?
    fn cancel_requested(&self, run_id: i64) -> StoreResult<bool>;
    /// Parked runs with a cancel requested (at most `limit`).
    fn parked_cancel_requests(&self, limit: i64) -> StoreResult<Vec<i64>>;
    /// Runs `owner` holds with a cancel requested.
    fn running_cancel_requests(&self, owner: &str) -> StoreResult<Vec<(i64, i64)>>;
    /// Is a due run of a known workflow at an unknown version waiting?
    fn pending_unknown_versions(
        &self,
        now: i64,
        names_json: &str,
        workflows_json: &str,
    ) -> StoreResult<bool>;
    /// Has a pending or suspended run passed its deadline?
    fn deadlines_passed(&self, now: i64) -> StoreResult<bool>;
    /// Schedules due at `now` (at most `limit`).
    fn due_schedules(&self, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRow>>;
    /// How many runs finished in `[from, before)` (ms).
    fn finished_between(&self, from: i64, before: i64) -> StoreResult<u64>;
    /// Commits and commands written since this store was opened (for benches and metrics).
    fn write_stats(&self) -> (u64, u64);
    /// Can engines on several hosts share this store? (An SQLite file: no, it lives on one
    /// host, so another boot id in it is an earlier boot. PostgreSQL: yes.)
    fn spans_hosts(&self) -> bool {
        false
    }

    // ---- queries for people (the console)
    /// Up to `limit` runs matching `filter`, newest first, ids below `before`.
    fn runs_filtered(
        &self,
        filter: &RunQuery,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<RunRow>>;
    /// Every engine incarnation with the runs it holds.
    fn engines(&self) -> StoreResult<Vec<EngineInfo>>;
    /// Queues with their limits and usage.
    fn queues(&self) -> StoreResult<Vec<QueueInfo>>;
    /// Schedules with their next due time.
    fn schedules(&self) -> StoreResult<Vec<ScheduleInfo>>;
    /// Events sent to a run.
    fn events_of(&self, run_id: i64) -> StoreResult<Vec<EventInfo>>;
    /// Attempt durations by step name and outcome.
    fn step_durations(&self) -> StoreResult<Vec<StepDurations>>;
    /// Interruptions, interrupted attempts and live engines (beat within `live_ms`).
    fn run_totals(&self, now: i64, live_ms: i64) -> StoreResult<RunTotals>;
}

pub(crate) fn unexpected<T>(op: &'static str, done: Done) -> StoreResult<T> {
    Err(StoreError::Internal(format!(
        "{op}: unexpected answer {done:?}"
    )))
}

/// Apply `op` and expect the plain answer.
/// One fenced `Checkpoint` command per journal entry.
pub(crate) fn checkpoint_ops(fence: &Fence, entries: Vec<Entry>) -> Vec<Op> {
    entries
        .into_iter()
        .map(|entry| Op::Checkpoint {
            fence: fence.clone(),
            entry,
        })
        .collect()
}

pub(crate) fn unit(store: &impl Commands, name: &'static str, op: Op) -> StoreResult<()> {
    match store.call(op)? {
        Done::Unit => Ok(()),
        other => unexpected(name, other),
    }
}

pub(crate) fn count(store: &impl Commands, name: &'static str, op: Op) -> StoreResult<usize> {
    match store.call(op)? {
        Done::Count(n) => Ok(n),
        other => unexpected(name, other),
    }
}

pub(crate) fn awaited(store: &impl Commands, name: &'static str, op: Op) -> StoreResult<Awaited> {
    match store.call(op)? {
        Done::Awaited(a) => Ok(a),
        other => unexpected(name, other),
    }
}

/// The write half of [`Storage`] for a store with [`Commands`]: every transition is one
/// [`Op`], so each store implements the guarded SQL of each `Op` once and this mapping
/// from methods to commands is shared.
macro_rules! storage_writes {
    () => {
        fn register_engine(&self, engine: EngineRow) -> StoreResult<()> {
            $crate::store::seam::unit(self, "register_engine", Op::RegisterEngine(engine))
        }
        fn stop_engine(&self, owner: &Arc<str>) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "stop_engine",
                Op::StopEngine {
                    owner: owner.clone(),
                },
            )
        }
        fn forget_engine(&self, id: &str) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "forget_engine",
                Op::ForgetEngine { id: id.to_string() },
            )
        }
        fn heartbeat(&self, owner: &Arc<str>, lease_ms: i64) -> StoreResult<usize> {
            $crate::store::seam::count(
                self,
                "heartbeat",
                Op::Heartbeat {
                    owner: owner.clone(),
                    lease_ms,
                },
            )
        }
        fn probe(&self, owner: &Arc<str>) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "probe",
                Op::Probe {
                    owner: owner.clone(),
                },
            )
        }
        fn claim(
            &self,
            owner: &Arc<str>,
            limit: i64,
            workflows_json: &Arc<str>,
            lease_ms: i64,
        ) -> StoreResult<Vec<Claimed>> {
            match self.call(Op::Claim {
                owner: owner.clone(),
                limit,
                workflows_json: workflows_json.clone(),
                lease_ms,
            })? {
                Done::Claimed(v) => Ok(v),
                other => $crate::store::seam::unexpected("claim", other),
            }
        }
        fn reclaim(
            &self,
            run_id: i64,
            epoch: i64,
            reason: String,
            poison_limit: i64,
        ) -> StoreResult<bool> {
            match self.call(Op::Reclaim {
                run_id,
                epoch,
                reason,
                poison_limit,
            })? {
                Done::Reclaimed(b) => Ok(b),
                other => $crate::store::seam::unexpected("reclaim", other),
            }
        }
        fn reclaim_many(
            &self,
            owner: &Arc<str>,
            judged_beat: Option<i64>,
            runs: Vec<(i64, i64)>,
            reason: String,
            poison_limit: i64,
        ) -> StoreResult<Vec<(i64, bool)>> {
            match self.call(Op::ReclaimMany {
                owner: owner.clone(),
                judged_beat,
                runs,
                reason,
                poison_limit,
            })? {
                Done::Runs(v) => Ok(v),
                other => $crate::store::seam::unexpected("reclaim_many", other),
            }
        }
        fn enqueue(&self, run: NewRun) -> StoreResult<Started> {
            match self.call(Op::Enqueue(run))? {
                Done::Run { id, created } => Ok(Started { id, created }),
                other => $crate::store::seam::unexpected("enqueue", other),
            }
        }
        fn enqueue_many(&self, runs: Vec<NewRun>) -> StoreResult<Vec<Started>> {
            match self.call(Op::EnqueueMany(runs))? {
                Done::Runs(v) => Ok(v
                    .into_iter()
                    .map(|(id, created)| Started { id, created })
                    .collect()),
                other => $crate::store::seam::unexpected("enqueue_many", other),
            }
        }
        fn start_runs(&self, runs: Vec<(NewRun, OnKeyConflict)>) -> StoreResult<Vec<Started>> {
            match self.call(Op::Start(runs))? {
                Done::Runs(v) => Ok(v
                    .into_iter()
                    .map(|(id, created)| Started { id, created })
                    .collect()),
                other => $crate::store::seam::unexpected("start_runs", other),
            }
        }
        fn start_runs_claiming(
            &self,
            runs: Vec<(NewRun, OnKeyConflict)>,
            next: ClaimNext,
        ) -> StoreResult<(Vec<Started>, Vec<Claimed>)> {
            match self.call(Op::Batch {
                ops: vec![Op::Start(runs)],
                next: Some(next),
            })? {
                Done::Batch {
                    mut answers,
                    claimed,
                } => match answers.pop() {
                    Some(Done::Runs(v)) => Ok((
                        v.into_iter()
                            .map(|(id, created)| Started { id, created })
                            .collect(),
                        claimed,
                    )),
                    other => $crate::store::seam::unexpected(
                        "start_runs_claiming",
                        other.unwrap_or(Done::Unit),
                    ),
                },
                other => $crate::store::seam::unexpected("start_runs_claiming", other),
            }
        }
        fn retry(&self, run_id: i64, from_seq: Option<i64>) -> StoreResult<i64> {
            match self.call(Op::Retry { run_id, from_seq })? {
                Done::Run { id, .. } => Ok(id),
                other => $crate::store::seam::unexpected("retry", other),
            }
        }
        fn checkpoint(&self, fence: &Fence, entry: Entry) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "checkpoint",
                Op::Checkpoint {
                    fence: fence.clone(),
                    entry,
                },
            )
        }
        fn attempt_start(
            &self,
            fence: &Fence,
            seq: i64,
            attempt: i64,
            name: String,
            pid: Option<u32>,
            pid_start: Option<u64>,
        ) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "attempt_start",
                Op::AttemptStart {
                    fence: fence.clone(),
                    seq,
                    attempt,
                    name,
                    pid,
                    pid_start,
                },
            )
        }
        fn attempt_end(
            &self,
            fence: &Fence,
            seq: i64,
            attempt: i64,
            outcome: &'static str,
            reason: String,
        ) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "attempt_end",
                Op::AttemptEnd {
                    fence: fence.clone(),
                    seq,
                    attempt,
                    outcome,
                    reason,
                },
            )
        }
        fn attempt_detail(
            &self,
            fence: &Fence,
            seq: i64,
            attempt: i64,
            logs: String,
            memory_cap: Option<String>,
        ) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "attempt_detail",
                Op::AttemptDetail {
                    fence: fence.clone(),
                    seq,
                    attempt,
                    logs,
                    memory_cap,
                },
            )
        }
        fn attempt_close(
            &self,
            fence: &Fence,
            seq: i64,
            attempt: i64,
            outcome: &'static str,
            reason: String,
            logs: String,
            memory_cap: Option<String>,
        ) -> StoreResult<()> {
            let ops = vec![
                Op::AttemptDetail {
                    fence: fence.clone(),
                    seq,
                    attempt,
                    logs,
                    memory_cap,
                },
                Op::AttemptEnd {
                    fence: fence.clone(),
                    seq,
                    attempt,
                    outcome,
                    reason,
                },
            ];
            match self.call(Op::Batch { ops, next: None })? {
                Done::Batch { .. } => Ok(()),
                other => $crate::store::seam::unexpected("attempt_close", other),
            }
        }
        fn checkpoints(&self, fence: &Fence, entries: Vec<Entry>) -> StoreResult<()> {
            let ops = $crate::store::seam::checkpoint_ops(fence, entries);
            match self.call(Op::Batch { ops, next: None })? {
                Done::Batch { .. } => Ok(()),
                other => $crate::store::seam::unexpected("checkpoints", other),
            }
        }
        fn finish(
            &self,
            fence: &Fence,
            entries: Vec<Entry>,
            ending: Ending,
            next: Option<ClaimNext>,
        ) -> StoreResult<Vec<Claimed>> {
            let mut ops = $crate::store::seam::checkpoint_ops(fence, entries);
            ops.push(ending.into_op(fence.clone()));
            match self.call(Op::Batch { ops, next })? {
                Done::Batch { claimed, .. } => Ok(claimed),
                other => $crate::store::seam::unexpected("finish", other),
            }
        }
        fn complete(&self, fence: &Fence, output: Vec<u8>) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "complete",
                Op::Complete {
                    fence: fence.clone(),
                    output,
                },
            )
        }
        fn fail(&self, fence: &Fence, error: String) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "fail",
                Op::Fail {
                    fence: fence.clone(),
                    error,
                },
            )
        }
        fn suspend(&self, fence: &Fence, until: i64, note: String) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "suspend",
                Op::Suspend {
                    fence: fence.clone(),
                    until,
                    note,
                },
            )
        }
        fn release(&self, fence: &Fence) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "release",
                Op::Release {
                    fence: fence.clone(),
                },
            )
        }
        fn block(&self, fence: &Fence, status: &'static str, note: String) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "block",
                Op::Block {
                    fence: fence.clone(),
                    status,
                    note,
                },
            )
        }
        fn resume(&self, run_id: i64) -> StoreResult<()> {
            $crate::store::seam::unit(self, "resume", Op::Resume { run_id })
        }
        fn note_unrunnable(&self, workflows_json: &Arc<str>, note: String) -> StoreResult<usize> {
            $crate::store::seam::count(
                self,
                "note_unrunnable",
                Op::NoteUnrunnable {
                    workflows_json: workflows_json.clone(),
                    note,
                },
            )
        }
        fn timer(
            &self,
            fence: &Fence,
            seq: i64,
            name: String,
            wake: i64,
            suspend: bool,
        ) -> StoreResult<bool> {
            match self.call(Op::Timer {
                fence: fence.clone(),
                seq,
                name,
                wake,
                suspend,
            })? {
                Done::Unit => Ok(false),
                Done::Awaited(Awaited::Waiting | Awaited::Cancelled) => Ok(true),
                other => $crate::store::seam::unexpected("timer", other),
            }
        }
        fn await_event(
            &self,
            fence: &Fence,
            seq: i64,
            name: String,
            deadline: i64,
            upto: Option<i64>,
        ) -> StoreResult<Awaited> {
            $crate::store::seam::awaited(
                self,
                "await_event",
                Op::AwaitEvent {
                    fence: fence.clone(),
                    seq,
                    name,
                    deadline,
                    upto,
                },
            )
        }
        fn reject_event(&self, fence: &Fence, event_id: i64, note: String) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "reject_event",
                Op::RejectEvent {
                    fence: fence.clone(),
                    event_id,
                    note,
                },
            )
        }
        fn send_event(&self, run_id: i64, name: String, payload: Vec<u8>) -> StoreResult<Sent> {
            match self.call(Op::SendEvent {
                run_id,
                name,
                payload,
            })? {
                Done::Sent { event_id, woke } => Ok(Sent { event_id, woke }),
                other => $crate::store::seam::unexpected("send_event", other),
            }
        }
        fn cancel(&self, run_id: i64) -> StoreResult<String> {
            match self.call(Op::Cancel { run_id })? {
                Done::Cancel { status } => Ok(status),
                other => $crate::store::seam::unexpected("cancel", other),
            }
        }
        fn finish_cancelled(&self, fence: &Fence, reason: String) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "finish_cancelled",
                Op::FinishCancelled {
                    fence: fence.clone(),
                    reason,
                },
            )
        }
        fn start_child(
            &self,
            fence: &Fence,
            seq: i64,
            name: String,
            run: NewRun,
        ) -> StoreResult<ChildStart> {
            match self.call(Op::StartChild {
                fence: fence.clone(),
                seq,
                name,
                run,
            })? {
                Done::Run { id, .. } => Ok(ChildStart::Started(id)),
                Done::Awaited(Awaited::Cancelled) => Ok(ChildStart::ParentCancelled),
                other => $crate::store::seam::unexpected("start_child", other),
            }
        }
        fn await_child(
            &self,
            fence: &Fence,
            seq: i64,
            name: String,
            child_id: i64,
        ) -> StoreResult<Awaited> {
            $crate::store::seam::awaited(
                self,
                "await_child",
                Op::AwaitChild {
                    fence: fence.clone(),
                    seq,
                    name,
                    child_id,
                },
            )
        }
        fn expire_deadlines(&self, limit: i64) -> StoreResult<usize> {
            $crate::store::seam::count(self, "expire_deadlines", Op::ExpireDeadlines { limit })
        }
        fn park_unknown_versions(
            &self,
            names_json: &Arc<str>,
            workflows_json: &Arc<str>,
            limit: i64,
        ) -> StoreResult<usize> {
            $crate::store::seam::count(
                self,
                "park_unknown_versions",
                Op::ParkUnknownVersions {
                    names_json: names_json.clone(),
                    workflows_json: workflows_json.clone(),
                    limit,
                },
            )
        }
        fn purge(&self, before: i64, limit: i64) -> StoreResult<usize> {
            $crate::store::seam::count(self, "purge", Op::Purge { before, limit })
        }
        fn incremental_vacuum(&self, pages: i64) -> StoreResult<usize> {
            $crate::store::seam::count(self, "incremental_vacuum", Op::IncrementalVacuum { pages })
        }
        fn set_queue_limit(&self, queue: String, concurrency: Option<i64>) -> StoreResult<()> {
            $crate::store::seam::unit(
                self,
                "set_queue_limit",
                Op::SetQueueLimit { queue, concurrency },
            )
        }
        fn put_schedule(&self, row: ScheduleRow) -> StoreResult<()> {
            $crate::store::seam::unit(self, "put_schedule", Op::PutSchedule(row))
        }
        fn fire_schedule(
            &self,
            name: String,
            due: i64,
            next: i64,
            run: NewRun,
        ) -> StoreResult<Option<Started>> {
            match self.call(Op::FireSchedule {
                name,
                due,
                next,
                run,
            })? {
                Done::Count(0) => Ok(None),
                Done::Run { id, created } => Ok(Some(Started { id, created })),
                other => $crate::store::seam::unexpected("fire_schedule", other),
            }
        }
    };
}
pub(crate) use storage_writes;

/// What a store does with a write command: apply it in one transaction and answer after
/// its commit.
pub trait Commands {
    /// Apply `op` and wait for its commit.
    fn call(&self, op: Op) -> StoreResult<Done>;
}

impl Commands for Store {
    fn call(&self, op: Op) -> StoreResult<Done> {
        Store::call(self, op)
    }
}

impl Storage for Store {
    storage_writes!();
    fn run(&self, run_id: i64) -> StoreResult<Option<RunRow>> {
        self.read(|c| queries::run(c, run_id))
    }
    fn runs_page(&self, status: Option<&str>, after: i64, limit: i64) -> StoreResult<Vec<RunRow>> {
        self.read(|c| queries::runs_page(c, status, after, limit))
    }
    fn list(&self, filter: &RunFilter) -> StoreResult<Vec<RunRow>> {
        self.read(|c| queries::list(c, filter))
    }
    fn run_exists(&self, run_id: i64) -> StoreResult<bool> {
        self.read(|c| queries::run_exists(c, run_id))
    }
    fn run_input(&self, run_id: i64) -> StoreResult<Option<Vec<u8>>> {
        self.read(|c| queries::run_input(c, run_id))
    }
    fn changes(&self, after: i64, limit: i64) -> StoreResult<Vec<RunChange>> {
        self.read(|c| queries::changes(c, after, limit))
    }
    fn last_change(&self) -> StoreResult<i64> {
        self.read(queries::last_change)
    }
    fn watch(&self) -> StoreResult<Box<dyn ChangeWatch>> {
        Ok(Box::new(Store::watch(self)?))
    }
    fn next_event(&self, run_id: i64, name: &str) -> StoreResult<Option<(i64, Vec<u8>)>> {
        self.read(|c| queries::next_event(c, run_id, name))
    }
    fn journal(&self, run_id: i64) -> StoreResult<Vec<StepRow>> {
        self.read(|c| queries::journal(c, run_id))
    }
    fn attempts(&self, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
        self.read(|c| queries::attempts(c, run_id))
    }
    fn open_attempts(&self, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
        self.read(|c| queries::open_attempts(c, run_id))
    }
    fn stats(&self) -> StoreResult<Vec<(String, i64)>> {
        self.read(queries::stats)
    }
    fn owners(&self) -> StoreResult<Vec<OwnerRow>> {
        self.read(queries::owners)
    }
    fn idle_engines(&self) -> StoreResult<Vec<OwnerRow>> {
        self.read(queries::idle_engines)
    }
    fn runs_of_owner(&self, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
        self.read(|c| queries::runs_of_owner(c, owner))
    }
    fn engine_host(&self, id: &str) -> StoreResult<Option<String>> {
        self.read(|c| queries::engine_host(c, id))
    }
    fn fence_holds(&self, fence: &Fence) -> StoreResult<bool> {
        self.read(|c| queries::fence_holds(c, fence))
    }
    fn claimable(&self, now: i64, workflows_json: &str) -> StoreResult<bool> {
        self.read(|c| queries::claimable(c, now, workflows_json))
    }
    fn cancel_requested(&self, run_id: i64) -> StoreResult<bool> {
        self.read(|c| queries::cancel_requested(c, run_id))
    }
    fn parked_cancel_requests(&self, limit: i64) -> StoreResult<Vec<i64>> {
        self.read(|c| queries::parked_cancel_requests(c, limit))
    }
    fn running_cancel_requests(&self, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
        self.read(|c| queries::running_cancel_requests(c, owner))
    }
    fn pending_unknown_versions(
        &self,
        now: i64,
        names_json: &str,
        workflows_json: &str,
    ) -> StoreResult<bool> {
        self.read(|c| queries::pending_unknown_versions(c, now, names_json, workflows_json))
    }
    fn deadlines_passed(&self, now: i64) -> StoreResult<bool> {
        self.read(|c| queries::deadlines_passed(c, now))
    }
    fn due_schedules(&self, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRow>> {
        self.read(|c| super::write::due_schedules(c, now, limit))
    }
    fn finished_between(&self, from: i64, before: i64) -> StoreResult<u64> {
        self.read(|c| queries::finished_between(c, from, before))
            .map(|n| n.max(0) as u64)
    }
    fn write_stats(&self) -> (u64, u64) {
        self.writer_stats()
    }
    fn runs_filtered(
        &self,
        filter: &RunQuery,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<RunRow>> {
        self.read(|c| queries::runs_filtered(c, filter, before, limit))
    }
    fn engines(&self) -> StoreResult<Vec<EngineInfo>> {
        self.read(queries::engines)
    }
    fn queues(&self) -> StoreResult<Vec<QueueInfo>> {
        self.read(queries::queues)
    }
    fn schedules(&self) -> StoreResult<Vec<ScheduleInfo>> {
        self.read(queries::schedules)
    }
    fn events_of(&self, run_id: i64) -> StoreResult<Vec<EventInfo>> {
        self.read(|c| queries::events_of(c, run_id))
    }
    fn step_durations(&self) -> StoreResult<Vec<StepDurations>> {
        self.read(queries::step_durations)
    }
    fn run_totals(&self, now: i64, live_ms: i64) -> StoreResult<RunTotals> {
        self.read(|c| queries::run_totals(c, now, live_ms))
    }
}
