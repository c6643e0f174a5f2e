//! `waymark bench`: the standard workloads on a fresh temporary database, each printed with
//! the machine's own limit measured in the same run (raw SQLite commits, bare spawns, pipe
//! round trips) and its ratio to that baseline.
//!
//! Child modes (`--child MODE`, hidden) are the processes the bench itself spawns: a no-op
//! child (spawn baseline), a pipe echo child (round-trip baseline), an engine holding many
//! in-flight runs (W7, killed by the bench), an open probe (W8), a fairness writer and an
//! engine process draining the queue (M1).
//!
//! Every row carries what its measurement cost per unit of work (`cost.rs`): context
//! switches and CPU time (getrusage), and SQLite commits where the writers count them.

mod baseline;
mod children;
mod client_watch;
mod cost;
mod pg;
mod report;
mod scale;
mod workloads;

pub use workloads::register;

use super::CliResult;
use report::Row;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Small sizes: finishes in under a minute (CI).
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Directory whose file system holds the temporary databases (default: current dir).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Run only these workloads (comma-separated ids: W1,W2,W3,W4,W5,W6,W7,W8,C1,F,M1,Q1;
    /// baselines always run).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Benchmark the engine on this PostgreSQL database (`postgres://...`, which must hold
    /// no runs: the bench empties its tables) instead of SQLite files: raw INSERT commits,
    /// W2 and W3 with 1, 2 and 4 engine processes.
    #[arg(long)]
    pub db: Option<String>,
    /// Worker threads of the benchmarked engines.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// W2 enqueues all its runs before its engine starts (the peer bench's workload:
    /// pre-queued jobs drained by N workers) instead of while it runs.
    #[arg(long)]
    pub prequeue: bool,
    /// Internal: run as one of the bench's own child processes.
    #[arg(long, hide = true)]
    pub child: Option<String>,
    /// Internal: database of a child mode.
    #[arg(long, hide = true)]
    pub child_db: Option<PathBuf>,
    /// Internal: size parameter of a child mode.
    #[arg(long, hide = true, default_value_t = 0)]
    pub child_n: u64,
}

/// Sizes of every workload.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub raw_commits: u64,
    pub raw_batch_rows: u64,
    pub spawns: u64,
    pub round_trips: u64,
    pub w1_starts: u64,
    pub w2_runs: u64,
    pub w3_runs: u64,
    pub w4_runs: u64,
    pub w5_runs: u64,
    pub w6_samples: u64,
    pub w7_runs: u64,
    pub w8_runs: u64,
    pub fairness_ms: u64,
    pub fairness_procs: u64,
    /// M1: pre-queued runs drained by 1, 2, 4 and 8 engine processes.
    pub m1_runs: u64,
    /// Q1: pre-queued runs of the shallow and of the deep queue.
    pub q1_shallow: u64,
    pub q1_deep: u64,
}

impl Sizes {
    fn full() -> Self {
        Sizes {
            raw_commits: 3_000,
            raw_batch_rows: 200_000,
            spawns: 300,
            round_trips: 100_000,
            w1_starts: 100_000,
            w2_runs: 20_000,
            w3_runs: 2_000,
            w4_runs: 2_000,
            w5_runs: 20_000,
            w6_samples: 500,
            w7_runs: 10_000,
            w8_runs: 1_000_000,
            fairness_ms: 5_000,
            fairness_procs: 3,
            m1_runs: 20_000,
            q1_shallow: 2_000,
            q1_deep: 200_000,
        }
    }

    fn quick() -> Self {
        Sizes {
            raw_commits: 500,
            raw_batch_rows: 20_000,
            spawns: 50,
            round_trips: 10_000,
            w1_starts: 5_000,
            w2_runs: 2_000,
            w3_runs: 200,
            w4_runs: 100,
            w5_runs: 2_000,
            w6_samples: 50,
            w7_runs: 1_000,
            w8_runs: 50_000,
            fairness_ms: 1_000,
            fairness_procs: 3,
            m1_runs: 2_000,
            q1_shallow: 1_000,
            q1_deep: 10_000,
        }
    }
}

/// Entry point of `waymark bench`.
pub fn run(args: BenchArgs) -> CliResult {
    // The baselines open SQLite before any engine: without this, SQLite would already be
    // initialised when the first store opens, keep its memory statistics on and take one
    // process-wide mutex at every allocation, a cost no application whose first SQLite use
    // is waymark pays (the engine turns them off before SQLite initialises).
    waymark::internal::store::memstatus_off();
    if let Some(mode) = &args.child {
        if mode == "watch" {
            let db = args
                .child_db
                .as_deref()
                .ok_or("child mode watch needs --child-db")?;
            return client_watch::child(db, args.child_n);
        }
        return children::run(mode, args.child_db.as_deref(), args.child_n);
    }
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let dir = tempfile::Builder::new()
        .prefix("waymark-bench-")
        .tempdir_in(&args.dir)
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {}: {e}",
                args.dir.display()
            )
        })?;
    let started = Instant::now();
    let progress = |what: &str| {
        if !args.json {
            eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
        }
    };
    let ctx = workloads::BenchCtx {
        dir: dir.path().to_path_buf(),
        sizes,
        workers: args.workers.max(1),
        prequeue: args.prequeue,
    };

    if let Some(url) = &args.db {
        if !waymark::internal::store::is_postgres(std::path::Path::new(url)) {
            return Err(format!(
                "--db takes a PostgreSQL URL (postgres://...), not {url}: the SQLite bench makes its own files (--dir)"
            ));
        }
        let want =
            |id: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(id));
        let rows = pg::run(url, dir.path(), args.quick, &want, &progress)?;
        let total = started.elapsed();
        if args.json {
            println!("{}", report::json(&rows, args.quick, &args.dir, total));
        } else {
            print!("{}", report::table(&rows, args.quick, total));
        }
        return Ok(0);
    }
    progress("baselines: raw SQLite commits");
    let base = baseline::measure(&ctx, &progress)?;
    let mut rows: Vec<Row> = base.rows();

    let want =
        |id: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(id));
    if want("W1") {
        progress("W1: starts");
        rows.extend(workloads::w1_starts(&ctx, &base)?);
    }
    if want("W2") {
        progress("W2: one-step runs");
        rows.push(workloads::w2_one_step(&ctx, &base)?);
    }
    if want("W3") {
        progress("W3: ten-step runs");
        rows.extend(workloads::w3_ten_steps(&ctx, &base)?);
    }
    if want("W4") || want("W5") {
        progress("W4: one-step runs in cold child processes");
        let (w4, cold_rate) = workloads::w4_cold_child(&ctx, &base)?;
        rows.extend(w4);
        if want("W5") {
            progress("W5: one-step runs on the warm pool");
            let w5 = workloads::w5_pool(&ctx, cold_rate)?;
            // Issue 15's goal: isolation nearly free when the child is warm (W2 of this run).
            let w2 = rows.iter().find(|r| r.id == "W2").map(|r| r.value);
            let against_w2 = w2.map(|w2| {
                let mut r = w5.clone().baseline("W2", w2).ratio_goal(0.8);
                r.what = format!("{} against in-process W2", w5.what);
                r
            });
            rows.push(w5);
            rows.extend(against_w2);
        }
    }
    if want("W6") {
        progress("W6: latency on an idle engine");
        rows.extend(workloads::w6_latency(&ctx, &base)?);
    }
    if want("W7") {
        progress("W7: recovery after a kill");
        rows.extend(workloads::w7_recovery(&ctx)?);
    }
    if want("W8") {
        progress("W8: open and RSS with many finished runs");
        rows.extend(workloads::w8_open(&ctx)?);
    }
    if want("C1") {
        progress("C1: Client change notification across processes, idle Client CPU");
        let samples = if args.quick { 50 } else { 200 };
        rows.extend(client_watch::c1_client_watch(&ctx, samples)?);
    }
    if want("F") {
        progress("fairness: several engine processes on one file");
        rows.extend(workloads::fairness(&ctx, &base)?);
    }
    if want("M1") {
        progress("M1: 1, 2, 4, 8 engine processes on one file");
        rows.extend(scale::m1_processes(&ctx)?);
    }
    if want("Q1") {
        progress("Q1: shallow and deep queue");
        rows.extend(scale::q1_depth(&ctx)?);
    }

    let total = started.elapsed();
    if args.json {
        println!("{}", report::json(&rows, args.quick, &args.dir, total));
    } else {
        print!("{}", report::table(&rows, args.quick, total));
    }
    Ok(0)
}
