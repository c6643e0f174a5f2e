//! Workloads of scale: several engine processes on one file (M1) and queue depth (Q1).
//!
//! M1: `n` one-step runs are pre-queued, then 16 workers in all drain them, in 1, 2, 4 or
//! 8 engine processes (`bench --child serve`: what `waymark serve --in-process
//! --exit-when-idle` does, plus its writer's commit count on stdout). Rate from the first
//! spawn until the parent sees every run finished; each process's ratio to one process; and
//! every call that failed with the lock in a child ("BUSY reaching a caller"), which must
//! be 0.
//!
//! Q1: the same in-process drain with a shallow and a deep queue: throughput must not fall
//! with queue depth.

use super::cost::Meter;
use super::report::Row;
use super::workloads::{count_at, drain, err, prequeue, wait_finished_at, BenchCtx, FAILED, ONE};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Workers of all M1 engine processes together.
const M1_WORKERS_TOTAL: usize = 16;
/// Process counts of M1.
const M1_PROCESSES: [usize; 4] = [1, 2, 4, 8];
/// An M1 or Q1 drain that takes longer fails the bench.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1200);

/// What one M1 configuration measured.
struct M1Result {
    rate: f64,
    busy: u64,
    /// Log lines of the children that mention the lock (warnings inside the engines).
    lock_log_lines: u64,
    /// Busy-handler sleeps (waits for another process's write lock) per commit, all
    /// processes.
    lock_waits_per_commit: f64,
    /// The writer threads' on-CPU time, all processes, as a share of the drain's wall time.
    writers_busy: f64,
    cost: super::cost::Cost,
}

/// M1: rows for 1, 2, 4 and 8 processes, 16 workers in all.
pub fn m1_processes(ctx: &BenchCtx) -> Result<Vec<Row>, String> {
    let n = ctx.sizes.m1_runs;
    let mut rows = Vec::new();
    let mut solo = None;
    let mut busy_total = 0;
    for procs in M1_PROCESSES {
        let workers = M1_WORKERS_TOTAL / procs;
        let r = m1_run(ctx, procs, workers, n)?;
        busy_total += r.busy;
        let what = format!(
            "{n} pre-queued one-step runs, {procs} engine process(es) x {workers} workers \
             ({} log lines about the lock; {:.1} lock waits of {} µs per commit; writers on a \
             CPU {:.0}% of the time)",
            r.lock_log_lines,
            r.lock_waits_per_commit,
            waymark::internal::store::pragmas::BUSY_SLEEP.as_micros(),
            r.writers_busy * 100.0
        );
        let mut row = Row::new("M1", what, r.rate, "runs/s").cost(r.cost);
        match solo {
            None => solo = Some(r.rate),
            Some(one) => row = row.baseline("M1 1 process", one).ratio_goal(0.5),
        }
        rows.push(row);
    }
    rows.push(
        Row::new(
            "M1",
            "BUSY errors reaching a caller, all M1 processes",
            busy_total as f64,
            "errors",
        )
        .max_goal(0.0),
    );
    Ok(rows)
}

/// `bench --child serve` on `db` with `workers` in-process workers, stderr to `log`.
pub(super) fn spawn_engine(db: &Path, workers: usize, log: &Path) -> Result<Child, String> {
    let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(std::env::current_exe().map_err(err)?)
        .args([
            "bench",
            "--child",
            "serve",
            "--child-n",
            &workers.to_string(),
            "--child-db",
        ])
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| format!("spawning an M1 engine process: {e}"))
}

fn m1_run(ctx: &BenchCtx, procs: usize, workers: usize, n: u64) -> Result<M1Result, String> {
    let db = ctx.db(&format!("m1-{procs}.db"));
    prequeue(&db, ONE, n)?;
    let logs: Vec<_> = (0..procs)
        .map(|i| ctx.db(&format!("m1-{procs}-{i}.log")))
        .collect();
    let meter = Meter::start(None);
    let t = Instant::now();
    let mut children = Vec::new();
    let mut drained = Ok(());
    for log in &logs {
        match spawn_engine(&db, workers, log) {
            Ok(c) => children.push(c),
            Err(e) => {
                drained = Err(e);
                break;
            }
        }
    }
    let drained = drained.and_then(|()| wait_finished_at(&db, n as i64, DRAIN_TIMEOUT));
    let secs = t.elapsed().as_secs_f64();
    if let Err(e) = drained {
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(format!("M1 with {procs} processes: {e}"));
    }
    let (mut busy, mut commits, mut sleeps, mut writer_us) = (0, 0, 0, 0);
    for (c, log) in children.into_iter().zip(&logs) {
        let out = c.wait_with_output().map_err(err)?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "an M1 engine process exited with {}: {}",
                out.status,
                tail.lines().last().unwrap_or("")
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("M1 engine process output: {e}"))?;
        busy += v["busy"].as_u64().unwrap_or(0);
        commits += v["commits"].as_u64().unwrap_or(0);
        sleeps += v["busy_sleeps"].as_u64().unwrap_or(0);
        writer_us += v["writer_cpu_us"].as_u64().unwrap_or(0);
    }
    let cost = meter.finish("run", n, Some(commits));
    let failed = count_at(&db, FAILED)?;
    if failed > 0 {
        return Err(format!("M1 with {procs} processes: {failed} runs failed"));
    }
    let lock_log_lines = logs
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .lines()
                .filter(|line| is_busy(line))
                .count() as u64
        })
        .sum();
    Ok(M1Result {
        rate: n as f64 / secs,
        busy,
        lock_log_lines,
        lock_waits_per_commit: sleeps as f64 / commits.max(1) as f64,
        writers_busy: writer_us as f64 / 1e6 / secs,
        cost,
    })
}

/// Does this error or log line say the database was locked (SQLITE_BUSY or the writer's
/// `Locked` after `lock_wait_max`)?
pub fn is_busy(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("locked") || m.contains("busy")
}

/// Q1: in-process drain rate with a shallow and a deep pre-queued queue.
pub fn q1_depth(ctx: &BenchCtx) -> Result<Vec<Row>, String> {
    let (shallow, deep) = (ctx.sizes.q1_shallow, ctx.sizes.q1_deep);
    let (secs, group, cost) = drain(ctx, "q1-shallow.db", ONE, shallow, ctx.workers)?;
    let shallow_rate = shallow as f64 / secs;
    let (secs, deep_group, deep_cost) = drain(ctx, "q1-deep.db", ONE, deep, ctx.workers)?;
    Ok(vec![
        Row::new(
            "Q1",
            format!(
                "{shallow} pre-queued one-step runs, {} workers ({group:.1} commands/commit)",
                ctx.workers
            ),
            shallow_rate,
            "runs/s",
        )
        .cost(cost),
        Row::new(
            "Q1",
            format!(
                "{deep} pre-queued one-step runs, {} workers ({deep_group:.1} commands/commit)",
                ctx.workers
            ),
            deep as f64 / secs,
            "runs/s",
        )
        .baseline("Q1 shallow", shallow_rate)
        .ratio_goal(0.8)
        .cost(deep_cost),
    ])
}
