//! Liveness across PID namespaces (issue 9). Scenario: two engines on one file, one of them
//! in its own PID namespace (`unshare --pid --fork --mount-proc`, as two containers on one
//! host would be): same boot id, but each engine's pid means nothing to the other.
//! What must survive: neither reclaims the other's runs early (a pid from another namespace
//! is never looked up; only a heartbeat standing still for a TTL counts), neither deletes the
//! other's engine row, and once the namespaced engine is killed its runs are recovered by
//! heartbeat after one TTL.
//! Needs root (CI runs as root); without it the test fails with the reason, it is not skipped.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn engines_in_different_pid_namespaces_never_reclaim_each_other_early() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ns.db");
    // A long lease, so that only a wrong pid judgement could reclaim within the test.
    let ttl = 60_000u64;
    let runs = start(&db, "fixture.slow", r#"{"steps":4,"ms":1000}"#, 2);
    let log = dir.path().join("a.log");
    let mut a = serve_in_pid_namespace(dir.path(), &db, 2, ttl, &["--in-process"], Some(&log));
    wait_until(
        "A (namespaced) to claim both runs",
        Duration::from_secs(30),
        || query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'running'") == 2,
    );
    let a_pid_inside = query_i64(&db, "SELECT pid FROM engines LIMIT 1");
    assert!(
        a_pid_inside < 10,
        "A sees itself as a low pid in its own namespace ({a_pid_inside})"
    );
    let b = serve_with(dir.path(), "b", &db, 2, ttl, &[], &["--in-process"]);
    wait_until("both runs to complete", Duration::from_secs(90), || {
        runs.iter().all(|&r| status(&db, r) == "completed")
    });
    let interruptions = query_i64(&db, "SELECT sum(interruptions) FROM runs");
    assert_eq!(
        interruptions,
        0,
        "B reclaimed from a live engine in another namespace:\n{}",
        b.log_text()
    );
    assert_eq!(overlaps(dir.path()), vec![]);
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM engines WHERE stopped_at IS NULL"),
        2
    );
    assert!(!b.log_text().contains("reclaimed"), "{}", b.log_text());
    let _ = a.kill();
    let _ = a.wait();
}

#[test]
fn a_dead_engine_in_another_namespace_is_recovered_by_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ns-dead.db");
    let ttl = 1500u64;
    let run = start(&db, "fixture.slow", r#"{"steps":2,"ms":3000}"#, 1)[0];
    let mut a = serve_in_pid_namespace(dir.path(), &db, 1, ttl, &["--in-process"], None);
    wait_until("A to start the run", Duration::from_secs(30), || {
        effect_count(dir.path(), run, 0, "sleep") == 1
    });
    // SIGKILL unshare: --kill-child takes the namespaced engine down with it.
    let _ = a.kill();
    let _ = a.wait();
    let _b = serve_with(dir.path(), "b", &db, 1, ttl, &[], &["--in-process"]);
    wait_until(
        "B to recover and complete the run",
        Duration::from_secs(60),
        || status(&db, run) == "completed",
    );
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT interruptions FROM runs WHERE id = {run}")
        ),
        1
    );
}
