//! Criterion benches of the `waymark bench` workloads at small sizes, one group per scenario:
//! starts (single call and batch), one-step runs, ten-step runs, end-to-end latency of a
//! three-step run, and engine open on a database holding finished runs. Databases live in a
//! temporary directory under the target directory's file system (`CARGO_TARGET_TMPDIR` is
//! not set for benches, so the system temp dir is used).
//!
//! Run: `cargo bench --bench engine`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use waymark::{
    Config, Ctx, Engine, Isolation, Registry, StartOptions, Step, Workflow, WorkflowError,
};

const NOOP: Step<u64, u64> = Step::new("bench.noop");
const ONE: Workflow<u64, u64> = Workflow::new("bench.one");
const THREE: Workflow<u64, u64> = Workflow::new("bench.three");
const TEN: Workflow<u64, u64> = Workflow::new("bench.ten");
/// Never registered: its runs stay pending, so start benches measure starts alone.
const PARKED: Workflow<u64, u64> = Workflow::new("bench.parked");

fn steps(ctx: &mut Ctx<'_>, x: u64, n: u64) -> Result<u64, WorkflowError> {
    let mut acc = x;
    for _ in 0..n {
        acc = ctx.step(NOOP, &acc)?;
    }
    Ok(acc)
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.step(NOOP, |_, x: u64| Ok(x.wrapping_add(1)));
    reg.workflow(ONE, |ctx, x| steps(ctx, x, 1));
    reg.workflow(THREE, |ctx, x| steps(ctx, x, 3));
    reg.workflow(TEN, |ctx, x| steps(ctx, x, 10));
    reg
}

fn engine(dir: &tempfile::TempDir, name: &str, workers: usize) -> Engine {
    let mut config = Config::new(dir.path().join(name));
    config.workers = workers;
    // Bench binaries have no child hook: steps run in-process (child steps: child_step.rs).
    config.isolation = Isolation::InProcess;
    Engine::start(registry(), config).expect("engine starts")
}

fn wait_finished(engine: &Engine, n: i64) {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let done: i64 = engine
            .store()
            .stats()
            .expect("count")
            .iter()
            .filter(|(s, _)| s == "completed" || s == "failed")
            .map(|(_, n)| n)
            .sum();
        if done >= n {
            return;
        }
        assert!(Instant::now() < end, "runs did not finish: {done} of {n}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g
}

fn w1_starts(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(&dir, "w1.db", 4);
    let mut g = group(c, "w1_starts");
    g.throughput(Throughput::Elements(1));
    g.bench_function("start_run", |b| {
        b.iter(|| {
            e.start_run(PARKED, &1, StartOptions::default())
                .expect("start")
        })
    });
    let batch: Vec<(u64, StartOptions)> = (0..100).map(|i| (i, StartOptions::default())).collect();
    g.throughput(Throughput::Elements(100));
    g.bench_function("start_many_100", |b| {
        b.iter(|| e.start_many(PARKED, &batch).expect("start_many"))
    });
    g.finish();
}

/// Runs of `wf` per iteration batch: start `iters` runs at once, wait for all.
fn runs_group(c: &mut Criterion, name: &str, wf: Workflow<u64, u64>, steps: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(&dir, "runs.db", 16);
    let mut finished = 0i64;
    let mut g = group(c, name);
    g.throughput(Throughput::Elements(steps));
    g.bench_function("in_process", |b| {
        b.iter_custom(|iters| {
            let inputs: Vec<(u64, StartOptions)> =
                (0..iters).map(|i| (i, StartOptions::default())).collect();
            let t = Instant::now();
            for chunk in inputs.chunks(1000) {
                e.start_many(wf, chunk).expect("start_many");
            }
            finished += iters as i64;
            wait_finished(&e, finished);
            t.elapsed()
        })
    });
    g.finish();
}

fn w2_one_step(c: &mut Criterion) {
    runs_group(c, "w2_one_step_runs", ONE, 1);
}

fn w3_ten_steps(c: &mut Criterion) {
    runs_group(c, "w3_ten_step_runs", TEN, 10);
}

fn w6_latency(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(&dir, "w6.db", 8);
    let mut g = group(c, "w6_latency");
    g.bench_function("three_step_start_to_result", |b| {
        b.iter(|| {
            let id = e
                .start_run(THREE, &1, StartOptions::default())
                .expect("start");
            e.wait_output(THREE, id, Duration::from_secs(30))
                .expect("output")
        })
    });
    g.finish();
}

fn w8_open(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("w8.db");
    {
        let e = engine(&dir, "w8.db", 1);
        let inputs: Vec<(u64, StartOptions)> =
            (0..1000).map(|i| (i, StartOptions::default())).collect();
        for _ in 0..10 {
            e.start_many(ONE, &inputs).expect("start_many");
        }
        wait_finished(&e, 10_000);
        e.shutdown().expect("shutdown");
    }
    let mut g = group(c, "w8_open");
    g.bench_function("open_10k_finished_runs", |b| {
        b.iter(|| {
            let mut config = Config::new(&db);
            config.isolation = Isolation::InProcess;
            Engine::start(registry(), config)
                .expect("open")
                .shutdown()
                .expect("shutdown")
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    w1_starts,
    w2_one_step,
    w3_ten_steps,
    w6_latency,
    w8_open
);
criterion_main!(benches);
