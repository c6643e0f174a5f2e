//! What a run looks like to an application: its status, its row, its journal entries and
//! its execution attempts, as read from the store. Plain data: reading one never changes
//! anything.

use serde::{Serialize, Serializer};

/// Where a run is in its life. Final: [`Completed`](RunStatus::Completed),
/// [`Failed`](RunStatus::Failed), [`Cancelled`](RunStatus::Cancelled). Parked (waiting
/// for an operator): [`Blocked`](RunStatus::Blocked), [`BlockedVersion`](RunStatus::BlockedVersion).
///
/// ```
/// use waymark::RunStatus;
/// let s: RunStatus = "suspended".parse().unwrap();
/// assert_eq!(s, RunStatus::Suspended);
/// assert!(!s.is_final());
/// assert_eq!(s.as_str(), "suspended");
/// assert!("bogus".parse::<RunStatus>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunStatus {
    /// Ready to be claimed (or waiting for its `ready_at`).
    Pending,
    /// Claimed by an engine, under a lease.
    Running,
    /// Waiting durably: a sleep, an event, a child run or a retry's backoff.
    Suspended,
    /// Finished with an output.
    Completed,
    /// Finished with an error.
    Failed,
    /// Finished by a cancel.
    Cancelled,
    /// Parked: bad data, a non-determinism error or too many interruptions; `resume` sends
    /// it back to `pending`.
    Blocked,
    /// Parked: no engine on the file registers its workflow at its version.
    BlockedVersion,
}

impl RunStatus {
    /// Every status, in the order of a run's life.
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Suspended,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Blocked,
        RunStatus::BlockedVersion,
    ];

    /// The name stored in the database and printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Suspended => "suspended",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Blocked => "blocked",
            RunStatus::BlockedVersion => "blocked_version",
        }
    }

    /// Completed, failed or cancelled: the run never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// Blocked or blocked for its version: it waits for an operator.
    pub fn is_parked(self) -> bool {
        matches!(self, RunStatus::Blocked | RunStatus::BlockedVersion)
    }
}

/// A status name that is not one of [`RunStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStatus(pub String);

impl std::fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let valid: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "unknown run status '{}' (valid: {})",
            self.0,
            valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownStatus {}

impl std::str::FromStr for RunStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for RunStatus {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RunStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<RunStatus> for &str {
    fn eq(&self, other: &RunStatus) -> bool {
        *self == other.as_str()
    }
}

impl Serialize for RunStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl rusqlite::types::FromSql for RunStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = v.as_str()?;
        text.parse()
            .map_err(|e: UnknownStatus| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

/// A run as stored (without its input). Times are milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// The run's id.
    pub id: i64,
    /// Its workflow's registered name.
    pub workflow: String,
    /// Its workflow's version.
    pub version: i64,
    /// Where it is in its life.
    pub status: RunStatus,
    /// The idempotency key it was started with, if any.
    pub idempotency_key: Option<String>,
    /// Its queue (`"default"` unless chosen).
    pub queue: String,
    /// Higher runs first within a queue.
    pub priority: i64,
    /// Journal entries completed.
    pub steps_completed: i64,
    /// When it was started.
    pub created_at: i64,
    /// Its last change.
    pub updated_at: i64,
    /// When it finished, if it did.
    pub finished_at: Option<i64>,
    /// Not claimed before this time (start delay, sleep, retry backoff).
    pub ready_at: i64,
    /// The engine incarnation holding its lease, while running.
    pub owner: Option<String>,
    /// Lease epoch: incremented by every claim and reclaim; fences stale owners.
    pub epoch: i64,
    /// How many times an owner died or stalled while holding it.
    pub interruptions: i64,
    /// Why it was last interrupted.
    pub last_interruption: Option<String>,
    /// Its error, when failed.
    pub error: Option<String>,
    /// Why it waits or is parked, for people.
    pub note: Option<String>,
    /// The run that started it as a child run.
    pub parent_id: Option<i64>,
    /// Its encoded output, when completed.
    #[serde(skip)]
    pub output: Option<Vec<u8>>,
    /// The finished run this run retries or restarts ("retry of run M").
    pub retry_of: Option<i64>,
    /// The newest run started as a retry or restart of this one ("retried as run N").
    pub retried_as: Option<i64>,
}

/// Which runs [`list`](crate::Client::list) returns: every condition set must hold; an
/// empty filter lists every run, oldest first, [`RunFilter::LIMIT_DEFAULT`] at a time.
///
/// Paging: pass the last id of a page as the [`cursor`](RunFilter::after) of the next.
///
/// ```
/// use waymark::{RunFilter, RunStatus};
/// let f = RunFilter::new().status(RunStatus::Failed).workflow("import").limit(50);
/// assert_eq!(f.effective_limit(), 50);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Any of these statuses (empty: any status).
    pub statuses: Vec<RunStatus>,
    /// Runs of this workflow.
    pub workflow: Option<String>,
    /// Runs whose idempotency key starts with this.
    pub key_prefix: Option<String>,
    /// Created at or after this time (ms since the Unix epoch).
    pub created_from_ms: Option<i64>,
    /// Created before this time (ms since the Unix epoch).
    pub created_before_ms: Option<i64>,
    /// Only runs after this id in the listing's order (the last id of the previous page).
    pub cursor: Option<i64>,
    /// Most runs returned (0: [`RunFilter::LIMIT_DEFAULT`]; at most [`RunFilter::LIMIT_MAX`]).
    pub limit: u32,
    /// Newest (highest id) first.
    pub newest_first: bool,
}

impl RunFilter {
    /// Runs returned when no limit is set.
    pub const LIMIT_DEFAULT: u32 = 100;
    /// Most runs one listing returns.
    pub const LIMIT_MAX: u32 = 10_000;

    /// Every run.
    pub fn new() -> Self {
        RunFilter::default()
    }
    /// Also runs with status `status` (call again to add more).
    pub fn status(mut self, status: RunStatus) -> Self {
        self.statuses.push(status);
        self
    }
    /// Only runs of workflow `name`.
    pub fn workflow(mut self, name: impl Into<String>) -> Self {
        self.workflow = Some(name.into());
        self
    }
    /// Only runs whose idempotency key starts with `prefix`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }
    /// Only runs created in `[from_ms, before_ms)` (ms since the Unix epoch; `None`: open).
    pub fn created_between(mut self, from_ms: Option<i64>, before_ms: Option<i64>) -> Self {
        self.created_from_ms = from_ms;
        self.created_before_ms = before_ms;
        self
    }
    /// Continue after run `id` (the last id of the previous page).
    pub fn after(mut self, id: i64) -> Self {
        self.cursor = Some(id);
        self
    }
    /// At most `n` runs.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = n;
        self
    }
    /// Newest first.
    pub fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }
    /// The limit applied: `limit`, or the default when 0, capped at the maximum.
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => Self::LIMIT_DEFAULT,
            n => n.min(Self::LIMIT_MAX),
        }
    }
}

/// A run's status change as the store recorded it (the change log clients watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunChange {
    /// Position in the change log (increasing).
    pub seq: i64,
    /// The run.
    pub run_id: i64,
    /// Its new status (`None`: a status this build does not know).
    pub status: Option<RunStatus>,
    /// When (ms since the Unix epoch).
    pub at: i64,
}

/// One journal entry: a step's (or a durable wait's) recorded result. Write-once.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    /// Sequence number in its run, from 0.
    pub seq: i64,
    /// The step's name (or the wait's description).
    pub name: String,
    /// `step`, `sleep`, `event`, `child`, ...
    pub kind: String,
    /// `completed` or `failed`.
    pub status: String,
    /// Executions it took.
    pub attempts: i64,
    /// Its error, when failed.
    pub error: Option<String>,
    /// When it was recorded.
    pub recorded_at: i64,
    /// Its encoded output, when completed.
    #[serde(skip)]
    pub output: Option<Vec<u8>>,
    /// The run this entry was copied from by a retry or restart (it did not run here).
    pub copied_from: Option<i64>,
}

/// One execution attempt of a step, with where it ran and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    /// The step's sequence number.
    pub seq: i64,
    /// 1 for the first execution.
    pub attempt: i64,
    /// The step's name.
    pub name: String,
    /// The engine incarnation that ran it.
    pub owner: String,
    /// The lease epoch it ran under.
    pub epoch: i64,
    /// The process that ran it (a child step's process), if recorded.
    pub pid: Option<i64>,
    /// That process's start time (clock ticks since boot), to tell a reused pid.
    pub pid_start: Option<i64>,
    /// When it started.
    pub started_at: i64,
    /// When it ended, if recorded.
    pub ended_at: Option<i64>,
    /// Its outcome class (`ok`, `error`, `memory_limit`, ...); none while running or if
    /// its owner died.
    pub outcome: Option<String>,
    /// Why, for people.
    pub reason: Option<String>,
    /// Captured logs of a child-step attempt (head, marker, tail).
    pub logs: Option<String>,
    /// Memory-cap mechanism of a child-step attempt ("cgroup v1 256 MiB", "rlimit data 512 MiB").
    pub memory_cap: Option<String>,
}

/// Which runs a listing shows (every field optional; all given fields must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only runs of this status.
    pub status: Option<RunStatus>,
    /// Only runs of this workflow (exact name).
    pub workflow: Option<String>,
    /// Only runs whose idempotency key starts with this.
    pub key_prefix: Option<String>,
    /// Only runs created at or after this time (ms).
    pub created_from: Option<i64>,
    /// Only runs created before this time (ms).
    pub created_to: Option<i64>,
    /// Only child runs of this run.
    pub parent: Option<i64>,
}

/// An engine incarnation's row, for people (the console's engines page).
#[derive(Debug, Clone, Serialize)]
pub struct EngineInfo {
    /// Incarnation id.
    pub id: String,
    /// Its process id.
    pub pid: Option<i64>,
    /// Where it runs (`boot/pid:[ns]`).
    pub host: Option<String>,
    /// When it started (ms).
    pub started_at: Option<i64>,
    /// Heartbeat counter.
    pub beat: Option<i64>,
    /// When it last beat (ms, its wall clock).
    pub beat_at: Option<i64>,
    /// When it stopped cleanly, if it did.
    pub stopped_at: Option<i64>,
    /// Runs it holds (`running`, owned by it).
    pub runs_held: i64,
}

/// A queue: its limit and what it holds now.
#[derive(Debug, Clone, Serialize)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Most runs running at once (none: unlimited).
    pub limit: Option<i64>,
    /// Runs running now.
    pub running: i64,
    /// Runs pending now.
    pub pending: i64,
}

/// A cron schedule as stored.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleInfo {
    /// Schedule name.
    pub name: String,
    /// Cron expression (UTC).
    pub cron: String,
    /// Workflow it starts.
    pub workflow: String,
    /// When it fires next (ms).
    pub next_due: i64,
    /// One run per missed due time (else one for the latest).
    pub catch_up: bool,
}

/// An event sent to a run.
#[derive(Debug, Clone, Serialize)]
pub struct EventInfo {
    /// Event id.
    pub id: i64,
    /// Event name.
    pub name: String,
    /// When it was sent (ms).
    pub sent_at: i64,
    /// The journal entry that received it, once consumed.
    pub consumed_seq: Option<i64>,
    /// Its stored (sealed) payload.
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Attempts of one step name with one outcome, with their durations bucketed (for a
/// Prometheus histogram). Attempts that never ended are counted with outcome `none`.
#[derive(Debug, Clone, Serialize)]
pub struct StepDurations {
    /// Step name.
    pub name: String,
    /// Outcome class (`ok`, `error`, ...; `none`: never ended).
    pub outcome: String,
    /// Cumulative counts of ended attempts at or under each of [`DURATION_BUCKETS_MS`].
    pub buckets: Vec<i64>,
    /// Ended attempts.
    pub count: i64,
    /// Sum of their durations (ms).
    pub sum_ms: i64,
}

/// Upper bounds (ms) of the step-duration histogram buckets.
pub const DURATION_BUCKETS_MS: [i64; 9] = [5, 25, 100, 250, 1_000, 5_000, 30_000, 120_000, 600_000];

/// Totals over the whole file, for metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunTotals {
    /// Sum of every run's interruptions (an owner died or stalled: a reclaim).
    pub interruptions: i64,
    /// Attempts that never ended and whose run no longer runs them (interrupted).
    pub attempts_interrupted: i64,
    /// Engines not stopped whose heartbeat is recent.
    pub engines_live: i64,
}
