//! Power loss (issue 11), CI-sized: `waymark torture --power-loss` runs engines (threads of a
//! segment process) on the crash-simulating VFS, cuts the power at seeded VFS operations,
//! syncs and times, and rebuilds a state the disk could hold (unsynced writes dropped, kept,
//! reordered, torn at 512 B). What must survive at `synchronous=FULL`: every acknowledged
//! start, journal entry, accepted event and completion; an intact database; nothing no
//! process wrote; every run finishing with its fault-free output.
//! And the checker can fail: with the WAL's syncs ignored by the simulator (a test-only
//! mutation), it must report lost acknowledgements.

mod support;

use std::process::Command;

fn power_run(extra: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("power.db");
    let out = Command::new(support::bin())
        .args(["torture", "--power-loss", "--json", "--db"])
        .arg(&db)
        .args(extra)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), summary, stderr)
}

fn n(v: &serde_json::Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("summary lacks {name}: {v}"))
}

#[test]
fn power_loss_at_full_keeps_every_acknowledgement() {
    let (code, s, stderr) = power_run(&["--cycles", "24", "--seed", "20261130"]);
    for field in [
        "acknowledged_lost",
        "corrupt",
        "lost",
        "duplicate_results",
        "foreign",
    ] {
        assert_eq!(n(&s, field), 0, "{field} in {s}\n{stderr}");
    }
    assert_eq!(code, 0, "{s}\n{stderr}");
    // The run exercised what it claims: many cuts, some with unsynced writes pending, and
    // acknowledgements of each kind to lose.
    assert!(n(&s, "cuts") >= 40, "{s}");
    assert!(n(&s, "unsynced_at_cut") >= 5, "{s}");
    for kind in [
        "acks_started",
        "acks_steps",
        "acks_completed",
        "acks_events",
    ] {
        assert!(n(&s, kind) > 0, "no {kind} in {s}");
    }
    assert!(n(&s, "runs") >= 24, "{s}");
}

#[test]
fn power_loss_checker_reports_losses_when_the_wal_is_never_synced() {
    let (code, s, stderr) = power_run(&["--cycles", "10", "--seed", "3", "--sim-drop-wal-sync"]);
    assert!(n(&s, "acknowledged_lost") > 0, "{s}\n{stderr}");
    assert_eq!(
        code, 1,
        "lost acknowledgements at FULL must fail the run: {s}"
    );
    // Losing unsynced WAL frames loses commits, never the database's integrity.
    assert_eq!(n(&s, "corrupt"), 0, "{s}\n{stderr}");
}
