//! Clock jumps. Scenario: two engines share an injected wall clock
//! (WAYMARK_TEST_CLOCK_OFFSET_FILE, as if the host's clock jumped) while they work through
//! a workload: it jumps +1 h, then back to -1 h (two hours backwards); then one engine is
//! SIGKILLed mid-work. What must survive: every run completes (runs enqueued before the
//! backward jump are still claimable), each journal seq holds one result, a step ran more
//! than once only if its first execution was in the killed engine, and the killed engine's
//! runs are reclaimed promptly (liveness is judged by pid and heartbeat progress on the
//! observer's monotonic clock, not by wall-clock expiry).

mod support;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

on_both_stores!(jumps_forward_and_back_write_nothing_twice_and_lose_nothing);
fn jumps_forward_and_back_write_nothing_twice_and_lose_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "clock.db");
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "0").unwrap();
    let runs = start(&db, "fixture.slow", r#"{"steps":3,"ms":80}"#, 60);
    let env = [(
        "WAYMARK_TEST_CLOCK_OFFSET_FILE",
        offset.display().to_string(),
    )];
    let mut a = serve(dir.path(), "a", &db, 3, 1500, &env);
    let b = serve(dir.path(), "b", &db, 3, 1500, &env);
    let completed = || query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'");
    wait_until("some progress", Duration::from_secs(30), || {
        completed() >= 5
    });
    std::fs::write(&offset, "3600000").unwrap();
    let c0 = completed();
    wait_until("progress after +1h", Duration::from_secs(30), || {
        completed() >= c0 + 5
    });
    std::fs::write(&offset, "-3600000").unwrap();
    let c1 = completed();
    wait_until("progress after -1h", Duration::from_secs(30), || {
        completed() >= c1 + 5
    });
    let a_pid = a.pid() as u32;
    a.kill();
    wait_until(
        "every run to complete after the kill",
        Duration::from_secs(60),
        || runs.iter().all(|r| status(&db, *r) == "completed"),
    );
    assert_eq!(query_i64(&db, "SELECT count(*) FROM steps"), 180);
    let mut per_step: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
    for (run, seq, _, pid) in effects_in(dir.path()) {
        per_step.entry((run, seq)).or_default().push(pid);
    }
    for ((run, seq), pids) in &per_step {
        if pids.len() > 1 {
            assert!(
                pids[..pids.len() - 1].iter().all(|p| *p == a_pid),
                "run {run} seq {seq} re-executed without a kill: {pids:?}\n{}",
                b.log_text()
            );
        }
    }
    assert!(!b.log_text().contains("lease lost"), "{}", b.log_text());
}

// Scenario: one engine's clock is an hour behind the clock of the host that started the
// runs (or its own clock jumped back an hour after they were started), and the runs are in
// a queue with a concurrency limit. Must hold: the engine claims and completes them at
// once; a pending run is due whatever `ready_at` says next to the claimer's clock (a run
// waiting for a time is `suspended`), so a backward jump must not stall a limited queue
// for the jump's length.
on_both_stores!(a_limited_queue_is_served_by_an_engine_whose_clock_is_behind);
fn a_limited_queue_is_served_by_an_engine_whose_clock_is_behind(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "clock.db");
    let dbs = db.to_str().unwrap();
    let out = run(&[
        "start",
        "fixture.slow",
        "--db",
        dbs,
        "--json",
        r#"{"steps":1,"ms":10}"#,
        "--count",
        "3",
        "--queue",
        "q",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["queue", "q", "--db", dbs, "--limit", "1"]);
    assert!(out.status.success(), "{out:?}");
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "-3600000").unwrap();
    let env = [(
        "WAYMARK_TEST_CLOCK_OFFSET_FILE",
        offset.display().to_string(),
    )];
    let a = serve(dir.path(), "a", &db, 2, 1500, &env);
    wait_until(
        "the limited queue's runs to complete",
        Duration::from_secs(60),
        || count(&db, "completed") == 3,
    );
    assert_eq!(query_i64(&db, "SELECT count(*) FROM steps"), 3);
    drop(a);
}
