//! `waymark serve` and `waymark start`: an engine with the built-in workflows, and a way to
//! enqueue their runs from scripts. The `fixture.*` workflows exist for the kill-and-restart
//! tests: each does something a test needs to observe or provoke.

use super::demo::{self, record_effect, DemoInput};
use super::CliResult;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use waymark::clock::SystemClock;
use waymark::store::{Done, NewRun, Op, Store, StoreOptions};
use waymark::{Config, Ctx, Engine, Registry, Step, StepCtx, StepError, Workflow, WorkflowError};

/// Steps of `fixture.slow`: how many and how long each sleeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowIn {
    pub steps: u32,
    pub ms: u64,
}

pub const SLEEP: Step<u64, u64> = Step::new("fixture.sleep");
pub const CRASH: Step<(), ()> = Step::new("fixture.crash");
pub const A: Step<(), u64> = Step::new("fixture.a");
pub const B: Step<(), u64> = Step::new("fixture.b");
pub const SLOW: Workflow<SlowIn, u64> = Workflow::new("fixture.slow");
pub const CRASHER: Workflow<(), ()> = Workflow::new("fixture.crash");
pub const NONDET: Workflow<SlowIn, u64> = Workflow::new("fixture.nondet");

fn sleep_step(ctx: &StepCtx, ms: u64) -> Result<u64, StepError> {
    record_effect(ctx, "sleep");
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ctx.seq() as u64 * 10 + ms)
}

fn crash_step(ctx: &StepCtx, _: ()) -> Result<(), StepError> {
    record_effect(ctx, "crash");
    // SAFETY: kill(2) on our own pid; this fixture exists to die mid-step.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    Ok(())
}

fn slow(ctx: &mut Ctx<'_>, input: SlowIn) -> Result<u64, WorkflowError> {
    let mut total = 0;
    for _ in 0..input.steps {
        total += ctx.step(SLEEP, &input.ms)?;
    }
    Ok(total)
}

fn nondet(ctx: &mut Ctx<'_>, input: SlowIn) -> Result<u64, WorkflowError> {
    let first = if std::env::var_os("WAYMARK_FIXTURE_NONDET").is_some() {
        ctx.step(B, &())?
    } else {
        ctx.step(A, &())?
    };
    Ok(first + slow(ctx, input)?)
}

/// Register the fixture workflows and steps.
pub fn register(reg: &mut Registry) {
    reg.step(SLEEP, sleep_step);
    reg.step(CRASH, crash_step);
    reg.step(A, |_, ()| Ok(1));
    reg.step(B, |_, ()| Ok(2));
    reg.workflow(SLOW, slow);
    reg.workflow(CRASHER, |ctx, ()| ctx.step(CRASH, &()));
    reg.workflow(NONDET, nondet);
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Lease TTL in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub lease_ttl_ms: u64,
    /// Exit 0 once no run is pending, running or suspended.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// `synchronous=NORMAL` (documented opt-in: may lose the last commits on power loss).
    #[arg(long)]
    pub sync_normal: bool,
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Workflow name (demo, fixture.slow, fixture.crash, fixture.nondet).
    pub workflow: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Input as JSON.
    #[arg(long, default_value = "null")]
    pub json: String,
    /// Idempotency key (with --count, the prefix of KEY-1..KEY-N).
    #[arg(long)]
    pub key: Option<String>,
    /// Start this many runs with the same input.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Queue of the runs.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Priority of the runs (higher first).
    #[arg(long, default_value_t = 0)]
    pub priority: i64,
    /// Do not start before this time (ms since the Unix epoch).
    #[arg(long)]
    pub not_before_ms: Option<i64>,
    /// Fail the runs if not finished by this time (ms since the Unix epoch).
    #[arg(long)]
    pub deadline_ms: Option<i64>,
    /// Workflow version the runs are started under.
    #[arg(long, default_value_t = 1)]
    pub workflow_version: i64,
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    demo::register(&mut reg);
    register(&mut reg);
    super::fixtures_features::register(&mut reg);
    reg
}

pub fn serve(args: ServeArgs) -> CliResult {
    let mut config = Config::new(&args.db).with_lease_ttl(Duration::from_millis(args.lease_ttl_ms));
    config.workers = args.workers.max(1);
    if args.sync_normal {
        config.synchronous = waymark::Synchronous::Normal;
    }
    let engine = Engine::start(registry(), config).map_err(|e| e.to_string())?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if args.exit_when_idle {
            let counts = engine
                .store()
                .read(waymark::store::queries::stats)
                .map_err(|e| e.to_string())?;
            let active = counts
                .iter()
                .filter(|(s, _)| matches!(s.as_str(), "pending" | "running" | "suspended"))
                .map(|(_, n)| n)
                .sum::<i64>();
            if active == 0 {
                engine.shutdown().map_err(|e| e.to_string())?;
                return Ok(0);
            }
        }
    }
}

fn encode<T: DeserializeOwned + Serialize>(json: &str) -> Result<Vec<u8>, String> {
    let value: T = serde_json::from_str(json).map_err(|e| format!("bad --json input: {e}"))?;
    waymark::codec::encode(&value, waymark::codec::PAYLOAD_BYTES_MAX).map_err(|e| e.to_string())
}

pub fn start(args: StartArgs) -> CliResult {
    let input = match args.workflow.as_str() {
        "demo" => encode::<DemoInput>(&args.json)?,
        "fixture.slow" | "fixture.nondet" => encode::<SlowIn>(&args.json)?,
        "fixture.crash" => encode::<()>(&args.json)?,
        other if super::fixtures_features::is_fixture(other) => {
            super::fixtures_features::encode_input(other, &args.json)?
        }
        other => return Err(format!("unknown workflow '{other}': built-in workflows are demo, fixture.slow, fixture.crash, fixture.nondet")),
    };
    let store = Store::open(
        &args.db,
        &StoreOptions::default(),
        Arc::new(SystemClock::from_env()),
    )
    .map_err(|e| e.to_string())?;
    let runs: Vec<NewRun> = (1..=args.count)
        .map(|i| NewRun {
            workflow: args.workflow.clone(),
            version: args.workflow_version,
            input: input.clone(),
            idempotency_key: args.key.as_ref().map(|k| {
                if args.count == 1 {
                    k.clone()
                } else {
                    format!("{k}-{i}")
                }
            }),
            queue: args.queue.clone(),
            priority: args.priority,
            ready_at: args.not_before_ms,
            parent_id: None,
            deadline_at: args.deadline_ms,
        })
        .collect();
    match store
        .call(Op::EnqueueMany(runs))
        .map_err(|e| e.to_string())?
    {
        Done::Runs(ids) => {
            for (id, _) in ids {
                println!("{id}");
            }
            Ok(0)
        }
        _ => Err("unexpected answer from the writer".into()),
    }
}
