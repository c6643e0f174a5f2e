//! `waymark bench --db postgres://...`: the engine on PostgreSQL, measured against the
//! server's own raw commit rate in the same run.
//!
//! - B1pg: single-row INSERT commits (autocommit) on one connection, and on 4 connections at
//!   once: what the server (and its disk) does per commit, our engine aside.
//! - PW2 / PW3: `n` pre-queued one-step (W2) or ten-step (W3) in-process runs drained by
//!   16 workers in all, in 1, 2 and 4 engine processes (`bench --child serve`, as M1);
//!   each rate's ratio to the one-process rate (scaling) and to B1pg.
//!
//! The database must hold no runs: the bench creates its tables if needed, empties them
//! between workloads (TRUNCATE) and at the end, and creates and drops its own scratch table.
//! The server's CPU is not in the cost columns (its processes are not ours).

use super::cost::Meter;
use super::report::Row;
use super::workloads::{count_at, err, prequeue, reader, wait_finished_at, FAILED, ONE, TEN};
use std::path::Path;
use std::time::{Duration, Instant};
use waymark::Workflow;

const PROCESSES: [usize; 3] = [1, 2, 4];
const WORKERS_TOTAL: usize = 16;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1200);
const TABLES: &str = "runs, steps, attempts, events, engines, run_changes, queues, schedules";

/// Sizes: `(raw commits, W2 runs, W3 runs)`.
fn sizes(quick: bool) -> (u64, u64, u64) {
    if quick {
        (500, 2_000, 300)
    } else {
        (5_000, 20_000, 2_000)
    }
}

fn client(url: &str) -> Result<postgres::Client, String> {
    postgres::Client::connect(url, postgres::NoTls).map_err(|e| format!("{url}: {e}"))
}

/// Empty every waymark table (identities restart).
fn truncate(url: &str) -> Result<(), String> {
    client(url)?
        .batch_execute(&format!("TRUNCATE {TABLES} RESTART IDENTITY"))
        .map_err(err)
}

/// B1pg: `n` single-row INSERT commits on `conns` connections at once; commits/s.
fn raw_commits(url: &str, n: u64, conns: u64) -> Result<f64, String> {
    let mut c = client(url)?;
    c.batch_execute(
        "DROP TABLE IF EXISTS waymark_bench_raw;
         CREATE TABLE waymark_bench_raw (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v BIGINT NOT NULL)",
    )
    .map_err(err)?;
    let per = n / conns;
    let mut clients = (0..conns)
        .map(|_| client(url))
        .collect::<Result<Vec<_>, _>>()?;
    let t = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|c| {
                s.spawn(move || -> Result<(), String> {
                    let stmt = c
                        .prepare("INSERT INTO waymark_bench_raw(v) VALUES ($1)")
                        .map_err(err)?;
                    for i in 0..per as i64 {
                        c.execute(&stmt, &[&i]).map_err(err)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a raw writer panicked".into()))
            })
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    c.batch_execute("DROP TABLE waymark_bench_raw")
        .map_err(err)?;
    Ok((per * conns) as f64 / secs)
}

/// Drain `n` pre-queued runs of `wf` with `procs` engine processes; runs/s, commits.
fn drain(
    url: &str,
    dir: &Path,
    wf: Workflow<u64, u64>,
    n: u64,
    procs: usize,
) -> Result<(f64, super::cost::Cost), String> {
    truncate(url)?;
    let db = Path::new(url);
    prequeue(db, wf, n)?;
    let workers = WORKERS_TOTAL / procs;
    let meter = Meter::start(None);
    let t = Instant::now();
    let mut children = Vec::new();
    for i in 0..procs {
        let log = dir.join(format!("{}-{procs}-{i}.log", wf.name()));
        children.push(super::scale::spawn_engine(db, workers, &log)?);
    }
    let drained = wait_finished_at(db, n as i64, DRAIN_TIMEOUT);
    let secs = t.elapsed().as_secs_f64();
    let mut commits = 0;
    for c in children {
        let out = c.wait_with_output().map_err(err)?;
        if !out.status.success() {
            return Err(format!("an engine process exited with {}", out.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("engine process output: {e}"))?;
        commits += v["commits"].as_u64().unwrap_or(0);
    }
    drained?;
    let failed = count_at(db, FAILED)?;
    if failed > 0 {
        return Err(format!("{failed} runs of {} failed", wf.name()));
    }
    Ok((n as f64 / secs, meter.finish("run", n, Some(commits))))
}

/// The PostgreSQL bench on `url` (see the module docs); `progress` narrates.
pub fn run(
    url: &str,
    dir: &Path,
    quick: bool,
    want: &dyn Fn(&str) -> bool,
    progress: &dyn Fn(&str),
) -> Result<Vec<Row>, String> {
    // Creates the tables when the database has none, refuses a newer schema.
    waymark::Client::open(url).map_err(err)?;
    let held = reader(Path::new(url))?.int("SELECT count(*) FROM runs")?;
    if held > 0 {
        return Err(format!(
            "{} holds {held} runs: the bench empties its tables, give it a database of its own",
            waymark::internal::store::pg::redact(url)
        ));
    }
    let (raw_n, w2_n, w3_n) = sizes(quick);
    progress("B1pg: raw single-row INSERT commits on the same server");
    let raw1 = raw_commits(url, raw_n, 1)?;
    let raw4 = raw_commits(url, raw_n, 4)?;
    let mut rows = vec![
        Row::new(
            "B1pg",
            format!("{raw_n} single-row INSERT commits, 1 connection"),
            raw1,
            "commits/s",
        ),
        Row::new(
            "B1pg",
            format!("{raw_n} single-row INSERT commits, 4 connections at once"),
            raw4,
            "commits/s",
        )
        .baseline("B1pg 1 connection", raw1),
    ];
    for (id, wf, n, unit_per_run) in [("PW2", ONE, w2_n, 1.0), ("PW3", TEN, w3_n, 10.0)] {
        if !want(if id == "PW2" { "W2" } else { "W3" }) {
            continue;
        }
        let mut solo = None;
        for procs in PROCESSES {
            progress(&format!(
                "{id}: {n} pre-queued {} runs, {procs} engine process(es)",
                wf.name()
            ));
            let (rate, cost) = drain(url, dir, wf, n, procs)?;
            let steps = rate * unit_per_run;
            let what = format!(
                "{n} pre-queued {} runs, {procs} process(es) x {} workers ({} steps/s, {:.2}x B1pg)",
                wf.name(),
                WORKERS_TOTAL / procs,
                super::report::fmt_num(steps),
                rate / raw1
            );
            let mut row = Row::new(id, what, rate, "runs/s").cost(cost);
            match solo {
                None => solo = Some(rate),
                Some(one) => {
                    row = row.baseline(
                        if id == "PW2" {
                            "PW2 1 process"
                        } else {
                            "PW3 1 process"
                        },
                        one,
                    )
                }
            }
            rows.push(row);
        }
    }
    truncate(url)?;
    Ok(rows)
}
