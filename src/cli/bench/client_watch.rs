//! C1: how fast a [`waymark::Client`] in another process learns of a commit, and what an
//! idle client costs.
//!
//! The bench process holds a Client (no engine) and cancels pending runs one at a time
//! (each cancel is a commit that ends a run); a child process (`--child watch`) holds a
//! Client subscribed to run changes and prints the wall-clock time at which it received
//! each `cancelled` event. Latency = received - the cancel's return in the bench process
//! (the writer answers after COMMIT), both CLOCK_REALTIME on one host. Then, with nothing
//! writing, the child waits 5 s on a pending run with its subscription open and reports
//! its CPU time over those 5 s (getrusage), as a share of one core.

use super::cost::Meter;
use super::report::Row;
use super::workloads::{BenchCtx, PARKED};
use crate::cli::CliResult;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use waymark::{Client, RunFilter, RunStatus, StartOptions};

/// How long the idle child is measured.
const IDLE_MEASURE: Duration = Duration::from_secs(5);

fn realtime_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills a struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The child: print `seen RUN NS` per cancelled run until `n` were seen, then `idle FRACTION`.
pub fn child(db: &Path, n: u64) -> CliResult {
    let client = Client::open(db).map_err(err)?;
    let sub = client.subscribe().map_err(err)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "ready").map_err(err)?;
    out.flush().map_err(err)?;
    let mut seen = 0;
    while seen < n {
        let Some(ev) = sub.recv_timeout(Duration::from_secs(30)) else {
            return Err("C1 child: no change within 30 s".into());
        };
        if ev.status == RunStatus::Cancelled {
            writeln!(out, "seen {} {}", ev.run_id, realtime_ns()).map_err(err)?;
            out.flush().map_err(err)?;
            seen += 1;
        }
    }
    let pending = client
        .list(&RunFilter::new().status(RunStatus::Pending).limit(1))
        .map_err(err)?;
    let Some(run) = pending.first() else {
        return Err("C1 child: no pending run to wait on".into());
    };
    let before = cpu_seconds();
    let _ = client.wait(run.id, IDLE_MEASURE);
    let used = cpu_seconds() - before;
    writeln!(out, "idle {}", used / IDLE_MEASURE.as_secs_f64()).map_err(err)?;
    out.flush().map_err(err)?;
    drop(sub);
    Ok(0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// C1 rows: cross-process notification latency p50/p99 and idle CPU.
pub fn c1_client_watch(ctx: &BenchCtx, samples: u64) -> Result<Vec<Row>, String> {
    let db = ctx.dir.join("c1.db");
    // An engine creates the file (a client opens existing files only), then goes away.
    waymark::Engine::start(super::workloads::bench_registry(), {
        let mut c = waymark::Config::new(&db);
        c.isolation = waymark::Isolation::InProcess;
        c
    })
    .and_then(|e| e.shutdown())
    .map_err(err)?;
    let meter = Meter::start(None);
    let client = Client::open(&db).map_err(err)?;
    let opts = || StartOptions::default().for_other_build();
    // The run the idle child waits on (never finishes).
    client.start_run(PARKED, &0, opts()).map_err(err)?;
    let exe = std::env::current_exe().map_err(err)?;
    let mut child = Command::new(exe)
        .args(["bench", "--child", "watch", "--child-db"])
        .arg(&db)
        .args(["--child-n", &samples.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(err)?;
    let stdout = child.stdout.take().ok_or("C1: no child stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(l)) if l == "ready" => {}
        other => return Err(format!("C1 child did not start: {other:?}")),
    }
    let mut sent = std::collections::HashMap::new();
    let mut lat = Vec::new();
    for i in 0..samples {
        let id = client.start_run(PARKED, &(i + 1), opts()).map_err(err)?;
        std::thread::sleep(Duration::from_millis(20));
        client.cancel(id).map_err(err)?;
        sent.insert(id, realtime_ns());
        let line = lines.next().ok_or("C1 child ended early")?.map_err(err)?;
        let mut it = line.split_whitespace().skip(1);
        let run: i64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or("C1: bad line")?;
        let ns: i128 = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or("C1: bad line")?;
        if let Some(t) = sent.get(&run) {
            lat.push(((ns - t) as f64 / 1e6).max(0.0));
        }
    }
    let idle: f64 = match lines.next() {
        Some(Ok(l)) if l.starts_with("idle ") => l[5..].trim().parse().map_err(err)?,
        other => return Err(format!("C1: expected the idle figure, got {other:?}")),
    };
    let _ = child.wait();
    // Per sample: a start, a cancel, the child's wake-up; and the child's 5 s idle wait.
    let cost = meter.finish("sample", samples, None);
    lat.sort_by(f64::total_cmp);
    if lat.is_empty() {
        return Err("C1: no samples".into());
    }
    Ok(vec![
        Row::new(
            "C1",
            "commit to Client subscriber in another process, p50",
            percentile(&lat, 0.5),
            "ms",
        )
        .max_goal(10.0)
        .cost(cost),
        Row::new(
            "C1",
            "commit to Client subscriber in another process, p99",
            percentile(&lat, 0.99),
            "ms",
        )
        .cost(cost),
        Row::new(
            "C1",
            "idle Client (subscribed, waiting) CPU, share of one core",
            idle * 100.0,
            "%",
        )
        .max_goal(1.0)
        .cost(cost),
    ])
}
