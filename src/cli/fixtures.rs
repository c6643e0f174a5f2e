//! The `fixture.*` workflows: they exist for the kill-and-restart tests; each does something a
//! test needs to observe or provoke.

use super::demo::record_effect;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use waymark::{CommandOutput, CommandSpec};
use waymark::{
    Ctx, Isolation, Registry, RetryPolicy, Step, StepCtx, StepError, Workflow, WorkflowError,
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
    let fd = waymark::internal::isolation::hook::protocol_fd_for_tests();
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
            waymark::internal::isolation::hook::detach_from_parent_for_tests();
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
    let alive = waymark::internal::host::pid_start_time(old).is_some();
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
        let start = waymark::internal::isolation::limits::process_cpu_time();
        let mut x = 0u64;
        while (waymark::internal::isolation::limits::process_cpu_time() - start).as_millis()
            < ms as u128
        {
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
