//! The bench's own child processes (`waymark bench --child MODE`).
//!
//! - `noop`: exit 0 at once (spawn-and-wait baseline).
//! - `echo`: answer every 100-byte message on stdin with the same bytes (pipe baseline).
//! - `hold`: register as an engine, enqueue and claim `n` runs, print `ready OWNER`, then
//!   sleep until killed (W7: an engine process holding `n` in-flight runs).
//! - `open` / `open-always`: start an engine on an existing database (default quick_check
//!   policy / check at every open), print the open time and resident memory as JSON (W8).
//! - `fair`: commit one-row writes through the engine's writer for `n` ms, print the worst
//!   and p99 wait per commit as JSON (cross-process fairness).
//! - `serve`: an engine of `n` in-process workers until no run is left, then its commit
//!   count and lock failures as JSON (M1: several engine processes on one file).

use super::workloads::{bench_registry, ONE};
use crate::cli::CliResult;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{Done, EngineRow, NewRun, Op, Store, StoreOptions};
use waymark::{Config, Engine};

pub fn run(mode: &str, db: Option<&Path>, n: u64) -> CliResult {
    let need_db = || db.ok_or_else(|| format!("child mode {mode} needs --child-db"));
    match mode {
        "noop" => Ok(0),
        "echo" => echo(),
        "hold" => hold(need_db()?, n),
        "open" => open(need_db()?, false),
        "open-always" => open(need_db()?, true),
        "fair" => fair(need_db()?, n),
        "serve" => serve(need_db()?, n),
        other => Err(format!("unknown bench child mode '{other}'")),
    }
}

fn echo() -> CliResult {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let (mut input, mut output) = (stdin.lock(), stdout.lock());
    let mut buf = [0u8; 100];
    loop {
        match input.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e.to_string()),
        }
        output.write_all(&buf).map_err(|e| e.to_string())?;
        output.flush().map_err(|e| e.to_string())?;
    }
}

fn open_store(db: &Path) -> Result<Store, String> {
    Store::open(
        db,
        &StoreOptions::default(),
        Arc::new(SystemClock::from_env()),
    )
    .map_err(|e| e.to_string())
}

pub fn new_run(workflow: &str, input: Vec<u8>) -> NewRun {
    NewRun::new(workflow, 1, input)
}

fn hold(db: &Path, n: u64) -> CliResult {
    let store = open_store(db)?;
    let owner: Arc<str> = waymark::internal::host::random_id().into();
    let (pid, pid_start) = waymark::internal::host::this_process();
    store
        .call(Op::RegisterEngine(EngineRow {
            id: owner.clone(),
            pid,
            pid_start,
            boot_id: waymark::internal::host::host_id(),
        }))
        .map_err(|e| e.to_string())?;
    let input = waymark::internal::codec::encode(&1u64, 1024).map_err(|e| e.to_string())?;
    let mut left = n;
    while left > 0 {
        let k = left.min(500);
        let runs = (0..k).map(|_| new_run(ONE.name(), input.clone())).collect();
        store
            .call(Op::EnqueueMany(runs))
            .map_err(|e| e.to_string())?;
        left -= k;
    }
    let claimed = match store
        .call(Op::Claim {
            owner: owner.clone(),
            limit: n as i64,
            workflows_json: format!("[\"{}@1\"]", ONE.name()).into(),
            lease_ms: 60_000,
        })
        .map_err(|e| e.to_string())?
    {
        Done::Claimed(c) => c.len(),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    if claimed as u64 != n {
        return Err(format!("claimed {claimed} runs of {n}"));
    }
    println!("ready {owner}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Resident and peak resident memory of this process, in KiB.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn open(db: &Path, quick_check_always: bool) -> CliResult {
    let mut config = Config::new(db);
    config.quick_check_always = quick_check_always;
    let t = Instant::now();
    let engine = Engine::start(bench_registry(), config).map_err(|e| e.to_string())?;
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;
    // Let the reaper's first pass and the dispatcher's first claim run.
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = rss_kib();
    engine.shutdown().map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::json!({"open_ms": open_ms, "rss_kib": rss, "hwm_kib": hwm})
    );
    Ok(0)
}

fn fair(db: &Path, ms: u64) -> CliResult {
    let store = open_store(db)?;
    let input = waymark::internal::codec::encode(&1u64, 1024).map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_millis(ms);
    let mut waits: Vec<f64> = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        store
            .call(Op::Enqueue(new_run("bench.fair", input.clone())))
            .map_err(|e| e.to_string())?;
        waits.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    waits.sort_by(f64::total_cmp);
    let p = |q: f64| waits[((waits.len() as f64 - 1.0) * q) as usize];
    println!(
        "{}",
        serde_json::json!({"commits": waits.len(), "max_ms": p(1.0), "p99_ms": p(0.99)})
    );
    Ok(0)
}

/// Is a run left that `serve --exit-when-idle` waits for (pending, running, suspended)?
const ACTIVE: &str =
    "SELECT EXISTS (SELECT 1 FROM runs WHERE status IN ('pending', 'running', 'suspended'))";

/// `serve`: what `waymark serve --db DB --in-process --exit-when-idle --workers N` does
/// (same configuration, same idle condition every 100 ms, asked in O(1)), then one JSON line: the writer's
/// commits and commands, how many calls failed with the lock (BUSY reaching a caller:
/// the engine's start, its idle checks, its shutdown), the busy handler's sleeps (waits for
/// another process's write lock) and the writer thread's on-CPU microseconds.
fn serve(db: &Path, workers: u64) -> CliResult {
    let err = |e: waymark::Error| e.to_string();
    let print = |commits: u64, commands: u64, busy: u64, writer_us: u64| {
        println!(
            "{}",
            serde_json::json!({
                "commits": commits,
                "commands": commands,
                "busy": busy,
                "busy_sleeps": waymark::internal::store::pragmas::busy_sleeps(),
                "writer_cpu_us": writer_us,
            })
        );
    };
    let mut config = Config::new(db).with_lease_ttl(Duration::from_millis(15_000));
    config.workers = (workers as usize).max(1);
    config.isolation = waymark::Isolation::InProcess;
    let engine = match Engine::start(bench_registry(), config) {
        Ok(e) => e,
        Err(e) if super::scale::is_busy(&e.to_string()) => {
            log::warn!("engine start failed with the lock: {e}");
            print(0, 0, 1, 0);
            return Ok(0);
        }
        Err(e) => return Err(e.to_string()),
    };
    // Idle detection by one EXISTS over `runs_status` (index seeks), not `engine.stats()`:
    // that counts every run by status, O(runs) per poll in every process (8 processes x 10
    // polls/s over 20,000 runs), work of the observer charged to the engines.
    let mut idle_reader = super::workloads::reader(db)?;
    let mut busy = 0;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        match idle_reader.truth(ACTIVE) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if super::scale::is_busy(&e.to_string()) => busy += 1,
            Err(e) => return Err(e.to_string()),
        }
    }
    let (commits, commands) = engine.store().write_stats();
    // Read while the writer thread still lives.
    let writer_us = super::cost::writer_cpu_ns().unwrap_or(0) / 1000;
    match engine.shutdown() {
        Ok(()) => {}
        Err(e) if super::scale::is_busy(&e.to_string()) => busy += 1,
        Err(e) => return Err(err(e)),
    }
    print(commits, commands, busy, writer_us);
    Ok(0)
}
