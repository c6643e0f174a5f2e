//! Engine death while a step child runs: the child dies with it, and a reclaiming engine
//! never lets two copies of one step run (it kills a surviving old child first).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

fn serve_engine(db: &Path, effects: &Path, extra_env: &[(&str, &str)], idle_exit: bool) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--db"])
        .arg(db)
        .args(["--workers", "2", "--lease-ttl-ms", "10000"])
        .env("WAYMARK_DEMO_EFFECTS", effects)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if idle_exit {
        cmd.arg("--exit-when-idle");
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Wait until the engine created and migrated the database.
fn ready(db: &Path) {
    let ok = poll(Duration::from_secs(30), || {
        let out = Command::new(bin())
            .args(["stats", "--db"])
            .arg(db)
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    assert!(ok.is_some(), "engine never opened {}", db.display());
}

fn start_probe(db: &Path, json: &str) -> i64 {
    let out = Command::new(bin())
        .args(["start", "fixture.probe", "--db"])
        .arg(db)
        .args(["--json", json])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn db_conn(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// (attempt, pid, pid_start, outcome) of one attempt.
type Attempt = (i64, Option<i64>, Option<i64>, Option<String>);

/// Every attempt of `run_id`.
fn attempts(db: &Path, run_id: i64) -> Vec<Attempt> {
    let c = db_conn(db);
    let mut s = c
        .prepare("SELECT attempt, pid, pid_start, outcome FROM attempts WHERE run_id = ?1 ORDER BY attempt")
        .unwrap();
    s.query_map([run_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn run_status(db: &Path, run_id: i64) -> (String, Option<Vec<u8>>) {
    let c = db_conn(db);
    c.query_row(
        "SELECT status, output FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn effect_lines_with(path: &Path, what: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(String::from)
        .collect()
}

// Scenario: `waymark serve` runs a step (sleep 4 s) in a child; the test SIGKILLs the engine
// while the child runs, then starts a new engine. Must hold: within a second of the kill the
// child is gone (parent-death signal), and the new engine re-runs that step exactly once:
// two executions in all (the killed one and the re-run), attempt 2 succeeds, run completed.
#[test]
fn engine_sigkill_takes_the_child_along_and_the_step_reruns_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let fx = dir.path().join("effects");
    let mut engine = serve_engine(&db, &fx, &[], false);
    ready(&db);
    let id = start_probe(&db, r#"{"Sleep":4000}"#);
    let pid = poll(Duration::from_secs(30), || {
        attempts(&db, id).first().and_then(|a| a.1)
    })
    .expect("no attempt recorded") as u32;
    assert!(alive(pid));
    // The attempt is recorded before the child gets its input: wait until the step really
    // started (its effect is written), so the kill interrupts an execution that happened.
    poll(Duration::from_secs(30), || {
        (effect_lines_with(&fx, " sleep ").len() == 1).then_some(())
    })
    .expect("the step never started");
    kill9(&mut engine);
    let gone = poll(Duration::from_secs(1), || (!alive(pid)).then_some(()));
    assert!(
        gone.is_some(),
        "step child {pid} outlived its engine by a second"
    );

    let mut again = serve_engine(&db, &fx, &[], true);
    let status = wait_exit(&mut again, Duration::from_secs(60));
    assert!(status.success());
    assert_eq!(run_status(&db, id).0, "completed");
    assert_eq!(
        effect_lines_with(&fx, " sleep ").len(),
        2,
        "{:?}",
        effect_lines_with(&fx, "")
    );
    let a = attempts(&db, id);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].3, None);
    assert_eq!(a[1].3.as_deref(), Some("success"));
}

// Scenario: the step child of a run survives its engine's SIGKILL (the test-only
// WAYMARK_TEST_BLOCK_PDEATHSIG makes the fixture drop its death signal and ignore stdin EOF,
// as if the signal had been missed). A new engine reclaims the run. Must hold: the old child
// is still alive after the kill (the simulation works), the new engine kills it before it
// runs the step again (the re-execution itself observes the old pid dead), and the run
// completes with attempt 2.
#[test]
fn surviving_old_child_is_killed_before_the_step_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orphan.db");
    let fx = dir.path().join("effects");
    let pid_file = dir.path().join("old-pid");
    let mut engine = serve_engine(&db, &fx, &[("WAYMARK_TEST_BLOCK_PDEATHSIG", "1")], false);
    ready(&db);
    let json = format!(
        r#"{{"Orphan":{{"pid_file":"{}","ms":120000}}}}"#,
        pid_file.display()
    );
    let id = start_probe(&db, &json);
    let old: u32 = poll(Duration::from_secs(30), || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .expect("first attempt never started");
    let recorded = poll(Duration::from_secs(10), || {
        attempts(&db, id).first().and_then(|a| a.1)
    });
    assert_eq!(recorded, Some(old as i64));
    kill9(&mut engine);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(alive(old), "the test-only survival did not work");

    let mut again = serve_engine(&db, &fx, &[], true);
    let status = wait_exit(&mut again, Duration::from_secs(60));
    assert!(status.success());
    assert!(!alive(old), "old child {old} still alive");
    let (st, out) = run_status(&db, id);
    assert_eq!(st, "completed");
    let out: String = waymark::internal::codec::decode(&out.unwrap(), 1 << 20).unwrap();
    assert_eq!(out, "old-alive=false");
    assert_eq!(
        effect_lines_with(&fx, "orphan-again old-alive=false").len(),
        1
    );
    let a = attempts(&db, id);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[1].3.as_deref(), Some("success"));
}
