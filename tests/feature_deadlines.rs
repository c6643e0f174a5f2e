//! Deadlines (per run, `StartOptions::deadline_ms`) and cooperative step timeouts for
//! in-process steps (`StepCtx::check`), on an in-process engine, on both stores.

mod support;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;
use waymark::{
    Config, Ctx, Engine, Error, Registry, RetryPolicy, StartOptions, Step, StepCtx, Workflow,
};

const NAP: Step<u64, u64> = Step::new("nap");
const SPIN: Step<(), ()> = Step::new("spin");
const NAPS: Workflow<u64, u64> = Workflow::new("naps");
const SLEEPY: Workflow<(), ()> = Workflow::new("sleepy");
const SPINNER: Workflow<(), ()> = Workflow::new("spinner");

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn engine(backend: Backend, dir: &tempfile::TempDir) -> Engine {
    let mut reg = Registry::new();
    reg.step(NAP, |_: &StepCtx, ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    });
    reg.step(SPIN, |ctx: &StepCtx, ()| loop {
        ctx.check()?;
        std::thread::sleep(Duration::from_millis(5));
    })
    .limits = Some(waymark::StepLimits {
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    reg.workflow(NAPS, |ctx: &mut Ctx<'_>, ms: u64| {
        let mut n = 0;
        for _ in 0..50 {
            n += ctx.step(NAP, &ms)?;
        }
        Ok(n)
    });
    reg.workflow(SLEEPY, |ctx: &mut Ctx<'_>, ()| {
        ctx.sleep(Duration::from_secs(600))?;
        Ok(())
    });
    reg.workflow(SPINNER, |ctx: &mut Ctx<'_>, ()| ctx.step(SPIN, &()));
    let mut config = Config::new(backend.fresh_db(dir.path(), "d.db"));
    config.isolation = waymark::Isolation::InProcess; // test binaries have no child hook
    config.workers = 2;
    config.retry = RetryPolicy::never();
    Engine::start(reg, config).unwrap()
}

fn failure(engine: &Engine, id: i64) -> String {
    match engine.wait(id, Duration::from_secs(30)).unwrap() {
        row if row.status == "failed" => row.error.unwrap_or_default(),
        row => panic!("run {id} ended {}: {:?}", row.status, row.note),
    }
}

// Scenario: a run of 50 steps of 100 ms has a 700 ms deadline; a sleeping run has a 500 ms
// deadline. Must hold: both end `failed` with a reason naming the deadline; the running one
// stops at a step boundary (does not run all 50 steps).
on_both_stores!(runs_fail_when_their_deadline_passes);
fn runs_fail_when_their_deadline_passes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(backend, &dir);
    let opts = |ms: i64| StartOptions {
        deadline_ms: Some(now_ms() + ms),
        ..Default::default()
    };
    let busy = engine.start_run(NAPS, &100, opts(700)).unwrap();
    let asleep = engine.start_run(SLEEPY, &(), opts(500)).unwrap();
    let e = failure(&engine, busy);
    assert!(e.contains("deadline"), "{e}");
    assert!(engine.journal(busy).unwrap().len() < 50);
    let e = failure(&engine, asleep);
    assert!(e.contains("deadline"), "{e}");
    // Already past at start: fails without running anything.
    let late = engine.start_run(NAPS, &1, opts(-1)).unwrap();
    assert!(failure(&engine, late).contains("deadline"));
    assert!(engine.journal(late).unwrap().is_empty());
}

// Scenario: an in-process step with a 300 ms timeout loops on `StepCtx::check`. Must hold: the
// step stops (cooperatively) and the run fails with the timeout reason instead of hanging.
on_both_stores!(in_process_step_timeout_is_cooperative);
fn in_process_step_timeout_is_cooperative(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(backend, &dir);
    let id = engine
        .start_run(SPINNER, &(), StartOptions::default())
        .unwrap();
    let e = failure(&engine, id);
    assert!(e.contains("timed out") || e.contains("stopped"), "{e}");
    match engine.wait_output(SPINNER, id, Duration::from_secs(1)) {
        Err(Error::RunFailed { .. }) => {}
        other => panic!("{other:?}"),
    }
}
