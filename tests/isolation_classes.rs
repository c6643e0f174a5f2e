//! Failure classes reported from children: panic message, protocol error, retry journaling.

mod support;

use std::time::Duration;
use support::*;
use waymark::{Engine, Registry, RetryPolicy, StartOptions, Step, Workflow};

const PANIC: Step<String, ()> = Step::new("fixture.panic");
const GARBAGE: Step<(), ()> = Step::new("fixture.garbage");
const PANIC_WF: Workflow<String, ()> = Workflow::new("t.panic");
const GARBAGE_WF: Workflow<(), ()> = Workflow::new("t.garbage");

fn registry() -> Registry {
    let mut reg = Registry::new();
    child_step(&mut reg, PANIC).retry = Some(RetryPolicy {
        attempts_max: 2,
        backoff_initial: Duration::from_millis(10),
        ..RetryPolicy::default()
    });
    child_step(&mut reg, GARBAGE).retry = Some(RetryPolicy::never());
    reg.workflow(PANIC_WF, |ctx, m| ctx.step(PANIC, &m));
    reg.workflow(GARBAGE_WF, |ctx, ()| ctx.step(GARBAGE, &()));
    reg
}

// Scenario: a child step panics with a message; its policy allows 2 attempts. Must hold: the
// run fails with "panicked: <message>" after attempt 2, and both attempts are journaled with
// their number, class panic and the message (the retry went through a durable backoff).
#[test]
fn panic_message_is_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    let id = engine
        .start_run(
            PANIC_WF,
            &"the flux capacitor broke".to_string(),
            StartOptions::default(),
        )
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(60)).unwrap();
    assert_eq!(row.status, "failed");
    let err = row.error.unwrap_or_default();
    assert!(
        err.contains("panicked: the flux capacitor broke (attempt 2)"),
        "{err}"
    );
    let attempts = engine.attempts(id).unwrap();
    assert_eq!(attempts.len(), 2);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.attempt, i as i64 + 1);
        assert_eq!(a.outcome.as_deref(), Some("panic"));
        assert_eq!(
            a.reason.as_deref(),
            Some("panicked: the flux capacitor broke")
        );
    }
    engine.shutdown().unwrap();
}

// Scenario: a child writes bytes that are not a frame on the protocol pipe, then lingers.
// Must hold: the step fails as a protocol error (not a hang: the child is killed at once),
// and that child process is gone.
#[test]
fn garbage_on_the_pipe_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    let id = engine
        .start_run(GARBAGE_WF, &(), StartOptions::default())
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(20)).unwrap();
    assert_eq!(row.status, "failed");
    let err = row.error.unwrap_or_default();
    assert!(err.contains("protocol error: not a waymark frame"), "{err}");
    let attempts = engine.attempts(id).unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("protocol"));
    let pid = attempts[0].pid.unwrap() as u32;
    assert!(!alive(pid), "child {pid} still alive");
    engine.shutdown().unwrap();
}
