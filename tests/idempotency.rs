//! On both stores (SQLite and PostgreSQL).
//! Scenario: the same run is started twice with one idempotency key (CLI and library), and the
//! demo is run twice on one database.
//! Must hold: the second start returns the first run's id and creates nothing.

mod support;
use std::time::Duration;
use support::*;
use waymark::{Engine, OnKeyConflict, Registry, StartOptions, Step, Workflow};

on_both_stores!(starting_twice_with_one_key_returns_the_same_run);
fn starting_twice_with_one_key_returns_the_same_run(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "idem.db");
    let a = start_runs(
        &db,
        "fixture.slow",
        r#"{"steps":1,"ms":0}"#,
        Some("order-42"),
        1,
    );
    let b = start_runs(
        &db,
        "fixture.slow",
        r#"{"steps":1,"ms":0}"#,
        Some("order-42"),
        1,
    );
    assert_eq!(a, b);
    assert_eq!(try_query_i64(&db, "SELECT count(*) FROM runs"), Some(1));
}

const ADD: Step<u64, u64> = Step::new("add1");
const WF: Workflow<u64, u64> = Workflow::new("idem");

on_both_stores!(library_start_run_dedupes_by_key);
fn library_start_run_dedupes_by_key(backend: Backend) {
    let dir = tempdir();
    let mut reg = Registry::new();
    reg.step(ADD, |_, x| Ok(x + 1));
    reg.workflow(WF, |ctx, x| ctx.step(ADD, &x));
    let engine = Engine::start(
        reg,
        in_process_config(&backend.fresh_db(dir.path(), "lib.db")),
    )
    .unwrap();
    let first = engine.start_run(WF, &1, StartOptions::key("k")).unwrap();
    // Another input under the same key is an error unless the caller asks for the
    // existing run (tests/client_operate.rs covers the error).
    let second = engine
        .start_run(
            WF,
            &99,
            StartOptions::key("k").on_key_conflict(OnKeyConflict::ReturnExisting),
        )
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(
        engine
            .wait_output(WF, first, Duration::from_secs(30))
            .unwrap(),
        2,
        "the first input wins"
    );
    let other = engine.start_run(WF, &5, StartOptions::default()).unwrap();
    assert_ne!(other, first);
    assert_eq!(
        engine
            .wait_output(WF, other, Duration::from_secs(30))
            .unwrap(),
        6
    );
    engine.shutdown().unwrap();
}
