//! Scenario (PostgreSQL only): a COMMIT reaches the server and is applied, and its answer is
//! lost (the connection breaks on the way back: [`PgProxy`] in front of the cluster). The
//! caller cannot know whether its change was committed.
//! Must hold: a start with an idempotency key retries and returns the one run; a start
//! without a key is a typed error saying the run may or may not exist (and it does); an
//! engine whose checkpoint, completion, claim or heartbeat loses its answer finishes every
//! run exactly once: one journal entry per step, each step executed once (its result was
//! committed, so nothing runs it again), no engine panic, no run left `running`.

mod support;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;
use waymark::{Client, Engine, Error, Registry, StartOptions, Step, StoreError, Workflow};

const W: Workflow<u64, u64> = Workflow::new("lost.one_step");
const ADD: Step<u64, u64> = Step::new("lost.add1");

/// A fresh database with its schema (created directly, not through the proxy), its URL,
/// and a proxy in front of the cluster.
fn db_and_proxy() -> (String, PgProxy) {
    let url = fresh_pg_db();
    drop(storage(Path::new(&url)));
    (url, PgProxy::start())
}

/// Statements of a start.
const INSERT_RUN: &str = "INSERT INTO runs";

#[test]
fn a_keyed_start_whose_commit_answer_is_lost_returns_the_one_run() {
    let (url, proxy) = db_and_proxy();
    let client = Client::open(proxy.url(&url)).unwrap();
    proxy.lose_next_commit_answer_of(INSERT_RUN);
    let id = client
        .start_run(W, &1, StartOptions::key("order-1"))
        .unwrap();
    assert_eq!(proxy.cuts(), 1, "the start's COMMIT answer was lost");
    assert_eq!(
        pg_i64(
            &url,
            "SELECT count(*) FROM runs WHERE idempotency_key = 'order-1'"
        ),
        1
    );
    assert_eq!(
        pg_i64(
            &url,
            "SELECT id FROM runs WHERE idempotency_key = 'order-1'"
        ),
        id
    );
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM runs"), 1);
}

#[test]
fn an_unkeyed_start_whose_commit_answer_is_lost_says_the_run_may_exist() {
    let (url, proxy) = db_and_proxy();
    let client = Client::open(proxy.url(&url)).unwrap();
    proxy.lose_next_commit_answer_of(INSERT_RUN);
    let err = client
        .start_run(W, &1, StartOptions::default())
        .unwrap_err();
    assert_eq!(proxy.cuts(), 1, "the start's COMMIT answer was lost");
    assert!(
        matches!(err, Error::Store(StoreError::OutcomeUnknown { .. })),
        "a typed unknown outcome: {err:?}"
    );
    assert!(err.to_string().contains("may or may not"), "{err}");
    // The COMMIT was applied: the run exists, once.
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM runs"), 1);
    // The client goes on with a new connection.
    let id = client.start_run(W, &2, StartOptions::default()).unwrap();
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM runs"), 2);
    assert_eq!(pg_i64(&url, "SELECT max(id) FROM runs"), id);
}

#[test]
fn an_engine_start_whose_commit_answer_is_lost_runs_the_one_run_once() {
    let (url, proxy) = db_and_proxy();
    let mut reg = Registry::new();
    reg.step(ADD, |_, x| Ok(x + 1));
    reg.workflow(W, |ctx, x| ctx.step(ADD, &x));
    let mut config = in_process_config(Path::new(&proxy.url(&url)));
    config.workers = 2;
    let engine = Engine::start(reg, config).unwrap();
    // The engine's start claims the new run for an idle worker in the same COMMIT: the
    // lost answer loses the claim too.
    proxy.lose_next_commit_answer_of(INSERT_RUN);
    let id = engine.start_run(W, &41, StartOptions::key("k")).unwrap();
    assert_eq!(proxy.cuts(), 1, "the start's COMMIT answer was lost");
    let row = engine.wait(id, Duration::from_secs(60)).unwrap();
    assert_eq!(row.status, "completed", "{row:?}");
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM runs"), 1);
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM steps"), 1);
    assert_eq!(pg_output::<u64>(&url, id), Some(42));
    engine.shutdown().unwrap();
}

/// When a test arms the proxy.
#[derive(PartialEq)]
enum Arm {
    /// Before the runs start.
    BeforeStart,
    /// Once a run is `running`.
    WhileRunning,
}

/// A `waymark serve` engine through a proxy, `runs` runs of `fixture.slow` (`steps` steps
/// of `ms`) started directly on the cluster; `arm` arms the proxy (at `when`); every run
/// must complete with each step executed once. Returns the engine's log.
fn engine_loses_an_answer(
    runs: usize,
    steps: u32,
    ms: u32,
    when: Arm,
    arm: impl FnOnce(&PgProxy),
) -> String {
    let dir = tempdir();
    let (url, proxy) = db_and_proxy();
    let db = PathBuf::from(&url);
    let through = PathBuf::from(proxy.url(&url));
    let a = serve(dir.path(), "a", &through, 2, 3000, &[]);
    wait_until("the engine to register", Duration::from_secs(60), || {
        pg_i64(
            &url,
            "SELECT count(*) FROM engines WHERE stopped_at IS NULL",
        ) == 1
    });
    let json = format!(r#"{{"steps":{steps},"ms":{ms}}}"#);
    let mut arm = Some(arm);
    if when == Arm::BeforeStart {
        (arm.take().unwrap())(&proxy);
    }
    let ids = start(&db, "fixture.slow", &json, runs);
    if let Some(arm) = arm {
        wait_until("a run to be running", Duration::from_secs(60), || {
            count(&db, "running") >= 1
        });
        arm(&proxy);
    }
    wait_until(
        "the COMMIT answer to be lost",
        Duration::from_secs(60),
        || proxy.cuts() == 1,
    );
    wait_until("every run to complete", Duration::from_secs(120), || {
        count(&db, "completed") == runs as i64
    });
    let log = a.log_text();
    assert_eq!(count(&db, "running"), 0);
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM steps"),
        runs as i64 * steps as i64
    );
    for id in &ids {
        for seq in 0..steps as i64 {
            assert_eq!(
                effect_count(dir.path(), *id, seq, "sleep"),
                1,
                "run {id} step {seq}: executed once (its result was committed)\n{log}"
            );
        }
    }
    assert_eq!(overlaps(dir.path()), vec![], "a step ran twice at once");
    assert!(!log.contains("panicked"), "{log}");
    log
}

#[test]
fn a_checkpoint_whose_commit_answer_is_lost_runs_each_step_once() {
    let log = engine_loses_an_answer(1, 3, 300, Arm::BeforeStart, |proxy| {
        // The first transaction recording a step of a 3-step run is a checkpoint (results
        // commit before the next step executes).
        proxy.lose_next_commit_answer_of("INSERT INTO steps");
    });
    assert!(log.contains("may or may not"), "{log}");
}

#[test]
fn a_completion_whose_commit_answer_is_lost_ends_the_run_once() {
    engine_loses_an_answer(1, 2, 100, Arm::BeforeStart, |proxy| {
        proxy.lose_next_commit_answer_of("THEN 'cancelled' ELSE $4::text END");
    });
}

#[test]
fn a_claim_whose_commit_answer_is_lost_runs_the_run_once() {
    engine_loses_an_answer(1, 2, 100, Arm::BeforeStart, |proxy| {
        proxy.lose_commit_answer(1, |stmts| {
            stmts.iter().any(|s| s.contains("epoch = epoch + 1"))
                && !stmts.iter().any(|s| s.contains("INSERT INTO steps"))
        });
    });
}

#[test]
fn a_heartbeat_whose_commit_answer_is_lost_loses_no_run() {
    engine_loses_an_answer(2, 3, 400, Arm::WhileRunning, |proxy| {
        proxy.lose_next_commit_answer_of("UPDATE engines SET beat = beat + 1");
    });
}

#[test]
fn answers_lost_at_any_commit_of_two_engines_lose_nothing_and_run_no_twin() {
    let dir = tempdir();
    let (url, proxy) = db_and_proxy();
    let db = PathBuf::from(&url);
    let through = PathBuf::from(proxy.url(&url));
    let runs = 12;
    let ids = start(&db, "fixture.slow", r#"{"steps":3,"ms":60}"#, runs);
    let a = serve(dir.path(), "a", &through, 2, 3000, &[]);
    let b = serve(dir.path(), "b", &through, 2, 3000, &[]);
    // Every 3rd COMMIT of either engine, whatever it commits (claims, attempts,
    // checkpoints, heartbeats, endings, releases), loses its answer, ten times.
    for cut in 1..=10 {
        proxy.lose_commit_answer(3, |_| true);
        wait_until(
            "the COMMIT answer to be lost",
            Duration::from_secs(120),
            || proxy.cuts() == cut || count(&db, "completed") == runs as i64,
        );
    }
    proxy.disarm();
    wait_until("every run to complete", Duration::from_secs(180), || {
        count(&db, "completed") == runs as i64
    });
    let logs = format!("{}{}", a.log_text(), b.log_text());
    assert!(proxy.cuts() >= 1, "no answer was lost");
    assert_eq!(count(&db, "running"), 0);
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM steps"),
        runs as i64 * 3
    );
    for id in &ids {
        for seq in 0..3 {
            assert!(
                effect_count(dir.path(), *id, seq, "sleep") >= 1,
                "run {id} step {seq} never executed\n{logs}"
            );
        }
    }
    assert_eq!(overlaps(dir.path()), vec![], "a step ran twice at once");
    assert!(!logs.contains("panicked"), "{logs}");
    eprintln!(
        "{} COMMIT answers lost of {}; {} step executions for {} steps",
        proxy.cuts(),
        proxy.commits(),
        effects_in(dir.path()).len(),
        runs * 3
    );
}
