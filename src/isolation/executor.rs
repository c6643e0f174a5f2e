//! The engine side: [`ChildExecutor`] runs one step execution in a fresh child, and
//! `preflight` checks at engine start that child steps can work at all.
//!
//! Invariants:
//! - The attempt (pid and /proc start time, fenced) is recorded right after the spawn and
//!   before the input is sent: an engine that reclaims the run knows the child.
//! - Before a step is executed again (attempt > 1), what is left of every still-open attempt
//!   of it recorded by another owner or epoch is killed: its leader if `(pid, start)` is still
//!   alive, and its whole process group even if the leader is dead (members started no
//!   earlier than the leader; see [`super::group`]): never two copies of one step at once.

use super::cgroup::{CgroupParent, StepCgroup};
use super::classify::classify;
use super::group::{self, TreeKill};
use super::limits::{ChildLimits, MemoryRlimit};
use super::protocol::{self, Request, Response, FRAME_OVERHEAD_BYTES};
use super::spawn::{self, Exchange, Finished, HeadTail, SpawnSpec, Stdout};
use super::steplog::StepLog;
use super::{CommandOutput, CommandSpec};
use crate::codec;
use crate::config::{Config, Isolation, StepLimits};
use crate::error::Error;
use crate::exec::{record_start, Attempts, EarlierAttempt, ExecRequest, Executor};
use crate::outcome::{Failure, FailureClass, Outcome};
use crate::step::StepSource;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs each step execution in a fresh child of `program` (the host's own binary).
#[derive(Debug, Clone)]
pub struct ChildExecutor {
    program: PathBuf,
    pub(crate) memory_rlimit: MemoryRlimit,
    pub(crate) grace: Duration,
    /// Where per-step memory cgroups are made, if the host offers them.
    pub(crate) cgroup: Option<CgroupParent>,
}

/// One prepared child execution.
pub(crate) struct Prepared<'a> {
    pub spec: SpawnSpec<'a>,
    pub exchange: Exchange,
    pub command: bool,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare<'a>(
    program: &'a Path,
    memory_rlimit: MemoryRlimit,
    grace: Duration,
    step: &str,
    command: bool,
    ids: (i64, i64, u32),
    input: &[u8],
    limits: &StepLimits,
    payload_limit: u64,
    cancel: Arc<AtomicBool>,
    cmd_cwd: &'a mut Option<PathBuf>,
) -> Result<Prepared<'a>, Failure> {
    let child_limits = ChildLimits {
        memory_bytes: limits.memory_bytes,
        memory_rlimit,
        cpu_seconds: limits.cpu_seconds,
        cgroup: None,
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut args = Vec::new();
    let (mode, bytes, close_stdin, stdout) =
        if command {
            let cmd: CommandSpec = codec::decode(input, payload_limit).map_err(|e| Failure {
                class: FailureClass::Protocol,
                reason: format!("command step '{step}': bad command: {e}"),
                permanent: true,
            })?;
            args.push(cmd.program.clone().into());
            args.extend(cmd.args.iter().map(Into::into));
            env.extend(cmd.env.iter().cloned());
            *cmd_cwd = cmd.cwd.as_ref().map(PathBuf::from);
            (
                "exec",
                cmd.stdin,
                true,
                Stdout::Capture(HeadTail::new(limits.output_bytes_max)),
            )
        } else {
            let (run_id, seq, attempt) = ids;
            let req = Request::Run {
                step: step.to_string(),
                run_id,
                seq,
                attempt,
                timeout_ms: limits.timeout.map(|t| t.as_millis() as u64),
                payload_limit,
                input: input.to_vec(),
            };
            let frame = protocol::encode_frame(&req, payload_limit + FRAME_OVERHEAD_BYTES)
                .map_err(|e| Failure {
                    class: FailureClass::Protocol,
                    reason: format!("step '{step}': cannot frame the input: {e}"),
                    permanent: true,
                })?;
            let response_limit = payload_limit.max(limits.output_bytes_max) + FRAME_OVERHEAD_BYTES;
            (
                "step",
                frame,
                false,
                Stdout::Frames(protocol::FrameReader::new(response_limit)),
            )
        };
    for (k, v) in child_limits.to_env() {
        env.push((k.to_string(), v));
    }
    env.push((super::ENV_PAYLOAD.to_string(), payload_limit.to_string()));
    Ok(Prepared {
        spec: SpawnSpec {
            program,
            mode,
            args,
            env,
            cwd: cmd_cwd.as_deref(),
        },
        exchange: Exchange {
            input: bytes,
            close_stdin,
            deadline: limits.timeout.map(|t| Instant::now() + t),
            timeout: limits.timeout,
            cancel,
            grace,
            stderr_max: limits.stderr_bytes_max,
            stdout,
            log: None,
        },
        command,
    })
}

pub(crate) fn outcome_of(
    f: &Finished,
    limits: &StepLimits,
    step: &str,
    command: bool,
    payload_limit: u64,
) -> Outcome {
    if command && f.intent.is_none() && f.exit == spawn::Exit::Code(0) {
        let Stdout::Capture(out) = &f.stdout else {
            return classify(f, limits, step);
        };
        let result = CommandOutput {
            exit_code: 0,
            stdout: out.render(),
            stdout_truncated: out.truncated(),
            stdout_bytes: out.total(),
            stderr: f.stderr.render(),
        };
        return codec::encode(&result, payload_limit).map_err(|e| {
            Failure::new(FailureClass::OutputLimit, format!("output over limit: {e}"))
        });
    }
    classify(f, limits, step)
}

/// The log capture of the attempt `req` (bounds from the engine's config).
pub(crate) fn step_log(attempts: &dyn Attempts, req: &ExecRequest<'_>) -> StepLog {
    let (head, tail) = attempts.log_bounds();
    StepLog::new(
        format!(
            "run {}: step '{}' (seq {}, attempt {})",
            req.fence.run_id,
            req.step.name(),
            req.seq,
            req.attempt
        ),
        head,
        tail,
    )
}

/// How the memory cap of a child is enforced, for the attempt record.
pub(crate) fn memory_cap_text(rlimit: MemoryRlimit, limits: &StepLimits) -> Option<String> {
    limits.memory_bytes.map(|m| {
        format!(
            "rlimit {} {}",
            rlimit.env_value(),
            super::limits::human_bytes(m)
        )
    })
}

/// Store the attempt's logs and memory-cap mechanism with the attempt (fenced; a lost
/// lease only loses them).
pub(crate) fn record_detail(
    attempts: &dyn Attempts,
    req: &ExecRequest<'_>,
    log: Option<StepLog>,
    memory_cap: Option<String>,
) {
    let logs = log.map(|mut l| l.finish()).unwrap_or_default();
    if let Err(e) = attempts.detail(req, logs, memory_cap) {
        log::debug!(
            "run {}: logs of step '{}' (seq {}) attempt {} not recorded: {e}",
            req.fence.run_id,
            req.step.name(),
            req.seq,
            req.attempt
        );
    }
}

/// Close the successful attempt `req` with its logs and memory-cap mechanism, in one
/// commit (fenced: a lost lease loses them, and the error, as text, says so).
pub(crate) fn close_success(
    attempts: &dyn Attempts,
    req: &ExecRequest<'_>,
    reason: String,
    log: Option<StepLog>,
    memory_cap: Option<String>,
) -> Result<(), String> {
    let logs = log.map(|mut l| l.finish()).unwrap_or_default();
    crate::fault::point(crate::fault::Point::BeforeClose);
    attempts
        .succeeded(req, reason, logs, memory_cap)
        .map_err(|e| e.to_string())
}

/// A failed execution `finished` is a memory-limit failure if the cgroup's own OOM-kill
/// counter rose past `oom_before` (its value when the execution began), whatever the
/// program printed or how it died; an ending the engine caused (timeout, cancel) stays as
/// classified.
pub(crate) fn oom_from_cgroup(
    outcome: &mut Outcome,
    finished: &Finished,
    cg: &StepCgroup,
    oom_before: u64,
    limits: &StepLimits,
) {
    if outcome.is_err() && finished.intent.is_none() && cg.oom_kills() > oom_before {
        *outcome = Err(Failure::new(
            FailureClass::MemoryLimit,
            super::classify::memory_reason(limits),
        ));
    }
}

pub(crate) fn spawn_failure(program: &Path, e: std::io::Error) -> Failure {
    Failure::new(
        FailureClass::Spawn,
        format!("cannot start child process {}: {e}", program.display()),
    )
}

/// Run one execution of the Rust step `step` in a fresh child of `program`, outside any
/// engine (no journal): for benchmarks and tools. `input` is the bincode of the input.
pub fn run_step_once(program: &Path, step: &str, input: &[u8], limits: &StepLimits) -> Outcome {
    let mut cwd = None;
    let p = prepare(
        program,
        MemoryRlimit::Data,
        Duration::from_secs(1),
        step,
        false,
        (0, 0, 1),
        input,
        limits,
        codec::PAYLOAD_BYTES_MAX,
        Arc::new(AtomicBool::new(false)),
        &mut cwd,
    )?;
    let running = spawn::spawn(&p.spec).map_err(|e| spawn_failure(program, e))?;
    let finished = running.exchange(p.exchange);
    outcome_of(&finished, limits, step, false, codec::PAYLOAD_BYTES_MAX)
}

impl ChildExecutor {
    /// Children of `program`, memory capped through `memory_rlimit`.
    pub fn new(program: PathBuf, memory_rlimit: MemoryRlimit, grace: Duration) -> Self {
        ChildExecutor {
            program,
            memory_rlimit,
            grace,
            cgroup: None,
        }
    }

    /// The program children are started from.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// A memory cgroup for the child `spec` will start, labelled `label`, capped at the
    /// step's memory cap (its path passed in `spec`'s environment: the child enters it and
    /// sets no memory rlimit), and the mechanism for the attempt record. No cgroup where
    /// the host offers none, the step has no cap, or it cannot be made (then the rlimit).
    pub(crate) fn child_cgroup(
        &self,
        spec: &mut SpawnSpec<'_>,
        label: &str,
        limits: &StepLimits,
    ) -> (Option<StepCgroup>, Option<String>) {
        let rlimit = || memory_cap_text(self.memory_rlimit, limits);
        let (Some(parent), Some(cap)) = (&self.cgroup, limits.memory_bytes) else {
            return (None, rlimit());
        };
        match parent.create(label, cap) {
            Ok(cg) => {
                spec.env.push((
                    super::ENV_CGROUP.to_string(),
                    cg.path().display().to_string(),
                ));
                let text = format!(
                    "{} {}",
                    parent.version().name(),
                    super::limits::human_bytes(cap)
                );
                (Some(cg), Some(text))
            }
            Err(e) => {
                log::warn!("no memory cgroup for child '{label}' ({e}); capped by rlimit instead");
                (None, rlimit())
            }
        }
    }

    pub(crate) fn kill_survivors(
        &self,
        attempts: &dyn Attempts,
        req: &ExecRequest<'_>,
    ) -> Result<(), Failure> {
        let run_id = req.fence.run_id;
        let earlier = attempts.earlier(req).map_err(|e| {
            Failure::new(
                FailureClass::Spawn,
                format!("reading attempts of run {run_id}: {e}"),
            )
        })?;
        for EarlierAttempt { row: a, elsewhere } in &earlier {
            let (Some(pid), Some(start)) = (a.pid, a.pid_start) else {
                continue;
            };
            let (Ok(pid), Ok(start)) = (u32::try_from(pid), u64::try_from(start)) else {
                continue;
            };
            // A pid recorded by an engine in another PID namespace (another container on
            // this host) names some other process here: never signal it. That engine's own
            // death watch takes its step trees down with it.
            if let Some(host) = elsewhere {
                log::warn!(
                    "run {run_id}: attempt {} of step '{}' ran in another PID namespace or boot ({host}); its processes cannot be checked from here",
                    a.attempt, a.name
                );
                continue;
            }
            // The leader may be dead while its group lives on (its descendants): the
            // tree is killed by process group either way.
            match group::kill_tree(pid, start, Duration::from_secs(10)) {
                TreeKill::Gone => {}
                TreeKill::Killed(n) => log::warn!(
                    "run {run_id}: step '{}' (seq {}) attempt {} of owner {} still had {n} process(es) in the group of pid {pid}; killed them before running the step again",
                    a.name, a.seq, a.attempt, a.owner
                ),
                TreeKill::Foreign { pid: other } => log::warn!(
                    "run {run_id}: process group {pid} (step '{}' attempt {}) holds pid {other}, older than the recorded leader: not that step's tree, left alone",
                    a.name, a.attempt
                ),
                TreeKill::Survivors(left) => {
                    return Err(Failure::new(
                        FailureClass::Spawn,
                        format!("processes {left:?} of an earlier execution (leader pid {pid}) of step '{}' of run {run_id} could not be killed", a.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Executor for ChildExecutor {
    fn execute(&self, attempts: &dyn Attempts, req: &ExecRequest<'_>) -> Outcome {
        let step = req.step.name();
        if req.attempt > 1 {
            self.kill_survivors(attempts, req)?;
        }
        let mut cwd = None;
        let p = prepare(
            &self.program,
            self.memory_rlimit,
            self.grace,
            step,
            req.step.is_command(),
            (req.fence.run_id, req.seq, req.attempt as u32),
            req.input,
            req.limits,
            req.payload_limit,
            req.cancel.clone(),
            &mut cwd,
        )?;
        let mut p = p;
        p.exchange.log = Some(step_log(attempts, req));
        let label = format!("r{}-s{}-a{}", req.fence.run_id, req.seq, req.attempt);
        let (cgroup, memory_cap) = self.child_cgroup(&mut p.spec, &label, req.limits);
        let running = spawn::spawn(&p.spec).map_err(|e| spawn_failure(&self.program, e))?;
        let pid = running.pid;
        // Record the child before it can have any effect (it has no input yet).
        if let Err(f) = record_start(attempts, req, pid) {
            drop(running); // kills the group and reaps
            return Err(f);
        }
        crate::fault::point(crate::fault::Point::InStep);
        let mut finished = running.exchange(p.exchange);
        let mut outcome = outcome_of(&finished, req.limits, step, p.command, req.payload_limit);
        if let Some(cg) = cgroup {
            oom_from_cgroup(&mut outcome, &finished, &cg, 0, req.limits);
            cg.remove();
        }
        log::debug!(
            "run {}: step '{step}' (seq {}) attempt {} in pid {pid}: {:?} after {:?}",
            req.fence.run_id,
            req.seq,
            req.attempt,
            finished.exit,
            finished.wall
        );
        let log = finished.log.take();
        if outcome.is_ok() {
            let reason = format!(
                "completed in pid {pid} after {} ms",
                finished.wall.as_millis()
            );
            if let Err(e) = close_success(attempts, req, reason, log, memory_cap) {
                log::debug!(
                    "run {}: attempt {} of step '{step}' (seq {}) not closed: {e}",
                    req.fence.run_id,
                    req.attempt,
                    req.seq
                );
            }
        } else {
            record_detail(attempts, req, log, memory_cap);
        }
        outcome
    }
}

fn hook_missing(program: &Path, detail: &str) -> Error {
    Error::Isolation(format!(
        "steps run in child processes, but {} does not answer as a waymark step child ({detail}). \
         Add this as the first line of your main: `{}` (build_registry returns the same Registry \
         you give Engine::start), or set Config::isolation to Isolation::InProcess",
        program.display(),
        super::HOOK_LINE
    ))
}

/// Names of the steps `registry` would run in a child (cold or pooled) under `config`.
pub(crate) fn child_steps(config: &Config, registry: &dyn StepSource) -> Vec<String> {
    registry
        .all_steps()
        .into_iter()
        .filter(|d| {
            d.is_command()
                || d.options().isolation.unwrap_or(config.isolation) != Isolation::InProcess
        })
        .map(|d| d.name().to_string())
        .collect()
}

/// Start-up checks for child execution. Returns the executor (program resolved).
///
/// - A process started as a step child must never start an engine: its host's main lacks
///   the hook, and starting an engine there would run the host's main again in a loop.
/// - If any step runs in a child, the hook must be installed (when children are this very
///   binary), and a handshake child must answer with every such step registered.
pub(crate) fn preflight(
    config: &Config,
    registry: &dyn StepSource,
) -> Result<ChildExecutor, Error> {
    let program = match &config.child_program {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| Error::Isolation(format!("cannot find this program's executable: {e}")))?,
    };
    if std::env::var_os(super::ENV_MODE).is_some() {
        return Err(hook_missing(
            &program,
            "this process was started as a step child and reached Engine::start",
        ));
    }
    let mut exec = ChildExecutor::new(program.clone(), config.memory_rlimit, config.kill_grace);
    let needed = child_steps(config, registry);
    if needed.is_empty() {
        return Ok(exec);
    }
    if config.memory_cgroup {
        exec.cgroup = CgroupParent::detect();
        if let Some(parent) = &exec.cgroup {
            parent.sweep_stale();
            log::info!(
                "child steps get their memory cap from a {} below {}",
                parent.version().name(),
                parent.dir().display()
            );
        }
    }
    if config.child_program.is_none() && !super::hook_installed() {
        return Err(hook_missing(
            &program,
            "waymark::hook was not called in this process",
        ));
    }
    if let Some(what) = spawn::restore_sigchld() {
        log::warn!("{what}: steps run in child processes, and their exit statuses must be read");
    }
    if let Some(dir) = super::limits::cgroup_v2_memory() {
        log::info!(
            "writable cgroup v2 with the memory controller at {}",
            dir.display()
        );
    }
    let frame = protocol::encode_frame(&Request::Hello, FRAME_OVERHEAD_BYTES)
        .map_err(|e| Error::Isolation(e.to_string()))?;
    let running = spawn::spawn(&SpawnSpec {
        program: &program,
        mode: "hello",
        args: vec![],
        env: vec![],
        cwd: None,
    })
    .map_err(|e| Error::Isolation(spawn_failure(&program, e).reason))?;
    let timeout = Duration::from_secs(10);
    let f = running.exchange(Exchange {
        input: frame,
        close_stdin: false,
        deadline: Some(Instant::now() + timeout),
        timeout: Some(timeout),
        cancel: Arc::new(AtomicBool::new(false)),
        grace: Duration::from_millis(200),
        stderr_max: 4096,
        stdout: Stdout::Frames(protocol::FrameReader::new(16 * 1024 * 1024)),
        log: None,
    });
    match f.response {
        Some(Response::Hello { version, steps, .. }) if version == protocol::VERSION => {
            let missing: Vec<&String> = needed.iter().filter(|n| !steps.contains(n)).collect();
            if missing.is_empty() {
                Ok(exec)
            } else {
                Err(Error::Isolation(format!(
                    "the step child {} does not register these steps that run in child processes: {missing:?}; \
                     the registry built by the hook must match the engine's",
                    program.display()
                )))
            }
        }
        Some(Response::Hello { version, .. }) => Err(Error::Isolation(format!(
            "the step child {} speaks protocol version {version}, this engine {}",
            program.display(),
            protocol::VERSION
        ))),
        _ => Err(hook_missing(
            &program,
            &format!(
                "handshake failed: {:?}, stderr: {}",
                f.exit,
                f.stderr.last_line()
            ),
        )),
    }
}
