//! Issue 14: the console's first page of runs on a file with a million runs (target: under
//! 200 ms; measured, never asserted). The file is built once by direct SQL inserts into a
//! schema made by `Store::open` (size: `WAYMARK_BENCH_CONSOLE_RUNS`, default 1,000,000), then
//! served by `waymark::console::serve` and fetched over HTTP like a browser would.
//!
//! `cargo bench --bench console`

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::Duration;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{Store, StoreOptions};

/// Runs inserted per transaction while building the file.
const INSERT_BATCH_ROWS: usize = 50_000;

fn build(path: &std::path::Path, runs: usize) {
    let store = Store::open(
        path,
        &StoreOptions {
            create: true,
            ..Default::default()
        },
        Arc::new(SystemClock::from_env()),
    )
    .expect("create the file");
    drop(store);
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let statuses = [
        "completed",
        "completed",
        "completed",
        "failed",
        "suspended",
        "pending",
        "cancelled",
    ];
    let now = 1_700_000_000_000i64;
    let mut done = 0;
    while done < runs {
        let tx = c.transaction().unwrap();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO runs (workflow, input, status, idempotency_key, ready_at, created_at, updated_at)
                     VALUES (?1, x'00', ?2, ?3, ?4, ?4, ?4)",
                )
                .unwrap();
            for i in done..(done + INSERT_BATCH_ROWS).min(runs) {
                let t = now + i as i64;
                ins.execute(rusqlite::params![
                    format!("wf{}", i % 5),
                    statuses[i % statuses.len()],
                    format!("key-{i}"),
                    t
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        done = (done + INSERT_BATCH_ROWS).min(runs);
    }
}

fn bench(c: &mut Criterion) {
    let runs: usize = std::env::var("WAYMARK_BENCH_CONSOLE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("console.db");
    build(&db, runs);
    let console = waymark::console::serve(
        &db,
        waymark::console::Options::default().listen("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let url = console.url();
    let mut g = c.benchmark_group("console_runs_first_page");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, path) in [
        ("html", ""),
        ("api", "api/runs"),
        ("html_status_failed", "?status=failed"),
        ("html_key_prefix", "?key=key-99999"),
    ] {
        g.bench_function(format!("{name}_{runs}_runs"), |b| {
            b.iter(|| {
                let body = ureq::get(&format!("{url}{path}"))
                    .call()
                    .unwrap()
                    .into_string()
                    .unwrap();
                assert!(body.len() > 100);
            })
        });
    }
    g.finish();
    console.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
