//! A paused owner starts no step on a run it lost (issue 9). Scenario: engine A records the
//! checkpoint of seq 0 and is parked right after it (fault point `after_checkpoint`), then
//! stopped (SIGSTOP) for several lease TTLs. Engine B reclaims the run and starts seq 1.
//! A is continued and its heartbeat thread gets to run before its worker does; then the
//! worker goes on to its next step.
//! What must survive: A's worker starts no step of the run (the lease of the incarnation that
//! claimed it was fenced by B's reclaim and never becomes valid again, and the run's fence is
//! read before an in-process step starts): no overlap, every step after seq 0 ran only in B.

mod support;
use std::time::Duration;
use support::*;

const TTL: u64 = 800;

on_both_stores!(a_paused_owner_starts_no_step_on_a_run_it_lost);
fn a_paused_owner_starts_no_step_on_a_run_it_lost(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "paused.db");
    let run = start(&db, "fixture.slow", r#"{"steps":3,"ms":2500}"#, 1)[0];
    let go = dir.path().join("go");
    let a = serve_with(
        dir.path(),
        "a",
        &db,
        1,
        TTL,
        &[(
            "WAYMARK_FAULT_PAUSE",
            format!("after_checkpoint:{}", go.display()),
        )],
        &["--in-process"],
    );
    wait_until(
        "A to park after checkpointing seq 0",
        Duration::from_secs(30),
        || a.log_text().contains("paused at after_checkpoint"),
    );
    a.signal(libc::SIGSTOP);
    let a_pid = a.pid() as u32;
    let b = serve_with(dir.path(), "b", &db, 1, TTL, &[], &["--in-process"]);
    wait_until("B to start seq 1", Duration::from_secs(30), || {
        effect_count(dir.path(), run, 1, "sleep") == 1
    });
    a.signal(libc::SIGCONT);
    // A's heartbeat thread runs first (its worker is still parked at the fault point).
    std::thread::sleep(Duration::from_millis(4 * TTL));
    std::fs::write(&go, b"").unwrap();
    wait_until("the run to complete", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    std::thread::sleep(Duration::from_millis(1000));
    let by_a: Vec<_> = effects_in(dir.path())
        .into_iter()
        .filter(|e| e.0 == run && e.1 >= 1 && e.3 == a_pid)
        .collect();
    assert_eq!(
        by_a,
        vec![],
        "A started a step of a run it lost\nA: {}\nB: {}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(overlaps(dir.path()), vec![]);
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT count(*) FROM steps WHERE run_id = {run}")
        ),
        3
    );
}
