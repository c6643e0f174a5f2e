//! Crashes do not spend retries (issue 9, suspected item). Scenario: a child step with the
//! default retry policy (3 attempts) is cut three times by its engine's death (SIGKILL of
//! the engine while the step runs), then runs to its end under a fourth engine and fails
//! once on its own.
//! What must survive: the step is retried (it has spent one attempt of three, not four) and
//! the run completes; the attempts cut by a dead engine are recorded but spend nothing.

mod support;
use std::time::Duration;
use support::*;

on_both_stores!(attempts_cut_by_a_dead_engine_spend_no_retries);
fn attempts_cut_by_a_dead_engine_spend_no_retries(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "budget.db");
    let marker = dir.path().join("marker");
    let input = format!(r#"{{"ms":1500,"marker":"{}"}}"#, marker.display());
    let run = start(&db, "fixture.flaky", &input, 1)[0];
    for i in 1..=3 {
        let mut e = serve(dir.path(), &format!("e{i}"), &db, 1, 60_000, &[]);
        wait_until("the step to start", Duration::from_secs(30), || {
            effect_count(dir.path(), run, 0, "flaky") == i
        });
        e.kill();
    }
    let _last = serve(dir.path(), "last", &db, 1, 60_000, &[]);
    wait_until("the run to finish", Duration::from_secs(60), || {
        matches!(status(&db, run).as_str(), "completed" | "failed")
    });
    let error = query_text(&db, &format!("SELECT error FROM runs WHERE id = {run}"));
    assert_eq!(status(&db, run), "completed", "error: {error:?}");
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT interruptions FROM runs WHERE id = {run}")
        ),
        3
    );
    assert!(marker.exists());
}
