//! Many short child steps leave nothing behind.

mod support;

use std::time::Duration;
use support::*;
use waymark::{Ctx, Engine, Registry, StartOptions, Step, Synchronous, Workflow, WorkflowError};

const QUICK: Step<u64, u64> = Step::new("fixture.quick");
const MANY: Workflow<u64, u64> = Workflow::new("t.many");

fn many(ctx: &mut Ctx<'_>, n: u64) -> Result<u64, WorkflowError> {
    let mut x = 0;
    for _ in 0..n {
        x = ctx.step(QUICK, &x)?;
    }
    Ok(x)
}

// Scenario: 100 runs of 100 child steps each (10,000 child processes) on one engine.
// Must hold: every run completes with output 100, no child of the engine remains (zombie or
// not) and, once the engine is shut down, the test process has exactly the file descriptors
// it had before the engine started (no leaked pipe).
#[test]
fn ten_thousand_child_steps_leave_no_zombie_and_no_fd() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::new();
    child_step(&mut reg, QUICK);
    reg.workflow(MANY, many);
    let mut cfg = child_config(dir.path());
    cfg.workers = 8;
    cfg.synchronous = Synchronous::Normal;
    let fds_before = fd_count();
    let engine = Engine::start(reg, cfg).unwrap();
    let inputs: Vec<(u64, StartOptions)> =
        (0..100).map(|_| (100, StartOptions::default())).collect();
    let ids = engine.start_many(MANY, &inputs).unwrap();
    for id in ids {
        assert_eq!(
            engine
                .wait_output(MANY, id, Duration::from_secs(240))
                .unwrap(),
            100
        );
    }
    assert!(my_children().is_empty(), "{:?}", my_children());
    engine.shutdown().unwrap();
    // The writer thread closes its connection as it winds down: allow it a moment.
    let settled = poll(Duration::from_secs(10), || {
        (fd_count() == fds_before).then_some(())
    });
    assert!(
        settled.is_some(),
        "fds before {fds_before}, after {}",
        fd_count()
    );
    assert!(my_children().is_empty());
}
