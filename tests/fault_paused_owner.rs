//! Paused owner. Scenario: engine A is stopped (SIGSTOP) in the middle of a step for several
//! lease TTLs; engine B sees A's heartbeat stand still, reclaims the run and finishes it;
//! then A is continued (SIGCONT). Repeated with A stopped between "step finished" and
//! "result committed" (A parked at the `after_step` fault point, then SIGSTOPped).
//! What must survive: every write A attempts after waking affects nothing (fenced), the
//! journal holds exactly one result per seq, all recorded by B's epoch, and the run's final
//! state is B's.

mod support;
use std::time::Duration;
use support::*;

const TTL: u64 = 1500;

fn steps_by_epoch(db: &std::path::Path, run: i64) -> (i64, i64) {
    let n = query_i64(
        db,
        &format!("SELECT count(*) FROM steps WHERE run_id = {run}"),
    );
    let epoch = query_i64(db, &format!("SELECT epoch FROM runs WHERE id = {run}"));
    (n, epoch)
}

fn paused_owner(backend: Backend, after_step: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "paused.db");
    let run = start(&db, "fixture.slow", r#"{"steps":3,"ms":600}"#, 1)[0];
    let go = dir.path().join("go");
    let envs = if after_step {
        vec![(
            "WAYMARK_FAULT_PAUSE",
            format!("after_step:{}", go.display()),
        )]
    } else {
        vec![]
    };
    let a = serve(dir.path(), "a", &db, 1, TTL, &envs);
    if after_step {
        wait_until("A to park after its step", Duration::from_secs(30), || {
            a.log_text().contains("paused at after_step")
        });
    } else {
        wait_until("A to start a step", Duration::from_secs(30), || {
            effects_in(dir.path()).iter().any(|e| e.0 == run)
        });
    }
    a.signal(libc::SIGSTOP);
    let a_pid = a.pid() as u32;
    let b = serve(dir.path(), "b", &db, 1, TTL, &[]);
    wait_until("B to finish the run", Duration::from_secs(180), || {
        status(&db, run) == "completed"
    });
    let (steps, epoch) = steps_by_epoch(&db, run);
    assert_eq!(steps, 3);
    let outcomes_by_a = |db: &std::path::Path| -> i64 {
        query_i64(
            db,
            &format!("SELECT count(*) FROM attempts a JOIN engines e ON e.id = a.owner WHERE a.run_id = {run} AND e.pid = {a_pid} AND a.outcome IS NOT NULL"),
        )
    };
    // Child steps record their outcome while A still held the lease; count only later ones.
    let by_a_before = outcomes_by_a(&db);
    std::fs::write(&go, b"").unwrap();
    a.signal(libc::SIGCONT);
    // A wakes with an expired guard and a stale epoch: give it time to try its writes.
    wait_until(
        "A to notice it lost the run",
        Duration::from_secs(30),
        || {
            let log = a.log_text();
            log.contains("lease guard expired") || log.contains("lease lost")
        },
    );
    std::thread::sleep(Duration::from_millis(TTL * 2));
    assert_eq!(status(&db, run), "completed");
    assert_eq!(
        steps_by_epoch(&db, run),
        (steps, epoch),
        "A's late writes changed nothing"
    );
    let by_a = outcomes_by_a(&db);
    assert_eq!(
        by_a, by_a_before,
        "A recorded no attempt outcome after it woke"
    );
    // Every step after A's interrupted one was executed by B only.
    let eff = effects_in(dir.path());
    assert!(eff.iter().filter(|e| e.0 == run && e.3 == a_pid).count() <= 1);
    assert!(eff.iter().any(|e| e.0 == run && e.3 == b.pid() as u32));
    drop(b);
}

on_both_stores!(paused_mid_step_owner_is_fenced_off);
fn paused_mid_step_owner_is_fenced_off(backend: Backend) {
    paused_owner(backend, false);
}

on_both_stores!(paused_between_step_and_commit_owner_is_fenced_off);
fn paused_between_step_and_commit_owner_is_fenced_off(backend: Backend) {
    paused_owner(backend, true);
}
