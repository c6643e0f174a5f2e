//! Engine configuration, step limits and retry policy. Every bound has a name and a unit.

use crate::outcome::FailureClass;
use crate::store::Synchronous;
use std::path::PathBuf;
use std::time::Duration;

/// Where a step executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// On the worker thread, inside the engine process (no memory cap, cooperative timeout).
    InProcess,
    /// In a fresh child process of the host's own binary, with the step's limits (memory
    /// cap, CPU cap, timeout enforced by killing its process group). The default; needs
    /// `waymark::hook(build_registry);` at the top of the host's `main`.
    Child,
    /// In a warm, long-lived child of the host's binary (one pool per step name, started
    /// with the step's limits), serving many executions over the same pipes. A child is
    /// recycled after `Config::pool_runs_max` executions, after any failed execution, and
    /// when its resident memory passes `Config::pool_rss_max_bytes`. Same classification.
    Pool,
}

/// Resource limits for one step execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLimits {
    /// Memory cap of a child (RLIMIT_DATA, or cgroup memory.max where available).
    pub memory_bytes: Option<u64>,
    /// CPU-seconds cap of a child (RLIMIT_CPU).
    pub cpu_seconds: Option<u64>,
    /// Wall-clock timeout of one execution.
    pub timeout: Option<Duration>,
    /// Largest encoded output / stdout kept.
    pub output_bytes_max: u64,
    /// Stderr kept (head and tail) for diagnosis.
    pub stderr_bytes_max: u64,
}

impl Default for StepLimits {
    fn default() -> Self {
        StepLimits {
            memory_bytes: Some(512 * 1024 * 1024),
            cpu_seconds: None,
            timeout: Some(Duration::from_secs(3600)),
            output_bytes_max: crate::codec::PAYLOAD_BYTES_MAX,
            stderr_bytes_max: 64 * 1024,
        }
    }
}

/// When and how often a failed step is retried. The delay is a timestamp in the
/// database (the run is suspended), never a sleeping thread.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Executions in all, including the first (1 = no retry).
    pub attempts_max: u32,
    /// Delay before the first retry.
    pub backoff_initial: Duration,
    /// Longest delay between two attempts.
    pub backoff_max: Duration,
    /// Each delay is the previous one times this.
    pub backoff_multiplier: f64,
    /// Fraction of the delay randomised (0.0 to 1.0).
    pub jitter: f64,
    /// Failure classes worth retrying. A `StepError` marked permanent is never retried.
    ///
    /// The default retries `StepError`, `Panic`, `Timeout`, `Signal`, `Protocol` and `Spawn`,
    /// but **not** `MemoryLimit` nor `CpuLimit`: a step over its cap fails the same way
    /// again, so retrying it only burns the cap twice more. A step whose use depends on
    /// something outside it (a shared cache, a varying input size) can add them back:
    ///
    /// ```
    /// use waymark::{FailureClass, RetryPolicy};
    /// let mut policy = RetryPolicy::default();
    /// assert!(!policy.retry_on.contains(&FailureClass::MemoryLimit));
    /// policy.retry_on.push(FailureClass::MemoryLimit);
    /// ```
    pub retry_on: Vec<FailureClass>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            backoff_multiplier: 2.0,
            jitter: 0.2,
            retry_on: vec![
                FailureClass::StepError,
                FailureClass::Panic,
                // Not MemoryLimit nor CpuLimit: over its cap, a step fails the same way again.
                FailureClass::Timeout,
                FailureClass::Signal,
                FailureClass::Protocol,
                FailureClass::Spawn,
            ],
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        RetryPolicy {
            attempts_max: 1,
            ..Default::default()
        }
    }

    /// Delay before attempt `next_attempt` (2 = first retry), with jitter from `random`.
    pub fn delay(&self, next_attempt: u32, random: u64) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30) as i32;
        let base = self.backoff_initial.as_secs_f64() * self.backoff_multiplier.powi(exp);
        let base = base.min(self.backoff_max.as_secs_f64());
        let unit = (random % 10_000) as f64 / 10_000.0; // [0, 1)
        let factor = 1.0 - self.jitter.clamp(0.0, 1.0) * unit;
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// Engine configuration. Start from [`Config::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite file (created if missing).
    pub db_path: PathBuf,
    /// Worker threads executing runs.
    pub workers: usize,
    /// How long a lease lasts without a heartbeat before others may reclaim the run.
    pub lease_ttl: Duration,
    /// How often leases are renewed.
    pub heartbeat_interval: Duration,
    /// How often the reaper looks for dead owners.
    pub reap_interval: Duration,
    /// How often the dispatcher polls when idle (local starts wake it at once).
    pub poll_interval: Duration,
    /// A run interrupted more than this many times ends failed.
    pub interruptions_max: i64,
    /// SQLite's `synchronous` (FULL by default: a committed run survives power loss).
    pub synchronous: Synchronous,
    /// How long one SQLite call waits for a lock held by another process before it retries.
    pub busy_timeout: Duration,
    /// Largest encoded input, output or event payload.
    pub payload_bytes_max: u64,
    /// Most journal entries one run may have.
    pub steps_per_run_max: i64,
    /// Default isolation of steps that do not choose one.
    pub isolation: Isolation,
    /// Default limits of child steps (memory, CPU time, wall time).
    pub limits: StepLimits,
    /// Default retry policy of steps that do not choose one.
    pub retry: RetryPolicy,
    /// Run `PRAGMA quick_check` when opening an existing file: always for small files, for
    /// large ones only after an engine did not stop cleanly (see
    /// [`crate::store::quick_check_needed`]). `false`: never.
    pub quick_check_on_open: bool,
    /// Run `PRAGMA quick_check` at every open whatever the file size (about 8 ms per MB:
    /// ~2 s for a million finished runs). Off by default.
    pub quick_check_always: bool,
    /// Program started for child steps (default: this process's own executable).
    pub child_program: Option<PathBuf>,
    /// Which rlimit carries the memory cap of child steps (default RLIMIT_DATA).
    pub memory_rlimit: MemoryRlimit,
    /// Cap the memory of each cold child step with a cgroup of its own where the host
    /// offers one (cgroup v2 `memory.max`, or the v1 memory controller; usually needs
    /// root), so an out-of-memory kill is classified `memory_limit` from the cgroup's
    /// counter whatever the program; elsewhere (and for pooled children) the rlimit above.
    /// The attempt record names the mechanism used (`memory_cap`). Default true.
    pub memory_cgroup: bool,
    /// Time between SIGTERM and SIGKILL when a child step is timed out or cancelled.
    pub kill_grace: Duration,
    /// A pooled child serves at most this many executions, then is replaced.
    pub pool_runs_max: u64,
    /// A pooled child whose resident memory passes this after an execution is replaced.
    pub pool_rss_max_bytes: u64,
    /// How long [`crate::Engine::shutdown`] lets in-flight steps finish while it keeps their
    /// leases renewed. At its end, child steps still running are killed (their whole process
    /// group) and their runs released; an in-process step cannot be killed, so shutdown keeps
    /// renewing its lease until it returns (and never releases a run whose step still runs).
    pub shutdown_grace: Duration,
    /// Longest an API call (`start_run`, `start_many`, `cancel`, `send_event`, `resume`,
    /// queue limits, purge) waits for the database's write lock while another process holds
    /// it; then it fails with `StoreError::Locked` and writes nothing. The engine's own
    /// threads (heartbeats, claims, checkpoints) keep waiting; their leases self-fence.
    pub lock_wait_max: Duration,
    /// Storage failures (disk full, read-only, I/O errors) are retried with backoff; the
    /// failure is persistent, and the engine stops for good, only after at least this many
    /// consecutive failed writes ...
    pub storage_failures_max: u32,
    /// ... spanning at least this long (see `engine::health`).
    pub storage_failure_stop_after: Duration,
    /// Logs kept per child-step attempt (its stderr, stdout where stdout is not the
    /// result, and its `log` records): the first this many bytes ...
    pub step_log_head_bytes: u64,
    /// ... and the last this many, with a "[... N bytes dropped ...]" marker between.
    /// In-process steps are not captured: their `log` records go to the application's
    /// logger directly (the logger is the application's, so no per-step capture is possible).
    pub step_log_tail_bytes: u64,
    /// Name of a registered SQLite VFS for the database files (`None`: SQLite's default).
    /// Only for the power-loss simulator of `waymark torture --power-loss`.
    #[doc(hidden)]
    pub vfs: Option<String>,
}

impl Config {
    /// Defaults for a database at `db_path`.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Config {
            db_path: db_path.into(),
            workers: 8,
            lease_ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
            reap_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            interruptions_max: 5,
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            payload_bytes_max: crate::codec::PAYLOAD_BYTES_MAX,
            steps_per_run_max: 100_000,
            isolation: Isolation::Child,
            limits: StepLimits::default(),
            retry: RetryPolicy::default(),
            quick_check_on_open: true,
            quick_check_always: false,
            child_program: None,
            memory_rlimit: MemoryRlimit::Data,
            memory_cgroup: true,
            kill_grace: Duration::from_secs(2),
            pool_runs_max: 1000,
            pool_rss_max_bytes: 256 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            lock_wait_max: crate::store::LOCK_WAIT_MAX_DEFAULT,
            storage_failures_max: 10,
            storage_failure_stop_after: Duration::from_secs(300),
            step_log_head_bytes: 16 * 1024,
            step_log_tail_bytes: 16 * 1024,
            vfs: None,
        }
    }

    /// Set the lease TTL and derive the heartbeat interval (TTL / 5).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self.heartbeat_interval = ttl / 5;
        self.reap_interval = self.reap_interval.min(ttl / 3);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let bad = |m: &str| Err(crate::Error::Config(m.to_string()));
        if self.workers == 0 {
            return bad("workers must be at least 1");
        }
        if self.heartbeat_interval * 2 >= self.lease_ttl {
            return bad("heartbeat_interval must be under half of lease_ttl");
        }
        if self.interruptions_max < 1 {
            return bad("interruptions_max must be at least 1");
        }
        Ok(())
    }
}

/// Which rlimit carries a child's memory cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryRlimit {
    /// RLIMIT_DATA: private writable mappings (the default; see module docs).
    #[default]
    Data,
    /// RLIMIT_AS: the whole address space, reservations included.
    AddressSpace,
}

#[cfg(all(test, feature = "postgres"))]
mod copy_defaults {
    #[test]
    fn copy_options_default_to_the_engine_defaults() {
        let c = super::Config::new("x.db");
        let o = crate::store::pg::copy::CopyOptions::default();
        assert_eq!(o.heartbeat_wait, c.lease_ttl);
        assert_eq!(o.interruptions_max, c.interruptions_max);
    }
}
