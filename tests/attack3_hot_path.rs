//! Attacks on issue 15's hot path (a run started on an engine with an idle worker is inserted
//! and claimed in one commit; a worker that ends a run claims its next one in the same
//! commit). On both stores (SQLite and PostgreSQL): each test runs a real engine on a real
//! database and reads the outcome with the store-neutral peeks of the support module; "another
//! process holds the write lock" is [`WriteLock`] (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's
//! waymark tables locked `IN EXCLUSIVE MODE`).

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use waymark::{Client, Ctx, Engine, Registry, StartOptions, Step, StepCtx, StepError, Workflow};

const NAP: Step<u64, u64> = Step::new("nap");
const ONE_NAP: Workflow<u64, u64> = Workflow::new("one_nap");
const FLOP: Step<u64, u64> = Step::new("flop");
const ONE_FLOP: Workflow<u64, u64> = Workflow::new("one_flop");

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.step(NAP, |_: &StepCtx, ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    });
    reg.workflow(ONE_NAP, |ctx: &mut Ctx<'_>, ms: u64| ctx.step(NAP, &ms));
    reg.step(FLOP, |_: &StepCtx, ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        Err(StepError::permanent("fails by design"))
    });
    reg.workflow(ONE_FLOP, |ctx: &mut Ctx<'_>, ms: u64| ctx.step(FLOP, &ms));
    reg
}

/// Samples the number of `running` runs until dropped; `max` is the highest seen.
struct RunningMonitor {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningMonitor {
    fn start(db: &std::path::Path) -> RunningMonitor {
        let (stop, max) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicI64::new(0)),
        );
        let (s, m, db) = (stop.clone(), max.clone(), db.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut c = Peeker::open(&db);
            while !s.load(Ordering::SeqCst) {
                if let Some(n) = c.try_i64("SELECT count(*) FROM runs WHERE status = 'running'") {
                    m.fetch_max(n, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        RunningMonitor {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.max.load(Ordering::SeqCst)
    }
}

// Scenario: an engine with ONE worker and an idle dispatcher; another process's run becomes
// due, the dispatcher sees a free worker and asks to claim it, but another process holds the
// write lock, so the claim waits. Meanwhile `Engine::start_run` finds the worker idle too,
// reserves it and waits for the same lock. The lock is released.
// Must hold: never more runs `running` under the engine than it has workers (a claimed run
// never waits in a queue for a worker: its lease renewed, its cancel flag unseen, starved
// by the worker's own claims), and each run is claimed exactly once (epoch 1: no run was
// claimed only to be handed back for lack of a worker).
on_both_stores!(start_run_racing_the_dispatcher_never_claims_more_runs_than_workers);
fn start_run_racing_the_dispatcher_never_claims_more_runs_than_workers(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "race.db");
    let mut config = in_process_config(&db);
    config.workers = 1;
    config.poll_interval = Duration::from_millis(20);
    let engine = Engine::start(registry(), config).unwrap();
    let client = Client::open(&db).unwrap();
    let monitor = RunningMonitor::start(&db);

    // Due in 400 ms: the dispatcher will find it at its first poll after that.
    let due = now_ms() + 400;
    let theirs = client
        .start_run(
            ONE_NAP,
            &300,
            StartOptions {
                not_before_ms: Some(due),
                ..Default::default()
            },
        )
        .unwrap();
    // Another process takes the write lock before the run is due, and keeps it until the
    // dispatcher has surely read "one idle worker" and queued its claim.
    std::thread::sleep(Duration::from_millis(200));
    let blocker = WriteLock::take(&db);
    while now_ms() < due + 150 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ours = std::thread::scope(|s| {
        let started = s.spawn(|| engine.start_run(ONE_NAP, &300, StartOptions::default()));
        std::thread::sleep(Duration::from_millis(150));
        blocker.wait_for_waiters(2, "the dispatcher and start_run to wait for the lock");
        blocker.release();
        started.join().unwrap().unwrap()
    });
    for id in [theirs, ours] {
        let row = engine.wait(id, Duration::from_secs(30)).unwrap();
        assert_eq!(row.status, "completed", "run {id}: {row:?}");
    }
    let max_running = monitor.finish();
    let epochs: Vec<(i64, i64)> = rows(&db, "SELECT id, epoch FROM runs ORDER BY id")
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    engine.shutdown().unwrap();
    assert!(
        max_running <= 1,
        "{max_running} runs were running at once under an engine with 1 worker (epochs {epochs:?})"
    );
    assert!(
        epochs.iter().all(|&(_, e)| e == 1),
        "every run is claimed once: (id, epoch) {epochs:?}"
    );
}

// Scenario: a run's engine is SIGKILLed during its first step (of two); the run is
// cancelled from another process while it is still `running` under the dead owner (the
// cancel is acknowledged as `running`); a new engine reclaims and claims it. Admission now
// trusts the `cancel_requested` its claim returned (no second read).
// Must hold: the run ends `cancelled` and no step of it runs again after the acknowledged
// cancel (one execution of seq 0 in the effects file, none of seq 1).
on_both_stores!(a_run_cancelled_while_its_owner_was_dead_runs_no_step_again);
fn a_run_cancelled_while_its_owner_was_dead_runs_no_step_again(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let id = tmp.start("fixture.slow", r#"{"steps":2,"ms":2000}"#, 1)[0];
    let mut first = tmp.serve(1, &[]);
    wait_until("the first step started", Duration::from_secs(30), || {
        tmp.effect_steps().iter().any(|e| e.0 == id)
    });
    first.kill();
    let answer = tmp.waymark(&["cancel", &id.to_string(), "--db", db.to_str().unwrap()]);
    assert!(answer.contains("running"), "cancel answered {answer:?}");
    let mut second = tmp.serve(1, &[]);
    wait_until("the run final", Duration::from_secs(60), || {
        matches!(
            try_status(&db, id).as_deref(),
            Some("completed" | "failed" | "cancelled")
        )
    });
    second.kill();
    assert_eq!(status(&db, id), "cancelled");
    let executions: Vec<_> = tmp
        .effect_steps()
        .into_iter()
        .filter(|e| e.0 == id)
        .collect();
    assert_eq!(
        executions.len(),
        1,
        "only the execution killed with its engine: {executions:?}"
    );
}

// Scenario: an in-process step fails by itself while the engine is healthy; recording the
// failed attempt waits for the write lock (another process holds it); meanwhile the engine
// is shut down and its shutdown grace ends, which raises every run's stop flag without a
// reason (to kill child steps). Nobody cancels the run.
// Must hold: the run does not end `cancelled` (no cancel was requested): a stop flag raised
// for a shutdown (or a lapsed lease) hands the run back, it is never read as a cancel.
on_both_stores!(a_stop_flag_raised_by_the_shutdown_grace_never_ends_a_run_cancelled);
fn a_stop_flag_raised_by_the_shutdown_grace_never_ends_a_run_cancelled(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "grace.db");
    let mut config = in_process_config(&db);
    config.workers = 1;
    config.shutdown_grace = Duration::from_millis(100);
    config.retry = waymark::RetryPolicy::never();
    let engine = Engine::start(registry(), config).unwrap();
    let id = engine
        .start_run(ONE_FLOP, &600, StartOptions::default())
        .unwrap();
    wait_until("the run claimed", Duration::from_secs(30), || {
        try_status(&db, id).as_deref() == Some("running")
    });
    // The step runs (600 ms, no write): take the write lock, so that recording its failure
    // waits until after the shutdown grace ended.
    std::thread::sleep(Duration::from_millis(150));
    let blocker = WriteLock::take(&db);
    std::thread::sleep(Duration::from_millis(700));
    blocker.wait_for_waiters(1, "recording the step's failure to wait for the lock");
    let stopping = std::thread::spawn(move || engine.shutdown());
    std::thread::sleep(Duration::from_millis(400));
    blocker.release();
    stopping.join().unwrap().unwrap();
    let row = rows(
        &db,
        &format!("SELECT status, cancel_requested FROM runs WHERE id = {id}"),
    )
    .remove(0);
    let (status, cancel_requested) = (row[0].clone(), row[1].clone());
    assert_eq!(cancel_requested, "0");
    assert_eq!(
        status, "pending",
        "run {id}: nobody cancelled it; the shutdown hands it back"
    );
}

// Scenario: an engine with 4 workers works through 310 short runs (each worker ends a run
// and claims its next one in the same commit; runs are also started with an idle worker,
// claimed in their start commit); it is shut down while they run, 5 times, at different
// moments, on the same file.
// Must hold: after each shutdown returns no run is `running` (every run claimed for itself
// by a worker that was stopping is executed up to its first boundary and released, never
// left to a reaper), and in the end every run completes with each step journaled once.
on_both_stores!(shutdown_while_workers_claim_their_next_runs_leaves_no_run_running);
fn shutdown_while_workers_claim_their_next_runs_leaves_no_run_running(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "stop.db");
    let config = || {
        let mut c = in_process_config(&db);
        c.workers = 4;
        c
    };
    let mut ids = Vec::new();
    let mut interrupted_rounds = 0;
    for round in 0..5u64 {
        let engine = Engine::start(registry(), config()).unwrap();
        ids.extend(
            engine
                .start_many(ONE_NAP, &vec![(0u64, StartOptions::default()); 300])
                .unwrap(),
        );
        for _ in 0..10 {
            ids.push(
                engine
                    .start_run(ONE_NAP, &1, StartOptions::default())
                    .unwrap(),
            );
        }
        std::thread::sleep(Duration::from_millis(3 * round));
        engine.shutdown().unwrap();
        let running = query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'running'");
        assert_eq!(
            running, 0,
            "round {round}: runs left running after shutdown"
        );
        if query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'pending'") > 0 {
            interrupted_rounds += 1;
        }
    }
    assert!(
        interrupted_rounds > 0,
        "no shutdown came while runs were left: the scenario did not happen"
    );
    let engine = Engine::start(registry(), config()).unwrap();
    for &id in &ids {
        let row = engine.wait(id, Duration::from_secs(60)).unwrap();
        assert_eq!(row.status, "completed", "run {id}: {row:?}");
        assert_eq!(engine.journal(id).unwrap().len(), 1, "run {id}");
    }
    engine.shutdown().unwrap();
}
