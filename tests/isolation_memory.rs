//! Memory caps of child steps: an out-of-memory step fails alone and says so; the default
//! cap leaves room for threads; aborts that are not out-of-memory are not reported as such.

mod support;

use std::time::Duration;
use support::*;
use waymark::{Ctx, Engine, Registry, StartOptions, Step, StepLimits, Workflow, WorkflowError};

const HOG: Step<u64, u64> = Step::new("fixture.hog");
const QUICK: Step<u64, u64> = Step::new("fixture.quick");
const THREADS: Step<u32, u32> = Step::new("fixture.threads");
const ABORT: Step<String, ()> = Step::new("fixture.abort");
const STACK: Step<u64, u64> = Step::new("fixture.stack");

const MIXED: Workflow<(bool, u64), u64> = Workflow::new("t.mixed");
const THREADED: Workflow<u32, u32> = Workflow::new("t.threads");
const ABORTS: Workflow<u8, ()> = Workflow::new("t.aborts");

const CAP: u64 = 128 * 1024 * 1024;

fn mixed(ctx: &mut Ctx<'_>, (hog, n): (bool, u64)) -> Result<u64, WorkflowError> {
    if hog {
        return ctx.step(HOG, &(4 * CAP));
    }
    ctx.step(QUICK, &n)
}

fn aborts(ctx: &mut Ctx<'_>, which: u8) -> Result<(), WorkflowError> {
    if which == 0 {
        ctx.step(ABORT, &"abort-me".to_string())
    } else {
        ctx.step(STACK, &u64::MAX).map(|_| ())
    }
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    child_step(&mut reg, HOG).limits = Some(StepLimits {
        memory_bytes: Some(CAP),
        ..StepLimits::default()
    });
    child_step(&mut reg, QUICK);
    child_step(&mut reg, THREADS);
    child_step(&mut reg, ABORT);
    child_step(&mut reg, STACK);
    reg.workflow(MIXED, mixed);
    reg.workflow(THREADED, |ctx, n| ctx.step(THREADS, &n));
    reg.workflow(ABORTS, aborts);
    reg
}

// Scenario: one run's step allocates 4x its 128 MiB cap while 20 other runs execute in the
// same engine. Must hold: the hog run fails with "memory limit exceeded (128 MiB)"; under the
// default retry policy memory_limit is not retried (the same step over the same cap fails
// the same way again), so exactly one attempt is journaled, with its number, child pid and
// the class memory_limit; all 20 other runs complete with their outputs.
#[test]
fn oom_step_fails_alone_with_the_memory_reason() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    let hog = engine
        .start_run(MIXED, &(true, 0), StartOptions::key("hog"))
        .unwrap();
    let others: Vec<i64> = (0..20)
        .map(|i| {
            engine
                .start_run(MIXED, &(false, i), StartOptions::key(format!("ok-{i}")))
                .unwrap()
        })
        .collect();
    let row = engine.wait(hog, Duration::from_secs(60)).unwrap();
    assert_eq!(row.status, "failed");
    let err = row.error.unwrap_or_default();
    assert!(err.contains("memory limit exceeded (128 MiB)"), "{err}");
    let attempts = engine.attempts(hog).unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(err.ends_with("(attempt 1)"), "{err}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.attempt, i as i64 + 1);
        assert_eq!(a.outcome.as_deref(), Some("memory_limit"));
        assert_eq!(a.reason.as_deref(), Some("memory limit exceeded (128 MiB)"));
        assert!(a.pid.is_some() && a.pid_start.is_some());
    }
    for (i, id) in others.iter().enumerate() {
        let out = engine
            .wait_output(MIXED, *id, Duration::from_secs(60))
            .unwrap();
        assert_eq!(out, i as u64 + 1);
    }
    engine.shutdown().unwrap();
}

// Scenario: a step starts 64 threads (each allocating on its own malloc arena) under the
// default memory cap. Must hold: it completes and returns 64 (RLIMIT_DATA does not count
// the arenas' address-space reservations, see ARCHITECTURE.md).
#[test]
fn sixty_four_threads_run_under_the_default_cap() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    assert!(StepLimits::default().memory_bytes.is_some());
    let id = engine
        .start_run(THREADED, &64, StartOptions::default())
        .unwrap();
    assert_eq!(
        engine
            .wait_output(THREADED, id, Duration::from_secs(60))
            .unwrap(),
        64
    );
    engine.shutdown().unwrap();
}

// Scenario: one child aborts after a panic that cannot unwind (panic=abort behaviour) and
// another overflows its stack; both die by SIGABRT. Must hold: neither is reported as out
// of memory; the abort is a panic with its message, the overflow a signal 6 that mentions
// the stack.
#[test]
fn aborts_are_not_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    let a = engine
        .start_run(ABORTS, &0, StartOptions::default())
        .unwrap();
    let s = engine
        .start_run(ABORTS, &1, StartOptions::default())
        .unwrap();
    for (id, class) in [(a, "panic"), (s, "signal")] {
        let row = engine.wait(id, Duration::from_secs(60)).unwrap();
        assert_eq!(row.status, "failed");
        let err = row.error.unwrap_or_default();
        assert!(!err.contains("memory"), "{err}");
        let attempts = engine.attempts(id).unwrap();
        assert_eq!(
            attempts.last().unwrap().outcome.as_deref(),
            Some(class),
            "{err}"
        );
        if class == "panic" {
            assert!(err.contains("abort-me"), "{err}");
        } else {
            assert!(err.contains("signal 6") && err.contains("stack"), "{err}");
        }
    }
    engine.shutdown().unwrap();
}
