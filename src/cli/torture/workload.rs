//! The torture workload and the engine process that runs it (`waymark torture-engine`).
//!
//! Every step execution has a real, checkable side effect: it appends `S` (started) and
//! `E` (ended) records to the harness's effects file, each naming the run, the sequence
//! number, the pid, a fresh random nonce, the engine that ran it (its label) and where it
//! ran (`i` in-process, `c` child step, `x` command step). While it runs it holds an
//! exclusive, non-blocking `flock` on a per-(run, seq) lock file, and writes its own
//! identity into that file. Failing to get the lock means another execution of the same
//! step is running at this instant: it appends a `C` record naming the holder.
//!
//! The lock is taken by the deepest process doing the step's work: the engine's worker
//! thread for an in-process step, the step child for a child step, and for a command step
//! the grandchild (`sh -c '"$0" torture-step ... & wait $!'`: the shell's background job is
//! this binary in its `torture-step` helper mode). So a step process that survives its
//! engine, or keeps running after a reclaim, is seen as a concurrent execution.
//!
//! The step's output carries its nonce, so the harness can tell which execution's result
//! the journal recorded. Everything else about a run is a pure function of its input and,
//! for a run that waits for an event, of the payload the harness sent it.
//!
//! A share of runs waits durably between steps ([`Wait`]): `ctx.sleep` (short), and
//! `ctx.wait_event(EVENT)` whose payload (a `u64`) is mixed into the values of the steps
//! after it. The journal then holds wait entries between step entries: [`layout`] says
//! which entry each sequence number holds, for the workflow and the checker alike.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use waymark::{CommandOutput, CommandSpec};
use waymark::{
    Config, Ctx, Engine, Isolation, Registry, RetryPolicy, Step, StepCtx, StepError, Workflow,
    WorkflowError,
};

/// Environment of every engine process (inherited by its step processes):
/// `UNIQUE/LABEL`, where UNIQUE names the harness run and LABEL the engine (`slot.generation`).
pub const ENV_TAG: &str = "WAYMARK_TORTURE_TAG";
/// Environment of every engine process: the harness's work directory.
pub const ENV_DIR: &str = "WAYMARK_TORTURE_DIR";

/// Where a step of the workload runs.
pub const KIND_IN_PROCESS: u8 = 0;
pub const KIND_CHILD: u8 = 1;
pub const KIND_COMMAND: u8 = 2;
/// A child step on the engine's warm pool: a long-lived child serving many runs.
pub const KIND_POOL: u8 = 3;

/// Input of one torture run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunIn {
    pub index: u64,
    pub steps: u32,
    /// This sequence number fails permanently (the run is expected to end failed).
    pub fail_at: Option<u32>,
    /// How long each step sleeps, in milliseconds.
    pub step_ms: u64,
    /// Where each step runs (`KIND_*`), one per sequence number.
    pub kinds: Vec<u8>,
    /// Extra milliseconds per sequence number: a few steps outlive the lease TTL (a paused
    /// owner's step is still running when its run is reclaimed) and the one second after
    /// which a step process whose engine died counts as an orphan.
    pub extra_ms: Vec<u64>,
    /// Durable waits `(step index, wait)`, in step order, at most one event wait: the wait
    /// comes before that step (index `steps`: after the last step).
    pub waits: Vec<(u32, Wait)>,
}

/// A durable wait of the workload.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Wait {
    /// `ctx.sleep(ms)`.
    Sleep { ms: u64 },
    /// `ctx.wait_event(EVENT, EVENT_TIMEOUT)`: the harness sends the event.
    Event,
}

/// The event a waiting run waits for (its payload is a JSON `u64`).
pub const EVENT: &str = "torture.go";
/// The event wait's timeout: never reached (the harness sends every event or cancels the
/// run; the injected clock moves by hours, not days).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// What one journal sequence number of a run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The step with this index.
    Step(u32),
    /// A `ctx.sleep` timer (kind `sleep`, name `sleep`).
    Sleep,
    /// The event wait's deadline timer (kind `sleep`, name `wait:EVENT`).
    EventTimer,
    /// The event wait itself (kind `event`, name `EVENT`): the payload, once delivered.
    Event,
}

impl Entry {
    /// The journal's `(kind, name)` of this entry; `None` for a step (named by its kind).
    pub fn wait_row(self) -> Option<(&'static str, String)> {
        match self {
            Entry::Step(_) => None,
            Entry::Sleep => Some(("sleep", "sleep".into())),
            Entry::EventTimer => Some(("sleep", format!("wait:{EVENT}"))),
            Entry::Event => Some(("event", EVENT.into())),
        }
    }
}

/// The journal layout of a fault-free run: entry `i` is sequence number `i`.
pub fn layout(input: &RunIn) -> Vec<Entry> {
    let mut out = Vec::new();
    for k in 0..=input.steps {
        for (_, w) in input.waits.iter().filter(|(at, _)| *at == k) {
            match w {
                Wait::Sleep { .. } => out.push(Entry::Sleep),
                Wait::Event => out.extend([Entry::EventTimer, Entry::Event]),
            }
        }
        if k < input.steps {
            out.push(Entry::Step(k));
        }
    }
    out
}

/// Does the fault-free run reach its event wait (it is not after the failing step)?
pub fn reaches_event(input: &RunIn) -> bool {
    input
        .waits
        .iter()
        .any(|(at, w)| *w == Wait::Event && input.fail_at.is_none_or(|f| *at <= f))
}

/// Input of one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepIn {
    pub index: u64,
    pub prev: u64,
    pub fail: bool,
    pub ms: u64,
    pub kind: u8,
}

/// Output of one step: the deterministic value, and the nonce of the execution that made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepOut {
    pub value: u64,
    pub nonce: u64,
}

pub const STEP: Step<StepIn, StepOut> = Step::new("torture.step");
pub const CHILD_STEP: Step<StepIn, StepOut> = Step::new("torture.child");
pub const POOL_STEP: Step<StepIn, StepOut> = Step::new("torture.pool");
pub const CMD: Step<CommandSpec, CommandOutput> = Step::new("torture.cmd");
pub const WORKFLOW: Workflow<RunIn, u64> = Workflow::new("torture");

/// splitmix64: the deterministic mixing function of the workload and the harness RNG.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value step `seq` of run `index` computes from the previous value.
pub fn step_value(index: u64, seq: u64, prev: u64) -> u64 {
    mix(prev ^ mix(index.wrapping_mul(1_000_003).wrapping_add(seq)))
}

/// What a fault-free run records and ends with, given the payload of its event (if it waits
/// for one): per sequence number the layout entry and, for a step, the value it records;
/// then `Ok(output)` or `Err(seq of the failing step)`. The journal stops at the failing step.
pub fn fault_free(input: &RunIn, payload: u64) -> (Vec<(Entry, u64)>, Result<u64, i64>) {
    let mut prev = input.index;
    let mut out = Vec::new();
    for (seq, entry) in layout(input).into_iter().enumerate() {
        match entry {
            Entry::Step(k) if input.fail_at == Some(k) => {
                out.push((entry, 0));
                return (out, Err(seq as i64));
            }
            Entry::Step(_) => prev = step_value(input.index, seq as u64, prev),
            Entry::Event => prev = event_mix(prev, payload),
            Entry::Sleep | Entry::EventTimer => {}
        }
        out.push((entry, prev));
    }
    (out, Ok(prev))
}

/// How a delivered event payload enters the run's values.
pub fn event_mix(prev: u64, payload: u64) -> u64 {
    mix(prev ^ payload)
}

/// The step name the workflow calls for a kind.
pub fn step_name(kind: u8) -> &'static str {
    match kind {
        KIND_CHILD => CHILD_STEP.name(),
        KIND_POOL => POOL_STEP.name(),
        KIND_COMMAND => CMD.name(),
        _ => STEP.name(),
    }
}

/// Parse a command step's stdout: `VALUE NONCE`.
pub fn parse_command_stdout(stdout: &[u8]) -> Option<StepOut> {
    let text = std::str::from_utf8(stdout).ok()?;
    let mut it = text.split_whitespace();
    Some(StepOut {
        value: it.next()?.parse().ok()?,
        nonce: it.next()?.parse().ok()?,
    })
}

struct Paths {
    effects: PathBuf,
    locks: PathBuf,
    /// This engine's label (`slot.generation`), `?` outside the harness.
    label: String,
}

/// The harness's paths and this process's engine label, from the environment every engine
/// process and its step processes carry.
fn paths() -> Option<&'static Paths> {
    static PATHS: OnceLock<Option<Paths>> = OnceLock::new();
    PATHS
        .get_or_init(|| {
            let dir = PathBuf::from(std::env::var_os(ENV_DIR)?);
            let label = std::env::var(ENV_TAG)
                .ok()
                .and_then(|t| t.split_once('/').map(|(_, l)| l.to_string()))
                .unwrap_or_else(|| "?".into());
            Some(Paths {
                effects: dir.join("effects"),
                locks: dir.join("locks"),
                label,
            })
        })
        .as_ref()
}

fn append(line: &str) {
    let Some(p) = paths() else { return };
    // One write(2) of a short line on an O_APPEND file: records never interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.effects)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// One execution of one (run, seq), as seen from the process doing its work.
struct Execution {
    run: i64,
    seq: i64,
    pid: u32,
    nonce: u64,
    /// `i`, `c` or `x`.
    kind: char,
    _lock: Option<std::fs::File>,
}

impl Execution {
    /// Take the (run, seq) lock (recording `C` with the holder if another execution holds
    /// it), then record `S`.
    fn start(run: i64, seq: i64, kind: char) -> Execution {
        let pid = std::process::id();
        let nonce = waymark::internal::host::random_u64();
        let label = paths().map_or("?", |p| p.label.as_str());
        let lock = paths().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(p.locks.join(format!("{run}-{seq}")))
                .ok()
        });
        if let Some(mut f) = lock.as_ref() {
            // SAFETY: flock(2) on a descriptor we own; released when `lock` drops or the
            // process dies.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                let _ = f.set_len(0);
                let _ = std::io::Seek::rewind(&mut f);
                let _ = f.write_all(format!("{label} {kind} {pid}").as_bytes());
            } else {
                // The holder writes its identity right after its flock: give it a moment.
                std::thread::sleep(Duration::from_millis(5));
                let mut holder = String::new();
                let _ = std::io::Seek::rewind(&mut f);
                let _ = f.read_to_string(&mut holder);
                let holder = if holder.split(' ').count() == 3 {
                    holder
                } else {
                    "? ? 0".into()
                };
                append(&format!(
                    "C {run} {seq} {pid} {nonce} {label} {kind} {holder}\n"
                ));
            }
        }
        append(&format!("S {run} {seq} {pid} {nonce} {label} {kind}\n"));
        Execution {
            run,
            seq,
            pid,
            nonce,
            kind,
            _lock: lock,
        }
    }

    /// Record how the execution ended (`E` or `F`); the lock is released after the record.
    fn end(self, failed: bool) -> u64 {
        let label = paths().map_or("?", |p| p.label.as_str());
        append(&format!(
            "{} {} {} {} {} {label} {}\n",
            if failed { 'F' } else { 'E' },
            self.run,
            self.seq,
            self.pid,
            self.nonce,
            self.kind
        ));
        self.nonce
    }
}

fn torture_step(ctx: &StepCtx, input: StepIn) -> Result<StepOut, StepError> {
    let kind = if matches!(input.kind, KIND_CHILD | KIND_POOL) {
        'c'
    } else {
        'i'
    };
    let exec = Execution::start(ctx.run_id(), ctx.seq(), kind);
    std::thread::sleep(Duration::from_millis(input.ms));
    if input.fail {
        exec.end(true);
        return Err(StepError::permanent(format!(
            "torture run {} fails at seq {} by design",
            input.index,
            ctx.seq()
        )));
    }
    let value = step_value(input.index, ctx.seq() as u64, input.prev);
    let nonce = exec.end(false);
    Ok(StepOut { value, nonce })
}

/// The command a command step runs: a shell whose background job does the work (this binary's
/// `torture-step` mode), so the lock holder is the step leader's grandchild.
fn command_spec(run: i64, seq: u32, input: &StepIn) -> Result<CommandSpec, WorkflowError> {
    let exe = std::env::current_exe()
        .map_err(|e| WorkflowError::Failed(format!("cannot find this binary: {e}")))?;
    let mut spec = CommandSpec::new("sh", &["-c", "\"$0\" torture-step \"$@\" & wait $!"]);
    spec.args.push(exe.to_string_lossy().into_owned());
    for (k, v) in [
        ("--run", run.to_string()),
        ("--seq", seq.to_string()),
        ("--index", input.index.to_string()),
        ("--prev", input.prev.to_string()),
        ("--ms", input.ms.to_string()),
    ] {
        spec.args.push(k.into());
        spec.args.push(v);
    }
    Ok(spec)
}

fn torture_workflow(ctx: &mut Ctx<'_>, input: RunIn) -> Result<u64, WorkflowError> {
    let mut prev = input.index;
    // The journal sequence number of each entry: steps compute and lock by it.
    let mut seq = 0u32;
    for k in 0..=input.steps {
        for (_, w) in input.waits.iter().filter(|(at, _)| *at == k) {
            match w {
                Wait::Sleep { ms } => {
                    ctx.sleep(Duration::from_millis(*ms))?;
                    seq += 1;
                }
                Wait::Event => {
                    let payload =
                        ctx.wait_event::<u64>(EVENT, EVENT_TIMEOUT)?
                            .ok_or_else(|| {
                                WorkflowError::Failed(format!(
                                    "run {} timed out waiting for event '{EVENT}'",
                                    input.index
                                ))
                            })?;
                    prev = event_mix(prev, payload);
                    seq += 2;
                }
            }
        }
        if k == input.steps {
            break;
        }
        let kind = input.kinds.get(k as usize).copied().unwrap_or(0);
        let step_in = StepIn {
            index: input.index,
            prev,
            fail: input.fail_at == Some(k),
            ms: input.step_ms + input.extra_ms.get(k as usize).copied().unwrap_or(0),
            kind,
        };
        let out = match kind {
            KIND_COMMAND => {
                let spec = command_spec(ctx.run_id(), seq, &step_in)?;
                let out = ctx.step(CMD, &spec)?;
                parse_command_stdout(&out.stdout).ok_or_else(|| {
                    WorkflowError::Failed(format!(
                        "command step {seq} printed {:?}, not VALUE NONCE",
                        String::from_utf8_lossy(&out.stdout)
                    ))
                })?
            }
            KIND_CHILD => ctx.step(CHILD_STEP, &step_in)?,
            KIND_POOL => ctx.step(POOL_STEP, &step_in)?,
            _ => ctx.step(STEP, &step_in)?,
        };
        prev = out.value;
        seq += 1;
    }
    Ok(prev)
}

/// Register the torture workload (the engine's registry, and the step children's: the
/// binary's child hook serves `torture.child`).
pub fn register(reg: &mut Registry) {
    // Kills, pauses and shutdowns interrupt steps, never fail them: a retry is re-executed
    // by the same engine, which the harness reports unless that engine lost the run.
    let retry = RetryPolicy {
        attempts_max: 1000,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..RetryPolicy::default()
    };
    let o = reg.step(STEP, torture_step);
    o.isolation = Some(Isolation::InProcess);
    o.retry = Some(retry.clone());
    let o = reg.step(CHILD_STEP, torture_step);
    o.isolation = Some(Isolation::Child);
    o.retry = Some(retry.clone());
    let o = reg.step(POOL_STEP, torture_step);
    o.isolation = Some(Isolation::Pool);
    o.retry = Some(retry.clone());
    reg.command(CMD).retry = Some(retry);
    reg.workflow(WORKFLOW, torture_workflow);
}

/// Arguments of the hidden `waymark torture-step` helper (a command step's grandchild).
#[derive(clap::Args, Debug)]
pub struct StepArgs {
    #[arg(long)]
    pub run: i64,
    #[arg(long)]
    pub seq: i64,
    #[arg(long)]
    pub index: u64,
    #[arg(long)]
    pub prev: u64,
    #[arg(long)]
    pub ms: u64,
}

/// `waymark torture-step`: one command step's work, holding the (run, seq) lock; prints
/// `VALUE NONCE`.
pub fn step_helper(args: StepArgs) -> super::super::CliResult {
    let exec = Execution::start(args.run, args.seq, 'x');
    std::thread::sleep(Duration::from_millis(args.ms));
    let value = step_value(args.index, args.seq as u64, args.prev);
    let nonce = exec.end(false);
    println!("{value} {nonce}");
    Ok(0)
}

/// Arguments of the hidden `waymark torture-engine` subcommand.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    #[arg(long)]
    pub db: PathBuf,
    /// The harness's directory (effects file, lock files, finish and shutdown flags).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    #[arg(long, default_value_t = 2000)]
    pub lease_ttl_ms: u64,
    /// `Config::shutdown_grace` in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub shutdown_grace_ms: u64,
}

/// Run an engine on the torture workload until the harness's finish flag exists and no run
/// is active, or until SIGTERM or the harness's shutdown flag for this engine
/// (`DIR/shutdown-LABEL`: the API's clean shutdown); then shut down cleanly.
pub fn engine(args: EngineArgs) -> super::super::CliResult {
    let terminate = super::super::on_sigterm();
    let mut reg = Registry::new();
    register(&mut reg);
    let mut config = Config::new(&args.db).with_lease_ttl(Duration::from_millis(args.lease_ttl_ms));
    config.workers = args.workers.max(1);
    config.shutdown_grace = Duration::from_millis(args.shutdown_grace_ms);
    // Kills are the point here: never poison a run for being interrupted often.
    config.interruptions_max = i64::MAX / 2;
    let engine = Engine::start(reg, config).map_err(|e| e.to_string())?;
    let finish = args.dir.join("finish");
    let label = paths().map_or("?".to_string(), |p| p.label.clone());
    let shutdown_flag = args.dir.join(format!("shutdown-{label}"));
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if terminate.load(std::sync::atomic::Ordering::SeqCst) || shutdown_flag.exists() {
            engine.shutdown().map_err(|e| e.to_string())?;
            return Ok(0);
        }
        if !finish.exists() {
            continue;
        }
        let counts = engine.store().stats().map_err(|e| e.to_string())?;
        let active: i64 = counts
            .iter()
            .filter(|(s, _)| matches!(s.as_str(), "pending" | "running" | "suspended"))
            .map(|(_, n)| n)
            .sum();
        if active == 0 {
            engine.shutdown().map_err(|e| e.to_string())?;
            return Ok(0);
        }
    }
}
