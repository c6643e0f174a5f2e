//! Adversarial review of the attempt close (commit d2d0be8): a successful child step's
//! attempt is closed with its logs and memory-cap mechanism in ONE fenced commit
//! (`Storage::attempt_close`: AttemptDetail then AttemptEnd in one batch), after a pooled
//! child's group was emptied; the pool takes the child back only if that commit succeeded.
//! The fault point `before_close` holds (or kills) an engine between the step's return and
//! that commit.
//!
//! Scenarios, each on both stores:
//! - A late close after a reclaim: engine A's pooled step returned and A is held, then
//!   stopped (SIGSTOP), before the close; engine B reclaims the run and completes it; A is
//!   continued and tries to close. Must hold: A's close writes nothing (neither the end nor
//!   the logs of attempt 1), B's attempt is closed `success` with its logs, the step's result
//!   is journaled once, and the pooled child attempt 1 names is gone.
//! - A close fenced off while A lives: A is held before the close while the run is taken
//!   from it (epoch bump, as a reclaim does; the run then waits suspended). Must hold: A's
//!   close writes nothing, A ends the pooled child its open attempt names (never takes it
//!   back), a later run never runs in that child, and the first run completes later with
//!   attempt 1 open and attempt 2 `success`.
//! - A close whose batch fails half-way (its AttemptEnd refused, its AttemptDetail not):
//!   nothing of it stays, and the child is not taken back.
//! - A death before the close (cold child, then pooled child): A is killed at
//!   `before_close`. Must hold: attempt 1 has neither end nor logs (all or none), A's step
//!   child does not outlive A, and B's re-execution is closed `success` with its logs and
//!   memory-cap mechanism.

mod support;
use std::time::Duration;
use support::*;

const TTL: u64 = 800;
/// `fixture.chatty` writes these lines (attempt N) to stdout; they are its logs.
const CHATTY: &str = r#"{"flood_bytes":0}"#;

/// The one attempt row of `run`'s seq 0 numbered `attempt`.
fn attempt_of(db: &std::path::Path, run: i64, attempt: i64) -> Option<StoredAttempt> {
    stored_attempts(db, run)
        .into_iter()
        .find(|a| a.seq == 0 && a.attempt == attempt)
}

/// Attempt 1 of `run`'s seq 0 has an outcome or logs (something closed it).
fn touched(db: &std::path::Path, run: i64) -> bool {
    attempt_of(db, run, 1).is_some_and(|a| a.outcome.is_some() || a.logs.is_some())
}

on_both_stores!(a_late_close_after_a_reclaim_writes_nothing);
fn a_late_close_after_a_reclaim_writes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "late.db");
    let run = start(&db, "fixture.chatty", CHATTY, 1)[0];
    let go = dir.path().join("go");
    let a = serve_with(
        dir.path(),
        "a",
        &db,
        1,
        TTL,
        &[(
            "WAYMARK_FAULT_PAUSE",
            format!("before_close:{}", go.display()),
        )],
        &["--pool"],
    );
    wait_until(
        "A to hold before closing attempt 1",
        Duration::from_secs(60),
        || a.log_text().contains("paused at before_close"),
    );
    let first = attempt_of(&db, run, 1).expect("attempt 1 recorded");
    let p = first.pid.expect("attempt 1 names its pooled child");
    assert_eq!(first.outcome, None, "{first:?}");
    a.signal(libc::SIGSTOP);
    let b = serve_with(dir.path(), "b", &db, 1, TTL, &[], &["--pool"]);
    wait_until("B to complete the run", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    a.signal(libc::SIGCONT);
    // A's heartbeat learns it was fenced before its worker goes on.
    std::thread::sleep(Duration::from_millis(4 * TTL));
    std::fs::write(&go, b"").unwrap();
    wait_until("A's late close to end", Duration::from_secs(60), || {
        a.log_text().contains("not closed") || touched(&db, run)
    });
    wait_until(
        "the pooled child attempt 1 names to be gone",
        Duration::from_secs(30),
        || !alive(p),
    );
    let late = attempt_of(&db, run, 1).expect("attempt 1 still recorded");
    assert_eq!(
        (late.outcome.as_deref(), late.logs.as_deref()),
        (None, None),
        "A's fenced-off close wrote (part of) attempt 1: {late:?}\nA: {}",
        a.log_text()
    );
    let second = attempt_of(&db, run, 2).expect("B's attempt 2 recorded");
    assert_eq!(second.outcome.as_deref(), Some("success"), "{second:?}");
    assert!(
        second
            .logs
            .as_deref()
            .is_some_and(|l| l.contains("chatty stdout 1 (attempt 2)")),
        "{second:?}"
    );
    assert_eq!(
        journal(&db, run),
        vec![(
            0,
            "fixture.chatty".to_string(),
            "step".to_string(),
            "completed".to_string()
        )],
        "A: {}\nB: {}",
        a.log_text(),
        b.log_text()
    );
}

on_both_stores!(a_pooled_child_whose_close_was_fenced_off_is_never_taken_back);
fn a_pooled_child_whose_close_was_fenced_off_is_never_taken_back(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "fenced.db");
    let r1 = start(&db, "fixture.chatty", CHATTY, 1)[0];
    let go = dir.path().join("go");
    let a = serve_with(
        dir.path(),
        "a",
        &db,
        2,
        5000,
        &[(
            "WAYMARK_FAULT_PAUSE",
            format!("before_close:{}", go.display()),
        )],
        &["--pool"],
    );
    wait_until(
        "A to hold before closing R1's attempt 1",
        Duration::from_secs(60),
        || a.log_text().contains("paused at before_close"),
    );
    let p = attempt_of(&db, r1, 1)
        .and_then(|a| a.pid)
        .expect("attempt 1 names its pooled child");
    // A loses R1 while it lives and runs (the epoch bump and release a reclaim does to the
    // run's row), and R1 waits (suspended) until the test makes it due.
    let n = exec(
        &db,
        &format!(
            "UPDATE runs SET status = 'suspended', owner = NULL, epoch = epoch + 1,
                    lease_expires_at = NULL, ready_at = 4000000000000000000
             WHERE id = {r1} AND status = 'running'"
        ),
    );
    assert_eq!(n, 1, "R1 was not running");
    std::fs::write(&go, b"").unwrap();
    wait_until("A's close of R1 to end", Duration::from_secs(60), || {
        a.log_text().contains("not closed") || touched(&db, r1)
    });
    let open = attempt_of(&db, r1, 1).expect("attempt 1 still recorded");
    assert_eq!(
        (open.outcome.as_deref(), open.logs.as_deref()),
        (None, None),
        "A's close of a run it lost wrote (part of) attempt 1: {open:?}"
    );
    // The open attempt 1 of R1 names the child: it must not serve anything else.
    wait_until(
        "the pooled child R1's open attempt names to end",
        Duration::from_secs(30),
        || !alive(p),
    );
    let r2 = start(&db, "fixture.chatty", CHATTY, 1)[0];
    wait_until("R2 to complete", Duration::from_secs(60), || {
        status(&db, r2) == "completed"
    });
    let r2_attempts = stored_attempts(&db, r2);
    assert!(
        r2_attempts.iter().all(|x| x.pid != Some(p)),
        "R2 ran in R1's pooled child {p}: {r2_attempts:?}"
    );
    // R1 due again: A runs it as attempt 2 (its survivor kill looks at attempt 1's child).
    exec(
        &db,
        &format!("UPDATE runs SET ready_at = 0 WHERE id = {r1}"),
    );
    wait_until("R1 to complete", Duration::from_secs(60), || {
        status(&db, r1) == "completed"
    });
    let r1_attempts = stored_attempts(&db, r1);
    assert_eq!(
        r1_attempts
            .iter()
            .map(|x| (x.attempt, x.outcome.clone()))
            .collect::<Vec<_>>(),
        vec![(1, None), (2, Some("success".to_string()))],
        "{r1_attempts:?}\nA: {}",
        a.log_text()
    );
}

// Scenario: the close's batch fails half-way. A is held before the close while the test
// marks attempt 1 ended (outcome `probe`), so the close's AttemptDetail matches its row and
// its AttemptEnd matches none (the lease itself still holds). Must hold: the batch is all or
// none (attempt 1 keeps the test's outcome and gets no logs), A does not take the child
// back (its close failed), and the run completes with its one step journaled.
on_both_stores!(a_close_whose_end_is_refused_writes_no_logs_either);
fn a_close_whose_end_is_refused_writes_no_logs_either(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "half.db");
    let run = start(&db, "fixture.chatty", CHATTY, 1)[0];
    let go = dir.path().join("go");
    let a = serve_with(
        dir.path(),
        "a",
        &db,
        1,
        5000,
        &[(
            "WAYMARK_FAULT_PAUSE",
            format!("before_close:{}", go.display()),
        )],
        &["--pool"],
    );
    wait_until(
        "A to hold before closing attempt 1",
        Duration::from_secs(60),
        || a.log_text().contains("paused at before_close"),
    );
    let p = attempt_of(&db, run, 1)
        .and_then(|a| a.pid)
        .expect("attempt 1 names its pooled child");
    let n = exec(
        &db,
        &format!(
            "UPDATE attempts SET outcome = 'probe', reason = 'ended by the test'
             WHERE run_id = {run} AND seq = 0 AND attempt = 1 AND outcome IS NULL"
        ),
    );
    assert_eq!(n, 1);
    std::fs::write(&go, b"").unwrap();
    wait_until("A's close to end", Duration::from_secs(60), || {
        a.log_text().contains("not closed")
            || attempt_of(&db, run, 1).is_some_and(|x| x.logs.is_some())
    });
    let half = attempt_of(&db, run, 1).expect("attempt 1 still recorded");
    assert_eq!(
        (half.outcome.as_deref(), half.logs.as_deref()),
        (Some("probe"), None),
        "the close's batch was applied in part: {half:?}\nA: {}",
        a.log_text()
    );
    wait_until(
        "A to end the child whose attempt it could not close",
        Duration::from_secs(30),
        || !alive(p),
    );
    wait_until("the run to complete", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    assert_eq!(journal(&db, run).len(), 1, "A: {}", a.log_text());
}

/// Kill engine A at `before_close` (with `extra` isolation flags), let B finish the run.
fn killed_before_close(backend: Backend, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "killed.db");
    let run = start(&db, "fixture.chatty", CHATTY, 1)[0];
    let mut a = serve_with(
        dir.path(),
        "a",
        &db,
        1,
        TTL,
        &[("WAYMARK_FAULT", "before_close=1".to_string())],
        extra,
    );
    a.wait_exit(Duration::from_secs(60));
    assert!(
        a.log_text().contains("SIGKILL at before_close"),
        "{}",
        a.log_text()
    );
    let first = attempt_of(&db, run, 1).expect("attempt 1 recorded");
    assert_eq!(
        (first.outcome.as_deref(), first.logs.as_deref()),
        (None, None),
        "attempt 1 was partly closed before the close: {first:?}"
    );
    let p = first.pid.expect("attempt 1 names its child");
    wait_until(
        "A's step child to end with A",
        Duration::from_secs(30),
        || !alive(p),
    );
    let b = serve_with(dir.path(), "b", &db, 1, TTL, &[], extra);
    wait_until("B to complete the run", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    let second = attempt_of(&db, run, 2).expect("attempt 2 recorded");
    assert_eq!(
        second.outcome.as_deref(),
        Some("success"),
        "{second:?}\nB: {}",
        b.log_text()
    );
    let logs = second.logs.clone().unwrap_or_default();
    assert!(
        logs.contains("chatty stdout 2 (attempt 2)")
            && logs.contains("chatty stderr 3 (attempt 2)"),
        "the successful attempt's logs were not kept: {second:?}"
    );
    assert!(
        second.memory_cap.is_some(),
        "the successful attempt's memory-cap mechanism was not kept: {second:?}"
    );
    assert_eq!(journal(&db, run).len(), 1);
}

on_both_stores!(a_cold_step_killed_before_its_close_leaves_no_half_closed_attempt);
fn a_cold_step_killed_before_its_close_leaves_no_half_closed_attempt(backend: Backend) {
    killed_before_close(backend, &[]);
}

on_both_stores!(a_pooled_step_killed_before_its_close_leaves_no_half_closed_attempt);
fn a_pooled_step_killed_before_its_close_leaves_no_half_closed_attempt(backend: Backend) {
    killed_before_close(backend, &["--pool"]);
}

// Scenario (PostgreSQL only: [`PgProxy`]): the COMMIT of a pooled step's close (logs and end
// in one transaction) is applied and its answer lost; the engine cannot know it committed.
// Must hold: the run completes with each step executed once (the step's result is still
// journaled, nothing runs it again), no two executions overlap, the close is whole (attempt
// 1 of seq 0 `success` with its logs), and the engine does not panic.
#[test]
fn a_pooled_close_whose_commit_answer_is_lost_runs_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_pg_db();
    drop(storage(std::path::Path::new(&url)));
    let proxy = PgProxy::start();
    let db = std::path::PathBuf::from(&url);
    let through = std::path::PathBuf::from(proxy.url(&url));
    // The close is the only transaction that writes an attempt's logs.
    proxy.lose_next_commit_answer_of("UPDATE attempts SET logs");
    let run = start(&db, "fixture.slow", r#"{"steps":3,"ms":100}"#, 1)[0];
    let a = serve_with(dir.path(), "a", &through, 1, 3000, &[], &["--pool"]);
    wait_until(
        "the close's COMMIT answer to be lost",
        Duration::from_secs(60),
        || proxy.cuts() == 1,
    );
    wait_until("the run to complete", Duration::from_secs(120), || {
        status(&db, run) == "completed"
    });
    let log = a.log_text();
    for seq in 0..3 {
        assert_eq!(
            effect_count(dir.path(), run, seq, "sleep"),
            1,
            "step {seq} executed more than once\n{log}"
        );
    }
    assert_eq!(overlaps(dir.path()), vec![], "{log}");
    assert_eq!(journal(&db, run).len(), 3, "{log}");
    let first = attempt_of(&db, run, 1).expect("attempt 1 of seq 0");
    assert_eq!(first.outcome.as_deref(), Some("success"), "{first:?}");
    assert!(first.logs.is_some(), "{first:?}");
    assert!(!log.contains("panicked"), "{log}");
    // The engine saw its close fail (it cannot know the COMMIT was applied).
    assert!(log.contains("not closed"), "{log}");
}
