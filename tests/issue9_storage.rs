//! Issue 9: the writer and the storage under failure.
//! (1) Suspect: COMMIT and then ROLLBACK of a batch both fail (fault point `commit_claim`:
//! the batch that claimed runs behaves as if both returned an error). What must hold: the
//! claim is reported failed and is not committed later by the next batch; the writer does
//! not reuse a connection left inside a transaction; the run is claimed again and completes.
//! (2) Weak point: another process holds the write lock (`BEGIN IMMEDIATE` from this test).
//! What must hold: `waymark start` exits non-zero within a bound with a message saying the
//! database is locked by another process, and wrote nothing; once the lock is released the
//! same start succeeds.
//! (3) Weak point: the disk fills up (tmpfs, needs root to mount) and is freed again.
//! What must hold: the same engine process, never restarted, stops claiming while it cannot
//! write, then recovers by itself and completes runs started after the space came back.

mod support;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn a_failed_commit_and_rollback_commits_nothing_later() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("commit.db");
    let runs = start(&db, "fixture.slow", r#"{"steps":2,"ms":5}"#, 1);
    let e = serve(
        dir.path(),
        "a",
        &db,
        1,
        3000,
        &[("WAYMARK_FAULT_FAIL", "commit_claim=1".into())],
    );
    wait_until("the injected failure", Duration::from_secs(30), || {
        e.log_text().contains("commit_claim #1 fails")
    });
    wait_until("the run to complete", Duration::from_secs(30), || {
        status(&db, runs[0]) == "completed"
    });
    assert!(
        e.log_text().contains("claiming runs failed"),
        "the claim was reported failed:\n{}",
        e.log_text()
    );
    // Claimed twice: once by the batch that failed (rolled back), once for real; the failed
    // claim never became visible as a committed claim.
    let epoch = query_i64(
        &db,
        &format!("SELECT epoch FROM runs WHERE id = {}", runs[0]),
    );
    assert_eq!(epoch, 1, "only the claim that succeeded committed");
}

fn run_cli(args: &[&str], db: &std::path::Path) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let mut child = Command::new(bin())
        .args(args)
        .arg("--db")
        .arg(db)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("waymark {args:?} still blocked after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), t.elapsed())
}

#[test]
fn cli_calls_fail_with_a_locked_error_while_another_process_holds_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locked.db");
    let first = start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1)[0];
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let start_args = [
        "start",
        "fixture.slow",
        "--json",
        r#"{"steps":1,"ms":1}"#,
        "--key",
        "late",
    ];
    let first_s = first.to_string();
    for args in [&start_args[..], &["cancel", &first_s][..]] {
        let (out, took) = run_cli(args, &db);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} fails while locked: {err}");
        assert!(
            err.contains("locked by another process"),
            "{args:?}: clear message, got {err:?}"
        );
        assert!(took < Duration::from_secs(40), "{args:?} took {took:?}");
    }
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM runs WHERE idempotency_key = 'late'"
        ),
        0,
        "the refused start wrote nothing"
    );
    assert_eq!(
        status(&db, first),
        "pending",
        "the refused cancel wrote nothing"
    );
    let (out, _) = run_cli(&start_args, &db);
    assert!(out.status.success(), "the same start succeeds: {out:?}");
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM runs WHERE idempotency_key = 'late'"
        ),
        1
    );
}

const ADD: waymark::Step<u64, u64> = waymark::Step::new("add1");
const WF: waymark::Workflow<u64, u64> = waymark::Workflow::new("locked.add");

#[test]
fn an_engine_start_run_refused_as_locked_is_never_applied_later() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("engine.db");
    let mut reg = waymark::Registry::new();
    reg.step(ADD, |_, x| Ok(x + 1));
    reg.workflow(WF, |ctx, x| ctx.step(ADD, &x));
    let mut config = waymark::Config::new(&db);
    config.isolation = waymark::Isolation::InProcess;
    config.lock_wait_max = Duration::from_millis(1500);
    let engine = waymark::Engine::start(reg, config).unwrap();
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let t = Instant::now();
    let refused = engine.start_run(WF, &1, waymark::StartOptions::key("refused"));
    assert!(
        matches!(
            refused,
            Err(waymark::Error::Store(waymark::StoreError::Locked { .. }))
        ),
        "typed Locked error, got {refused:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        t.elapsed()
    );
    // Hold the lock a little longer, so the engine's writer is still waiting for it with the
    // abandoned command queued, then release it.
    std::thread::sleep(Duration::from_millis(500));
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    let id = engine
        .start_run(WF, &5, waymark::StartOptions::key("accepted"))
        .unwrap();
    assert_eq!(
        engine.wait_output(WF, id, Duration::from_secs(30)).unwrap(),
        6
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM runs WHERE idempotency_key = 'refused'"
        ),
        0,
        "a call reported Locked is never applied"
    );
    engine.shutdown().unwrap();
}

/// Spawn `waymark serve` whose RLIMIT_FSIZE soft limit is `limit` (hard limit unlimited, so
/// the test can raise it later without privilege).
fn serve_with_fsize(dir: &std::path::Path, db: &std::path::Path, limit: u64) -> Proc {
    use std::os::unix::process::CommandExt;
    let log = dir.join("full.log");
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--workers", "4", "--lease-ttl-ms", "1500"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit(2) and signal(2) are async-signal-safe; no allocation here.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &r);
            // Without this, exceeding the limit kills with SIGXFSZ instead of EFBIG.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log: Some(log),
    }
}

#[test]
fn an_engine_recovers_by_itself_once_the_disk_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("transient.db");
    start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let size = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", db.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let limit = size("").max(size("-wal")) + 150 * 1024 + 96 * 1024;
    let mut runs = start(&db, "fixture.slow", r#"{"steps":4,"ms":5}"#, 150);
    let mut e = serve_with_fsize(dir.path(), &db, limit);
    wait_until(
        "the engine to hit the full disk",
        Duration::from_secs(60),
        || e.log_text().contains("stops claiming"),
    );
    // Room again: raise the running engine's limit (no restart).
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit(2) on a child we spawned, with a valid rlimit and no old-value pointer.
    let rc = unsafe { libc::prlimit(e.pid(), libc::RLIMIT_FSIZE, &r, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    runs.extend(start(&db, "fixture.slow", r#"{"steps":4,"ms":5}"#, 5));
    wait_until(
        "the same engine to finish every run, old and new",
        Duration::from_secs(120),
        || runs.iter().all(|r| status(&db, *r) == "completed"),
    );
    assert!(
        e.child.try_wait().unwrap().is_none(),
        "the engine was never restarted"
    );
    assert!(
        e.log_text().contains("accepts writes again"),
        "recovery logged:\n{}",
        e.log_text()
    );
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT count(*) FROM steps WHERE run_id >= {}", runs[0])
        ),
        runs.len() as i64 * 4,
        "one result per journal seq"
    );
    e.kill();
}
