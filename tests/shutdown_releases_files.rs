//! After `Engine::shutdown` returns, the engine holds nothing of the database: no descriptor
//! on the file, its WAL or its shared memory. (A tool may copy or back up the files right
//! after shutdown; a connection still open would checkpoint and delete the WAL under it.)

mod support;

use std::time::Duration;
use support::*;
use waymark::{Engine, Registry, StartOptions, Step, StepCtx, StepError, Workflow};

const ONE: Step<u64, u64> = Step::new("one");
const FLOW: Workflow<u64, u64> = Workflow::new("flow");

fn db_fds(db: &std::path::Path) -> Vec<String> {
    let name = db.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains(&name))
        .collect()
}

#[test]
fn shutdown_returns_only_after_every_connection_is_closed() {
    let dir = tempdir();
    let db = dir.path().join("released.db");
    let mut reg = Registry::new();
    reg.step(ONE, |_: &StepCtx, x: u64| -> Result<u64, StepError> {
        Ok(x + 1)
    });
    reg.workflow(FLOW, |ctx, x: u64| ctx.step(ONE, &x));
    let engine = Engine::start(reg, in_process_config(&db)).unwrap();
    // Waiting and subscribing start the change watch (its own read connection).
    let sub = engine.subscribe().unwrap();
    let id = engine.start_run(FLOW, &1, StartOptions::default()).unwrap();
    assert_eq!(
        engine
            .wait_output(FLOW, id, Duration::from_secs(30))
            .unwrap(),
        2
    );
    drop(sub);
    engine.shutdown().unwrap();
    let held = db_fds(&db);
    assert!(held.is_empty(), "still open after shutdown: {held:?}");
    // And the last close checkpointed: no WAL left beside the file.
    assert!(
        !db.with_extension("db-wal").exists()
            || std::fs::metadata(db.with_extension("db-wal"))
                .unwrap()
                .len()
                == 0,
        "a WAL with frames is left after shutdown"
    );
}
