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

// Scenario: engine A, whose clock is an hour ahead of engine B's, finds an event it has
// not checked yet as it waits for one: the run must be looked at again at once. A then
// stops claiming (it dies, or it is busy). Must hold: B claims the run at once; it is not
// left `suspended` until B's clock reaches A's "now" (an hour).
on_both_stores!(a_run_looking_again_at_its_events_is_claimable_by_an_engine_behind);
fn a_run_looking_again_at_its_events_is_claimable_by_an_engine_behind(backend: Backend) {
    use std::sync::Arc;
    use waymark::internal::clock::ManualClock;
    use waymark::internal::store::write::{Fence, NewRun};
    use waymark::internal::store::{open_storage, Awaited, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "clock.db");
    let clock_a = ManualClock::new();
    clock_a.jump(3_600_000);
    let open = |clock: Arc<ManualClock>| {
        open_storage(&db, &StoreOptions::default(), clock, 4)
            .unwrap()
            .api
    };
    let a = open(clock_a);
    let b = open(ManualClock::new());
    let run = a.enqueue(NewRun::new("wf", 1, vec![0])).unwrap().id;
    let wfs: Arc<str> = r#"["wf@1"]"#.into();
    let owner_a: Arc<str> = "a".into();
    let claimed = a.claim(&owner_a, 1, &wfs, 60_000).unwrap();
    assert_eq!(claimed.len(), 1);
    let fence = Fence {
        run_id: run,
        owner: owner_a,
        epoch: claimed[0].epoch,
    };
    // The event arrives after A looked (A checked none: `upto` None).
    b.send_event(run, "e".into(), b"1".to_vec()).unwrap();
    let deadline = i64::MAX / 2;
    let answer = a
        .await_event(&fence, 0, "e".into(), deadline, None)
        .unwrap();
    assert!(matches!(answer, Awaited::Waiting), "{answer:?}");
    let owner_b: Arc<str> = "b".into();
    let claimed = b.claim(&owner_b, 1, &wfs, 60_000).unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.run_id).collect::<Vec<_>>(),
        vec![run],
        "the run is {} until {} on B's clock",
        status(&db, run),
        query_i64(&db, &format!("SELECT ready_at FROM runs WHERE id = {run}"))
    );
}
