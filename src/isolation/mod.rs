//! Steps in child processes with resource limits: one step's blow-up never takes the
//! engine or other runs down.
//!
//! - [`hook`](mod@hook): the host's one-call main hook (`waymark::hook(build_registry);`).
//! - [`protocol`]: length-prefixed, bounded frames over the child's stdin/stdout.
//! - [`spawn`]: posix_spawn without pre_exec, own process group, concurrent bounded draining,
//!   TERM/grace/KILL of the whole group, reaping on every path.
//! - [`classify`]: success, step error, panic, memory/CPU limit, timeout, cancel, signal,
//!   output over limit, protocol error.
//! - [`command`]: external programs as steps, through the same trampoline (which stays as
//!   the step's leader and supervises the program).
//! - [`group`]: a step's process tree by process group; killing what a dead engine left.
//! - [`steplog`]: an attempt's captured logs (output and forwarded `log` records).
//! - [`cgroup`]: a memory cgroup per cold child step where the host offers one; OOM kills
//!   read from its counter.
//! - [`limits`]: rlimits applied by the child itself; cgroup v2 detection.
//! - [`executor`]: the engine's [`crate::exec::Executor`] for child steps, and the
//!   start-up handshake.

#[doc(hidden)]
pub mod cgroup;
#[doc(hidden)]
pub mod classify;
#[doc(hidden)]
pub mod command;
#[doc(hidden)]
pub mod executor;
#[doc(hidden)]
pub mod group;
#[doc(hidden)]
pub mod hook;
#[doc(hidden)]
pub mod limits;
#[doc(hidden)]
pub mod pool;
#[doc(hidden)]
pub mod protocol;
#[doc(hidden)]
pub mod spawn;
pub mod steplog;

pub use command::{CommandOutput, CommandSpec};
pub use executor::{run_step_once, ChildExecutor};
pub use hook::hook;
pub use limits::MemoryRlimit;
pub use pool::PoolExecutor;

/// Set in a step child's environment: its mode (`step`, `hello`, `exec`, `pool`).
/// An engine refuses to start in a process that has it (the host's main lacks the hook).
pub const ENV_MODE: &str = "WAYMARK_CHILD";
pub(crate) const ENV_PARENT: &str = "WAYMARK_CHILD_PARENT";
/// How long (ms) a step child lets its engine stay stopped (SIGSTOP: state `T` in /proc)
/// before it kills its own group (see `hook`'s death watch).
pub(crate) const ENV_STOPPED_KILL_MS: &str = "WAYMARK_CHILD_STOPPED_KILL_MS";

static STOPPED_KILL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Set by the engine at start: half its lease TTL. A step child whose engine stays stopped
/// that long kills its own process group, before another engine (which may be unable to
/// signal it, e.g. from another PID namespace) can reclaim the run and run the step again.
/// The smallest value of the engines in this process wins.
pub(crate) fn set_stopped_kill(after: std::time::Duration) {
    let ms = after.as_millis().max(1) as u64;
    let _ = STOPPED_KILL_MS.fetch_update(
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
        |cur| Some(if cur == 0 { ms } else { cur.min(ms) }),
    );
}

pub(crate) fn stopped_kill_ms() -> u64 {
    STOPPED_KILL_MS.load(std::sync::atomic::Ordering::SeqCst)
}
pub(crate) const ENV_MEMORY: &str = "WAYMARK_CHILD_MEMORY";
pub(crate) const ENV_RLIMIT: &str = "WAYMARK_CHILD_RLIMIT";
pub(crate) const ENV_CPU: &str = "WAYMARK_CHILD_CPU";
pub(crate) const ENV_CGROUP: &str = "WAYMARK_CHILD_CGROUP";
/// The level (a `log::LevelFilter` name) up to which a step child forwards `log` records.
pub(crate) const ENV_LOG: &str = "WAYMARK_CHILD_LOG";
pub(crate) const ENV_PAYLOAD: &str = "WAYMARK_CHILD_PAYLOAD";
pub(crate) const ENV_POOL_RUNS: &str = "WAYMARK_CHILD_POOL_RUNS";

/// The line a host must add to its `main` (quoted in errors).
pub const HOOK_LINE: &str = "waymark::hook(build_registry);";

/// True if [`hook()`](fn@hook) ran in this process.
pub fn hook_installed() -> bool {
    hook::HOOKED.load(std::sync::atomic::Ordering::SeqCst)
}
