//! Contention. Scenario: four engine processes with four workers each share one file for
//! about 30 s of short steps, while four client threads keep starting runs through
//! `waymark start` (separate processes). What must survive: no SQLITE_BUSY / "database is
//! locked" ever reaches an API caller (every `start` succeeds; no engine logs a failed
//! claim, heartbeat, reaper pass or outcome because of it), every run completes, and the WAL
//! file stays under WAL_BYTES_MAX (sampled every 50 ms) while readers poll the database.

mod support;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// The bound asserted on the -wal file: the writer truncates the WAL above 2048 frames
/// (8 MiB) when readers allow; without that it grew past 30 MiB in this test.
const WAL_BYTES_MAX: u64 = 24 * 1024 * 1024;

#[test]
fn four_engines_under_load_never_surface_busy_and_bound_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1);
    let engines: Vec<Proc> = (0..4)
        // In-process steps: this test is about contention on the database file, not spawn rates.
        .map(|i| {
            serve_with(
                dir.path(),
                &format!("e{i}"),
                &db,
                4,
                5000,
                &[],
                &["--in-process"],
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let wal_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, wal_max) = (stop.clone(), wal_max.clone());
        let wal = dir.path().join("busy.db-wal");
        let db = db.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(m) = std::fs::metadata(&wal) {
                    wal_max.fetch_max(m.len(), Ordering::SeqCst);
                }
                // A reader that keeps polling, as a dashboard would.
                let _ = query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let until = Instant::now() + Duration::from_secs(30);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut started = 0;
                while Instant::now() < until {
                    let out = Command::new(bin())
                        .args([
                            "start",
                            "fixture.slow",
                            "--json",
                            r#"{"steps":4,"ms":2}"#,
                            "--count",
                            "20",
                            "--db",
                        ])
                        .arg(&db)
                        .output()
                        .unwrap();
                    if out.status.success() {
                        started += 20;
                    } else {
                        failures.push(String::from_utf8_lossy(&out.stderr).to_string());
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
                (started, failures)
            })
        })
        .collect();
    let mut started = 1;
    for c in clients {
        let (n, failures) = c.join().unwrap();
        assert!(failures.is_empty(), "API callers saw errors: {failures:?}");
        started += n;
    }
    wait_until("every run to complete", Duration::from_secs(120), || {
        query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'") == started
    });
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    for e in &engines {
        let log = e.log_text();
        for line in log.lines().filter(|l| l.contains("ERROR")) {
            assert!(
                !(line.contains("locked") || line.contains("busy")),
                "SQLITE_BUSY reached a caller in engine {}: {line}",
                e.pid()
            );
        }
    }
    let wal = wal_max.load(Ordering::SeqCst);
    eprintln!("runs={started} wal_max_bytes={wal}");
    assert!(wal < WAL_BYTES_MAX, "WAL grew to {wal} bytes");
}
