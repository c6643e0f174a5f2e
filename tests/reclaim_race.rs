//! Reclaim racing a renewal (issue 9, defect 2). Scenario: engine A is stopped (SIGSTOP)
//! mid-run for longer than the lease TTL; engine B's reaper judges A dead from A's
//! heartbeat standing still and is parked (fault point `reaper_before_reclaim`) between
//! that judgement and its reclaim. A is continued and renews its lease; then B's reaper is
//! released.
//! What must survive: judgement and fence are one atomic act. Either B's reclaim sees that
//! A's heartbeat moved and does nothing, or it fences A's incarnation so that A never acts
//! on the run again; in no case do A and B both execute a step of the run, and the journal
//! holds one result per seq.

mod support;
use std::time::Duration;
use support::*;

const TTL: u64 = 1000;

on_both_stores!(a_reclaim_judged_before_a_renewal_does_not_commit_after_it);
fn a_reclaim_judged_before_a_renewal_does_not_commit_after_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "race.db");
    let run = start(&db, "fixture.slow", r#"{"steps":4,"ms":2500}"#, 1)[0];
    let a = serve_with(dir.path(), "a", &db, 1, TTL, &[], &["--in-process"]);
    wait_until("A to start seq 0", Duration::from_secs(30), || {
        effect_count(dir.path(), run, 0, "sleep") == 1
    });
    a.signal(libc::SIGSTOP);
    let go = dir.path().join("go");
    let b = serve_with(
        dir.path(),
        "b",
        &db,
        1,
        TTL,
        &[(
            "WAYMARK_FAULT_PAUSE",
            format!("reaper_before_reclaim:{}", go.display()),
        )],
        &["--in-process"],
    );
    wait_until(
        "B's reaper to park after judging A dead",
        Duration::from_secs(30),
        || b.log_text().contains("paused at reaper_before_reclaim"),
    );
    let beat = || {
        query_i64(
            &db,
            &format!("SELECT beat FROM engines WHERE pid = {}", a.pid()),
        )
    };
    let before = beat();
    a.signal(libc::SIGCONT);
    wait_until(
        "A to renew its lease after waking",
        Duration::from_secs(30),
        || beat() >= before + 2,
    );
    // A goes on with the run: it records seq 0 and starts seq 1 under its renewed lease.
    wait_until("A to start seq 1", Duration::from_secs(30), || {
        effect_count(dir.path(), run, 1, "sleep") == 1
    });
    std::fs::write(&go, b"").unwrap();
    wait_until("the run to complete", Duration::from_secs(90), || {
        status(&db, run) == "completed"
    });
    // Let any stale execution that is still going finish and leave its traces.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        overlaps(dir.path()),
        vec![],
        "two executions of one step overlapped"
    );
    let interruptions = query_i64(
        &db,
        &format!("SELECT interruptions FROM runs WHERE id = {run}"),
    );
    assert_eq!(
        interruptions, 0,
        "B reclaimed a run whose owner had renewed its lease"
    );
    let steps = query_i64(
        &db,
        &format!("SELECT count(*) FROM steps WHERE run_id = {run}"),
    );
    assert_eq!(steps, 4);
    for seq in 0..4 {
        let owners: std::collections::BTreeSet<u32> = effects_in(dir.path())
            .iter()
            .filter(|e| e.0 == run && e.1 == seq && e.2 == "sleep")
            .map(|e| e.3)
            .collect();
        assert!(
            owners.len() <= 1 || seq == 0,
            "seq {seq} was started by two engines: {owners:?}"
        );
    }
}
