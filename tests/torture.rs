//! CI-sized torture runs: three engine processes on one database, 200 runs of the torture
//! workload (steps in-process, in cold child processes, on the warm pool, and command steps:
//! `--isolation mixed`, the default), at least 30 SIGKILLs (random moments, fault points
//! mid-commit and mid-step, all engines at once). What must survive: every run final with its fault-free output,
//! one result per journal seq that is the output of one of its executions, no step executed
//! by two processes at once, and re-executions only of interrupted executions.
//! A quarter of the runs wait durably between steps (short sleeps, events the harness sends
//! before the wait, while the run is suspended, or while an engine is killed, paused or shut
//! down), and a few are cancelled (while waiting, while running a step, while their owner is
//! down): every event is consumed once, by its run's wait, and every acknowledged cancel ends
//! its run `cancelled`, none stalled. The mixed run also runs on PostgreSQL (a fresh database
//! of the test binary's throwaway cluster as `--db URL`).

mod support;

use std::process::Command;

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("summary line lacks {name}: {line}"))
}

#[test]
fn torture_ci_sized_run_finds_no_violation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("torture.db");
    let out = Command::new(support::bin())
        .args([
            "torture",
            "--cycles",
            "40",
            "--engines",
            "3",
            "--runs",
            "200",
        ])
        .args(["--seed", "20261123", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "torture failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one summary line: {stdout}");
    let line = lines[0];
    assert!(field(line, "kills") >= 30, "{line}");
    assert_eq!(field(line, "runs"), 200, "{line}");
    assert_eq!(
        field(line, "completed") + field(line, "failed_expected") + field(line, "cancels"),
        200,
        "{line}"
    );
    assert!(field(line, "failed_expected") > 0, "{line}");
    for some in ["waits", "events", "cancels"] {
        assert!(field(line, some) > 0, "{line}");
    }
    for zero in [
        "lost",
        "duplicate_results",
        "concurrent_executions",
        "stalled",
    ] {
        assert_eq!(field(line, zero), 0, "{line}");
    }
    assert!(
        field(line, "reexecutions") <= field(line, "max_reexecutions_bound"),
        "{line}"
    );
}

/// CI-sized run of the grown harness (issue 10): child steps, command steps whose shell
/// starts the grandchild that holds the step's lock, in-process steps; engines SIGKILLed,
/// armed with fault points (the reaper's between judgement and commit among them),
/// SIGSTOPped past the lease TTL while a reaper is held between judgement and commit, and
/// shut down cleanly by SIGTERM and by the API. What must survive: no run lost, one result
/// per journal seq, no two executions of a child or command step at once (counting
/// grandchildren), and no step process alive one second after its engine died (found from
/// /proc by the tag the harness gives every engine, never from the engine's records).
#[test]
fn torture_mixed_isolation_pauses_and_shutdowns_ci_sized() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("torture.db");
    mixed_ci_sized(db.as_os_str());
}

/// The same CI-sized run on PostgreSQL (issue 16): the engines are separate processes on
/// one database URL, the harness reads the rows with its own PostgreSQL client, and its
/// corruptions are a flipped byte of a run's sealed input and an unencoded journal output
/// (typed columns refuse the SQLite file's TEXT-in-INTEGER).
#[test]
fn torture_on_postgres_mixed_isolation_pauses_and_shutdowns_ci_sized() {
    let url = support::fresh_pg_db();
    mixed_ci_sized(std::ffi::OsStr::new(&url));
}

/// `waymark torture --isolation mixed --pauses --shutdowns --corrupt 4` at CI size on `db`
/// (a file path or a PostgreSQL URL), and what its summary must say.
fn mixed_ci_sized(db: &std::ffi::OsStr) {
    let out = Command::new(support::bin())
        .args(["torture", "--isolation", "mixed", "--pauses", "--shutdowns"])
        .args([
            "--cycles",
            "40",
            "--engines",
            "3",
            "--runs",
            "200",
            "--corrupt",
            "4",
        ])
        .args(["--seed", "20261123", "--db"])
        .arg(db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "torture failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let line = stdout.lines().next().unwrap_or_default();
    for zero in [
        "lost",
        "duplicate_results",
        "concurrent_executions",
        "orphans",
        "stalled",
    ] {
        assert_eq!(field(line, zero), 0, "{line}");
    }
    // The 4 corrupted runs (of the 200) end blocked, the acknowledged cancels cancelled;
    // every other run finishes.
    assert_eq!(
        field(line, "completed")
            + field(line, "failed_expected")
            + field(line, "blocked_expected")
            + field(line, "cancels"),
        200,
        "{line}"
    );
    for some in ["waits", "events", "cancels"] {
        assert!(field(line, some) > 0, "{line}");
    }
    assert!(field(line, "kills") >= 20, "{line}");
    assert!(field(line, "pauses") >= 1, "{line}");
    assert!(field(line, "shutdowns") >= 1, "{line}");
    assert_eq!(field(line, "blocked_expected"), 4, "{line}");
    // Counted apart, never a violation: an in-process step of a paused engine.
    let _ = field(line, "inprocess_pause_overlaps");
    assert!(
        field(line, "reexecutions") <= field(line, "max_reexecutions_bound"),
        "{line}"
    );
}

/// With a PostgreSQL URL, torture refuses a database that holds runs (it never reuses one)
/// and refuses `--power-loss` (SQLite's file I/O is what it cuts).
#[test]
fn torture_on_postgres_refuses_a_used_database_and_power_loss() {
    let url = support::fresh_pg_db();
    let out = Command::new(support::bin())
        .args(["torture", "--cycles", "2", "--engines", "1", "--runs", "5"])
        .args(["--seed", "7", "--wait-share", "0", "--db", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let again = Command::new(support::bin())
        .args(["torture", "--cycles", "1", "--db", &url])
        .output()
        .unwrap();
    assert!(!again.status.success(), "{again:?}");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("holds 5 runs") && err.contains("fresh database"),
        "{err}"
    );
    let power = Command::new(support::bin())
        .args(["torture", "--power-loss", "--cycles", "1", "--db"])
        .arg(support::fresh_pg_db())
        .output()
        .unwrap();
    assert!(!power.status.success(), "{power:?}");
    let err = String::from_utf8_lossy(&power.stderr);
    assert!(
        err.contains("--power-loss") && err.contains("not a PostgreSQL URL"),
        "{err}"
    );
}

#[test]
fn torture_json_summary_and_refuses_existing_db() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("small.db");
    let out = Command::new(support::bin())
        .args(["torture", "--cycles", "3", "--engines", "2", "--runs", "10"])
        .args(["--seed", "5", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"], 10);
    assert_eq!(v["lost"], 0);
    for extra in [
        "pauses",
        "shutdowns",
        "orphans",
        "blocked_expected",
        "stalled",
    ] {
        assert_eq!(v[extra], 0, "{v}");
    }
    assert_eq!(v["isolation"], "mixed");
    assert_eq!(v["violations"].as_array().map(Vec::len), Some(0));
    // The same path again is refused: torture never reuses a database.
    let again = Command::new(support::bin())
        .args(["torture", "--cycles", "1", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh database"));
}
