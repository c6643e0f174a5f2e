//! Scenario (PostgreSQL only: these are faults of a database server): the server restarts
//! mid-run, a connection is cut inside a transaction just before its COMMIT, statements
//! time out while another session holds a lock.
//! Must hold: engines reconnect and every run completes with each journal entry recorded
//! once, no step runs in two places at once (the fixture's overlap detector stays silent),
//! nothing is lost. A COMMIT whose connection broke is an unknown outcome: a start with an
//! idempotency key retries and returns the one run; a start without a key is a typed error
//! saying the run may or may not exist. (A COMMIT applied whose answer is lost on the way
//! back: tests/pg_commit_lost.rs.)
//! The tests of this file share one cluster and restart or disturb it: they run one at a
//! time (a lock).

mod support;
use std::sync::Mutex;
use std::time::Duration;
use support::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every run completed, each with exactly `steps` journal entries, no overlap.
fn all_done_once(db: &std::path::Path, dir: &std::path::Path, runs: i64, steps: i64) {
    assert_eq!(
        query_i64(db, "SELECT count(*) FROM runs WHERE status = 'completed'"),
        runs
    );
    assert_eq!(query_i64(db, "SELECT count(*) FROM steps"), runs * steps);
    assert_eq!(
        query_i64(
            db,
            &format!("SELECT count(*) FROM runs r WHERE (SELECT count(*) FROM steps s WHERE s.run_id = r.id) != {steps}")
        ),
        0
    );
    assert_eq!(overlaps(dir), vec![], "a step ran in two places at once");
}

#[test]
fn a_server_restart_mid_run_loses_nothing_and_runs_no_twin() {
    let _serial = serial();
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    start_runs(
        &db,
        "fixture.slow",
        r#"{"steps":3,"ms":500}"#,
        Some("r"),
        40,
    );
    let a = serve(dir.path(), "a", &db, 4, 3000, &[]);
    let b = serve(dir.path(), "b", &db, 4, 3000, &[]);
    wait_until("some runs to complete", Duration::from_secs(120), || {
        count(&db, "completed") >= 5
    });
    assert!(count(&db, "completed") < 40, "runs left to disturb");
    // A crash of the server (no shutdown checkpoint), then the same server back.
    cluster().restart("immediate");
    wait_until(
        "every run to complete after the restart",
        Duration::from_secs(240),
        || count(&db, "completed") == 40,
    );
    all_done_once(&db, dir.path(), 40, 3);
    let logs = format!("{}{}", a.log_text(), b.log_text());
    assert!(
        logs.contains("storage failure"),
        "the engines took the restart as a storage failure: {logs}"
    );
}

/// Terminate every waymark backend that sits inside a transaction (one paused before its
/// COMMIT) whose last statement matches `like`; how many were terminated.
fn cut_open_transactions_like(db: &std::path::Path, like: &str) -> i64 {
    query_i64(
        db,
        &format!(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE application_name = 'waymark' AND state LIKE 'idle in transaction%'
                 AND query LIKE '{like}') t"
        ),
    )
}

/// [`cut_open_transactions_like`] whatever the statement.
fn cut_open_transactions(db: &std::path::Path) -> i64 {
    cut_open_transactions_like(db, "%")
}

#[test]
fn a_connection_cut_before_commit_loses_nothing_and_runs_no_twin() {
    let _serial = serial();
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    start_runs(&db, "fixture.slow", r#"{"steps":3,"ms":50}"#, Some("c"), 20);
    let go = dir.path().join("go");
    let envs = vec![(
        "WAYMARK_FAULT_PAUSE",
        format!("before_commit@15:{}", go.display()),
    )];
    let a = serve(dir.path(), "a", &db, 2, 3000, &envs);
    wait_until(
        "the engine to pause before a COMMIT",
        Duration::from_secs(60),
        || a.log_text().contains("paused at before_commit"),
    );
    let cut = wait_for("a transaction to cut", Duration::from_secs(30), || {
        let n = cut_open_transactions(&db);
        (n > 0).then_some(n)
    });
    assert!(cut >= 1);
    std::fs::write(&go, b"").unwrap();
    wait_until("every run to complete", Duration::from_secs(180), || {
        count(&db, "completed") == 20
    });
    all_done_once(&db, dir.path(), 20, 3);
    drop(a);
}

#[test]
fn a_start_whose_commit_was_cut_is_an_unknown_outcome_unless_keyed() {
    let _serial = serial();
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    // The schema first: the only transaction left open below is then the start's.
    drop(storage(&db));
    let dbs = db.to_str().unwrap().to_string();
    let go = dir.path().join("go");
    let log = dir.path().join("start.log");
    let start = |key: Option<&str>, go: &std::path::Path| {
        let mut args = vec![
            "start".to_string(),
            "fixture.slow".into(),
            "--db".into(),
            dbs.clone(),
            "--json".into(),
            r#"{"steps":1,"ms":0}"#.into(),
        ];
        if let Some(k) = key {
            args.extend(["--key".into(), k.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = cmd(&args);
        c.env(
            "WAYMARK_FAULT_PAUSE",
            format!("before_commit:{}", go.display()),
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
        c.spawn().unwrap()
    };
    // Once the start waits at its COMMIT (it says so), cut its connection.
    let cut_at_commit = |what: &str| {
        wait_until(what, Duration::from_secs(30), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("paused at before_commit")
        });
        assert_eq!(cut_open_transactions_like(&db, "%INSERT INTO runs%"), 1);
    };
    // Without a key: the caller cannot know whether the run exists.
    let child = start(None, &go);
    cut_at_commit("the start to wait before its COMMIT");
    std::fs::write(&go, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("may or may not"),
        "a typed unknown outcome: {err}"
    );
    std::fs::remove_file(&go).unwrap();
    std::fs::remove_file(&log).unwrap();

    // With a key: retried, one run, its id answered.
    let child = start(Some("order-1"), &go);
    cut_at_commit("the keyed start to wait before its COMMIT");
    std::fs::write(&go, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM runs WHERE idempotency_key = 'order-1'"
        ),
        1
    );
    assert_eq!(
        query_i64(&db, "SELECT id FROM runs WHERE idempotency_key = 'order-1'"),
        id
    );
}

#[test]
fn statements_timing_out_behind_a_lock_delay_runs_but_lose_none() {
    let _serial = serial();
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    start_runs(&db, "fixture.slow", r#"{"steps":2,"ms":20}"#, Some("t"), 20);
    // Every statement of the engine gives up after 300 ms.
    let url = format!(
        "{}?options=-c%20statement_timeout%3D300",
        db.to_str().unwrap()
    );
    let db_t = std::path::PathBuf::from(&url);
    let mut locker = pg_cluster_client(db.to_str().unwrap());
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let a = serve(dir.path(), "a", &db_t, 2, 3000, &[]);
    wait_until(
        "the engine's statements to time out",
        Duration::from_secs(60),
        || a.log_text().contains("statement timeout"),
    );
    tx.rollback().unwrap();
    wait_until("every run to complete", Duration::from_secs(180), || {
        count(&db, "completed") == 20
    });
    all_done_once(&db, dir.path(), 20, 2);
    drop(a);
}
