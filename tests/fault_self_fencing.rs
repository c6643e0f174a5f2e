//! Self-fencing. Scenario: an engine runs a slow step while another process (this test,
//! through rusqlite) holds the database write lock (`BEGIN IMMEDIATE`) for longer than the
//! lease TTL, so the engine cannot renew its lease. What must survive: the owner stops
//! acting on the run before anyone else may reclaim it (it logs the lease loss and records
//! no result for the interrupted step), and once the lock is released the run is not stuck
//! under a live owner: it completes, each journal seq recorded once.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn owner_that_cannot_renew_abandons_and_the_run_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fence.db");
    let ttl = 1000;
    let run = start(&db, "fixture.slow", r#"{"steps":3,"ms":1500}"#, 1)[0];
    let _e = serve(dir.path(), "a", &db, 2, ttl, &[]);
    wait_until("the first step to start", Duration::from_secs(30), || {
        effects_in(dir.path()).iter().any(|e| e.0 == run)
    });
    // Hold the write lock for 2.5 TTLs: no heartbeat, no checkpoint can commit.
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::sleep(Duration::from_millis(ttl * 5 / 2));
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    wait_until(
        "the run to complete after the lock is released",
        Duration::from_secs(60),
        || status(&db, run) == "completed",
    );
    assert!(
        _e.log_text().contains("lease"),
        "the owner logged its lease loss:\n{}",
        _e.log_text()
    );
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT count(*) FROM steps WHERE run_id = {run}")
        ),
        3
    );
    // The step interrupted by the fence ran again (at-least-once), but never twice at once
    // and never recorded twice.
    let runs_of_seq0 = effects_in(dir.path())
        .iter()
        .filter(|e| e.0 == run && e.1 == 0)
        .count();
    assert!(
        runs_of_seq0 >= 2,
        "the fenced execution's result was discarded"
    );
}
