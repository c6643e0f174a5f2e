//! Retention: `Engine::purge` / `waymark gc` delete finished runs with their journals in
//! bounded batches, and incremental vacuum keeps the file from growing under a steady load.

mod support;

use rusqlite::Connection;
use std::time::Duration;
use waymark::{Config, Ctx, Engine, Registry, StartOptions, Step, StepCtx, Synchronous, Workflow};

const FILL: Step<u64, Vec<u8>> = Step::new("fill");
const JOB: Workflow<u64, u64> = Workflow::new("job");

fn engine(db: &std::path::Path) -> Engine {
    let mut reg = Registry::new();
    reg.step(FILL, |_: &StepCtx, n: u64| Ok(vec![n as u8; 2048]));
    reg.workflow(JOB, |ctx: &mut Ctx<'_>, n: u64| {
        let mut total = 0;
        for i in 0..3 {
            total += ctx.step(FILL, &(n + i))?.len() as u64;
        }
        Ok(total)
    });
    let mut config = Config::new(db);
    config.isolation = waymark::Isolation::InProcess; // test binaries have no child hook
    config.workers = 4;
    config.synchronous = Synchronous::Normal;
    Engine::start(reg, config).unwrap()
}

/// (pages in use, file size of the main database after a checkpoint). The checkpoint that
/// shrinks the file can be held back for a moment by a reader of the engine; retry until the
/// file reflects the page count (or give up after 10 s and report what is there).
fn sizes(db: &std::path::Path) -> (i64, u64) {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let page_size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _: (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let bytes = std::fs::metadata(db).unwrap().len();
        if bytes <= (pages * page_size) as u64 || std::time::Instant::now() > deadline {
            return (pages, bytes);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// Scenario: 12 rounds of a steady workload (300 runs of 3 steps with 2 KB outputs each),
// purging finished runs after each round. Must hold: the schema uses incremental
// auto_vacuum; each purge deletes the round's runs with their journals; from round 4 on the
// page count and the file size, both at a round's peak and after its purge, stay within 25%
// of round 3 (flat), and the purged file is a small fraction of a round's data, while the
// data written in all rounds (~22 MB) is several times the file. Then `waymark gc` empties a database.
#[test]
fn steady_workload_with_periodic_purge_keeps_the_file_flat() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let engine = engine(&db);
    let auto_vacuum: i64 = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto_vacuum, 2, "auto_vacuum = INCREMENTAL");
    let mut history = Vec::new();
    for round in 0..12u64 {
        let inputs: Vec<(u64, StartOptions)> = (0..300)
            .map(|i| (round * 1000 + i, StartOptions::default()))
            .collect();
        let ids = engine.start_many(JOB, &inputs).unwrap();
        for id in &ids {
            assert_eq!(
                engine.wait(*id, Duration::from_secs(60)).unwrap().status,
                "completed"
            );
        }
        let full = sizes(&db);
        let purged = engine.purge(Duration::ZERO).unwrap();
        assert_eq!(purged, 300, "round {round}");
        // The purged run is gone with its journal (a missing run's journal is NotFound).
        assert!(matches!(
            engine.journal(ids[0]),
            Err(waymark::Error::Store(waymark::StoreError::NotFound { .. }))
        ));
        history.push((full, sizes(&db)));
    }
    drop(engine);
    eprintln!("((pages, file bytes) before purge, after purge) per round: {history:?}");
    let ((full_pages, full_bytes), (base_pages, base_bytes)) = history[3];
    assert!(
        full_pages > base_pages * 10,
        "a round's data is much larger than the purged file"
    );
    for (round, ((fp, fb), (pages, bytes))) in history.iter().enumerate().skip(4) {
        assert!(
            *pages * 4 <= base_pages * 5,
            "round {round}: {pages} pages > 1.25 x {base_pages}"
        );
        assert!(
            *bytes * 4 <= base_bytes * 5,
            "round {round}: {bytes} bytes > 1.25 x {base_bytes}"
        );
        assert!(
            *fp * 4 <= full_pages * 5,
            "round {round}: {fp} pages > 1.25 x {full_pages}"
        );
        assert!(
            *fb * 4 <= full_bytes * 5,
            "round {round}: {fb} bytes > 1.25 x {full_bytes}"
        );
    }
    assert!(
        full_bytes < 22 * 1024 * 1024 / 4,
        "file {full_bytes} bytes is small next to the data"
    );
}

// Scenario: `waymark gc --older-than 0s` on a database holding finished runs (no engine).
// Must hold: it prints how many it deleted and leaves no runs, journal entries or events.
on_both_stores!(waymark_gc_deletes_finished_runs);
fn waymark_gc_deletes_finished_runs(backend: support::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "g.db");
    {
        let engine = engine(&db);
        let inputs: Vec<(u64, StartOptions)> =
            (0..600).map(|i| (i, StartOptions::default())).collect();
        for id in engine.start_many(JOB, &inputs).unwrap() {
            engine.wait(id, Duration::from_secs(60)).unwrap();
        }
    }
    let out = std::process::Command::new(support::bin())
        .args([
            "gc",
            "--db",
            db.to_str().unwrap(),
            "--older-than",
            "0s",
            "--yes",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "600");
    let left = support::query_i64(
        &db,
        "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM steps) + (SELECT count(*) FROM events)",
    );
    assert_eq!(left, 0);
    let bad = std::process::Command::new(support::bin())
        .args(["gc", "--db", db.to_str().unwrap(), "--older-than", "7x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
