//! The warm child pool: reuse, recycling (after N executions, after a failure, past an RSS
//! threshold), and failures confined to the step that ran.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::*;
use waymark::StepOptions;
use waymark::{Engine, Isolation, Registry, RetryPolicy, StartOptions, Step, StepLimits, Workflow};

const QUICK: Step<u64, u64> = Step::new("fixture.quick");
const HOG: Step<u64, u64> = Step::new("fixture.hog");
const PANIC: Step<String, ()> = Step::new("fixture.panic");
const LEAK: Step<u64, u64> = Step::new("fixture.leak");
const BURN: Step<u64, u64> = Step::new("fixture.burn");
const SLEEP: Step<u64, u64> = Step::new("fixture.sleep");
const SLEEP_WF: Workflow<u64, u64> = Workflow::new("t.sleep");
const BURN_WF: Workflow<u64, u64> = Workflow::new("t.burn");
const QUICK_WF: Workflow<u64, u64> = Workflow::new("t.quick");
const HOG_WF: Workflow<u64, u64> = Workflow::new("t.hog");
const PANIC_WF: Workflow<String, ()> = Workflow::new("t.panic");
const LEAK_WF: Workflow<u64, u64> = Workflow::new("t.leak");

const CAP: u64 = 128 * 1024 * 1024;

/// The tests here count this process's children; they run one at a time so another test's
/// pool is never mistaken for a leak.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pooled(o: &mut StepOptions) -> &mut StepOptions {
    o.isolation = Some(Isolation::Pool);
    o
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    pooled(child_step(&mut reg, QUICK));
    let hog = pooled(child_step(&mut reg, HOG));
    hog.limits = Some(StepLimits {
        memory_bytes: Some(CAP),
        ..StepLimits::default()
    });
    hog.retry = Some(RetryPolicy::never());
    pooled(child_step(&mut reg, PANIC)).retry = Some(RetryPolicy {
        attempts_max: 2,
        backoff_initial: Duration::from_millis(10),
        ..RetryPolicy::default()
    });
    pooled(child_step(&mut reg, LEAK));
    let burn = pooled(child_step(&mut reg, BURN));
    burn.limits = Some(StepLimits {
        cpu_seconds: Some(2),
        ..StepLimits::default()
    });
    burn.retry = Some(RetryPolicy::never());
    pooled(child_step(&mut reg, SLEEP));
    reg.workflow(SLEEP_WF, |ctx, ms| ctx.step(SLEEP, &ms));
    reg.workflow(QUICK_WF, |ctx, n| ctx.step(QUICK, &n));
    reg.workflow(HOG_WF, |ctx, n| ctx.step(HOG, &n));
    reg.workflow(PANIC_WF, |ctx, m| ctx.step(PANIC, &m));
    reg.workflow(LEAK_WF, |ctx, n| ctx.step(LEAK, &n));
    reg.workflow(BURN_WF, |ctx, n| ctx.step(BURN, &n));
    reg
}

fn attempt_pids(engine: &Engine, id: i64) -> Vec<(i64, i64, Option<String>)> {
    engine
        .attempts(id)
        .unwrap()
        .into_iter()
        .map(|a| (a.attempt, a.pid.unwrap(), a.outcome))
        .collect()
}

// Scenario: 40 one-step runs on pooled children recycled after 10 executions, while one run's
// pooled step allocates 4x its 128 MiB cap. Must hold: the 40 runs complete; every child
// served at most 10 executions and children were reused (fewer than 40 pids); the hog run
// fails with "memory limit exceeded (128 MiB)" as memory_limit, and its child served
// nothing else; after shutdown no pooled child is alive.
#[test]
fn pool_reuses_children_recycles_after_n_and_confines_an_oom() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = child_config(dir.path());
    cfg.pool_runs_max = 10;
    let engine = Engine::start(registry(), cfg).unwrap();
    let hog = engine
        .start_run(HOG_WF, &(4 * CAP), StartOptions::default())
        .unwrap();
    let inputs: Vec<(u64, StartOptions)> = (0..40).map(|i| (i, StartOptions::default())).collect();
    let ids = engine.start_many(QUICK_WF, &inputs).unwrap();
    let mut per_pid: HashMap<i64, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            engine
                .wait_output(QUICK_WF, *id, Duration::from_secs(60))
                .unwrap(),
            i as u64 + 1
        );
        let a = attempt_pids(&engine, *id);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].2.as_deref(), Some("success"));
        *per_pid.entry(a[0].1).or_default() += 1;
    }
    assert!(per_pid.len() < 40, "no child was reused: {per_pid:?}");
    assert!(per_pid.values().all(|&n| n <= 10), "{per_pid:?}");
    let row = engine.wait(hog, Duration::from_secs(60)).unwrap();
    assert_eq!(row.status, "failed");
    assert!(row
        .error
        .unwrap_or_default()
        .contains("memory limit exceeded (128 MiB)"));
    let a = attempt_pids(&engine, hog);
    assert_eq!(a[0].2.as_deref(), Some("memory_limit"));
    assert!(!per_pid.contains_key(&a[0].1));
    assert!(!alive(a[0].1 as u32));
    engine.shutdown().unwrap();
    assert!(poll(Duration::from_secs(5), || my_children()
        .is_empty()
        .then_some(()))
    .is_some());
}

// Scenario: a pooled step panics (2 attempts allowed), and a pooled step leaves 48 MiB
// resident in a pool whose RSS threshold is 32 MiB. Must hold: the panic is reported with
// its message, and its two attempts ran in different children (recycled after a failure);
// two executions of the leaking step ran in different children (recycled past the RSS
// threshold), both succeeding.
#[test]
fn pool_recycles_after_failure_and_past_rss_threshold() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = child_config(dir.path());
    cfg.pool_rss_max_bytes = 32 * 1024 * 1024;
    cfg.workers = 1;
    let engine = Engine::start(registry(), cfg).unwrap();
    let p = engine
        .start_run(PANIC_WF, &"pool boom".to_string(), StartOptions::default())
        .unwrap();
    let row = engine.wait(p, Duration::from_secs(60)).unwrap();
    assert!(row
        .error
        .unwrap_or_default()
        .contains("panicked: pool boom"));
    let a = attempt_pids(&engine, p);
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|x| x.2.as_deref() == Some("panic")));
    assert_ne!(a[0].1, a[1].1, "a failed child was reused");

    let mut pids = Vec::new();
    for _ in 0..2 {
        let id = engine
            .start_run(LEAK_WF, &(48 << 20), StartOptions::default())
            .unwrap();
        assert_eq!(
            engine
                .wait_output(LEAK_WF, id, Duration::from_secs(60))
                .unwrap(),
            48 << 20
        );
        pids.push(attempt_pids(&engine, id)[0].1);
    }
    assert_ne!(
        pids[0], pids[1],
        "a child past the RSS threshold was reused"
    );
    engine.shutdown().unwrap();
}

// Scenario: a pooled step with a 2 s CPU cap burns 1.2 s of CPU per execution, three times in
// a row on one worker, then once 3 s. Must hold: the three 1.2 s executions all succeed in the
// same child (the cap applies per execution, although RLIMIT_CPU counts a process's whole
// life), and the 3 s one fails as cpu_limit.
#[test]
fn pooled_cpu_cap_applies_per_execution() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = child_config(dir.path());
    cfg.workers = 1;
    let engine = Engine::start(registry(), cfg).unwrap();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let id = engine
            .start_run(BURN_WF, &1200, StartOptions::default())
            .unwrap();
        assert_eq!(
            engine
                .wait_output(BURN_WF, id, Duration::from_secs(120))
                .unwrap(),
            1200
        );
        pids.push(attempt_pids(&engine, id)[0].1);
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    let id = engine
        .start_run(BURN_WF, &3000, StartOptions::default())
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(120)).unwrap();
    assert_eq!(row.status, "failed");
    assert!(row
        .error
        .unwrap_or_default()
        .contains("CPU limit exceeded (2 s)"));
    assert_eq!(attempt_pids(&engine, id)[0].2.as_deref(), Some("cpu_limit"));
    engine.shutdown().unwrap();
}

// Scenario (issue 9, suspect: the pool wrote `AttemptEnd` after the child went back to the
// pool). Engine A (one worker) runs run R1's pooled sleep step (3 s) in child P; while it
// runs, R1 is reclaimed behind A's back (the test commits what a reclaim commits: pending,
// owner cleared, epoch + 1, plus a far `ready_at`: a pending run is always due, but it then
// sorts behind R2 in the claim order, so A's one worker takes R2 next), so A's
// writes for R1, its AttemptEnd included, are fenced off and attempt 1 stays open naming P.
// Run R2 (a 6 s pooled sleep) is started right away; A's worker takes it once R1's step is
// over. Once R2 runs, R1 is made due and engine B (same file) re-executes its step: its
// survivor kill looks at attempt 1 of R1. Must hold: R2 completes with one successful
// attempt (B never kills a pooled child that serves another run), and R1 completes.
#[test]
fn fenced_off_attempt_end_never_leaves_a_pooled_child_to_be_killed_later() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = child_config(dir.path());
    cfg.workers = 1;
    let db = dir.path().join("t.db");
    let a = Engine::start(registry(), cfg.clone()).unwrap();
    let r1 = a
        .start_run(SLEEP_WF, &3000, StartOptions::default())
        .unwrap();
    let p = poll(Duration::from_secs(30), || {
        attempt_pids(&a, r1).first().map(|x| x.1)
    })
    .expect("attempt 1 of R1 recorded");
    let w = rusqlite::Connection::open(&db).unwrap();
    w.busy_timeout(Duration::from_secs(30)).unwrap();
    let far = i64::MAX / 2;
    let n = w
        .execute(
            "UPDATE runs SET status = 'pending', owner = NULL, epoch = epoch + 1,
                 lease_expires_at = NULL, interruptions = interruptions + 1, ready_at = ?2
             WHERE id = ?1 AND status = 'running'",
            rusqlite::params![r1, far],
        )
        .unwrap();
    assert_eq!(n, 1, "R1 was not running");
    let r2 = a
        .start_run(SLEEP_WF, &6000, StartOptions::default())
        .unwrap();
    let q = poll(Duration::from_secs(30), || {
        attempt_pids(&a, r2).first().map(|x| x.1)
    })
    .expect("R2 started");
    let open = attempt_pids(&a, r1);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].2, None, "A's AttemptEnd of R1 was not fenced off");
    w.execute("UPDATE runs SET ready_at = 0 WHERE id = ?1", [r1])
        .unwrap();
    let b = Engine::start(registry(), cfg).unwrap();
    let row = b.wait(r1, Duration::from_secs(60)).unwrap();
    assert_eq!(row.status, "completed", "{:?}", row.error);
    let row = a.wait(r2, Duration::from_secs(60)).unwrap();
    let r2_attempts = attempt_pids(&a, r2);
    assert_eq!(
        row.status, "completed",
        "R2 (child {q}, R1's first child {p}): {:?} {r2_attempts:?}",
        row.error
    );
    assert_eq!(r2_attempts.len(), 1, "{r2_attempts:?}");
    assert_eq!(r2_attempts[0].2.as_deref(), Some("success"));
    b.shutdown().unwrap();
    a.shutdown().unwrap();
}
