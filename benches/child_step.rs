//! Per-step overhead, side by side in one run: a step in a fresh child process (spawn,
//! limits, handshake-free request/response over pipes, reap), a bare spawn-and-wait of the
//! same executable (`waymark --version`), the same step called in-process, and the child
//! step again while the benchmarking process holds 1 GiB resident.
//!
//! `cargo bench --bench child_step`

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use waymark::{Registry, Step, StepCtx, StepLimits};

const QUICK: Step<u64, u64> = Step::new("fixture.quick");

fn bench(c: &mut Criterion) {
    let bin = Path::new(env!("CARGO_BIN_EXE_waymark"));
    let input = waymark::internal::codec::encode(&41u64, 1024).unwrap();
    let limits = StepLimits::default();
    let mut reg = Registry::new();
    reg.step(QUICK, |_, n: u64| Ok(n + 1));
    let def = reg.get_step(QUICK.name()).unwrap();
    let ctx = StepCtx::new(1, 0, 1);

    let mut g = c.benchmark_group("child_step");
    g.sample_size(30).measurement_time(Duration::from_secs(6));
    g.bench_function("child_process_step", |b| {
        b.iter(|| {
            let out =
                waymark::internal::isolation::run_step_once(bin, QUICK.name(), &input, &limits)
                    .unwrap();
            assert_eq!(out, waymark::internal::codec::encode(&42u64, 1024).unwrap());
        })
    });
    g.bench_function("bare_spawn_and_wait", |b| {
        b.iter(|| {
            let st = Command::new(bin)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        })
    });
    g.bench_function("in_process_step", |b| {
        b.iter(|| def.call(&ctx, &input, 1024).unwrap())
    });
    // The same child step while this (engine) process holds 1 GiB resident: posix_spawn's
    // cost must not grow with the parent's size (fork's would).
    let mut ballast = vec![1u8; 1 << 30];
    for i in (0..ballast.len()).step_by(4096) {
        ballast[i] = (i % 251) as u8;
    }
    g.bench_function("child_process_step_1GiB_resident", |b| {
        b.iter(|| {
            waymark::internal::isolation::run_step_once(bin, QUICK.name(), &input, &limits)
                .unwrap();
        })
    });
    std::hint::black_box(&ballast);
    drop(ballast);
    g.finish();
}

/// One-step runs through a whole engine (journal included, synchronous=NORMAL) with the step
/// in-process, in a cold child, and on the warm pool: 8 runs in flight per iteration.
fn engine_runs(c: &mut Criterion) {
    use waymark::{Config, Engine, Isolation, StartOptions, Synchronous, Workflow};
    const ONE: Workflow<u64, u64> = Workflow::new("bench.one");
    let bin = Path::new(env!("CARGO_BIN_EXE_waymark"));
    let mut g = c.benchmark_group("engine_one_step_run_x8");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for (name, iso) in [
        ("in_process", Isolation::InProcess),
        ("cold_child", Isolation::Child),
        ("warm_pool", Isolation::Pool),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::new();
        reg.step(QUICK, |_, n: u64| Ok(n + 1));
        reg.workflow(ONE, |ctx, n| ctx.step(QUICK, &n));
        let mut cfg = Config::new(dir.path().join("b.db"));
        cfg.isolation = iso;
        cfg.child_program = Some(bin.into());
        cfg.synchronous = Synchronous::Normal;
        cfg.workers = 4;
        let engine = Engine::start(reg, cfg).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                let inputs: Vec<(u64, StartOptions)> =
                    (0..8).map(|i| (i, StartOptions::default())).collect();
                for id in engine.start_many(ONE, &inputs).unwrap() {
                    engine.wait(id, Duration::from_secs(60)).unwrap();
                }
            })
        });
        engine.shutdown().unwrap();
    }
    g.finish();
}

criterion_group!(benches, bench, engine_runs);
criterion_main!(benches);
