//! The machine's own limits, measured in the same run as the workloads: raw rusqlite
//! commits at the engine's synchronous setting on the same file system, bare spawn-and-wait
//! of this binary, and round trips with a warm child of this binary over pipes.

use super::cost::{Cost, Meter};
use super::report::Row;
use super::workloads::BenchCtx;
use rusqlite::{params, Connection};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Baseline figures.
#[derive(Debug, Clone, Copy)]
pub struct Baselines {
    /// Raw one-row commits per second (WAL, synchronous=FULL).
    pub commits_per_s: f64,
    /// Latency of one raw commit: p50 and worst (ms).
    pub commit_p50_ms: f64,
    pub commit_max_ms: f64,
    /// Raw rows per second in 100-row transactions.
    pub batch_rows_per_s: f64,
    /// Spawn-and-wait of this binary per second.
    pub spawns_per_s: f64,
    /// Warm pipe round trips (100-byte messages) per second.
    pub round_trips_per_s: f64,
    /// What B1, B2, B3 and B4 cost per commit, row, spawn and round trip.
    pub costs: [Cost; 4],
}

impl Baselines {
    pub fn rows(&self) -> Vec<Row> {
        vec![
            Row::new(
                "B1",
                "raw SQLite one-row commits (WAL, synchronous=FULL)",
                self.commits_per_s,
                "commits/s",
            )
            .cost(self.costs[0]),
            Row::new(
                "B1",
                "raw SQLite one-row commit latency, p50",
                self.commit_p50_ms,
                "ms",
            )
            .cost(self.costs[0]),
            Row::new(
                "B1",
                "raw SQLite one-row commit latency, worst",
                self.commit_max_ms,
                "ms",
            )
            .cost(self.costs[0]),
            Row::new(
                "B2",
                "raw SQLite inserts, 100 rows a transaction",
                self.batch_rows_per_s,
                "rows/s",
            )
            .cost(self.costs[1]),
            Row::new(
                "B3",
                "spawn-and-wait of the waymark binary",
                self.spawns_per_s,
                "spawns/s",
            )
            .cost(self.costs[2]),
            Row::new(
                "B4",
                "warm child pipe round trips (100 bytes)",
                self.round_trips_per_s,
                "round trips/s",
            )
            .cost(self.costs[3]),
        ]
    }
}

fn raw_conn(ctx: &BenchCtx, name: &str) -> Result<Connection, String> {
    let conn = Connection::open(ctx.dir.join(name)).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL, k TEXT NOT NULL);",
    )
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// One-row commits per second, p50 and worst commit latency (ms).
pub fn raw_commits(ctx: &BenchCtx, n: u64) -> Result<(f64, f64, f64), String> {
    let conn = raw_conn(ctx, "raw-commits.db")?;
    let mut stmt = conn
        .prepare("INSERT INTO t(v, k) VALUES (?1, ?2)")
        .map_err(|e| e.to_string())?;
    let blob = vec![7u8; 64];
    let mut lat = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for i in 0..n {
        let c = Instant::now();
        stmt.execute(params![blob, format!("k{i}")])
            .map_err(|e| e.to_string())?;
        lat.push(c.elapsed().as_secs_f64() * 1000.0);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok((rate, lat[lat.len() / 2], lat[lat.len() - 1]))
}

/// Rows per second inserted 100 to a transaction.
pub fn raw_batches(ctx: &BenchCtx, n: u64) -> Result<f64, String> {
    let conn = raw_conn(ctx, "raw-batches.db")?;
    let blob = vec![7u8; 64];
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string())?;
        {
            let mut stmt = conn
                .prepare_cached("INSERT INTO t(v, k) VALUES (?1, ?2)")
                .map_err(|e| e.to_string())?;
            for _ in 0..100 {
                stmt.execute(params![blob, format!("k{i}")])
                    .map_err(|e| e.to_string())?;
                i += 1;
            }
        }
        conn.execute_batch("COMMIT").map_err(|e| e.to_string())?;
    }
    Ok(i as f64 / t.elapsed().as_secs_f64())
}

fn this_binary() -> Result<std::path::PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the waymark binary: {e}"))
}

/// Spawn-and-wait of `waymark bench --child noop` per second.
pub fn spawns(n: u64) -> Result<f64, String> {
    let exe = this_binary()?;
    let t = Instant::now();
    for _ in 0..n {
        let status = Command::new(&exe)
            .args(["bench", "--child", "noop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("spawning {}: {e}", exe.display()))?;
        if !status.success() {
            return Err(format!("the no-op child exited with {status}"));
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Round trips of 100-byte messages per second with a warm `waymark bench --child echo`.
pub fn round_trips(n: u64) -> Result<f64, String> {
    let exe = this_binary()?;
    let mut child = Command::new(&exe)
        .args(["bench", "--child", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", exe.display()))?;
    let mut input = child.stdin.take().ok_or("no child stdin")?;
    let mut output = child.stdout.take().ok_or("no child stdout")?;
    let msg = [42u8; 100];
    let mut back = [0u8; 100];
    // Warm up: the first exchange includes the child's start-up.
    input.write_all(&msg).map_err(|e| e.to_string())?;
    output.read_exact(&mut back).map_err(|e| e.to_string())?;
    let t = Instant::now();
    for _ in 0..n {
        input.write_all(&msg).map_err(|e| e.to_string())?;
        output.read_exact(&mut back).map_err(|e| e.to_string())?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(input);
    let _ = child.wait();
    if back != msg {
        return Err("the echo child answered garbage".into());
    }
    Ok(rate)
}

/// Measure every baseline.
pub fn measure(ctx: &BenchCtx, progress: &dyn Fn(&str)) -> Result<Baselines, String> {
    let sizes = ctx.sizes;
    let meter = Meter::start(Some(0));
    let (commits_per_s, commit_p50_ms, commit_max_ms) = raw_commits(ctx, sizes.raw_commits)?;
    let b1 = meter.finish("commit", sizes.raw_commits, Some(sizes.raw_commits));
    let meter = Meter::start(Some(0));
    let batch_rows_per_s = raw_batches(ctx, sizes.raw_batch_rows)?;
    let b2 = meter.finish(
        "row",
        sizes.raw_batch_rows,
        Some(sizes.raw_batch_rows / 100),
    );
    progress("baselines: spawn-and-wait, pipe round trips");
    let meter = Meter::start(None);
    let spawns_per_s = spawns(sizes.spawns)?;
    let b3 = meter.finish("spawn", sizes.spawns, None);
    let meter = Meter::start(None);
    let round_trips_per_s = round_trips(sizes.round_trips)?;
    let b4 = meter.finish("round trip", sizes.round_trips, None);
    Ok(Baselines {
        commits_per_s,
        commit_p50_ms,
        commit_max_ms,
        batch_rows_per_s,
        spawns_per_s,
        round_trips_per_s,
        costs: [b1, b2, b3, b4],
    })
}
