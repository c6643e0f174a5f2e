//! Busy database. Scenario: another process (this test, through rusqlite) holds a write
//! transaction on the file for longer than the engine's busy timeout (5 s) while the engine
//! has work, and a `waymark start` is issued meanwhile.
//! What must survive: the engine retries with backoff and logs that the database is busy;
//! no SQLITE_BUSY reaches the caller (`waymark start` succeeds once the lock is gone);
//! every run completes and no step runs twice.

mod support;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

#[test]
fn engine_waits_out_a_long_write_lock_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let runs = start(&db, "fixture.slow", r#"{"steps":4,"ms":100}"#, 8);
    // A long TTL: this test is about busy waits, not lease loss.
    let e = serve(dir.path(), "a", &db, 4, 30_000, &[]);
    wait_until("work to start", Duration::from_secs(30), || {
        !effects_in(dir.path()).is_empty()
    });
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let db2 = db.clone();
    let late = std::thread::spawn(move || start(&db2, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1));
    std::thread::sleep(Duration::from_millis(6500));
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    let late_run = late.join().expect("waymark start saw no SQLITE_BUSY")[0];
    let mut all = runs.clone();
    all.push(late_run);
    wait_until("every run to complete", Duration::from_secs(60), || {
        all.iter().all(|r| status(&db, *r) == "completed")
    });
    assert!(
        e.log_text().contains("database is busy"),
        "the wait was logged:\n{}",
        e.log_text()
    );
    let mut per_step: HashMap<(i64, i64), usize> = HashMap::new();
    for (run, seq, _, _) in effects_in(dir.path()) {
        *per_step.entry((run, seq)).or_default() += 1;
    }
    assert!(
        per_step.values().all(|n| *n == 1),
        "no step ran twice: {per_step:?}"
    );
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM steps"),
        runs.len() as i64 * 4 + 1
    );
}
