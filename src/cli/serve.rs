//! `waymark serve` and `waymark start`: an engine with the built-in workflows, and a way to
//! enqueue their runs from scripts; `probe-threads` for the memory-cap measurements.

use super::demo::DemoInput;
use super::fixtures::{FlakyIn, Probe, SlowIn};
use super::{fixtures_durable, registry, CliResult};
use serde::{de::DeserializeOwned, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{Done, NewRun, Op, Store, StoreOptions};
use waymark::{Config, Engine};

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
    /// Run every step on the engine's worker threads (no child processes).
    #[arg(long)]
    pub in_process: bool,
    /// Run Rust steps on warm pooled children (`Isolation::Pool`).
    #[arg(long)]
    pub pool: bool,
    /// Shutdown grace in milliseconds (SIGTERM shuts the engine down cleanly).
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    /// `Config::poll_interval` in milliseconds: how often an idle dispatcher looks for work
    /// and the feature poller looks for cancellations and deadlines.
    #[arg(long)]
    pub poll_interval_ms: Option<u64>,
    /// Test support: set SIGCHLD to SIG_IGN in this host process `before` or `after` the
    /// engine starts (a host that ignores SIGCHLD must not turn failed steps into successes).
    #[arg(long, hide = true)]
    pub ignore_sigchld: Option<String>,
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

/// `waymark serve`: an engine with the built-in workflows until SIGTERM (or idle).
pub fn serve(args: ServeArgs) -> CliResult {
    let mut config = Config::new(&args.db).with_lease_ttl(Duration::from_millis(args.lease_ttl_ms));
    config.workers = args.workers.max(1);
    if args.sync_normal {
        config.synchronous = waymark::Synchronous::Normal;
    }
    if args.in_process {
        config.isolation = waymark::Isolation::InProcess;
    }
    if args.pool {
        config.isolation = waymark::Isolation::Pool;
    }
    if let Some(ms) = args.shutdown_grace_ms {
        config.shutdown_grace = Duration::from_millis(ms);
    }
    if let Some(ms) = args.poll_interval_ms {
        config.poll_interval = Duration::from_millis(ms);
    }
    let ignore_sigchld = || {
        // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    };
    if args.ignore_sigchld.as_deref() == Some("before") {
        ignore_sigchld();
    }
    let engine = Engine::start(registry(), config).map_err(|e| e.to_string())?;
    if args.ignore_sigchld.as_deref() == Some("after") {
        ignore_sigchld();
    }
    let terminate = super::on_sigterm();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if terminate.load(std::sync::atomic::Ordering::SeqCst) {
            log::info!("SIGTERM: shutting down cleanly");
            engine.shutdown().map_err(|e| e.to_string())?;
            return Ok(0);
        }
        if args.exit_when_idle {
            let counts = engine.store().stats().map_err(|e| e.to_string())?;
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
    waymark::internal::codec::encode(&value, waymark::internal::codec::PAYLOAD_BYTES_MAX)
        .map_err(|e| e.to_string())
}

pub fn start(args: StartArgs) -> CliResult {
    let input = match args.workflow.as_str() {
        "demo" => encode::<DemoInput>(&args.json)?,
        "fixture.slow" | "fixture.nondet" => encode::<SlowIn>(&args.json)?,
        "fixture.flaky" => encode::<FlakyIn>(&args.json)?,
        "fixture.crash" => encode::<()>(&args.json)?,
        "fixture.probe" => encode::<Probe>(&args.json)?,
        other if fixtures_durable::is_fixture(other) => {
            fixtures_durable::encode_input(other, &args.json)?
        }
        other => return Err(format!("unknown workflow '{other}': built-in workflows are demo, fixture.slow, fixture.crash, fixture.nondet, fixture.probe, fixture.sleeper, fixture.waiter, fixture.parent, fixture.qprobe, fixture.step_then_wait")),
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

/// `waymark probe-threads`: set the memory rlimit on this process, then start threads (each
/// with std's default stack) until `max` or the first failure; print how many started.
pub fn probe_threads(rlimit: &str, mib: u64, max: u32) -> CliResult {
    let which = match rlimit {
        "data" => waymark::MemoryRlimit::Data,
        "as" => waymark::MemoryRlimit::AddressSpace,
        other => return Err(format!("bad --rlimit '{other}': expected data or as")),
    };
    waymark::internal::isolation::limits::apply_memory_rlimit(which, mib * 1024 * 1024)
        .map_err(|e| format!("setrlimit: {e}"))?;
    let (tx, rx) = crossbeam_channel::bounded::<()>(0);
    let mut started = 0u32;
    let mut error = String::new();
    let mut handles = Vec::new();
    while started < max {
        let rx = rx.clone();
        match std::thread::Builder::new().spawn(move || {
            // Allocate a little on each thread, as real work would (glibc gives each
            // thread its own malloc arena).
            let v = std::hint::black_box(vec![1u8; 1024]);
            let _ = rx.recv();
            v.len()
        }) {
            Ok(h) => {
                handles.push(h);
                started += 1;
            }
            Err(e) => {
                error = e.to_string();
                break;
            }
        }
    }
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    println!("rlimit={rlimit} cap={mib}MiB threads_started={started} first_error={error:?}");
    Ok(0)
}
