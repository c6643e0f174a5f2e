//! `peer-effectum`: pre-queue N no-op jobs in effectum 0.7, then process them with one worker
//! of concurrency W; print the rate. The same workload as `waymark bench --only W2
//! --prequeue` (pre-queued one-step no-op runs, W workers), at effectum's own settings
//! (its writer thread batches; rollback journal, synchronous=NORMAL).
//!
//! Usage: `peer-effectum --db PATH [--jobs 20000] [--workers 8]`; prints one line
//! `effectum jobs=N workers=W seconds=S jobs_per_s=R`.

use effectum::{Job, JobRunner, Queue, RunningJob, Worker};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Jobs submitted per `add_jobs` call while pre-queueing.
const ENQUEUE_BATCH: usize = 1000;
/// The whole run fails if the jobs are not done by then.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

async fn noop(_job: RunningJob, _ctx: ()) -> Result<(), String> {
    Ok(())
}

struct Args {
    db: PathBuf,
    jobs: usize,
    workers: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        db: PathBuf::new(),
        jobs: 20_000,
        workers: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--db" => args.db = value.into(),
            "--jobs" => args.jobs = value.parse().map_err(|e| format!("--jobs: {e}"))?,
            "--workers" => args.workers = value.parse().map_err(|e| format!("--workers: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.db.as_os_str().is_empty() {
        return Err("--db PATH is required".into());
    }
    Ok(args)
}

async fn run(args: Args) -> Result<f64, String> {
    let err = |e: effectum::Error| e.to_string();
    let queue = Queue::new(&args.db).await.map_err(err)?;
    let mut left = args.jobs;
    while left > 0 {
        let k = left.min(ENQUEUE_BATCH);
        let jobs = (0..k).map(|_| Job::builder("noop").build()).collect();
        queue.add_jobs(jobs).await.map_err(err)?;
        left -= k;
    }
    let runner = JobRunner::builder("noop", noop).build();
    let t = Instant::now();
    let worker = Worker::builder(&queue, ())
        .jobs([runner])
        .max_concurrency(args.workers)
        .build()
        .await
        .map_err(err)?;
    while worker.counts().finished < args.jobs as u64 {
        if t.elapsed() > RUN_TIMEOUT {
            return Err(format!(
                "timed out: {} of {} jobs finished",
                worker.counts().finished,
                args.jobs
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    worker
        .unregister(Some(Duration::from_secs(10)))
        .await
        .map_err(err)?;
    queue.close(Duration::from_secs(10)).await.map_err(err)?;
    Ok(secs)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("peer-effectum: {e}");
            std::process::exit(2);
        }
    };
    let (jobs, workers) = (args.jobs, args.workers);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(secs) => println!(
            "effectum jobs={jobs} workers={workers} seconds={secs:.3} jobs_per_s={:.0}",
            jobs as f64 / secs
        ),
        Err(e) => {
            eprintln!("peer-effectum: {e}");
            std::process::exit(1);
        }
    }
}
