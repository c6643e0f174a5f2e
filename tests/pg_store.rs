//! Scenario: the same workflows on PostgreSQL (a throwaway cluster from the OS's binaries).
//! Must hold: runs complete with their journals, exactly as on SQLite.

mod support;
use std::time::Duration;
use support::*;
use waymark::{Engine, Registry, StartOptions, Step, Workflow};

const ADD: Step<u64, u64> = Step::new("add1");
const DOUBLE: Step<u64, u64> = Step::new("double");
const WF: Workflow<u64, u64> = Workflow::new("pg.two_steps");

#[test]
fn runs_complete_on_postgres_with_their_journals() {
    let url = fresh_pg_db();
    let mut reg = Registry::new();
    reg.step(ADD, |_, x| Ok(x + 1));
    reg.step(DOUBLE, |_, x| Ok(x * 2));
    reg.workflow(WF, |ctx, x| {
        let y = ctx.step(ADD, &x)?;
        ctx.step(DOUBLE, &y)
    });
    let engine = Engine::start(reg, in_process_config(std::path::Path::new(&url))).unwrap();
    let ids: Vec<i64> = (0..20u64)
        .map(|i| engine.start_run(WF, &i, StartOptions::default()).unwrap())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let out = engine
            .wait_output(WF, *id, Duration::from_secs(60))
            .unwrap();
        assert_eq!(out, (i as u64 + 1) * 2);
    }
    engine.shutdown().unwrap();
    let mut c = pg_cluster_client(&url);
    let steps: i64 = c
        .query_one("SELECT count(*) FROM steps", &[])
        .unwrap()
        .get(0);
    assert_eq!(steps, 40, "two journal entries per run");
    let done: i64 = c
        .query_one("SELECT count(*) FROM runs WHERE status = 'completed'", &[])
        .unwrap()
        .get(0);
    assert_eq!(done, 20);
}

/// Scenario: an engine whose poll interval is a minute; another process starts a run.
/// Must hold: the engine learns of it from the database's notification (LISTEN/NOTIFY),
/// not from its next poll: the run completes well within the poll interval.
#[test]
fn an_engine_wakes_on_a_run_started_elsewhere_without_polling() {
    let url = fresh_pg_db();
    let mut reg = Registry::new();
    reg.step(ADD, |_, x| Ok(x + 1));
    reg.step(DOUBLE, |_, x| Ok(x * 2));
    reg.workflow(WF, |ctx, x| {
        let y = ctx.step(ADD, &x)?;
        ctx.step(DOUBLE, &y)
    });
    let mut config = in_process_config(std::path::Path::new(&url));
    config.poll_interval = Duration::from_secs(60);
    let engine = Engine::start(reg, config).unwrap();
    // Let the engine's first polls pass: from here on only a wake-up brings it back soon.
    std::thread::sleep(Duration::from_millis(500));
    let client = waymark::Client::open(&url).unwrap();
    let id = client.start_run(WF, &20, StartOptions::default()).unwrap();
    let row = engine.wait(id, Duration::from_secs(20)).unwrap();
    assert_eq!(
        row.status, "completed",
        "the engine did not wake within 20 s of a 60 s poll"
    );
    engine.shutdown().unwrap();
}
