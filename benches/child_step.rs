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
    let input = waymark::codec::encode(&41u64, 1024).unwrap();
    let limits = StepLimits::default();
    let mut reg = Registry::new();
    reg.step(QUICK, |_, n: u64| Ok(n + 1));
    let def = reg.get_step(QUICK.name()).unwrap();
    let ctx = StepCtx::new(1, 0, 1);

    let mut g = c.benchmark_group("child_step");
    g.sample_size(30).measurement_time(Duration::from_secs(6));
    g.bench_function("child_process_step", |b| {
        b.iter(|| {
            let out = waymark::child::run_step_once(bin, QUICK.name(), &input, &limits).unwrap();
            assert_eq!(out, waymark::codec::encode(&42u64, 1024).unwrap());
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
            waymark::child::run_step_once(bin, QUICK.name(), &input, &limits).unwrap();
        })
    });
    std::hint::black_box(&ballast);
    drop(ballast);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
