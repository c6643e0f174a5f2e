//! On both stores (SQLite and PostgreSQL).
//! Scenario: `waymark demo` is SIGKILLed at chosen points (after a checkpoint commit, before a
//! COMMIT, after a step finished but before its result committed, and at a random moment) and
//! started again on the same database.
//! Must survive: every run completes; every journal sequence number holds exactly one recorded
//! result; a step journaled before the kill never runs again; the only re-executed steps are
//! ones that were in flight at the kill (at most one per worker).

mod support;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use support::*;

const RUNS: &str = "30";
const WORKERS: &str = "3";

fn demo(db: &Path, effects: &Path, fault: Option<&str>, log: &Path) -> std::process::ExitStatus {
    let mut envs = vec![("WAYMARK_DEMO_EFFECTS", effects.to_str().unwrap())];
    if let Some(f) = fault {
        envs.push(("WAYMARK_FAULT", f));
    }
    let mut child = spawn(
        &[
            "demo",
            "--db",
            db.to_str().unwrap(),
            "--runs",
            RUNS,
            "--workers",
            WORKERS,
        ],
        &envs,
        log,
    );
    wait_exit(&mut child, Duration::from_secs(120))
}

fn check_kill_point(backend: Backend, fault: &str) {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "demo.db");
    let (fx1, fx2) = (dir.path().join("effects-1"), dir.path().join("effects-2"));
    let status = demo(&db, &fx1, Some(fault), &dir.path().join("log-1"));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{fault}: the demo should have been killed, got {status:?}"
    );
    let journaled_at_kill: HashSet<(i64, i64)> = journal_keys(&db).into_iter().collect();

    let status = demo(&db, &fx2, None, &dir.path().join("log-2"));
    let log2 = std::fs::read_to_string(dir.path().join("log-2")).unwrap_or_default();
    assert!(
        status.success(),
        "{fault}: restarted demo failed: {status:?}\n{log2}"
    );

    // Every run completed, each with seq 0, 1, 2 recorded exactly once.
    let completed = query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'");
    assert_eq!(completed, 30, "{fault}: all runs complete");
    let bad = query_i64(
        &db,
        "SELECT count(*) FROM runs r WHERE (SELECT count(*) FROM steps s WHERE s.run_id = r.id) != 3
           OR (SELECT count(DISTINCT seq) FROM steps s WHERE s.run_id = r.id AND s.seq BETWEEN 0 AND 2) != 3",
    );
    assert_eq!(
        bad, 0,
        "{fault}: each run has exactly seq 0..2 journaled once"
    );

    // Re-executions: a step executed before the kill and again after it.
    let before: Vec<_> = effects(&fx1);
    let after: Vec<_> = effects(&fx2);
    let ran_before: HashSet<(i64, i64)> = before.iter().map(|e| (e.0, e.1)).collect();
    let mut after_counts: HashMap<(i64, i64), usize> = HashMap::new();
    for e in &after {
        *after_counts.entry((e.0, e.1)).or_default() += 1;
    }
    for (key, n) in &after_counts {
        assert_eq!(
            *n, 1,
            "{fault}: step {key:?} ran {n} times after the restart"
        );
        assert!(
            !journaled_at_kill.contains(key),
            "{fault}: step {key:?} was journaled before the kill but ran again"
        );
    }
    let reexecuted: Vec<_> = after_counts
        .keys()
        .filter(|k| ran_before.contains(k))
        .collect();
    assert!(
        reexecuted.len() <= 3,
        "{fault}: at most one in-flight step per worker may re-run, got {reexecuted:?}"
    );
    // Every step ran at least once overall, and each journaled step ran at least once.
    for key in journal_keys(&db) {
        assert!(
            ran_before.contains(&key) || after_counts.contains_key(&key),
            "{fault}: {key:?} recorded without running"
        );
    }
}

on_both_stores!(killed_after_a_checkpoint_commit_resumes_without_rerunning_journaled_steps);
fn killed_after_a_checkpoint_commit_resumes_without_rerunning_journaled_steps(backend: Backend) {
    check_kill_point(backend, "after_checkpoint=7");
    check_kill_point(backend, "after_checkpoint=41");
}

on_both_stores!(killed_before_a_commit_loses_only_uncommitted_work);
fn killed_before_a_commit_loses_only_uncommitted_work(backend: Backend) {
    check_kill_point(backend, "before_commit=25");
}

on_both_stores!(killed_after_a_step_before_its_result_committed_reruns_only_that_step);
fn killed_after_a_step_before_its_result_committed_reruns_only_that_step(backend: Backend) {
    check_kill_point(backend, "after_step=17");
}

on_both_stores!(killed_repeatedly_at_random_points_still_completes_every_run);
fn killed_repeatedly_at_random_points_still_completes_every_run(backend: Backend) {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "demo.db");
    let fx = dir.path().join("effects");
    for (i, n) in [5, 13, 29].iter().enumerate() {
        let status = demo(
            &db,
            &fx,
            Some(&format!("after_commit={n}")),
            &dir.path().join(format!("log-{i}")),
        );
        assert!(status.signal() == Some(libc::SIGKILL) || status.success());
    }
    let status = demo(&db, &fx, None, &dir.path().join("log-final"));
    assert!(status.success());
    assert_eq!(
        try_query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'"),
        Some(30)
    );
    assert_eq!(try_query_i64(&db, "SELECT count(*) FROM steps"), Some(90));
    // Re-running the demo on a finished database starts nothing new.
    let status = demo(&db, &fx, None, &dir.path().join("log-again"));
    assert!(status.success());
    assert_eq!(try_query_i64(&db, "SELECT count(*) FROM runs"), Some(30));
}
