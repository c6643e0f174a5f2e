//! The public surface as an application sees it: everything through the crate root, typed
//! statuses, and clear errors for a handle of the wrong workflow.

use std::time::Duration;
use waymark::{
    Config, Ctx, Engine, Error, Isolation, Registry, RunStatus, StartOptions, Step, StepCtx,
    StepError, Workflow, WorkflowError,
};

const DOUBLE: Step<u64, u64> = Step::new("double");
const PIPELINE: Workflow<u64, u64> = Workflow::new("pipeline");
const GREET: Workflow<String, String> = Workflow::new("greet");
const NAP: Workflow<(), ()> = Workflow::new("nap");

fn double(_: &StepCtx, x: u64) -> Result<u64, StepError> {
    Ok(x * 2)
}

fn engine(dir: &tempfile::TempDir) -> Engine {
    let mut reg = Registry::new();
    reg.step(DOUBLE, double);
    reg.workflow(PIPELINE, |ctx: &mut Ctx<'_>, x: u64| ctx.step(DOUBLE, &x));
    reg.workflow(
        GREET,
        |_: &mut Ctx<'_>, s: String| -> Result<String, WorkflowError> { Ok(format!("hello {s}")) },
    );
    reg.workflow(NAP, |ctx: &mut Ctx<'_>, ()| {
        ctx.sleep(Duration::from_secs(3600))
    });
    let mut config = Config::new(dir.path().join("api.db"));
    config.isolation = Isolation::InProcess; // test binaries have no child hook
    Engine::start(reg, config).unwrap()
}

#[test]
fn a_handle_of_another_workflow_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir);
    let id = engine
        .start_run(GREET, &"ann".to_string(), StartOptions::default())
        .unwrap();
    match engine.wait_output(PIPELINE, id, Duration::from_secs(30)) {
        Err(e @ Error::WrongWorkflow { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("'greet'") && text.contains("'pipeline'"),
                "{text}"
            );
        }
        other => panic!("expected WrongWorkflow, got {other:?}"),
    }
    // The right handle still reads the run.
    assert_eq!(
        engine
            .wait_output(GREET, id, Duration::from_secs(30))
            .unwrap(),
        "hello ann"
    );
    engine.shutdown().unwrap();
}

#[test]
fn statuses_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir);
    let done = engine
        .start_run(PIPELINE, &21, StartOptions::default())
        .unwrap();
    assert_eq!(
        engine
            .wait_output(PIPELINE, done, Duration::from_secs(30))
            .unwrap(),
        42
    );
    let row = engine.run(done).unwrap();
    assert_eq!(row.status, RunStatus::Completed);
    assert!(row.status.is_final());

    let napping = engine.start_run(NAP, &(), StartOptions::default()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.run(napping).unwrap().status != RunStatus::Suspended {
        assert!(std::time::Instant::now() < deadline, "never suspended");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(engine.cancel(napping).unwrap(), RunStatus::Cancelled);
    assert_eq!(engine.run(napping).unwrap().status, RunStatus::Cancelled);
    engine.shutdown().unwrap();

    let err = "bogus".parse::<RunStatus>().unwrap_err().to_string();
    assert!(
        err.contains("bogus") && err.contains("blocked_version"),
        "{err}"
    );
}
