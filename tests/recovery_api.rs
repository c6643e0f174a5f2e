//! On both stores (SQLite and PostgreSQL).
//! Scenario: library-level recovery paths that need no kill: graceful shutdown in the middle of
//! a run, and a run of a workflow this build does not register.
//! Must hold: shutdown releases the run at its next step boundary so a new engine finishes it
//! at once (no lease wait); an unknown workflow's run is not claimed, stays pending, and says why.

mod support;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{NewRun, Op, Store, StoreOptions};
use waymark::{Engine, Registry, StartOptions, Step, Workflow};

const NAP: Step<u64, u64> = Step::new("nap");
const NAPS: Workflow<u64, u64> = Workflow::new("naps");

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.step(NAP, |_, ms| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    });
    reg.workflow(NAPS, |ctx, ms| {
        let mut total = 0;
        for _ in 0..4 {
            total += ctx.step(NAP, &ms)?;
        }
        Ok(total)
    });
    reg
}

on_both_stores!(shutdown_releases_in_flight_runs_for_the_next_engine);
fn shutdown_releases_in_flight_runs_for_the_next_engine(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "shutdown.db");
    // A long lease: if shutdown did not release the run, the next engine would wait a minute.
    let config = in_process_config(&db).with_lease_ttl(Duration::from_secs(60));
    let engine = Engine::start(registry(), config.clone()).unwrap();
    if backend == Backend::Sqlite {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "the database holds every run's data: owner-only"
        );
    }
    let run = engine
        .start_run(NAPS, &300, StartOptions::default())
        .unwrap();
    wait_for("first step journaled", Duration::from_secs(30), || {
        (engine.journal(run).unwrap().len() == 1).then_some(())
    });
    engine.shutdown().unwrap();
    let row_status = try_status(&db, run).unwrap();
    assert_eq!(row_status, "pending", "released, not left running");
    let journaled = try_query_i64(&db, "SELECT count(*) FROM steps").unwrap();
    assert!((1..4).contains(&journaled));

    let engine = Engine::start(registry(), config).unwrap();
    assert_eq!(
        engine
            .wait_output(NAPS, run, Duration::from_secs(20))
            .unwrap(),
        1200
    );
    let row = engine.run(run).unwrap();
    assert_eq!(
        row.interruptions, 0,
        "a graceful release is not an interruption"
    );
    engine.shutdown().unwrap();
}

#[test]
fn a_run_of_an_unregistered_workflow_waits_with_a_reason() {
    let dir = tempdir();
    let db = dir.path().join("unknown.db");
    {
        let store = Store::open(
            &db,
            &StoreOptions::default(),
            Arc::new(SystemClock::from_env()),
        )
        .unwrap();
        store
            .call(Op::Enqueue(NewRun::new("not.in.this.build", 1, vec![])))
            .unwrap();
    }
    let engine = Engine::start(registry(), in_process_config(&db)).unwrap();
    let row = wait_for("the run to be noted", Duration::from_secs(20), || {
        engine.run(1).ok().filter(|r| r.note.is_some())
    });
    assert_eq!(row.status, "pending");
    assert!(row.note.unwrap().contains("not.in.this.build@1"));
    // Other work still runs.
    let run = engine.start_run(NAPS, &1, StartOptions::default()).unwrap();
    assert_eq!(
        engine
            .wait_output(NAPS, run, Duration::from_secs(20))
            .unwrap(),
        4
    );
    engine.shutdown().unwrap();
    let out = run_cli(&db);
    assert!(out.contains("not.in.this.build"), "{out}");
}

fn run_cli(db: &std::path::Path) -> String {
    let out = support::run(&["runs", "--db", db.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
