//! Stale reclaim race. Scenario: engine A is stopped long enough that engine B's reaper
//! judges it dead and reads (run, epoch) to reclaim; B's reaper is then parked by the
//! `reaper_before_reclaim` test hook. A is continued, renews its lease and completes the run.
//! Then B's reaper is released and attempts its reclaim with the epoch it read.
//! What must survive: the reclaim is a no-op: the run stays completed, with its output, epoch
//! and journal unchanged.

mod support;
use std::time::Duration;
use support::*;

on_both_stores!(reclaim_after_completion_is_a_no_op);
fn reclaim_after_completion_is_a_no_op(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "race.db");
    let ttl = 600;
    // One long step, so A is still mid-step when it wakes and can complete the run itself.
    let run = start(&db, "fixture.slow", r#"{"steps":1,"ms":6000}"#, 1)[0];
    let a = serve(dir.path(), "a", &db, 1, ttl, &[]);
    wait_until("A to start the step", Duration::from_secs(30), || {
        effects_in(dir.path()).iter().any(|e| e.0 == run)
    });
    a.signal(libc::SIGSTOP);
    let go = dir.path().join("go");
    let b = serve(
        dir.path(),
        "b",
        &db,
        1,
        ttl,
        &[(
            "WAYMARK_FAULT_PAUSE",
            format!("reaper_before_reclaim:{}", go.display()),
        )],
    );
    wait_until(
        "B's reaper to park before its reclaim",
        Duration::from_secs(30),
        || b.log_text().contains("paused at reaper_before_reclaim"),
    );
    a.signal(libc::SIGCONT);
    wait_until("A to complete the run", Duration::from_secs(30), || {
        status(&db, run) == "completed"
    });
    let before = rows(
        &db,
        &format!("SELECT epoch, output, (SELECT count(*) FROM steps WHERE run_id = {run}) FROM runs WHERE id = {run}"),
    );
    std::fs::write(&go, b"").unwrap();
    // B's reaper goes on: wait until it has passed again (it logs nothing for a no-op, so
    // wait for its next heartbeat-driven pass by watching its engine row beat twice).
    let beat = || {
        query_i64(
            &db,
            &format!("SELECT beat FROM engines WHERE pid = {}", b.pid()),
        )
    };
    let b0 = beat();
    wait_until(
        "B to keep running after the hook",
        Duration::from_secs(30),
        || beat() >= b0 + 3,
    );
    let after = rows(
        &db,
        &format!("SELECT epoch, output, (SELECT count(*) FROM steps WHERE run_id = {run}) FROM runs WHERE id = {run}"),
    );
    assert_eq!(status(&db, run), "completed");
    assert_eq!(before, after, "the stale reclaim changed nothing");
    assert!(
        !b.log_text().contains(&format!("reclaimed run {run} ")),
        "{}",
        b.log_text()
    );
    assert_eq!(before[0][2], "1");
}
