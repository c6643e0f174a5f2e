//! Cancellation at every boundary (issue 9, defect 4 and the cancel walk of defect 5, and the
//! suspected sharing of stop flags): a cancel requested while a run is running must end it
//! at its next boundary, whatever that boundary is (a step, a sleep, an event wait, a child
//! start or join), and a cancel must finish even on a cyclic `parent_id`.
//!
//! On both stores (SQLite and PostgreSQL). Every test drives the real `waymark` binary
//! (`serve`, `start`, `cancel`) on a real database and reads the outcome with the
//! store-neutral peeks of the support module.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// `waymark serve --in-process` with a chosen poll interval; stderr goes to `log`.
fn serve_polling(tmp: &Tmp, workers: usize, poll_ms: u64, log: Option<&Path>) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--db",
        tmp.db().to_str().unwrap(),
        "--workers",
        &workers.to_string(),
        "--lease-ttl-ms",
        "3000",
        "--in-process",
        "--poll-interval-ms",
        &poll_ms.to_string(),
    ])
    .env("WAYMARK_DEMO_EFFECTS", tmp.effects())
    .stdout(Stdio::null());
    match log {
        Some(path) => cmd
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(path).expect("log file")),
        None => cmd.env("RUST_LOG", "error").stderr(Stdio::inherit()),
    };
    Proc {
        child: cmd.spawn().expect("spawn waymark serve"),
        log: None,
    }
}

/// `waymark cancel ID` in its own process, which must exit within `timeout`; its stdout.
fn cancel_within(db: &Path, run_id: i64, timeout: Duration) -> String {
    let mut child = Command::new(bin())
        .args(["cancel", &run_id.to_string(), "--db", db.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn waymark cancel");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let out = child.wait_with_output().expect("cancel output");
            assert!(
                out.status.success(),
                "waymark cancel {run_id} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        if start.elapsed() > timeout {
            kill9(&mut child);
            panic!("waymark cancel {run_id} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs grouped by (status, cancel_requested, note), for failure messages.
fn summary(db: &Path) -> Vec<Vec<String>> {
    rows(
        db,
        "SELECT status, cancel_requested, CASE WHEN note IS NULL THEN NULL
                ELSE substr(note, 1, 40) END, count(*)
         FROM runs GROUP BY 1, 2, 3 ORDER BY 4 DESC",
    )
}

fn not_cancelled(db: &Path) -> i64 {
    query_i64(db, "SELECT count(*) FROM runs WHERE status <> 'cancelled'")
}

/// What the poller's backstop logs when it had to cancel parked runs.
const SWEPT: &str = "had a cancel requested but were not cancelled";

// Scenario (issue 9, defect 4): 300 runs each do one short step and then wait (an event
// with a one-hour timeout, a one-hour sleep, or the join of a child that sleeps one hour).
// Four threads cancel them from other processes (`waymark cancel`), each run as soon as it
// is seen `running`, so most cancels land while the run is mid-way from its step to its
// wait (the engine polls for cancel flags only every 200 ms). Must hold: every run, and
// every child they started, ends `cancelled`; none is left `suspended` with
// `cancel_requested = 1`, and no parent ends `failed` because its cancelled child failed
// its join.
on_both_stores!(cancels_racing_waits_end_every_run_cancelled);
fn cancels_racing_waits_end_every_run_cancelled(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let mut ids = Vec::new();
    for ms in [0, 5, 15, 30, 60] {
        for wait in ["event", "sleep", "child"] {
            let json = format!(r#"{{"ms":{ms},"wait":"{wait}"}}"#);
            ids.extend(tmp.start("fixture.step_then_wait", &json, 20));
        }
    }
    assert_eq!(ids.len(), 300);
    let log = tmp.dir.path().join("serve.log");
    let _engine = serve_polling(&tmp, 8, 200, Some(&log));

    let todo: Arc<Mutex<HashSet<i64>>> = Arc::new(Mutex::new(ids.iter().copied().collect()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let todo = todo.clone();
            let tmp_db = db.clone();
            std::thread::spawn(move || {
                let mut c = Peeker::open(&tmp_db);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    assert!(Instant::now() < deadline, "cancelling took too long");
                    let running = c.ids(
                        "SELECT id FROM runs WHERE status = 'running' AND parent_id IS NULL",
                    );
                    let pending = c
                        .try_i64(
                            "SELECT count(*) FROM runs WHERE status = 'pending' AND parent_id IS NULL",
                        )
                        .expect("count pending runs");
                    let pick = {
                        let mut todo = todo.lock().unwrap();
                        if todo.is_empty() {
                            return;
                        }
                        let pick = running.iter().copied().find(|id| todo.contains(id));
                        // Once nothing is left to claim, cancel the rest wherever they are.
                        let pick = pick.or_else(|| {
                            (pending == 0 && running.is_empty())
                                .then(|| *todo.iter().next().unwrap())
                        });
                        if let Some(id) = pick {
                            todo.remove(&id);
                        }
                        pick
                    };
                    match pick {
                        Some(id) => {
                            cancel_within(&tmp_db, id, Duration::from_secs(60));
                        }
                        None => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("canceller thread");
    }

    let start = Instant::now();
    while not_cancelled(&db) > 0 {
        if start.elapsed() > Duration::from_secs(60) {
            panic!(
                "{} runs not cancelled 60 s after every cancel returned; by (status, cancel_requested, note): {:?}",
                not_cancelled(&db),
                summary(&db)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let children = query_i64(&db, "SELECT count(*) FROM runs WHERE parent_id IS NOT NULL");
    let parents_cancelled = query_i64(
        &db,
        "SELECT count(*) FROM runs WHERE parent_id IS NULL AND status = 'cancelled'",
    );
    assert_eq!(parents_cancelled, 300);
    assert!(children <= 100, "at most one child per 'child' run");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log.contains(SWEPT),
        "every cancel was carried out at the run's own boundary, none by the poller's sweep: {log}"
    );
}

// Scenario (issue 9, defect 4): a run is cancelled (from another process) while it is in a
// step, and the engine polls for cancel flags only once an hour, so the run reaches
// `start_child` without having seen its flag. Must hold: the child is created already
// cancelled (nothing of it runs) and the parent ends `cancelled` at that boundary instead of
// joining it.
on_both_stores!(start_child_after_a_cancel_creates_a_cancelled_child_and_ends_the_parent);
fn start_child_after_a_cancel_creates_a_cancelled_child_and_ends_the_parent(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let gate = tmp.dir.path().join("gate");
    let json = format!(r#"{{"wait":"child","gate":"{}"}}"#, gate.to_str().unwrap());
    let id = tmp.start("fixture.step_then_wait", &json, 1)[0];
    let _engine = serve_polling(&tmp, 2, 3_600_000, None);
    wait_until("the gate step started", Duration::from_secs(30), || {
        tmp.effect_steps()
            .iter()
            .any(|e| e.0 == id && e.2 == "gate")
    });
    assert_eq!(
        cancel_within(&db, id, Duration::from_secs(30)),
        "running",
        "the run is in its step when it is cancelled"
    );
    std::fs::write(&gate, b"").unwrap();
    let child = || -> Option<(i64, String)> {
        rows(
            &db,
            &format!("SELECT id, status FROM runs WHERE parent_id = {id}"),
        )
        .pop()
        .map(|r| (r[0].parse().expect("an id"), r[1].clone()))
    };
    let start = Instant::now();
    loop {
        let parent = status(&db, id);
        if parent == "cancelled" && child().is_some_and(|c| c.1 == "cancelled") {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!(
                "after 30 s the parent is {parent} and its child is {:?}; runs: {:?}",
                child(),
                summary(&db)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (child_id, _) = child().unwrap();
    assert_eq!(journal(&db, child_id).len(), 0, "nothing of the child ran");
    let parent_journal = journal(&db, id);
    assert_eq!(
        parent_journal.last().map(|e| e.2.as_str()),
        Some("child"),
        "the parent's journal ends with the child it started: {parent_journal:?}"
    );
}

// Scenario (issue 9, defect 4, the backstop): a run is `suspended` with
// `cancel_requested = 1` (as a build before this fix could leave it, or any path that
// suspended a flagged run). Must hold: an engine's poller finishes it `cancelled`.
on_both_stores!(poller_finishes_a_suspended_run_whose_cancel_was_requested);
fn poller_finishes_a_suspended_run_whose_cancel_was_requested(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let id = tmp.start("fixture.sleeper", r#"{"ms":3600000}"#, 1)[0];
    let mut engine = serve_polling(&tmp, 2, 50, None);
    wait_until("sleeping", Duration::from_secs(30), || {
        status(&db, id) == "suspended"
    });
    kill9(&mut engine);
    exec(
        &db,
        &format!("UPDATE runs SET cancel_requested = 1 WHERE id = {id}"),
    );
    let log = tmp.dir.path().join("serve.log");
    let _engine = serve_polling(&tmp, 2, 50, Some(&log));
    let start = Instant::now();
    while status(&db, id) != "cancelled" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run still {} 30 s after an engine started: {:?}",
            status(&db, id),
            summary(&db)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(tmp
        .effect_steps()
        .iter()
        .all(|e| e.0 != id || e.2 != "mark"));
    assert!(std::fs::read_to_string(&log).unwrap().contains(SWEPT));
}

// Scenario (issue 9: deadlines use the same flag machinery as cancels): runs whose deadline
// passes while they wait (an event with a one-hour timeout, a one-hour sleep, a child join).
// Must hold: each ends `failed` with the deadline as its reason, within a generous timeout.
on_both_stores!(a_deadline_passing_during_a_wait_is_not_lost);
fn a_deadline_passing_during_a_wait_is_not_lost(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let deadline = (now_ms() + 2_000).to_string();
    let mut ids = Vec::new();
    for wait in ["event", "sleep", "child"] {
        let json = format!(r#"{{"ms":0,"wait":"{wait}"}}"#);
        ids.extend(
            tmp.waymark(&[
                "start",
                "fixture.step_then_wait",
                "--db",
                db.to_str().unwrap(),
                "--json",
                &json,
                "--count",
                "5",
                "--deadline-ms",
                &deadline,
            ])
            .lines()
            .map(|l| l.trim().parse::<i64>().unwrap()),
        );
    }
    let _engine = serve_polling(&tmp, 4, 50, None);
    let start = Instant::now();
    loop {
        let failed = query_i64(
            &db,
            "SELECT count(*) FROM runs WHERE parent_id IS NULL AND status = 'failed'
               AND error LIKE '%deadline%'",
        );
        if failed == ids.len() as i64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{failed} of {} runs failed by their deadline after 60 s: {:?}",
            ids.len(),
            summary(&db)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Scenario (issue 9, defect 5, cancel's part): `parent_id` forms a cycle (a run its own
// parent; two runs each other's parent). Must hold: `waymark cancel` finishes (the walk of
// descendants is cycle-safe) and the runs end `cancelled`.
on_both_stores!(cancel_finishes_on_a_parent_id_cycle);
fn cancel_finishes_on_a_parent_id_cycle(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let ids = tmp.start("fixture.sleeper", r#"{"ms":3600000}"#, 3);
    let set_parent = |id: i64, parent: i64| {
        exec(
            &db,
            &format!("UPDATE runs SET parent_id = {parent} WHERE id = {id}"),
        )
    };
    set_parent(ids[0], ids[0]);
    set_parent(ids[1], ids[2]);
    set_parent(ids[2], ids[1]);
    assert_eq!(
        cancel_within(&db, ids[0], Duration::from_secs(30)),
        "cancelled"
    );
    assert_eq!(
        cancel_within(&db, ids[1], Duration::from_secs(30)),
        "cancelled"
    );
    for id in ids {
        assert_eq!(status(&db, id), "cancelled");
    }
}
// Scenario (issue 9, suspect: stop flags keyed by run id only): an engine runs a run in a
// long step; the run is reclaimed behind its back (the reclaim another engine would commit:
// epoch + 1, pending) and the same engine claims it again, so a stale and a fresh execution
// of one run live in one engine. The stale one's step ends, its checkpoint is fenced off and
// it drops its stop flag. Then the run is cancelled (or its deadline passes). Must hold: the
// fresh execution still sees its stop flag and the run ends `cancelled` (or `failed` by its
// deadline), not `completed`.
on_both_stores!(a_stale_execution_ending_does_not_drop_the_fresh_executions_cancel_flag);
fn a_stale_execution_ending_does_not_drop_the_fresh_executions_cancel_flag(backend: Backend) {
    stale_and_fresh_execution(backend, Stop::Cancel);
}

on_both_stores!(a_stale_execution_ending_does_not_drop_the_fresh_executions_deadline_flag);
fn a_stale_execution_ending_does_not_drop_the_fresh_executions_deadline_flag(backend: Backend) {
    stale_and_fresh_execution(backend, Stop::Deadline);
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Cancel,
    Deadline,
}

fn stale_and_fresh_execution(backend: Backend, stop: Stop) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let log = tmp.dir.path().join("serve.log");
    let json = r#"{"steps":4,"ms":4000}"#;
    let id = match stop {
        Stop::Cancel => tmp.start("fixture.slow", json, 1)[0],
        // Passes after the stale execution's first step ended (about 4 s), long before the
        // fresh one could complete (about 16 s).
        Stop::Deadline => tmp
            .waymark(&[
                "start",
                "fixture.slow",
                "--db",
                db.to_str().unwrap(),
                "--json",
                json,
                "--deadline-ms",
                &(now_ms() + 8_000).to_string(),
            ])
            .trim()
            .parse()
            .unwrap(),
    };
    let _engine = serve_polling(&tmp, 2, 50, Some(&log));
    let starts = |seq: i64| {
        tmp.effect_steps()
            .iter()
            .filter(|e| e.0 == id && e.1 == seq && e.2 == "sleep")
            .count()
    };
    wait_until(
        "the first execution's step",
        Duration::from_secs(30),
        || starts(0) == 1,
    );
    let reclaimed = exec(
        &db,
        &format!(
            "UPDATE runs SET status = 'pending', owner = NULL, epoch = epoch + 1,
                    lease_expires_at = NULL, interruptions = interruptions + 1
             WHERE id = {id} AND status = 'running' AND epoch = 1"
        ),
    );
    assert_eq!(reclaimed, 1, "the run was reclaimed while its step ran");
    wait_until(
        "the fresh execution's step",
        Duration::from_secs(30),
        || starts(0) == 2,
    );
    let epoch = query_i64(&db, &format!("SELECT epoch FROM runs WHERE id = {id}"));
    assert_eq!(epoch, 3, "the same engine claimed it again");
    let lost = format!("run {id}: lease lost (epoch 1)");
    wait_until("the stale execution ended", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&lost)
    });
    if stop == Stop::Cancel {
        assert_eq!(status(&db, id), "running");
        assert_eq!(cancel_within(&db, id, Duration::from_secs(30)), "running");
    }
    wait_until("the run finished", Duration::from_secs(60), || {
        matches!(
            status(&db, id).as_str(),
            "cancelled" | "completed" | "failed"
        )
    });
    let row = rows(
        &db,
        &format!("SELECT status, error FROM runs WHERE id = {id}"),
    )
    .remove(0);
    let (end, error) = (row[0].clone(), (row[1] != "NULL").then(|| row[1].clone()));
    match stop {
        Stop::Cancel => assert_eq!(
            end, "cancelled",
            "the fresh execution lost its cancel flag when the stale one ended"
        ),
        Stop::Deadline => assert!(
            end == "failed" && error.as_deref().unwrap_or("").contains("deadline"),
            "the fresh execution lost its deadline flag when the stale one ended: {end} {error:?}"
        ),
    }
    assert!(
        starts(3) == 0,
        "the fresh execution stopped before its last step"
    );
}

// Scenario (issue 10, found by `waymark torture` with waits and cancels: a run ended
// `completed` although its cancel had been answered `running`): a run's last step is an
// in-process step that takes 3 s (no executor can stop it); it is cancelled while that step
// runs, and the engine's poller sees the request at once (50 ms). Must hold: the cancel was
// acknowledged for an unfinished run, so the run ends `cancelled`, not `completed`, even
// though its workflow returned normally after the step (the step's own result stays
// journaled: it did run). The same for a run whose last step fails: `cancelled`, not
// `failed`.
on_both_stores!(a_run_cancelled_during_its_last_step_ends_cancelled_not_completed);
fn a_run_cancelled_during_its_last_step_ends_cancelled_not_completed(backend: Backend) {
    cancelled_during_last_step(backend, "fixture.slow");
}

on_both_stores!(a_run_cancelled_during_its_last_step_ends_cancelled_not_failed);
fn a_run_cancelled_during_its_last_step_ends_cancelled_not_failed(backend: Backend) {
    cancelled_during_last_step(backend, "fixture.slow_then_fail");
}

fn cancelled_during_last_step(backend: Backend, workflow: &str) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let id = tmp.start(workflow, r#"{"steps":1,"ms":3000}"#, 1)[0];
    let log = tmp.dir.path().join("serve.log");
    let mut engine = serve_polling(&tmp, 2, 50, Some(&log));
    wait_until("the last step started", Duration::from_secs(30), || {
        tmp.effect_steps().iter().any(|e| e.0 == id)
    });
    assert_eq!(
        cancel_within(&db, id, Duration::from_secs(30)),
        "running",
        "the cancel is acknowledged while the step runs"
    );
    wait_until("the run final", Duration::from_secs(30), || {
        matches!(
            status(&db, id).as_str(),
            "completed" | "failed" | "cancelled"
        )
    });
    kill9(&mut engine);
    assert_eq!(
        status(&db, id),
        "cancelled",
        "{workflow}: a run whose cancel was acknowledged ends cancelled; {:?}",
        summary(&db)
    );
    assert_eq!(
        journal(&db, id).len(),
        1,
        "the step that ran stays journaled"
    );
}
