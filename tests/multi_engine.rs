//! On both stores (SQLite and PostgreSQL).
//! Scenario: two engine processes on one database share 500 runs.
//! Must hold: every run completes; each step of each run executed exactly once; no run was
//! executed by both engines (each run's steps all ran in one process); both engines worked.

mod support;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

on_both_stores!(two_engines_share_500_runs_without_running_one_twice);
fn two_engines_share_500_runs_without_running_one_twice(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "shared.db");
    let fx = dir.path().join("effects");
    let ids = start_runs(&db, "fixture.slow", r#"{"steps":3,"ms":3}"#, Some("m"), 500);
    assert_eq!(ids.len(), 500);
    let dbs = db.to_str().unwrap();
    let envs = [("WAYMARK_DEMO_EFFECTS", fx.to_str().unwrap())];
    let args = ["serve", "--db", dbs, "--workers", "4", "--exit-when-idle"];
    let mut a = spawn(&args, &envs, &dir.path().join("a.log"));
    let mut b = spawn(&args, &envs, &dir.path().join("b.log"));
    assert!(wait_exit(&mut a, Duration::from_secs(120)).success());
    assert!(wait_exit(&mut b, Duration::from_secs(120)).success());

    assert_eq!(
        try_query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'"),
        Some(500)
    );
    assert_eq!(try_query_i64(&db, "SELECT count(*) FROM steps"), Some(1500));
    let fx = effects(&fx);
    let mut per_step: HashMap<(i64, i64), usize> = HashMap::new();
    for (run, seq, _, _) in &fx {
        *per_step.entry((*run, *seq)).or_default() += 1;
    }
    assert_eq!(per_step.len(), 1500, "every step executed");
    assert!(per_step.values().all(|&n| n == 1), "no step executed twice");
    // Steps run in child processes; each attempt records the engine that owned the run.
    let shared = query_i64(
        &db,
        "SELECT count(*) FROM (SELECT run_id FROM attempts GROUP BY run_id HAVING count(DISTINCT owner) > 1) t",
    );
    assert_eq!(shared, 0, "no run executed by both engines");
    let attempts = query_i64(&db, "SELECT count(*) FROM attempts");
    assert_eq!(attempts, 1500, "one recorded attempt per step");
    let engines = query_i64(&db, "SELECT count(DISTINCT owner) FROM attempts");
    assert_eq!(engines, 2, "both engines took work");
}
