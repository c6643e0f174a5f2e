//! Cancellation (`waymark cancel` / `Engine::cancel`): a run ends `cancelled` and nothing of
//! it runs again, whether it was running, sleeping, or its engine died mid-cancellation.

mod support;

use std::time::Duration;
use support::*;

fn cancel(tmp: &Tmp, run_id: i64) -> String {
    tmp.waymark(&[
        "cancel",
        &run_id.to_string(),
        "--db",
        tmp.db().to_str().unwrap(),
    ])
    .trim()
    .to_string()
}

fn steps_done(tmp: &Tmp, run_id: i64) -> i64 {
    query_i64(
        &tmp.db(),
        &format!("SELECT count(*) FROM steps WHERE run_id = {run_id} AND status = 'completed'"),
    )
}

fn effects_of(tmp: &Tmp, run_id: i64) -> usize {
    tmp.effect_steps().iter().filter(|e| e.0 == run_id).count()
}

// Scenario: a run of 40 slow steps is cancelled while a step runs, and the engine is
// SIGKILLed right after the request (before it could notice). Must survive: the request
// (cancel_requested in the database): after restart the run ends `cancelled` without
// executing any further step, and stays so.
on_both_stores!(kill_during_cancellation_ends_cancelled_after_restart);
fn kill_during_cancellation_ends_cancelled_after_restart(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let id = tmp.start("fixture.slow", r#"{"steps":40,"ms":400}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("two steps done", Duration::from_secs(30), || {
        steps_done(&tmp, id) >= 2
    });
    assert_eq!(
        cancel(&tmp, id),
        "running",
        "a running run is told, not ended by the CLI"
    );
    kill9(&mut engine);
    let effects_at_kill = effects_of(&tmp, id);
    let journal_at_kill = journal(&db, id).len();
    assert_eq!(status(&db, id), "running");

    let mut engine = tmp.serve(2, &[]);
    wait_until("run cancelled", Duration::from_secs(30), || {
        status(&db, id) == "cancelled"
    });
    std::thread::sleep(Duration::from_millis(1500));
    kill9(&mut engine);
    assert_eq!(status(&db, id), "cancelled");
    assert_eq!(
        effects_of(&tmp, id),
        effects_at_kill,
        "no step ran after the restart"
    );
    assert_eq!(
        journal(&db, id).len(),
        journal_at_kill,
        "nothing journaled after the kill"
    );
}

// Scenario: a live engine is running a run of slow steps when it is cancelled. Must hold: the
// run ends `cancelled` at the next step boundary and no step starts afterwards.
on_both_stores!(cancelling_a_running_run_stops_it_at_the_next_step_boundary);
fn cancelling_a_running_run_stops_it_at_the_next_step_boundary(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let id = tmp.start("fixture.slow", r#"{"steps":40,"ms":300}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("a step done", Duration::from_secs(30), || {
        steps_done(&tmp, id) >= 1
    });
    cancel(&tmp, id);
    wait_until("run cancelled", Duration::from_secs(30), || {
        status(&db, id) == "cancelled"
    });
    let effects_at_cancel = effects_of(&tmp, id);
    std::thread::sleep(Duration::from_millis(1000));
    kill9(&mut engine);
    assert_eq!(
        effects_of(&tmp, id),
        effects_at_cancel,
        "no step started after cancellation"
    );
    assert!(steps_done(&tmp, id) < 40);
    let err = query_text(&db, &format!("SELECT error FROM runs WHERE id = {id}"));
    assert_eq!(err, "cancelled");
}

// Scenario: a sleeping (suspended) run and a pending run are cancelled with no engine
// running. Must hold: both end `cancelled` at once; an engine started afterwards runs
// nothing of them.
on_both_stores!(cancelling_a_sleeping_or_pending_run_ends_it_at_once);
fn cancelling_a_sleeping_or_pending_run_ends_it_at_once(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let sleeper = tmp.start("fixture.sleeper", r#"{"ms":600000}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("sleeping", Duration::from_secs(30), || {
        status(&db, sleeper) == "suspended"
    });
    kill9(&mut engine);
    let pending = tmp.start("fixture.slow", r#"{"steps":3,"ms":10}"#, 1)[0];
    assert_eq!(cancel(&tmp, sleeper), "cancelled");
    assert_eq!(cancel(&tmp, pending), "cancelled");
    let mut engine = tmp.serve(2, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    kill9(&mut engine);
    assert_eq!(status(&db, sleeper), "cancelled");
    assert_eq!(status(&db, pending), "cancelled");
    assert_eq!(journal(&db, pending).len(), 0);
    assert_eq!(effects_of(&tmp, sleeper) + effects_of(&tmp, pending), 0);
}
