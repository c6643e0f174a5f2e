//! On both stores (SQLite and PostgreSQL).
//! Scenario: a run journals step 'fixture.a' at seq 0, its engine is killed, and a build whose
//! workflow now calls 'fixture.b' first replays it.
//! Must hold: that run fails with a non-determinism error naming the run, the sequence number
//! and both step names; the engine keeps going and completes other runs.

mod support;
use std::time::Duration;
use support::*;

on_both_stores!(replay_calling_another_step_fails_the_run_not_the_engine);
fn replay_calling_another_step_fails_the_run_not_the_engine(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "nd.db");
    let dbs = db.to_str().unwrap();
    let fx = dir.path().join("effects");
    let run = start_runs(&db, "fixture.nondet", r#"{"steps":2,"ms":60000}"#, None, 1)[0];
    let envs = [("WAYMARK_DEMO_EFFECTS", fx.to_str().unwrap())];
    let mut a = spawn(
        &["serve", "--db", dbs, "--workers", "1"],
        &envs,
        &dir.path().join("a.log"),
    );
    wait_for("seq 0 journaled", Duration::from_secs(30), || {
        (try_query_i64(&db, "SELECT count(*) FROM steps") == Some(1)).then_some(())
    });
    kill9(&mut a);

    let other = start_runs(&db, "fixture.slow", r#"{"steps":2,"ms":1}"#, None, 1)[0];
    let envs = [("WAYMARK_FIXTURE_NONDET", "1")];
    let mut b = spawn(
        &["serve", "--db", dbs, "--workers", "1", "--exit-when-idle"],
        &envs,
        &dir.path().join("b.log"),
    );
    assert!(
        wait_exit(&mut b, Duration::from_secs(60)).success(),
        "the engine survives the non-deterministic run"
    );
    assert_eq!(try_status(&db, run).as_deref(), Some("failed"));
    assert_eq!(try_status(&db, other).as_deref(), Some("completed"));
    let error = query_text(&db, &format!("SELECT error FROM runs WHERE id = {run}"));
    assert!(error.contains(&format!("run {run}")), "{error}");
    assert!(error.contains("seq 0"), "{error}");
    assert!(
        error.contains("fixture.a") && error.contains("fixture.b"),
        "{error}"
    );
}
