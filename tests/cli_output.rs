//! Readable output of the command line (issue 13): `show` lists every attempt with its
//! start (ISO-8601 UTC), duration, outcome and reason; an attempt cut by a dead owner says
//! so once the run moved on; notes give ISO times and "in N min"; JSON keeps milliseconds
//! and adds ISO strings; `runs --status` is validated; `cancel` of a finished run and a
//! `gc` that would delete runs younger than an hour fail unless asked (`--yes`).
//! Each test runs on both stores (`--db` a file or a PostgreSQL URL).

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

fn db_arg(db: &Path) -> &str {
    db.to_str().unwrap()
}

/// Start one run of `workflow` with `json` input; its id.
fn start(db: &Path, workflow: &str, json: &str) -> i64 {
    let out = run(&["start", workflow, "--db", db_arg(db), "--json", json]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Serve until no run is active.
fn serve_until_idle(db: &Path) {
    let out = run(&["serve", "--db", db_arg(db), "--exit-when-idle"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn show(db: &Path, id: i64) -> String {
    let out = run(&["show", &id.to_string(), "--db", db_arg(db)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn show_json(db: &Path, id: i64) -> Value {
    let out = run(&["show", &id.to_string(), "--db", db_arg(db), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// True if `s` is `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_iso(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && s.starts_with("20")
}

// Scenario: a two-step run completes. Must hold: `show` prints both (successful) attempts,
// each with an ISO-8601 UTC start, a duration and the outcome with its reason; `show
// --json` keeps the milliseconds and adds `started_at_iso`, `duration_ms`, the run's
// `created_at_iso` and `finished_at_iso`.
on_both_stores!(show_lists_every_attempt_with_its_start_duration_and_outcome);
fn show_lists_every_attempt_with_its_start_duration_and_outcome(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "s.db");
    let id = start(&db, "fixture.slow", r#"{"steps":2,"ms":5}"#);
    serve_until_idle(&db);
    let text = show(&db, id);
    let attempts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("attempt seq="))
        .collect();
    assert_eq!(attempts.len(), 2, "{text}");
    for line in &attempts {
        let iso = line
            .split_whitespace()
            .skip_while(|w| *w != "started")
            .nth(1)
            .unwrap_or("");
        assert!(is_iso(iso), "no ISO start in {line:?}");
        assert!(line.contains(" took ") && line.contains(" ms"), "{line:?}");
        assert!(line.contains("success: completed in pid"), "{line:?}");
    }
    let v = show_json(&db, id);
    assert!(v["created_at"].is_i64());
    assert!(is_iso(v["created_at_iso"].as_str().unwrap_or("")), "{v}");
    assert!(is_iso(v["finished_at_iso"].as_str().unwrap_or("")), "{v}");
    for a in v["attempts"].as_array().unwrap() {
        assert!(a["started_at"].is_i64(), "{a}");
        assert!(is_iso(a["started_at_iso"].as_str().unwrap_or("")), "{a}");
        assert!(a["duration_ms"].is_i64(), "{a}");
    }
}

// Scenario: an engine is SIGKILLed while its step runs; a second engine reclaims the run
// and completes it. Must hold: the first attempt (no recorded outcome) reads "interrupted:
// owner pid N died" naming the dead engine's pid, in text and JSON (`state`), not
// "interrupted-or-running".
on_both_stores!(an_attempt_cut_by_a_dead_owner_says_so_once_the_run_moved_on);
fn an_attempt_cut_by_a_dead_owner_says_so_once_the_run_moved_on(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "k.db");
    let id = start(&db, "fixture.slow", r#"{"steps":1,"ms":4000}"#);
    let mut first = spawn(
        &["serve", "--db", db_arg(&db), "--lease-ttl-ms", "3000"],
        &[],
        &dir.path().join("first.log"),
    );
    wait_for("the first attempt", Duration::from_secs(30), || {
        try_query_i64(&db, "SELECT count(*) FROM attempts WHERE pid IS NOT NULL").filter(|&n| n > 0)
    });
    let dead_pid = first.id();
    kill9(&mut first);
    let out = run(&[
        "serve",
        "--db",
        db_arg(&db),
        "--exit-when-idle",
        "--lease-ttl-ms",
        "3000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(try_status(&db, id).as_deref(), Some("completed"));
    let text = show(&db, id);
    let want = format!("interrupted: owner pid {dead_pid} died");
    assert!(text.contains(&want), "'{want}' missing:\n{text}");
    assert!(!text.contains("interrupted-or-running"), "{text}");
    let v = show_json(&db, id);
    assert_eq!(v["attempts"][0]["state"], want.as_str(), "{v}");
}

// Scenario: a run sleeps for an hour (its engine then killed, so it stays suspended).
// Must hold: `show` gives the note's wake-up time as ISO-8601 with "(in N min)", not raw
// epoch milliseconds; JSON keeps the raw note and adds `note_readable`.
on_both_stores!(notes_give_iso_times_and_how_far_away_they_are);
fn notes_give_iso_times_and_how_far_away_they_are(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "n.db");
    let id = start(&db, "fixture.sleeper", r#"{"ms":3600000}"#);
    let mut engine = spawn(
        &["serve", "--db", db_arg(&db)],
        &[],
        &dir.path().join("e.log"),
    );
    wait_for("the run to sleep", Duration::from_secs(30), || {
        (try_status(&db, id).as_deref() == Some("suspended")).then_some(())
    });
    kill9(&mut engine);
    let text = show(&db, id);
    let note = text
        .lines()
        .find(|l| l.trim_start().starts_with("note:"))
        .unwrap_or_else(|| panic!("no note in\n{text}"));
    assert!(note.contains("sleeping until 20"), "{note}");
    assert!(
        note.contains("Z (in 59 min)") || note.contains("Z (in 60 min)"),
        "{note}"
    );
    assert!(
        !note
            .split(|c: char| !c.is_ascii_digit())
            .any(|d| d.len() == 13),
        "raw epoch ms left in {note}"
    );
    let v = show_json(&db, id);
    assert!(
        v["note"].as_str().unwrap().starts_with("sleeping until 1"),
        "{v}"
    );
    assert!(
        v["note_readable"].as_str().unwrap_or("").contains("(in "),
        "{v}"
    );
}

// Scenario: `waymark runs --status bogus`. Must hold: non-zero exit, and the message lists
// the valid statuses.
on_both_stores!(runs_with_an_unknown_status_is_an_error_listing_the_valid_ones);
fn runs_with_an_unknown_status_is_an_error_listing_the_valid_ones(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "r.db");
    start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#);
    let out = run(&["runs", "--db", db_arg(&db), "--status", "bogus"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for s in [
        "pending",
        "running",
        "suspended",
        "completed",
        "failed",
        "cancelled",
        "blocked",
    ] {
        assert!(err.contains(s), "'{s}' not listed: {err}");
    }
    let ok = run(&["runs", "--db", db_arg(&db), "--status", "pending"]);
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).lines().count(), 1);
}

// Scenario: `cancel` of a completed run, then `gc --older-than 0s` right after it finished.
// Must hold: cancel exits non-zero saying the run already finished (it stays completed);
// gc refuses without `--yes` (nothing deleted) and deletes it with `--yes`.
on_both_stores!(cancel_of_a_finished_run_and_gc_of_young_runs_fail_unless_asked);
fn cancel_of_a_finished_run_and_gc_of_young_runs_fail_unless_asked(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "c.db");
    let id = start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#);
    serve_until_idle(&db);
    let out = run(&["cancel", &id.to_string(), "--db", db_arg(&db)]);
    assert!(!out.status.success(), "cancel of a completed run exited 0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already finished (completed)"), "{err}");
    assert_eq!(try_status(&db, id).as_deref(), Some("completed"));

    let out = run(&["gc", "--db", db_arg(&db), "--older-than", "0s"]);
    assert!(
        !out.status.success(),
        "gc of a run finished just now exited 0"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(try_status(&db, id).as_deref(), Some("completed"));
    let out = run(&["gc", "--db", db_arg(&db), "--older-than", "0s", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert_eq!(try_status(&db, id), None);
}

/// The `demo: ...` lines of a demo's stderr that report progress ("N/T finished (...)").
fn progress_lines(stderr: &str) -> Vec<(usize, usize, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("demo: ")?;
            let (counts, tail) = rest.split_once(" finished (")?;
            let (n, t) = counts.split_once('/')?;
            Some((n.parse().ok()?, t.parse().ok()?, tail.to_string()))
        })
        .collect()
}

// Scenario: `waymark demo --runs 8 --hog-every 4` with stderr piped (not a terminal); every
// 4th run hits its memory cap. Must hold: progress comes as plain lines (no carriage
// return, no escape codes), their counts never go down and the last one is 8/8 with 6
// completed and 2 failed; the final summary is the one the demo always printed
// ("demo: 6/8 completed, 2 failed, 0 not as expected"); a second demo on the same file
// (every run already finished) starts its progress at 8/8 and exits at once.
on_both_stores!(demo_prints_plain_progress_lines_ending_at_the_total_when_stderr_is_not_a_terminal);
fn demo_prints_plain_progress_lines_ending_at_the_total_when_stderr_is_not_a_terminal(
    backend: Backend,
) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "demo.db");
    let args = [
        "demo",
        "--db",
        db_arg(&db),
        "--runs",
        "8",
        "--hog-every",
        "4",
        "--memory-mib",
        "64",
    ];
    let out = cmd(&args)
        .env("WAYMARK_DEMO_EFFECTS", dir.path().join("effects"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    let lines = progress_lines(&err);
    assert!(!lines.is_empty(), "no progress lines: {err}");
    assert!(lines.iter().all(|(_, t, _)| *t == 8), "{lines:?}");
    assert!(
        lines.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress went down: {lines:?}"
    );
    let (n, _, by) = lines.last().unwrap();
    assert_eq!(*n, 8, "{err}");
    assert_eq!(by, "6 completed, 2 failed)", "{err}");
    assert!(
        err.lines()
            .any(|l| l == "demo: 6/8 completed, 2 failed, 0 not as expected"),
        "{err}"
    );

    let again = cmd(&args)
        .env("WAYMARK_DEMO_EFFECTS", dir.path().join("effects"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    let lines = progress_lines(&err);
    assert_eq!(lines.first().map(|l| l.0), Some(8), "{err}");
    assert!(
        err.lines()
            .any(|l| l == "demo: 6/8 completed, 2 failed, 0 not as expected"),
        "{err}"
    );
}
