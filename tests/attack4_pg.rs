//! Adversarial review of the PostgreSQL store (issue 16): attacks that try to run one step
//! twice at once, lose a run, or leave a process behind, with real `waymark serve`
//! processes on a real (throwaway) PostgreSQL cluster, the timing forced by row and table
//! locks held by the test's own sessions and by terminating chosen server backends.
//! Must hold: no (run, seq) executes in two places at once (the fixture's overlap detector
//! stays silent), every run completes, each journal entry once.

mod support;
use std::time::Duration;
use support::*;

/// Backends of waymark connections whose statement starts with `prefix` and that wait for
/// a lock: their pids.
fn waiting(c: &mut postgres::Client, prefix: &str) -> Vec<i32> {
    c.query(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = 'waymark' AND wait_event_type = 'Lock'
           AND starts_with(query, $1)",
        &[&prefix],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Attack: the storage fails (the engine's heartbeat connection is terminated) while the
/// dispatcher is inside its `claimable` read, after it checked that it may claim. The
/// recovery probe (blocked on the engine's row, so it runs later) then finds no worker
/// busy, the dispatcher claims a run for a worker, and the recovery hands back "every run
/// still recorded as ours" — including the one a worker just started. The engine's other
/// worker (or any engine) claims it again while the first still executes its step.
#[test]
fn a_recovery_racing_the_dispatcher_never_hands_back_a_run_a_worker_executes() {
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    let url = db.to_str().unwrap().to_string();
    let mut c = pg_cluster_client(&url);
    // A queue with no free slot: the run is pending (so the dispatcher keeps reading
    // `claimable`) but not claimed until the test opens the queue.
    let run = {
        let out = run_cmd(&[
            "start",
            "fixture.slow",
            "--db",
            &url,
            "--json",
            r#"{"steps":1,"ms":8000}"#,
            "--queue",
            "q",
        ]);
        out.trim().parse::<i64>().unwrap()
    };
    c.batch_execute("INSERT INTO queues(name, concurrency) VALUES ('q', 0)")
        .unwrap();
    // TTL 45 s: heartbeat every 9 s, lease guard valid 30 s after a renewal. Engines on two
    // hosts (the test hook gives each a boot id of its own).
    let host = |b: &str| vec![("WAYMARK_SIMULATED_BOOT_ID", b.to_string())];
    let a = serve(dir.path(), "a", &db, 1, 45_000, &host("host-a"));
    let engine: String = wait_for("A to register", Duration::from_secs(60), || {
        c.query_opt("SELECT id FROM engines", &[])
            .unwrap()
            .map(|r| r.get(0))
    });
    // S2 holds A's engine row: A's heartbeat and, later, its recovery probe wait for it.
    let mut s2 = pg_cluster_client(&url);
    s2.batch_execute("BEGIN").unwrap();
    s2.execute("SELECT 1 FROM engines WHERE id = $1 FOR UPDATE", &[&engine])
        .unwrap();
    // S1 holds the runs table: the dispatcher waits inside `claimable` (after its
    // `may_claim` check). Retried until it is that read that waits, not a claim.
    let mut s1 = pg_cluster_client(&url);
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries < 20, "the dispatcher never waited inside claimable");
        s1.batch_execute("BEGIN; LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        let got = poll(Duration::from_secs(3), || {
            (!waiting(&mut c, "SELECT EXISTS (SELECT 1 FROM runs").is_empty()).then_some(())
        });
        if got.is_some()
            && waiting(&mut c, "UPDATE runs SET status = 'pending', note = NULL").is_empty()
        {
            break;
        }
        s1.batch_execute("ROLLBACK").unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    // The storage fails: A's heartbeat (waiting on its row) loses its connection.
    let hb = wait_for("A's heartbeat to wait", Duration::from_secs(30), || {
        waiting(&mut c, "UPDATE engines SET beat = beat + 1").pop()
    });
    c.execute("SELECT pg_terminate_backend($1)", &[&hb])
        .unwrap();
    wait_until(
        "A to see a storage failure",
        Duration::from_secs(30),
        || a.log_text().contains("storage failure"),
    );
    // The recovery probe runs (no worker is busy) and waits on A's row.
    wait_for(
        "A's recovery probe to wait",
        Duration::from_secs(30),
        || waiting(&mut c, "UPDATE engines SET beat_at = $2 WHERE id = $1").pop(),
    );
    // Open the queue and let the dispatcher go on: it claims the run for a worker.
    c.batch_execute("UPDATE queues SET concurrency = 1 WHERE name = 'q'")
        .unwrap();
    s1.batch_execute("COMMIT").unwrap();
    wait_until(
        "the dispatcher's read to go on",
        Duration::from_secs(30),
        || waiting(&mut c, "SELECT EXISTS (SELECT 1 FROM runs").is_empty(),
    );
    // Give a claim its chance to reach a worker (with the defect, a worker starts the
    // step within milliseconds; without it, nothing is claimed until the recovery).
    let _ = poll(Duration::from_secs(3), || {
        (effect_count(dir.path(), run, 0, "sleep") >= 1).then_some(())
    });
    // Engine B on another host, idle so far (nothing is pending).
    let b = serve(dir.path(), "b", &db, 1, 45_000, &host("host-b"));
    wait_until("B to register", Duration::from_secs(60), || {
        pg_i64(&url, "SELECT count(*) FROM engines") == 2
    });
    // Let the probe commit: the recovery hands back what it finds recorded as A's.
    s2.batch_execute("COMMIT").unwrap();
    wait_until("the run to complete", Duration::from_secs(120), || {
        pg_status(&url, run) == "completed"
    });
    let fx = effects_in(dir.path());
    assert_eq!(
        overlaps(dir.path()),
        vec![],
        "step (run {run}, seq 0) ran twice at once: effects {fx:?}\nA's log:\n{}\nB's log:\n{}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(
        effect_count(dir.path(), run, 0, "sleep"),
        1,
        "step (run {run}, seq 0) executed again: effects {fx:?}\nA's log:\n{}\nB's log:\n{}",
        a.log_text(),
        b.log_text()
    );
    drop((a, b));
}

/// `waymark ARGS...`: its stdout; panics with its stderr on failure.
fn run_cmd(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "waymark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
