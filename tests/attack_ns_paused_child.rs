//! Adversarial review of issue 9 (attack: PID namespaces x paused owner). Scenario: engine A
//! runs in its own PID namespace (`unshare --pid --fork --mount-proc`, as a container would)
//! and executes a long *child-process* step; A's engine process is then SIGSTOPped (its
//! step child is not: it keeps running). Engine B, in the host namespace, sees A's heartbeat
//! stand still for a TTL and reclaims. B must not signal a pid recorded in another
//! namespace, so its survivor kill skips A's child.
//! What must survive: README promises child steps never overlap ("a pause is not a twin";
//! child steps "are killed on lease loss and on reclaim"). No step may run twice at once.
//! Needs root for unshare (CI runs as root).

mod support;
use std::time::Duration;
use support::*;

#[test]
fn a_paused_owner_in_another_pid_namespace_leaves_no_twin_child_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ns-pause.db");
    let ttl = 1500u64;
    let run = start(&db, "fixture.slow", r#"{"steps":1,"ms":12000}"#, 1)[0];
    let mut unshare = serve_in_pid_namespace(
        dir.path(),
        &db,
        1,
        ttl,
        &[],
        Some(&dir.path().join("a.log")),
    );
    wait_until("A to start the step", Duration::from_secs(30), || {
        effect_count(dir.path(), run, 0, "sleep") == 1
    });
    // The engine is unshare's only child (pid 1 of the namespace).
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let engine: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) of the engine process this test started.
    unsafe { libc::kill(engine, libc::SIGSTOP) };
    let b = serve_with(dir.path(), "b", &db, 1, ttl, &[], &[]);
    wait_until("B to complete the run", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    let overlaps = overlaps(dir.path());
    // SAFETY: as above.
    unsafe { libc::kill(engine, libc::SIGCONT) };
    let _ = unshare.kill();
    let _ = unshare.wait();
    assert_eq!(
        overlaps,
        vec![],
        "B ran the step while A's child (other PID namespace, engine paused) still ran it;\nB:\n{}",
        b.log_text()
    );
}
