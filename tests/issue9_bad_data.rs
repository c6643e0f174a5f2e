//! Issue 9, defect 5 and a suspect: bad data parks one run, never the engine.
//!
//! (1) Scenario: one pending run's column read by the claim has the wrong storage class
//! (`deadline_at = 'soon'`, `interruptions = 'many'`, `cancel_requested = 'no'`, read again
//! right after the claim), in the default queue and in a queue
//! with a concurrency limit; engines then start. What must survive: every other run
//! completes; each bad run is `blocked` with a note naming the column, claimed once (its
//! epoch does not climb).
//! (2) Scenario: a journal row of a run has the wrong storage class (`steps.output` TEXT
//! where a blob is read, `steps.seq` TEXT where an integer is read) and the run is due again.
//! What must survive: the same: other runs complete, the bad run is `blocked` once with a
//! note naming the entry and column, no claim/release loop.
//! (3) Scenario: `parent_id` points at the run itself, or two runs are each other's parent.
//! What must survive: `waymark cancel` of either finishes (and cancels them).
//! (4) Suspect: a file with waymark's application_id and a negative `user_version`. What
//! must hold: refused at open with a clear message, the file's bytes unchanged.
//! (3) runs on both stores; (1), (2), (4) and the wrongly typed lease are SQLite's own
//! (storage classes, the file's header). On both stores: (5) a run whose input does not
//! decode, is over the payload limit, or whose journal skips a seq parks only that run; a
//! run of an unknown workflow stays pending.

mod support;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn writer(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

fn epoch(db: &Path, run: i64) -> i64 {
    query_i64(db, &format!("SELECT epoch FROM runs WHERE id = {run}"))
}

fn note(db: &Path, run: i64) -> String {
    query_text(
        db,
        &format!("SELECT coalesce(note, '') FROM runs WHERE id = {run}"),
    )
}

fn cli(args: &[&str], db: &Path) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .arg("--db")
        .arg(db)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The bad runs end `blocked` with a note containing `parts`, the others complete, and the
/// bad runs' epochs stay put afterwards (claimed once, never looping).
fn assert_parked(db: &Path, bad: &[(i64, &[&str])], good: &[i64], epoch_max: &[i64]) {
    wait_until(
        "the other runs to complete",
        Duration::from_secs(60),
        || good.iter().all(|r| status(db, *r) == "completed"),
    );
    wait_until(
        "the bad runs to be blocked",
        Duration::from_secs(30),
        || bad.iter().all(|(r, _)| status(db, *r) == "blocked"),
    );
    let epochs: Vec<i64> = bad.iter().map(|(r, _)| epoch(db, *r)).collect();
    for ((run, parts), max) in bad.iter().zip(epoch_max) {
        let n = note(db, *run);
        for p in *parts {
            assert!(n.contains(p), "run {run}: note {n:?} names {p:?}");
        }
        assert!(
            epoch(db, *run) <= *max,
            "run {run} claimed at most once: epoch {} > {max}",
            epoch(db, *run)
        );
    }
    // No loop: nothing touches the parked runs any more.
    std::thread::sleep(Duration::from_millis(1500));
    for ((run, _), e) in bad.iter().zip(&epochs) {
        assert_eq!(
            epoch(db, *run),
            *e,
            "run {run}: epoch climbed after parking"
        );
        assert_eq!(status(db, *run), "blocked");
    }
}

// SQLite-only: a column of the wrong storage class; PostgreSQL's typed columns refuse it.
#[test]
fn a_wrongly_typed_claim_column_parks_only_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("claim.db");
    let mut runs = start(&db, "fixture.slow", r#"{"steps":2,"ms":5}"#, 6);
    let out = Command::new(bin())
        .args(["start", "fixture.slow", "--json", r#"{"steps":2,"ms":5}"#])
        .args(["--count", "4", "--queue", "limited", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let limited: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let out = cli(&["queue", "limited", "--limit", "2"], &db);
    assert!(out.status.success(), "setting the queue limit: {out:?}");
    let (bad_deadline, bad_interruptions, bad_limited) = (runs[2], runs[4], limited[1]);
    let bad_cancel = runs[5];
    {
        let w = writer(&db);
        w.execute(
            "UPDATE runs SET deadline_at = 'soon' WHERE id = ?1",
            [bad_deadline],
        )
        .unwrap();
        w.execute(
            "UPDATE runs SET interruptions = 'many' WHERE id = ?1",
            [bad_interruptions],
        )
        .unwrap();
        w.execute(
            "UPDATE runs SET deadline_at = x'00' WHERE id = ?1",
            [bad_limited],
        )
        .unwrap();
        w.execute(
            "UPDATE runs SET cancel_requested = 'no' WHERE id = ?1",
            [bad_cancel],
        )
        .unwrap();
    }
    runs.extend(&limited);
    let good: Vec<i64> = runs
        .iter()
        .copied()
        .filter(|r| ![bad_deadline, bad_interruptions, bad_limited, bad_cancel].contains(r))
        .collect();
    let _a = serve(dir.path(), "a", &db, 2, 3000, &[]);
    let _b = serve(dir.path(), "b", &db, 2, 3000, &[]);
    assert_parked(
        &db,
        &[
            (bad_deadline, &["runs.deadline_at", "text"]),
            (bad_interruptions, &["runs.interruptions", "text"]),
            (bad_limited, &["runs.deadline_at", "blob"]),
            (bad_cancel, &["runs.cancel_requested", "text"]),
        ],
        &good,
        &[1, 1, 1, 1],
    );
}

// SQLite-only: a journal value of the wrong storage class; PostgreSQL's typed columns
// refuse it (the codec cases, on both stores, are in the test below and fault_bad_data).
#[test]
fn a_journal_row_of_the_wrong_storage_class_parks_only_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let replay = start(&db, "fixture.slow", r#"{"steps":2,"ms":5}"#, 3);
    {
        let _a = serve(dir.path(), "a", &db, 3, 3000, &[]);
        wait_until(
            "the first runs to complete",
            Duration::from_secs(30),
            || replay.iter().all(|r| status(&db, *r) == "completed"),
        );
    }
    let (bad_output, bad_seq, fine) = (replay[0], replay[1], replay[2]);
    let w = writer(&db);
    w.execute(
        "UPDATE steps SET output = 'not a blob' WHERE run_id = ?1 AND seq = 0",
        [bad_output],
    )
    .unwrap();
    w.execute(
        "UPDATE steps SET seq = 'one' WHERE run_id = ?1 AND seq = 1",
        [bad_seq],
    )
    .unwrap();
    for run in &replay {
        // Due again with their journal: they replay.
        w.execute(
            "UPDATE runs SET status = 'pending', output = NULL, finished_at = NULL WHERE id = ?1",
            [run],
        )
        .unwrap();
    }
    let epochs: Vec<i64> = replay.iter().map(|r| epoch(&db, *r)).collect();
    let mut good = start(&db, "fixture.slow", r#"{"steps":3,"ms":5}"#, 8);
    good.push(fine);
    let _b = serve(dir.path(), "b", &db, 2, 3000, &[]);
    assert_parked(
        &db,
        &[
            (bad_output, &["steps.output", "seq 0", "text"]),
            (bad_seq, &["steps.seq", "text"]),
        ],
        &good,
        &[epochs[0] + 1, epochs[1] + 1],
    );
}

on_both_stores!(cancel_finishes_when_parent_ids_form_a_cycle);
fn cancel_finishes_when_parent_ids_form_a_cycle(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "cycle.db");
    let runs = start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 4);
    exec(
        &db,
        &format!("UPDATE runs SET parent_id = id WHERE id = {}", runs[0]),
    );
    exec(
        &db,
        &format!(
            "UPDATE runs SET parent_id = {} WHERE id = {}",
            runs[2], runs[1]
        ),
    );
    exec(
        &db,
        &format!(
            "UPDATE runs SET parent_id = {} WHERE id = {}",
            runs[1], runs[2]
        ),
    );
    for run in [runs[0], runs[1]] {
        let mut child = Command::new(bin())
            .args(["cancel", &run.to_string(), "--db"])
            .arg(&db)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let exited = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let exited = exited.unwrap_or_else(|| panic!("waymark cancel {run} did not finish"));
        assert!(exited.success(), "cancel {run}: {exited:?}");
    }
    for run in &runs[..3] {
        assert_eq!(status(&db, *run), "cancelled", "run {run}");
    }
    assert_eq!(
        status(&db, runs[3]),
        "pending",
        "an unrelated run is untouched"
    );
}

on_both_stores!(a_bad_payload_or_journal_parks_only_its_run);
fn a_bad_payload_or_journal_parks_only_its_run(backend: Backend) {
    // Scenario: on either store, pending runs whose input does not decode (garbage bytes),
    // whose input is over the payload limit, or whose journal skips a seq (replayed), and a
    // run of a workflow this build does not have, and one of a version it does not have
    // (1 modulo 2^32). Must hold: every other run completes;
    // each damaged run is `blocked` once with a note giving the reason, its epoch stays put;
    // the run of the unknown workflow is left pending and the one of the unknown version
    // parked `blocked_version`, neither ever claimed.
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "payload.db");
    let gap = start(&db, "fixture.slow", r#"{"steps":2,"ms":5}"#, 1)[0];
    {
        let _a = serve(dir.path(), "a", &db, 2, 3000, &[]);
        wait_until("the first run to complete", Duration::from_secs(30), || {
            status(&db, gap) == "completed"
        });
    }
    exec(
        &db,
        &format!("UPDATE steps SET seq = 5 WHERE run_id = {gap} AND seq = 1"),
    );
    exec(
        &db,
        &format!(
            "UPDATE runs SET status = 'pending', output = NULL, finished_at = NULL WHERE id = {gap}"
        ),
    );
    let gap_epoch = epoch(&db, gap);
    let damaged = start(&db, "fixture.slow", r#"{"steps":2,"ms":5}"#, 4);
    let (garbage, over_limit, unknown) = (damaged[0], damaged[1], damaged[2]);
    // A version that is 1 modulo 2^32: never read as version 1.
    let wide = damaged[3];
    exec(
        &db,
        &format!("UPDATE runs SET version = 4294967297 WHERE id = {wide}"),
    );
    exec_blob(
        &db,
        &format!("UPDATE runs SET input = $1 WHERE id = {garbage}"),
        &[0xff; 3],
    );
    // Over the limit of the body and its header together.
    let limit = waymark::internal::codec::PAYLOAD_BYTES_MAX as usize;
    exec_blob(
        &db,
        &format!("UPDATE runs SET input = $1 WHERE id = {over_limit}"),
        &vec![0u8; limit + 64],
    );
    exec(
        &db,
        &format!("UPDATE runs SET workflow = 'no.such.workflow' WHERE id = {unknown}"),
    );
    let good = start(&db, "fixture.slow", r#"{"steps":3,"ms":5}"#, 8);
    let _b = serve(dir.path(), "b", &db, 2, 3000, &[]);
    let _c = serve(dir.path(), "c", &db, 2, 3000, &[]);
    let garbage_note = format!("cannot decode the input of run {garbage}");
    let over_note = format!("cannot decode the input of run {over_limit}");
    let gap_note = format!("run {gap}: journal has seq 5 where 1 was expected");
    assert_parked(
        &db,
        &[
            (garbage, &[garbage_note.as_str(), "fixture.slow"]),
            (over_limit, &[over_note.as_str(), "over the limit"]),
            (gap, &[gap_note.as_str()]),
        ],
        &good,
        &[1, 1, gap_epoch + 1],
    );
    wait_until(
        "the run of an unknown version to be parked",
        Duration::from_secs(30),
        || status(&db, wide) == "blocked_version",
    );
    assert!(
        note(&db, wide).contains("version 4294967297 is not registered"),
        "{}",
        note(&db, wide)
    );
    assert_eq!(epoch(&db, wide), 0, "never claimed");
    assert_eq!(status(&db, unknown), "pending", "not claimed");
    assert_eq!(epoch(&db, unknown), 0, "never claimed");
}

// SQLite-only: about the file's header (application_id, user_version).
#[test]
fn a_negative_user_version_with_our_application_id_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("negative.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = -1;",
            waymark::internal::store::pragmas::APPLICATION_ID
        ))
        .unwrap();
    }
    let before = file_bytes(&db);
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let files = listing();
    for args in [
        vec!["stats"],
        vec!["start", "fixture.slow", "--json", r#"{"steps":1,"ms":1}"#],
        vec!["serve"],
    ] {
        let out = cli(&args, &db);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} refused: {err}");
        assert!(
            err.contains("schema version -1"),
            "{args:?}: clear message, got {err:?}"
        );
        assert_eq!(file_bytes(&db), before, "{args:?}: bytes unchanged");
        assert_eq!(listing(), files, "{args:?}: no stray files");
    }
    let c = reader(&db);
    let tables: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!((tables, version), (0, -1), "not migrated, not stamped");
}

// SQLite-only: a lease of the wrong storage class; PostgreSQL's typed columns refuse it.
#[test]
fn a_wrongly_typed_lease_does_not_stop_recovery() {
    // Scenario: an engine dies holding runs; one of them has lease_expires_at = 'later'.
    // Must hold: another engine still reclaims and completes every one of them.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lease.db");
    let runs = start(&db, "fixture.slow", r#"{"steps":2,"ms":1500}"#, 4);
    let mut a = serve(dir.path(), "a", &db, 4, 1500, &[]);
    wait_until("the runs to be running", Duration::from_secs(30), || {
        runs.iter().all(|r| status(&db, *r) == "running")
    });
    a.kill();
    writer(&db)
        .execute(
            "UPDATE runs SET lease_expires_at = 'later' WHERE id = ?1",
            [runs[0]],
        )
        .unwrap();
    let _b = serve(dir.path(), "b", &db, 4, 1500, &[]);
    wait_until("every run to complete", Duration::from_secs(60), || {
        runs.iter().all(|r| status(&db, *r) == "completed")
    });
}
