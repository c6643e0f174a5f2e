//! The torture workload and the engine process that runs it (`waymark torture-engine`).
//!
//! Every step execution has a real, checkable side effect: it appends `S` (started) and
//! `E` (ended) records to the harness's effects file, each naming the run, the sequence
//! number, the pid and a fresh random nonce, and holds an exclusive, non-blocking `flock`
//! on a per-(run, seq) lock file while it runs. Failing to get that lock means another
//! execution of the same step is running at this instant: it appends a `C` record.
//! The step's output carries its nonce, so the harness can tell which execution's result
//! the journal recorded. Everything else about a run is a pure function of its input.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use waymark::{Config, Ctx, Engine, Registry, Step, StepCtx, StepError, Workflow, WorkflowError};

/// Input of one torture run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunIn {
    pub index: u64,
    pub steps: u32,
    /// This sequence number fails permanently (the run is expected to end failed).
    pub fail_at: Option<u32>,
    /// How long each step sleeps, in milliseconds.
    pub step_ms: u64,
}

/// Input of one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepIn {
    pub index: u64,
    pub prev: u64,
    pub fail: bool,
    pub ms: u64,
}

/// Output of one step: the deterministic value, and the nonce of the execution that made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepOut {
    pub value: u64,
    pub nonce: u64,
}

pub const STEP: Step<StepIn, StepOut> = Step::new("torture.step");
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

/// What a run computes without any fault: `Ok(output)` or `Err(failing seq)`.
pub fn expected(input: &RunIn) -> Result<u64, u32> {
    let mut prev = input.index;
    for seq in 0..input.steps {
        if input.fail_at == Some(seq) {
            return Err(seq);
        }
        prev = step_value(input.index, seq as u64, prev);
    }
    Ok(prev)
}

/// The values each step of a run records, in order (up to a failing step).
pub fn expected_values(input: &RunIn) -> Vec<u64> {
    let mut prev = input.index;
    let mut out = Vec::new();
    for seq in 0..input.steps {
        if input.fail_at == Some(seq) {
            break;
        }
        prev = step_value(input.index, seq as u64, prev);
        out.push(prev);
    }
    out
}

struct Paths {
    effects: PathBuf,
    locks: PathBuf,
}

static PATHS: OnceLock<Paths> = OnceLock::new();

fn append(line: &str) {
    let Some(p) = PATHS.get() else { return };
    // One write(2) of a short line on an O_APPEND file: records never interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.effects)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

fn torture_step(ctx: &StepCtx, input: StepIn) -> Result<StepOut, StepError> {
    let (run, seq, pid) = (ctx.run_id(), ctx.seq(), std::process::id());
    let nonce = waymark::host::random_u64();
    let lock = PATHS.get().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p.locks.join(format!("{run}-{seq}")))
            .ok()
    });
    if let Some(f) = &lock {
        // SAFETY: flock(2) on a descriptor we own; it is released when `lock` drops.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            append(&format!("C {run} {seq} {pid} {nonce}\n"));
        }
    }
    append(&format!("S {run} {seq} {pid} {nonce}\n"));
    std::thread::sleep(Duration::from_millis(input.ms));
    if input.fail {
        append(&format!("F {run} {seq} {pid} {nonce}\n"));
        return Err(StepError::permanent(format!(
            "torture run {} fails at seq {seq} by design",
            input.index
        )));
    }
    let value = step_value(input.index, seq as u64, input.prev);
    append(&format!("E {run} {seq} {pid} {nonce}\n"));
    drop(lock);
    Ok(StepOut { value, nonce })
}

fn torture_workflow(ctx: &mut Ctx<'_>, input: RunIn) -> Result<u64, WorkflowError> {
    let mut prev = input.index;
    for seq in 0..input.steps {
        let out = ctx.step(
            STEP,
            &StepIn {
                index: input.index,
                prev,
                fail: input.fail_at == Some(seq),
                ms: input.step_ms,
            },
        )?;
        prev = out.value;
    }
    Ok(prev)
}

/// Register the torture workload.
pub fn register(reg: &mut Registry) {
    reg.step(STEP, torture_step);
    reg.workflow(WORKFLOW, torture_workflow);
}

/// Arguments of the hidden `waymark torture-engine` subcommand.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    #[arg(long)]
    pub db: PathBuf,
    /// The harness's directory (effects file, lock files, finish flag).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    #[arg(long, default_value_t = 2000)]
    pub lease_ttl_ms: u64,
}

/// Run an engine on the torture workload until the harness's finish flag exists and no run
/// is active; then shut down gracefully.
pub fn engine(args: EngineArgs) -> super::super::CliResult {
    let _ = PATHS.set(Paths {
        effects: args.dir.join("effects"),
        locks: args.dir.join("locks"),
    });
    let mut reg = Registry::new();
    register(&mut reg);
    let mut config = Config::new(&args.db).with_lease_ttl(Duration::from_millis(args.lease_ttl_ms));
    config.workers = args.workers.max(1);
    // Kills are the point here: never poison a run for being interrupted often.
    config.interruptions_max = i64::MAX / 2;
    let engine = Engine::start(reg, config).map_err(|e| e.to_string())?;
    let finish = args.dir.join("finish");
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if !finish.exists() {
            continue;
        }
        let counts = engine
            .store()
            .read(waymark::store::queries::stats)
            .map_err(|e| e.to_string())?;
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
