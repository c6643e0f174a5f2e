//! The standard workloads. Each builds a fresh database in the bench directory, runs, and
//! returns its rows (value, baseline, ratio, goal). Child-process workloads (W4 cold spawn,
//! W5 warm pool) live with the isolation code and are added beside these.

use super::baseline::Baselines;
use super::children::rss_kib;
use super::cost::{Cost, Meter};
use super::report::Row;
use super::Sizes;
use rusqlite::{params, Connection};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{Store, StoreOptions};
use waymark::{
    Config, Ctx, Engine, Isolation, Registry, StartOptions, Step, Workflow, WorkflowError,
};

/// Where and how big.
#[derive(Debug, Clone)]
pub struct BenchCtx {
    pub dir: PathBuf,
    pub sizes: Sizes,
    pub workers: usize,
    /// W2 pre-queues its runs before its engine starts (the peer bench's workload).
    pub prequeue: bool,
}

impl BenchCtx {
    pub(super) fn db(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Engine config of the in-process workloads.
    pub(super) fn config(&self, db: &Path) -> Config {
        let mut c = Config::new(db);
        c.workers = self.workers;
        c.isolation = Isolation::InProcess;
        c
    }
}

pub const NOOP: Step<u64, u64> = Step::new("bench.noop");
pub const ONE: Workflow<u64, u64> = Workflow::new("bench.one");
pub const THREE: Workflow<u64, u64> = Workflow::new("bench.three");
pub const TEN: Workflow<u64, u64> = Workflow::new("bench.ten");
/// Never registered: runs of it stay pending (W1 measures starts alone).
pub const PARKED: Workflow<u64, u64> = Workflow::new("bench.parked");

fn steps(ctx: &mut Ctx<'_>, x: u64, n: u64) -> Result<u64, WorkflowError> {
    let mut acc = x;
    for _ in 0..n {
        acc = ctx.step(NOOP, &acc)?;
    }
    Ok(acc)
}

/// Register the bench's workflows (one, three and ten no-op steps). Part of the binary's
/// registry, so step children of this binary (W4, W5) can run `bench.noop`.
pub fn register(reg: &mut Registry) {
    reg.step(NOOP, |_, x: u64| Ok(x.wrapping_add(1)));
    reg.workflow(ONE, |ctx, x| steps(ctx, x, 1));
    reg.workflow(THREE, |ctx, x| steps(ctx, x, 3));
    reg.workflow(TEN, |ctx, x| steps(ctx, x, 10));
}

/// The binary's registry (built-in workflows, fixtures and the bench's).
pub fn bench_registry() -> Registry {
    crate::cli::registry()
}

pub(super) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A read-only connection of its own: the bench reads the file as any tool would.
/// A read connection for the bench's own observations: an SQLite file (read-only) or a
/// PostgreSQL database (their statements here read alike in both dialects).
pub(super) enum Reader {
    Sqlite(Connection),
    Postgres(Box<postgres::Client>),
}

impl Reader {
    /// One integer (or a count).
    pub(super) fn int(&mut self, sql: &str) -> Result<i64, String> {
        match self {
            Reader::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).map_err(err),
            Reader::Postgres(c) => c
                .query_one(sql, &[])
                .and_then(|r| r.try_get::<_, i64>(0))
                .map_err(err),
        }
    }

    /// One truth value (`EXISTS`).
    pub(super) fn truth(&mut self, sql: &str) -> Result<bool, String> {
        match self {
            Reader::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).map_err(err),
            Reader::Postgres(c) => c
                .query_one(sql, &[])
                .and_then(|r| r.try_get::<_, bool>(0))
                .map_err(err),
        }
    }
}

pub(super) fn reader(db: &Path) -> Result<Reader, String> {
    if waymark::internal::store::is_postgres(db) {
        let url = db.to_string_lossy();
        let c = postgres::Client::connect(&url, postgres::NoTls).map_err(err)?;
        return Ok(Reader::Postgres(Box::new(c)));
    }
    let conn =
        Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    Ok(Reader::Sqlite(conn))
}

pub(super) fn count_at(db: &Path, sql: &'static str) -> Result<i64, String> {
    reader(db)?.int(sql)
}

fn count(engine: &Engine, sql: &'static str) -> Result<i64, String> {
    count_at(engine.db_path(), sql)
}

/// Poll (one connection, every 2 ms; 20 ms on PostgreSQL, where each poll is a round trip
/// to a server sharing the engines' cores) until at least `n` runs are finished, or fail after
/// `timeout`. Each poll asks only whether an unfinished run is left ([`UNFINISHED`]: index
/// seeks, O(1)); finished runs are counted ([`FINISHED`]: O(finished)) only when none is.
/// Counting at every poll cost the bench process itself O(n) per 2 ms: with 200,000 runs
/// the observer, not the engine, spent about a third of a core (Q1 deep: 145 us CPU per run).
pub(super) fn wait_finished_at(db: &Path, n: i64, timeout: Duration) -> Result<(), String> {
    let mut conn = reader(db)?;
    let end = Instant::now() + timeout;
    let pause = if waymark::internal::store::is_postgres(db) {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(2)
    };
    loop {
        let unfinished = conn.truth(UNFINISHED)?;
        let got: i64 = if unfinished { -1 } else { conn.int(FINISHED)? };
        if got >= n {
            return Ok(());
        }
        if Instant::now() > end {
            let got = conn.int(FINISHED)?;
            return Err(format!("timed out: {got} of {n} runs finished"));
        }
        std::thread::sleep(pause);
    }
}

fn wait_finished(engine: &Engine, n: i64, timeout: Duration) -> Result<(), String> {
    wait_finished_at(engine.db_path(), n, timeout)
}

/// Is any run left that is not final? Seeks in `runs_status`, one per status listed.
const UNFINISHED: &str = "SELECT EXISTS (SELECT 1 FROM runs WHERE status IN \
     ('pending', 'running', 'suspended', 'blocked', 'blocked_version'))";
pub(super) const FINISHED: &str =
    "SELECT count(*) FROM runs WHERE status IN ('completed', 'failed')";
pub(super) const FAILED: &str = "SELECT count(*) FROM runs WHERE status = 'failed'";

/// The writer's commit count of `engine` so far.
fn commits(engine: &Engine) -> u64 {
    engine.store().write_stats().0
}

/// W1: single-call starts from 8 threads, and starts through `Engine::start_many`.
pub fn w1_starts(ctx: &BenchCtx, base: &Baselines) -> Result<Vec<Row>, String> {
    let n = ctx.sizes.w1_starts;
    let threads = 8u64;
    let engine =
        Arc::new(Engine::start(bench_registry(), ctx.config(&ctx.db("w1a.db"))).map_err(err)?);
    let before = engine.store().write_stats();
    let meter = Meter::start(Some(before.0));
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let engine = engine.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for i in (k..n).step_by(threads as usize) {
                    engine
                        .start_run(PARKED, &i, StartOptions::default().for_other_build())
                        .map_err(err)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| "a start thread panicked".to_string())??;
    }
    let single = n as f64 / t.elapsed().as_secs_f64();
    let group = group_size(&engine, before);
    let single_cost = meter.finish("start", n, Some(commits(&engine)));
    drop(engine);

    let engine = Engine::start(bench_registry(), ctx.config(&ctx.db("w1b.db"))).map_err(err)?;
    let batch = 1000u64;
    let meter = Meter::start(Some(commits(&engine)));
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let inputs: Vec<(u64, StartOptions)> = (i..(i + batch).min(n))
            .map(|x| (x, StartOptions::default().for_other_build()))
            .collect();
        i += inputs.len() as u64;
        engine.start_many(PARKED, &inputs).map_err(err)?;
    }
    let many = n as f64 / t.elapsed().as_secs_f64();
    let many_cost = meter.finish("start", n, Some(commits(&engine)));
    engine.shutdown().map_err(err)?;
    Ok(vec![
        Row::new(
            "W1a",
            format!("{n} starts, single-call API, {threads} threads ({group:.1} commands/commit)"),
            single,
            "runs/s",
        )
        .baseline("B1", base.commits_per_s)
        .ratio_goal(4.0)
        .cost(single_cost),
        Row::new(
            "W1b",
            format!("{n} starts, start_many in batches of {batch}"),
            many,
            "runs/s",
        )
        .baseline("B2", base.batch_rows_per_s)
        .ratio_goal(0.5)
        .cost(many_cost),
    ])
}

/// Mean writer commands per transaction since `before`.
fn group_size(engine: &Engine, before: (u64, u64)) -> f64 {
    let (b, c) = engine.store().write_stats();
    (c - before.1) as f64 / ((b - before.0).max(1)) as f64
}

/// Start `n` runs of `wf` and time until all finished; returns seconds, the mean number
/// of writer commands per commit, and the cost per run (measured until the engine was shut
/// down, so that pooled step children are reaped and counted).
fn run_all(
    ctx: &BenchCtx,
    db: &str,
    wf: Workflow<u64, u64>,
    n: u64,
    isolation: Isolation,
    workers: usize,
) -> Result<(f64, f64, Cost), String> {
    let mut config = ctx.config(&ctx.db(db));
    config.isolation = isolation;
    config.workers = workers;
    let engine = Engine::start(bench_registry(), config).map_err(err)?;
    let before = engine.store().write_stats();
    let mut meter = Meter::start(Some(before.0));
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let inputs: Vec<(u64, StartOptions)> = (i..(i + 1000).min(n))
            .map(|x| (x, StartOptions::default()))
            .collect();
        i += inputs.len() as u64;
        engine.start_many(wf, &inputs).map_err(err)?;
    }
    wait_finished(&engine, n as i64, Duration::from_secs(600))?;
    let secs = t.elapsed().as_secs_f64();
    meter.lap();
    let group = group_size(&engine, before);
    let done_commits = commits(&engine);
    let failed = count(&engine, FAILED)?;
    engine.shutdown().map_err(err)?;
    let cost = meter.finish("run", n, Some(done_commits));
    if failed > 0 {
        return Err(format!("{failed} runs of {} failed", wf.name()));
    }
    Ok((secs, group, cost))
}

/// Pre-queue `n` runs of `wf` (through a Client, before any engine runs), then start an
/// engine of `workers` in-process workers and time until all finished: seconds, mean
/// commands per commit, cost per run (engine start to shutdown; the pre-queueing is not
/// measured).
pub(super) fn drain(
    ctx: &BenchCtx,
    db: &str,
    wf: Workflow<u64, u64>,
    n: u64,
    workers: usize,
) -> Result<(f64, f64, Cost), String> {
    let path = ctx.db(db);
    prequeue(&path, wf, n)?;
    let mut config = ctx.config(&path);
    config.workers = workers;
    let mut meter = Meter::start(Some(0));
    let t = Instant::now();
    let engine = Engine::start(bench_registry(), config).map_err(err)?;
    wait_finished(&engine, n as i64, Duration::from_secs(1200))?;
    let secs = t.elapsed().as_secs_f64();
    meter.lap();
    let group = group_size(&engine, (0, 0));
    let done_commits = commits(&engine);
    let failed = count(&engine, FAILED)?;
    engine.shutdown().map_err(err)?;
    let cost = meter.finish("run", n, Some(done_commits));
    if failed > 0 {
        return Err(format!("{failed} runs of {} failed", wf.name()));
    }
    Ok((secs, group, cost))
}

/// Runs enqueued per transaction when pre-queueing.
const PREQUEUE_BATCH: u64 = 5_000;

/// Create the file at `db` and enqueue `n` runs of `wf` through a Client (no engine).
pub(super) fn prequeue(db: &Path, wf: Workflow<u64, u64>, n: u64) -> Result<(), String> {
    let client = waymark::Client::open_with({
        let mut c = waymark::ClientConfig::new(db).registry(bench_registry());
        c.create = true;
        c
    })
    .map_err(err)?;
    let mut i = 0;
    while i < n {
        let inputs: Vec<(u64, StartOptions)> = (i..(i + PREQUEUE_BATCH).min(n))
            .map(|x| (x, StartOptions::default()))
            .collect();
        i += inputs.len() as u64;
        client.start_many(wf, &inputs).map_err(err)?;
    }
    Ok(())
}

/// W2: one-step in-process no-op runs.
pub fn w2_one_step(ctx: &BenchCtx, base: &Baselines) -> Result<Row, String> {
    let n = ctx.sizes.w2_runs;
    let (secs, group, cost) = if ctx.prequeue {
        drain(ctx, "w2.db", ONE, n, ctx.workers)?
    } else {
        run_all(ctx, "w2.db", ONE, n, Isolation::InProcess, ctx.workers)?
    };
    Ok(Row::new(
        "W2",
        format!(
            "{n} one-step in-process runs{}, {} workers ({group:.1} commands/commit)",
            if ctx.prequeue { " (pre-queued)" } else { "" },
            ctx.workers
        ),
        n as f64 / secs,
        "runs/s",
    )
    .baseline("B1", base.commits_per_s)
    .ratio_goal(4.0)
    .cost(cost))
}

/// W3: ten-step in-process runs; step checkpoints per second, at the bench's worker count
/// and at 64 workers (group commit grows with the number of runs in flight).
pub fn w3_ten_steps(ctx: &BenchCtx, base: &Baselines) -> Result<Vec<Row>, String> {
    let n = ctx.sizes.w3_runs;
    let mut rows = Vec::new();
    for (db, workers) in [("w3.db", ctx.workers), ("w3b.db", 64)] {
        let (secs, group, cost) = run_all(ctx, db, TEN, n, Isolation::InProcess, workers)?;
        rows.push(
            Row::new(
                "W3",
                format!(
                    "{n} ten-step in-process runs, {workers} workers ({group:.1} commands/commit)"
                ),
                (n * 10) as f64 / secs,
                "steps/s",
            )
            .baseline("B2", base.batch_rows_per_s)
            .ratio_goal(0.25)
            .cost(cost),
        );
    }
    Ok(rows)
}

/// W4: one-step runs, each step in a fresh child process (cold spawn), and again while this
/// (engine) process holds 1 GiB resident: posix_spawn's cost must not grow with it.
pub fn w4_cold_child(ctx: &BenchCtx, base: &Baselines) -> Result<(Vec<Row>, f64), String> {
    let n = ctx.sizes.w4_runs;
    let (secs, _, cost) = run_all(ctx, "w4.db", ONE, n, Isolation::Child, ctx.workers)?;
    let rate = n as f64 / secs;
    let mut ballast = vec![1u8; 1 << 30];
    for i in (0..ballast.len()).step_by(4096) {
        ballast[i] = (i % 251) as u8;
    }
    let (secs_big, _, cost_big) = run_all(ctx, "w4b.db", ONE, n, Isolation::Child, ctx.workers)?;
    std::hint::black_box(&ballast);
    drop(ballast);
    let rate_big = n as f64 / secs_big;
    let rows = vec![
        Row::new(
            "W4",
            format!(
                "{n} one-step child-process runs (cold spawn), {} workers",
                ctx.workers
            ),
            rate,
            "runs/s",
        )
        .baseline("B3", base.spawns_per_s)
        .ratio_goal(0.8)
        .cost(cost),
        Row::new(
            "W4",
            format!("{n} one-step child-process runs, engine holding 1 GiB resident"),
            rate_big,
            "runs/s",
        )
        .baseline("W4", rate)
        .ratio_goal(0.8)
        .cost(cost_big),
    ];
    Ok((rows, rate))
}

/// W5: one-step runs on the warm child pool.
pub fn w5_pool(ctx: &BenchCtx, cold_rate: f64) -> Result<Row, String> {
    let n = ctx.sizes.w5_runs;
    let (secs, _, cost) = run_all(ctx, "w5.db", ONE, n, Isolation::Pool, ctx.workers)?;
    Ok(Row::new(
        "W5",
        format!(
            "{n} one-step runs on the warm child pool, {} workers",
            ctx.workers
        ),
        n as f64 / secs,
        "runs/s",
    )
    .baseline("W4", cold_rate)
    .ratio_goal(20.0)
    .cost(cost))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// W6: end-to-end latency (start to result) of a three-step run on an idle engine, at the
/// default synchronous=FULL and, to separate the engine's own cost from fsync, at NORMAL.
pub fn w6_latency(ctx: &BenchCtx, base: &Baselines) -> Result<Vec<Row>, String> {
    let (full, commits, cost) = w6_samples(ctx, "w6.db", waymark::Synchronous::Full)?;
    let (normal, _, cost_normal) = w6_samples(ctx, "w6n.db", waymark::Synchronous::Normal)?;
    Ok(vec![
        Row::new(
            "W6",
            format!("three-step run, start to result, p50 (idle engine, {commits:.1} commits/run)"),
            percentile(&full, 0.5),
            "ms",
        )
        .baseline("B1 p50 x commits/run", base.commit_p50_ms * commits)
        .max_goal(2.0)
        .cost(cost),
        Row::new(
            "W6",
            "three-step run, start to result, p99 (idle engine)",
            percentile(&full, 0.99),
            "ms",
        )
        .cost(cost),
        Row::new(
            "W6",
            "three-step run p50 at synchronous=NORMAL (engine cost without fsync)",
            percentile(&normal, 0.5),
            "ms",
        )
        .cost(cost_normal),
        Row::new(
            "W6",
            "three-step run p99 at synchronous=NORMAL",
            percentile(&normal, 0.99),
            "ms",
        )
        .cost(cost_normal),
    ])
}

/// Sorted latencies (ms), writer commits per run, cost per run (the measured samples).
fn w6_samples(
    ctx: &BenchCtx,
    db: &str,
    sync: waymark::Synchronous,
) -> Result<(Vec<f64>, f64, Cost), String> {
    let mut config = ctx.config(&ctx.db(db));
    config.synchronous = sync;
    let engine = Engine::start(bench_registry(), config).map_err(err)?;
    let n = ctx.sizes.w6_samples;
    let mut before = engine.store().write_stats();
    let mut meter = Meter::start(Some(before.0));
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..(n + 10) {
        let t = Instant::now();
        let id = engine
            .start_run(THREE, &i, StartOptions::default())
            .map_err(err)?;
        let out = engine
            .wait_output(THREE, id, Duration::from_secs(30))
            .map_err(err)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if out != i + 3 {
            return Err(format!("run {id} returned {out}, expected {}", i + 3));
        }
        if i >= 10 {
            lat.push(ms);
        } else {
            before = engine.store().write_stats();
            meter = Meter::start(Some(before.0));
        }
        // Idle engine: let the dispatcher go back to sleep between samples.
        std::thread::sleep(Duration::from_millis(2));
    }
    let now = engine.store().write_stats().0;
    let commits = (now - before.0) as f64 / n as f64;
    let cost = meter.finish("run", n, Some(now));
    engine.shutdown().map_err(err)?;
    lat.sort_by(f64::total_cmp);
    Ok((lat, commits, cost))
}

fn this_binary() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the waymark binary: {e}"))
}

/// W7: an engine process holding `n` in-flight runs is killed; time from a new engine's
/// open until all of them were reclaimed and claimed again.
pub fn w7_recovery(ctx: &BenchCtx) -> Result<Vec<Row>, String> {
    let n = ctx.sizes.w7_runs;
    let db = ctx.db("w7.db");
    let mut child = Command::new(this_binary()?)
        .args([
            "bench",
            "--child",
            "hold",
            "--child-n",
            &n.to_string(),
            "--child-db",
        ])
        .arg(&db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the holder: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no holder stdout")?;
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(err)?;
    if !line.starts_with("ready ") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("the holder did not get ready: {line:?}"));
    }
    child.kill().map_err(err)?; // SIGKILL
    child.wait().map_err(err)?;

    let meter = Meter::start(Some(0));
    let t = Instant::now();
    let engine = Engine::start(bench_registry(), ctx.config(&db)).map_err(err)?;
    let open = t.elapsed();
    // Reclaimed: nothing is left running under the dead owner.
    const DEAD_RUNNING: &str = "SELECT count(*) FROM runs WHERE status = 'running' AND owner <> (SELECT id FROM engines WHERE stopped_at IS NULL ORDER BY started_at DESC LIMIT 1)";
    let end = Instant::now() + Duration::from_secs(120);
    let reclaimed = loop {
        if count(&engine, DEAD_RUNNING)? == 0 {
            break t.elapsed();
        }
        if Instant::now() > end {
            return Err("W7: runs were not reclaimed within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // Claimed: every run was claimed by the new engine (none pending, none held by the dead).
    const UNCLAIMED: &str = "SELECT count(*) FROM runs WHERE status = 'pending'";
    let claimed = loop {
        if count(&engine, UNCLAIMED)? == 0 && count(&engine, DEAD_RUNNING)? == 0 {
            break t.elapsed();
        }
        if Instant::now() > end {
            return Err("W7: runs were not claimed within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    wait_finished(&engine, n as i64, Duration::from_secs(120))?;
    let finished = t.elapsed();
    let cost = meter.finish("run", n, Some(commits(&engine)));
    engine.shutdown().map_err(err)?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(vec![
        Row::new(
            "W7",
            format!("recovery of {n} runs: engine open"),
            ms(open),
            "ms",
        )
        .cost(cost),
        Row::new(
            "W7",
            format!("recovery of {n} runs: open to all reclaimed (dead pid)"),
            ms(reclaimed),
            "ms",
        )
        .max_goal(1000.0)
        .cost(cost),
        Row::new(
            "W7",
            format!(
                "recovery of {n} runs: open to all claimed again ({} workers)",
                ctx.workers
            ),
            ms(claimed),
            "ms",
        )
        .max_goal(1000.0)
        .cost(cost),
        Row::new(
            "W7",
            format!("recovery of {n} runs: open to all completed"),
            ms(finished),
            "ms",
        )
        .cost(cost),
    ])
}

/// Fill a fresh database with `n` finished one-step runs (raw inserts, one transaction).
pub fn build_finished(db: &Path, n: u64) -> Result<(), String> {
    drop(
        Store::open(
            db,
            &StoreOptions::default(),
            Arc::new(SystemClock::from_env()),
        )
        .map_err(err)?,
    );
    let mut conn = Connection::open(db).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .map_err(err)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    {
        let mut run = tx
            .prepare(
                "INSERT INTO runs(id, workflow, version, input, status, idempotency_key, ready_at,
                                  epoch, output, created_at, updated_at, finished_at)
                 VALUES (?1, 'bench.one', 1, ?2, 'completed', ?3, ?4, 1, ?2, ?4, ?4, ?4)",
            )
            .map_err(err)?;
        let mut step = tx
            .prepare(
                "INSERT INTO steps(run_id, seq, name, status, attempts, output, recorded_at)
                 VALUES (?1, 0, 'bench.noop', 'completed', 1, ?2, ?3)",
            )
            .map_err(err)?;
        let blob = waymark::internal::codec::encode(&12345u64, 1024).map_err(err)?;
        let t0 = 1_700_000_000_000i64;
        for i in 1..=n as i64 {
            run.execute(params![i, blob, format!("bench-{i}"), t0 + i])
                .map_err(err)?;
            step.execute(params![i, blob, t0 + i]).map_err(err)?;
        }
    }
    tx.commit().map_err(err)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .map_err(err)?;
    Ok(())
}

fn open_probe(db: &Path, mode: &str) -> Result<serde_json::Value, String> {
    let out = Command::new(this_binary()?)
        .args(["bench", "--child", mode, "--child-db"])
        .arg(db)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("spawning the open probe: {e}"))?;
    if !out.status.success() {
        return Err(format!("the open probe exited with {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("open probe output: {e}"))
}

/// W8: open time and engine RSS on a database holding many finished runs.
pub fn w8_open(ctx: &BenchCtx) -> Result<Vec<Row>, String> {
    let n = ctx.sizes.w8_runs;
    let db = ctx.db("w8.db");
    let t = Instant::now();
    build_finished(&db, n)?;
    let build = t.elapsed().as_secs_f64();
    let size_mb = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    // Warm the page cache the same way for both probes: the first open reads the file.
    open_probe(&db, "open")?;
    let meter = Meter::start(None);
    let checked = open_probe(&db, "open")?;
    let checked_cost = meter.finish("open", 1, None);
    let meter = Meter::start(None);
    let always = open_probe(&db, "open-always")?;
    let always_cost = meter.finish("open", 1, None);
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    let (own_rss, _) = rss_kib();
    log::debug!("bench process RSS {own_rss} KiB");
    Ok(vec![
        Row::new(
            "W8",
            format!("open with {n} finished runs ({size_mb:.0} MB file, built in {build:.1}s), default quick_check policy"),
            f(&checked, "open_ms"),
            "ms",
        )
        .max_goal(500.0)
        .cost(checked_cost),
        Row::new(
            "W8",
            format!("open with {n} finished runs, quick_check_always (opt-in)"),
            f(&always, "open_ms"),
            "ms",
        )
        .cost(always_cost),
        Row::new(
            "W8",
            format!("engine RSS after open, {n} finished runs"),
            f(&checked, "rss_kib") / 1024.0,
            "MiB",
        )
        .max_goal(50.0)
        .cost(checked_cost),
    ])
}

/// Several engine processes committing to one file: the worst wait for one commit, next
/// to one engine process alone on the same disk (what the disk itself costs).
pub fn fairness(ctx: &BenchCtx, base: &Baselines) -> Result<Vec<Row>, String> {
    let procs = ctx.sizes.fairness_procs;
    let (solo_rate, solo_p99, solo_worst, solo_cost) = fair_run(ctx, "fair1.db", 1)?;
    let (rate, p99, worst, cost) = fair_run(ctx, "fair.db", procs)?;
    Ok(vec![
        Row::new(
            "F",
            "1 engine process alone: commits/s (one caller)",
            solo_rate,
            "commits/s",
        )
        .baseline("B1", base.commits_per_s)
        .cost(solo_cost),
        Row::new(
            "F",
            "1 engine process alone: worst commit wait",
            solo_worst,
            "ms",
        )
        .cost(solo_cost),
        Row::new(
            "F",
            format!("{procs} engine processes on one file: commits/s in all"),
            rate,
            "commits/s",
        )
        .baseline("F solo", solo_rate)
        .cost(cost),
        Row::new(
            "F",
            format!("{procs} engine processes on one file: worst p99 commit wait"),
            p99,
            "ms",
        )
        .baseline("F solo p99", solo_p99)
        .cost(cost),
        Row::new(
            "F",
            format!("{procs} engine processes on one file: worst commit wait"),
            worst,
            "ms",
        )
        .baseline("F solo worst", solo_worst)
        .max_goal(100.0)
        .cost(cost),
    ])
}

/// `procs` processes each committing one-row writes through the writer for the configured
/// time: (commits/s in all, worst p99 wait, worst wait, cost per commit), waits in ms.
fn fair_run(ctx: &BenchCtx, name: &str, procs: u64) -> Result<(f64, f64, f64, Cost), String> {
    let db = ctx.db(name);
    drop(
        Store::open(
            &db,
            &StoreOptions::default(),
            Arc::new(SystemClock::from_env()),
        )
        .map_err(err)?,
    );
    let ms = ctx.sizes.fairness_ms;
    let meter = Meter::start(None);
    let children = (0..procs)
        .map(|_| {
            Command::new(this_binary()?)
                .args([
                    "bench",
                    "--child",
                    "fair",
                    "--child-n",
                    &ms.to_string(),
                    "--child-db",
                ])
                .arg(&db)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawning a fairness writer: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut worst: f64 = 0.0;
    let mut p99: f64 = 0.0;
    let mut commits = 0.0;
    for c in children {
        let out = c.wait_with_output().map_err(err)?;
        if !out.status.success() {
            return Err(format!("a fairness writer exited with {}", out.status));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("fairness output: {e}"))?;
        worst = worst.max(v["max_ms"].as_f64().unwrap_or(f64::NAN));
        p99 = p99.max(v["p99_ms"].as_f64().unwrap_or(f64::NAN));
        commits += v["commits"].as_f64().unwrap_or(0.0);
    }
    let cost = meter.finish("commit", commits as u64, Some(commits as u64));
    Ok((commits / (ms as f64 / 1000.0), p99, worst, cost))
}
