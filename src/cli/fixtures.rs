//! `waymark serve` and `waymark start`: an engine with the built-in workflows, and a way to
//! enqueue their runs from scripts. The `fixture.*` workflows exist for the kill-and-restart
//! tests: each does something a test needs to observe or provoke.

use super::demo::{self, record_effect, DemoInput};
use super::CliResult;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use waymark::child::{CommandOutput, CommandSpec};
use waymark::clock::SystemClock;
use waymark::store::{Done, NewRun, Op, Store, StoreOptions};
use waymark::{
    Config, Ctx, Engine, Isolation, Registry, RetryPolicy, Step, StepCtx, StepError, Workflow,
    WorkflowError,
};

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
pub const HOG: Step<u64, u64> = Step::new("fixture.hog");
pub const SPIN: Step<SpinIn, ()> = Step::new("fixture.spin");
pub const PANIC: Step<String, ()> = Step::new("fixture.panic");
pub const ABORT: Step<String, ()> = Step::new("fixture.abort");
pub const STACK: Step<u64, u64> = Step::new("fixture.stack");
pub const FLOOD: Step<(u64, u64), u64> = Step::new("fixture.flood");
pub const GARBAGE: Step<(), ()> = Step::new("fixture.garbage");
pub const THREADS: Step<u32, u32> = Step::new("fixture.threads");
pub const ORPHAN: Step<OrphanIn, String> = Step::new("fixture.orphan");
pub const QUICK: Step<u64, u64> = Step::new("fixture.quick");
pub const LEAK: Step<u64, u64> = Step::new("fixture.leak");
pub const BURN: Step<u64, u64> = Step::new("fixture.burn");
pub const CMD: Step<CommandSpec, CommandOutput> = Step::new("fixture.cmd");
/// Starts a background grandchild (`sleep 600`, in the step's process group), writes its
/// pid to the file named by the input, and returns at once, leaving it running.
pub const BG: Step<String, u32> = Step::new("fixture.bg");
pub const PROBE: Workflow<Probe, String> = Workflow::new("fixture.probe");
pub const SLOW: Workflow<SlowIn, u64> = Workflow::new("fixture.slow");
pub const CRASHER: Workflow<(), ()> = Workflow::new("fixture.crash");
pub const NONDET: Workflow<SlowIn, u64> = Workflow::new("fixture.nondet");
pub const FLAKY: Workflow<FlakyIn, u64> = Workflow::new("fixture.flaky");
pub const FLAKY_STEP: Step<FlakyIn, u64> = Step::new("fixture.flaky");

/// Input of `fixture.flaky`: one step (default retry policy, 3 attempts) that sleeps `ms`,
/// then fails the first time it gets that far (it creates `marker`) and succeeds after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlakyIn {
    pub ms: u64,
    pub marker: String,
}

fn sleep_step(ctx: &StepCtx, ms: u64) -> Result<u64, StepError> {
    record_effect(ctx, "sleep");
    // Overlap detector: hold an exclusive lock on a file named after (run, seq) while the step
    // runs. A second execution of the same (run, seq) that finds it held records "overlap":
    // two executions of one step ran at once, in this process or any other.
    let _lock = overlap_lock(ctx);
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ctx.seq() as u64 * 10 + ms)
}

/// Take the (run, seq) overlap lock beside the effects file, recording "overlap" if another
/// execution holds it. The lock is released when the returned file is dropped (or the
/// process dies).
pub fn overlap_lock(ctx: &StepCtx) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let effects = std::env::var_os("WAYMARK_DEMO_EFFECTS")?;
    let path = format!(
        "{}.lock.{}.{}",
        std::path::Path::new(&effects).display(),
        ctx.run_id(),
        ctx.seq()
    );
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        record_effect(ctx, "overlap");
    }
    Some(f)
}

/// Input of `fixture.spin`: start a grandchild (`sleep 600`), write its pid to `pid_file`,
/// then burn CPU (`spin`) or sleep forever.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpinIn {
    pub pid_file: String,
    pub spin: bool,
}

/// Input of `fixture.orphan`: attempt 1 writes its pid to `pid_file` and sleeps `ms`
/// (surviving its engine if `WAYMARK_TEST_BLOCK_PDEATHSIG` is set); later attempts report
/// whether that first child was still alive when they started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrphanIn {
    pub pid_file: String,
    pub ms: u64,
}

/// One call of one fixture step (workflow `fixture.probe`), for isolation tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Probe {
    Hog(u64),
    Spin(SpinIn),
    Panic(String),
    Abort(String),
    Stack(u64),
    Flood(u64, u64),
    Garbage,
    Threads(u32),
    Orphan(OrphanIn),
    Quick(u64),
    Sleep(u64),
    Cmd(CommandSpec),
    Bg(String),
}

fn hog_step(ctx: &StepCtx, bytes: u64) -> Result<u64, StepError> {
    record_effect(ctx, "hog");
    let chunk = 16 * 1024 * 1024usize;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while total < bytes {
        let mut v = vec![0u8; chunk];
        for i in (0..chunk).step_by(4096) {
            v[i] = 1;
        }
        total += chunk as u64;
        held.push(std::hint::black_box(v));
    }
    Ok(held.len() as u64)
}

fn spin_step(ctx: &StepCtx, input: SpinIn) -> Result<(), StepError> {
    record_effect(ctx, "spin");
    let child = std::process::Command::new("sleep").arg("600").spawn()?;
    std::fs::write(&input.pid_file, child.id().to_string())?;
    std::mem::forget(child);
    let mut x = 0u64;
    loop {
        if input.spin {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn abort_step(_: &StepCtx, msg: String) -> Result<(), StepError> {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("second panic while unwinding");
        }
    }
    let _bomb = PanicOnDrop;
    panic!("{msg}");
}

fn stack_step(_: &StepCtx, depth: u64) -> Result<u64, StepError> {
    fn recurse(n: u64) -> u64 {
        let buf = std::hint::black_box([n as u8; 4096]);
        if n == 0 {
            return buf[0] as u64;
        }
        recurse(n - 1).wrapping_add(buf[100] as u64)
    }
    Ok(recurse(depth))
}

fn flood_step(_: &StepCtx, (out, err): (u64, u64)) -> Result<u64, StepError> {
    let line = [b'x'; 8192];
    let (mut o, mut e) = (std::io::stdout().lock(), std::io::stderr().lock());
    let (mut wo, mut we) = (0u64, 0u64);
    while wo < out || we < err {
        if wo < out {
            o.write_all(&line)?;
            wo += line.len() as u64;
        }
        if we < err {
            e.write_all(&line)?;
            we += line.len() as u64;
        }
    }
    Ok(wo + we)
}

fn garbage_step(_: &StepCtx, _: ()) -> Result<(), StepError> {
    let fd = waymark::child::hook::protocol_fd_for_tests();
    let junk = b"this is not a frame at all\n";
    // SAFETY: write(2) of a valid buffer to the protocol descriptor of this child.
    unsafe {
        libc::write(fd, junk.as_ptr().cast(), junk.len());
    }
    std::thread::sleep(Duration::from_secs(30));
    Ok(())
}

fn threads_step(_: &StepCtx, n: u32) -> Result<u32, StepError> {
    let barrier = Arc::new(std::sync::Barrier::new(n as usize + 1));
    let mut handles = Vec::new();
    for i in 0..n {
        let b = barrier.clone();
        handles.push(
            std::thread::Builder::new()
                .spawn(move || {
                    b.wait();
                })
                .map_err(|e| StepError::permanent(format!("starting thread {i} of {n}: {e}")))?,
        );
    }
    barrier.wait();
    for h in handles {
        let _ = h.join();
    }
    Ok(n)
}

fn orphan_step(ctx: &StepCtx, input: OrphanIn) -> Result<String, StepError> {
    if ctx.attempt() == 1 {
        if std::env::var_os("WAYMARK_TEST_BLOCK_PDEATHSIG").is_some() {
            waymark::child::hook::detach_from_parent_for_tests();
        }
        std::fs::write(&input.pid_file, std::process::id().to_string())?;
        record_effect(ctx, "orphan-first");
        std::thread::sleep(Duration::from_millis(input.ms));
        return Ok("first".into());
    }
    let old: u32 = std::fs::read_to_string(&input.pid_file)?
        .trim()
        .parse()
        .map_err(StepError::permanent)?;
    let alive = waymark::host::pid_start_time(old).is_some();
    record_effect(ctx, &format!("orphan-again old-alive={alive}"));
    Ok(format!("old-alive={alive}"))
}

fn probe(ctx: &mut Ctx<'_>, p: Probe) -> Result<String, WorkflowError> {
    Ok(match p {
        Probe::Hog(n) => format!("{}", ctx.step(HOG, &n)?),
        Probe::Spin(s) => format!("{:?}", ctx.step(SPIN, &s)?),
        Probe::Panic(m) => format!("{:?}", ctx.step(PANIC, &m)?),
        Probe::Abort(m) => format!("{:?}", ctx.step(ABORT, &m)?),
        Probe::Stack(n) => format!("{}", ctx.step(STACK, &n)?),
        Probe::Flood(o, e) => format!("{}", ctx.step(FLOOD, &(o, e))?),
        Probe::Garbage => format!("{:?}", ctx.step(GARBAGE, &())?),
        Probe::Threads(n) => format!("{}", ctx.step(THREADS, &n)?),
        Probe::Orphan(o) => ctx.step(ORPHAN, &o)?,
        Probe::Quick(n) => format!("{}", ctx.step(QUICK, &n)?),
        Probe::Sleep(ms) => format!("{}", ctx.step(SLEEP, &ms)?),
        Probe::Bg(pid_file) => format!("{}", ctx.step(BG, &pid_file)?),
        Probe::Cmd(c) => {
            let out = ctx.step(CMD, &c)?;
            format!(
                "exit={} stdout_bytes={} truncated={} stdout_kept={} stderr_kept={} marker={}",
                out.exit_code,
                out.stdout_bytes,
                out.stdout_truncated,
                out.stdout.len(),
                out.stderr.len(),
                String::from_utf8_lossy(&out.stdout).contains("bytes truncated ...]")
            )
        }
    })
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
    // Kills the *engine* mid-step (kill-and-restart tests): it must run in-process.
    reg.step(CRASH, crash_step).isolation = Some(Isolation::InProcess);
    reg.step(HOG, hog_step).retry = Some(RetryPolicy::never());
    reg.step(SPIN, spin_step).retry = Some(RetryPolicy::never());
    reg.step(PANIC, |_, m: String| -> Result<(), StepError> {
        panic!("{m}")
    })
    .retry = Some(RetryPolicy::never());
    reg.step(ABORT, abort_step).retry = Some(RetryPolicy::never());
    reg.step(STACK, stack_step).retry = Some(RetryPolicy::never());
    reg.step(FLOOD, flood_step).retry = Some(RetryPolicy::never());
    reg.step(GARBAGE, garbage_step).retry = Some(RetryPolicy::never());
    reg.step(THREADS, threads_step).retry = Some(RetryPolicy::never());
    reg.step(ORPHAN, orphan_step);
    reg.step(QUICK, |_, n: u64| Ok(n + 1));
    // Burns `ms` milliseconds of CPU time, then returns.
    reg.step(BURN, |_, ms: u64| {
        let start = waymark::child::limits::process_cpu_time();
        let mut x = 0u64;
        while (waymark::child::limits::process_cpu_time() - start).as_millis() < ms as u128 {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        Ok(ms)
    });
    // Keeps `n` bytes resident for the rest of the process (pool recycling tests).
    reg.step(LEAK, |_, n: u64| {
        let v = vec![1u8; n as usize];
        Ok(Vec::leak(v).len() as u64)
    });
    reg.command(CMD).retry = Some(RetryPolicy::never());
    reg.step(BG, |_, pid_file: String| {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::fs::write(&pid_file, child.id().to_string())?;
        let pid = child.id();
        std::mem::forget(child);
        Ok(pid)
    })
    .retry = Some(RetryPolicy::never());
    reg.workflow(PROBE, probe);
    reg.step(A, |_, ()| Ok(1));
    reg.step(B, |_, ()| Ok(2));
    reg.workflow(SLOW, slow);
    reg.workflow(CRASHER, |ctx, ()| ctx.step(CRASH, &()));
    reg.workflow(NONDET, nondet);
    reg.step(FLAKY_STEP, |ctx, input: FlakyIn| {
        record_effect(ctx, "flaky");
        std::thread::sleep(Duration::from_millis(input.ms));
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&input.marker)
            .is_ok()
        {
            return Err(StepError::retryable("first completed execution fails"));
        }
        Ok(ctx.attempt() as u64)
    });
    reg.workflow(FLAKY, |ctx, input: FlakyIn| ctx.step(FLAKY_STEP, &input));
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

/// Every built-in workflow and step (the demo's and the fixtures'): what `serve`, `demo`
/// and step children of this binary register.
pub fn registry() -> Registry {
    let mut reg = Registry::new();
    demo::register(&mut reg);
    register(&mut reg);
    super::bench::register(&mut reg);
    super::fixtures_features::register(&mut reg);
    super::fixtures_logs::register(&mut reg);
    // The torture engine's child steps run in children of this binary.
    super::torture::register(&mut reg);
    reg
}

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
        "fixture.flaky" => encode::<FlakyIn>(&args.json)?,
        "fixture.crash" => encode::<()>(&args.json)?,
        "fixture.probe" => encode::<Probe>(&args.json)?,
        other if super::fixtures_features::is_fixture(other) => {
            super::fixtures_features::encode_input(other, &args.json)?
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
        "data" => waymark::child::MemoryRlimit::Data,
        "as" => waymark::child::MemoryRlimit::AddressSpace,
        other => return Err(format!("bad --rlimit '{other}': expected data or as")),
    };
    waymark::child::limits::apply_memory_rlimit(which, mib * 1024 * 1024)
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
