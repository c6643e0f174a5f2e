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
            (!waiting(&mut c, "SELECT waymark_pending_known(").is_empty()).then_some(())
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
        || waiting(&mut c, "SELECT waymark_pending_known(").is_empty(),
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

/// Attack: clock skew between hosts. A run waits for an event (timeout one hour) on engine
/// A; the event is sent from another host whose wall clock is one day ahead. The sender
/// wakes the run with `ready_at = its now` (store/pg/write/waits.rs, `SendEvent`), guarded
/// by `ready_at > its now`: the guard fails (the run's deadline, written by A's clock, is
/// "earlier" than the sender's now), so the run is not woken, and it sleeps until its
/// one-hour timeout although the event is there. (With a smaller skew the run is woken
/// with a `ready_at` in A's future: the same delay, by the skew.)
#[test]
fn an_event_sent_from_a_host_whose_clock_is_ahead_wakes_the_run() {
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    let url = db.to_str().unwrap().to_string();
    let run: i64 = run_cmd(&[
        "start",
        "fixture.waiter",
        "--db",
        &url,
        "--json",
        r#"{"name":"go","timeout_ms":3600000}"#,
    ])
    .trim()
    .parse()
    .unwrap();
    let a = serve(dir.path(), "a", &db, 1, 3000, &[]);
    wait_until(
        "the run to wait for its event",
        Duration::from_secs(60),
        || pg_status(&url, run) == "suspended",
    );
    // The sender's host: its clock one day ahead.
    let skew = dir.path().join("skew");
    std::fs::write(&skew, "86400000").unwrap();
    let out = cmd(&[
        "send",
        &run.to_string(),
        "go",
        "--db",
        &url,
        "--json",
        r#""hello""#,
    ])
    .env("WAYMARK_TEST_CLOCK_OFFSET_FILE", &skew)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let woke = poll(Duration::from_secs(30), || {
        (pg_status(&url, run) == "completed").then_some(())
    });
    let row = rows(
        &db,
        &format!("SELECT status, ready_at, note FROM runs WHERE id = {run}"),
    );
    assert!(
        woke.is_some(),
        "the run was not woken by its event within 30 s (it would be at its one-hour \
         timeout): run {row:?}, now {}\nA's log:\n{}",
        now_ms(),
        a.log_text()
    );
}

/// Attack: clock skew between hosts, limited queue. A run is started into a queue with a
/// concurrency limit by a client whose wall clock is one day ahead: it is `pending` with
/// `ready_at` = the client's now. The claim of a limited queue (store/pg/write/leases.rs,
/// `claim_limited` and `CLAIM_QUEUE_SQL`) also requires `ready_at <= the engine's now`, so
/// no engine claims it for a day (a run of a queue without a limit is claimed at once).
#[test]
fn a_run_started_by_a_host_whose_clock_is_ahead_is_claimed_from_a_limited_queue() {
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    let url = db.to_str().unwrap().to_string();
    let a = serve(dir.path(), "a", &db, 1, 3000, &[]);
    wait_until("A to register", Duration::from_secs(60), || {
        pg_cluster_client(&url)
            .query_one("SELECT count(*) FROM engines", &[])
            .is_ok_and(|r| r.get::<_, i64>(0) == 1)
    });
    pg_cluster_client(&url)
        .batch_execute("INSERT INTO queues(name, concurrency) VALUES ('q', 1)")
        .unwrap();
    let skew = dir.path().join("skew");
    std::fs::write(&skew, "86400000").unwrap();
    let out = cmd(&[
        "start",
        "fixture.slow",
        "--db",
        &url,
        "--json",
        r#"{"steps":1,"ms":10}"#,
        "--queue",
        "q",
    ])
    .env("WAYMARK_TEST_CLOCK_OFFSET_FILE", &skew)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let done = poll(Duration::from_secs(30), || {
        (pg_status(&url, run) == "completed").then_some(())
    });
    let row = rows(
        &db,
        &format!("SELECT status, ready_at, queue FROM runs WHERE id = {run}"),
    );
    assert!(
        done.is_some(),
        "the run was not claimed within 30 s: run {row:?}, now {}\nA's log:\n{}",
        now_ms(),
        a.log_text()
    );
}
