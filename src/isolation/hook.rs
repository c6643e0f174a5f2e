//! The child side: the host's one-call main hook and the step server it runs.
//!
//! Order of a child's first acts (before any input is read):
//! 1. The death watch: a thread blocked in `poll` on a pidfd of the engine process (or,
//!    on kernels without pidfd_open, checking `getppid()` every 50 ms). When the engine
//!    dies it sends SIGKILL to this child's whole process group (`kill(0, SIGKILL)`): the
//!    child itself and every descendant that stayed in the group, so no grandchild of a
//!    step outlives its engine. Then `getppid()` is compared with the engine pid the engine
//!    passed: a parent that died during the spawn would otherwise go unnoticed.
//! 2. SIGCHLD back to its default (an ignored SIGCHLD is inherited from a host that set
//!    it, and would make the child's own waits lose their children's exit statuses).
//! 3. Its rlimits (memory, CPU, no core dumps).
//! 4. Move the protocol pipe off fd 1 and point fd 1 at stderr, so a step's `println!`
//!    lands in the captured stderr instead of corrupting the protocol.
//! 5. Install a `log` logger that forwards the step's records to the engine as
//!    `Response::Log` frames on the protocol pipe (with their level): the engine keeps them
//!    with the attempt's logs and re-emits them through its own logger.
//!
//! Why a watch thread and not `PR_SET_PDEATHSIG(SIGKILL)`: that signal kills only the
//! direct child and leaves its descendants running (issue 9). A catchable death signal
//! whose handler kills the group would work too, but step code can replace or block a
//! handler, and the signal is tied to the engine *thread* that spawned the child; the
//! watch thread blocks every signal, watches the engine *process*, and step code has no
//! handle on it. `PR_SET_CHILD_SUBREAPER` is not needed: the kill is by process group,
//! whoever the members' parents are (a descendant that left the group with `setsid` is
//! out of reach either way; see [`super::group`]).
//!
//! A reader thread reads request frames from stdin; end of file means the engine is gone
//! (only the engine holds the write end) or done with this child: it kills the group too.

use super::limits::{self, ChildLimits};
use super::protocol::{self, Request, Response, FRAME_OVERHEAD_BYTES};
use crate::step::{ErasedStepError, StepCtx, StepSource};
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub(crate) static HOOKED: AtomicBool = AtomicBool::new(false);
/// Test support: the engine's death and stdin EOF are ignored (see
/// [`detach_from_parent_for_tests`]).
static DETACHED: AtomicBool = AtomicBool::new(false);
static PROTOCOL_FD: AtomicI32 = AtomicI32::new(-1);

/// Exit codes of a child that gave up before running a step.
pub(crate) const EXIT_ORPHANED: i32 = 111;
pub(crate) const EXIT_SETUP: i32 = 112;
pub(crate) const EXIT_EXEC: i32 = 127;

/// Call this first thing in `main`: `waymark::hook(build_registry);`
///
/// In the engine's process it only notes that the hook is installed and returns at once
/// (without calling `registry`). In a step child started by the engine it builds the
/// registry, serves step executions, and exits: it never returns there.
pub fn hook<R: StepSource, F: FnOnce() -> R>(registry: F) {
    HOOKED.store(true, Ordering::SeqCst);
    let Some(mode) = std::env::var_os(super::ENV_MODE) else {
        return;
    };
    let mode = mode.to_string_lossy().into_owned();
    enter_child_mode(mode == "pool");
    let code = match mode.as_str() {
        "exec" => super::command::exec_from_args(),
        "step" | "hello" | "pool" => serve(registry(), &mode),
        other => {
            let _ = writeln!(std::io::stderr(), "waymark child: unknown mode '{other}'");
            EXIT_SETUP
        }
    };
    std::process::exit(code);
}

/// Death watch, parent check, SIGCHLD, limits. Exits the process if any of them fails.
fn enter_child_mode(pooled: bool) {
    let parent: Option<i32> = std::env::var(super::ENV_PARENT)
        .ok()
        .and_then(|v| v.parse().ok());
    match parent {
        Some(p) => {
            if let Err(e) = start_death_watch(p) {
                let _ = writeln!(
                    std::io::stderr(),
                    "waymark child: cannot watch the engine: {e}"
                );
                std::process::exit(EXIT_SETUP);
            }
        }
        // Started by something else than an engine: at least die with the parent.
        // SAFETY: prctl has no memory-safety preconditions.
        None => unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
        },
    }
    super::spawn::restore_sigchld();
    if let Err(e) = limits::apply(&ChildLimits::from_env(), pooled) {
        let _ = writeln!(std::io::stderr(), "waymark child: cannot apply limits: {e}");
        std::process::exit(EXIT_SETUP);
    }
}

/// SIGKILL to this process's whole group: this process and every descendant still in it.
fn kill_own_group() -> ! {
    // SAFETY: kill(2) with pid 0 signals the caller's own process group; _exit is the
    // fallback should the signal somehow not end us.
    unsafe {
        libc::kill(0, libc::SIGKILL);
        libc::_exit(EXIT_ORPHANED)
    }
}

/// Watches whether the engine process is stopped (SIGSTOP, state `T`/`t` in /proc): a
/// stopped engine renews no lease, so another engine will reclaim the run after one TTL and
/// run the step again, possibly unable to signal us (another PID namespace). The engine's
/// bound (`ENV_STOPPED_KILL_MS`, half its lease TTL) ends this step first.
struct StoppedEngine {
    parent: i32,
    bound: Option<std::time::Duration>,
    since: Option<std::time::Instant>,
}

impl StoppedEngine {
    fn new(parent: i32) -> Self {
        let bound = std::env::var(super::ENV_STOPPED_KILL_MS)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(std::time::Duration::from_millis);
        StoppedEngine {
            parent,
            bound,
            since: None,
        }
    }

    /// Poll timeout: wake up to look at the engine's state when a bound is set.
    fn poll_ms(&self) -> i32 {
        if self.bound.is_some() {
            50
        } else {
            -1
        }
    }

    /// True once the engine has been seen stopped for longer than the bound.
    fn too_long(&mut self) -> bool {
        let Some(bound) = self.bound else {
            return false;
        };
        let state = std::fs::read_to_string(format!("/proc/{}/stat", self.parent))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
            });
        if matches!(state.as_deref(), Some("T" | "t")) {
            let since = *self.since.get_or_insert_with(std::time::Instant::now);
            since.elapsed() >= bound
        } else {
            self.since = None;
            false
        }
    }
}

/// Start the thread that kills this child's group once the engine process `parent` is
/// gone. Exits at once if `parent` is already gone (not our parent any more).
fn start_death_watch(parent: i32) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open returns a new descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, parent as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a descriptor we own.
    let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) });
    // The pidfd names the engine only if it is still our parent now (not a reused pid).
    // SAFETY: getppid has no preconditions; _exit ends the process without running user code.
    if unsafe { libc::getppid() } != parent {
        unsafe { libc::_exit(EXIT_ORPHANED) };
    }
    std::thread::Builder::new()
        .name("waymark-death-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // Never run a signal handler on this thread, never take a process signal.
            // SAFETY: sigfillset/pthread_sigmask on a local set, for this thread only.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            let mut stopped = StoppedEngine::new(parent);
            loop {
                match &pidfd {
                    Some(fd) => {
                        let mut p = libc::pollfd {
                            fd: fd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd; readable once the engine process exits.
                        let n = unsafe { libc::poll(&mut p, 1, stopped.poll_ms()) };
                        if n > 0 {
                            break;
                        }
                        if n < 0 {
                            // No signal can interrupt this thread; a failing poll must not spin.
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                    None => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        // SAFETY: getppid has no preconditions.
                        if unsafe { libc::getppid() } != parent {
                            break;
                        }
                    }
                }
                if stopped.too_long() {
                    break;
                }
            }
            if !DETACHED.load(Ordering::SeqCst) {
                kill_own_group();
            }
        })
        .map(|_| ())
}

/// Test support: make this step child survive its engine's death (death watch disarmed,
/// stdin EOF ignored). Used only by a test fixture that simulates a child the death watch
/// missed; never call it in real steps.
#[doc(hidden)]
pub fn detach_from_parent_for_tests() {
    DETACHED.store(true, Ordering::SeqCst);
}

/// Test support: the raw protocol fd of this step child (-1 outside a child), so a
/// fixture can write garbage where the engine expects frames.
#[doc(hidden)]
pub fn protocol_fd_for_tests() -> i32 {
    PROTOCOL_FD.load(Ordering::SeqCst)
}

fn serve<R: StepSource>(registry: R, mode: &str) -> i32 {
    // SAFETY: fcntl/dup2 on the standard descriptors this process was started with.
    let proto = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if proto < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        return EXIT_SETUP;
    }
    PROTOCOL_FD.store(proto, Ordering::SeqCst);
    // SAFETY: `proto` is a fresh descriptor owned by nobody else.
    let out: ProtocolOut =
        std::sync::Arc::new(std::sync::Mutex::new(std::io::BufWriter::new(unsafe {
            std::fs::File::from_raw_fd(proto)
        })));
    if mode != "hello" {
        install_logger(out.clone());
    }
    let max_runs: u64 = match mode {
        "pool" => std::env::var(super::ENV_POOL_RUNS)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        _ => 1,
    };
    let request_limit: u64 = std::env::var(super::ENV_PAYLOAD)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::codec::PAYLOAD_BYTES_MAX)
        + FRAME_OVERHEAD_BYTES;
    let (tx, rx) = crossbeam_channel::bounded::<Request>(1);
    let reader = std::thread::Builder::new()
        .name("waymark-child-stdin".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // SAFETY: fd 0 is the request pipe; ManuallyDrop keeps it open for the process.
            let mut stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
            loop {
                match protocol::read_frame::<Request>(&mut *stdin, request_limit) {
                    Ok(Some(req)) => {
                        if tx.send(req).is_err() {
                            return;
                        }
                    }
                    // EOF: the engine is gone (or done with us). Leave now with everything
                    // this child started, whatever runs.
                    Ok(None) | Err(_) => {
                        if DETACHED.load(Ordering::SeqCst) {
                            return;
                        }
                        kill_own_group();
                    }
                }
            }
        });
    if reader.is_err() {
        return EXIT_SETUP;
    }
    let cpu_limits = ChildLimits::from_env();
    let mut served = 0u64;
    while let Ok(req) = rx.recv() {
        let resp = match req {
            Request::Hello => Response::Hello {
                version: protocol::VERSION,
                pid: std::process::id(),
                steps: registry.step_names(),
            },
            Request::Run {
                step,
                run_id,
                seq,
                attempt,
                timeout_ms,
                payload_limit,
                input,
            } => {
                served += 1;
                if mode == "pool" {
                    limits::rearm_cpu(&cpu_limits);
                }
                run_step(
                    &registry,
                    &step,
                    run_id,
                    seq,
                    attempt,
                    timeout_ms,
                    payload_limit,
                    &input,
                )
            }
        };
        let limit = request_limit.max(FRAME_OVERHEAD_BYTES * 2);
        let resp = match protocol::encode_frame(&resp, limit) {
            Ok(frame) => frame,
            Err(e) => match protocol::encode_frame(&Response::Codec(e.to_string()), limit) {
                Ok(f) => f,
                Err(_) => return EXIT_SETUP,
            },
        };
        let written = match out.lock() {
            Ok(mut out) => out.write_all(&resp).and_then(|_| out.flush()).is_ok(),
            Err(_) => false,
        };
        if !written {
            return 0;
        }
        if served >= max_runs || mode == "hello" {
            return 0;
        }
    }
    // The reader stopped (EOF ignored in a test fixture): keep whatever the step started.
    0
}

/// The protocol pipe to the engine, shared by the step server (responses) and the logger
/// (log records): a frame is written whole under the lock, so frames never interleave.
type ProtocolOut = std::sync::Arc<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>;

/// Forwards the step's `log` records to the engine as [`Response::Log`] frames, with their
/// level; the engine keeps them with the attempt and re-emits them through its own logger.
struct ForwardLogger {
    out: ProtocolOut,
}

impl log::Log for ForwardLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut message = record.args().to_string();
        if message.len() > protocol::LOG_MESSAGE_BYTES_MAX {
            let mut cut = protocol::LOG_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [... cut ...]");
        }
        let frame = Response::Log {
            level: record.level() as u8,
            target: record.target().chars().take(200).collect(),
            message,
        };
        let Ok(bytes) = protocol::encode_frame(&frame, FRAME_OVERHEAD_BYTES) else {
            return;
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(&bytes).and_then(|_| out.flush());
        }
    }

    fn flush(&self) {}
}

/// Install the forwarding logger (unless the host set a logger before the hook), at the
/// level the engine passed (`ENV_LOG`, at least info).
fn install_logger(out: ProtocolOut) {
    let level = std::env::var(super::ENV_LOG)
        .ok()
        .and_then(|v| v.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_boxed_logger(Box::new(ForwardLogger { out })).is_ok() {
        log::set_max_level(level);
    }
}

#[allow(clippy::too_many_arguments)]
fn run_step(
    registry: &dyn StepSource,
    step: &str,
    run_id: i64,
    seq: i64,
    attempt: u32,
    timeout_ms: Option<u64>,
    payload_limit: u64,
    input: &[u8],
) -> Response {
    let Some(def) = registry.get_step(step) else {
        return Response::UnknownStep(step.to_string());
    };
    let mut ctx = StepCtx::new(run_id, seq, attempt);
    ctx.deadline =
        timeout_ms.map(|t| std::time::Instant::now() + std::time::Duration::from_millis(t));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        def.call(&ctx, input, payload_limit)
    }));
    match result {
        Ok(Ok(bytes)) => Response::Ok(bytes),
        Ok(Err(ErasedStepError::Step(e))) => Response::Err {
            message: e.message,
            permanent: e.permanent,
        },
        Ok(Err(ErasedStepError::Codec(crate::codec::CodecError::TooLarge { size, limit }))) => {
            Response::OutputTooLarge { size, limit }
        }
        Ok(Err(ErasedStepError::Codec(e))) => Response::Codec(e.to_string()),
        Err(payload) => Response::Panic(crate::exec::panic_message(&*payload)),
    }
}
