//! Bad data on disk.
//! (1) Scenario: a run's recorded checkpoint blob is overwritten with garbage, truncated, or
//! replaced by the encoding of an incompatible type, while no engine runs; an engine then
//! replays it. What must survive: that run is parked `blocked` with a decode error naming
//! the run, the step, the seq and the expected type; no retry is consumed (journal and
//! attempts unchanged); the engine and the other runs continue; after the data is fixed
//! (standing in for a compatible build), `waymark resume RUN_ID` retries it to completion.
//! On both stores (a BYTEA on PostgreSQL).
//! (2) Scenario (SQLite only: it is about the file): a truncated, zero-length, bit-flipped or foreign database file is opened.
//! What must survive: refused at open with a clear message and a non-zero exit, and the
//! file's bytes unchanged (no -wal/-shm or other stray file left behind).

mod support;
use std::process::Command;
use std::time::Duration;
use support::*;

on_both_stores!(undecodable_checkpoint_parks_the_run_and_resume_retries_it);
fn undecodable_checkpoint_parks_the_run_and_resume_retries_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "bad.db");
    let bad = start(&db, "fixture.slow", r#"{"steps":2,"ms":10}"#, 3);
    {
        let _a = serve(dir.path(), "a", &db, 4, 2000, &[]);
        wait_until(
            "the first runs to complete",
            Duration::from_secs(30),
            || bad.iter().all(|r| status(&db, *r) == "completed"),
        );
    }
    // Make the runs replay: back to pending with their journal, then damage seq 0.
    let good = waymark::internal::codec::encode(&10u64, 1024).unwrap();
    let garbage = vec![0xffu8; 3];
    let truncated = good[..5].to_vec();
    let other_type = waymark::internal::codec::encode(&String::from("ten"), 1024).unwrap();
    for (run, blob) in bad.iter().zip([&garbage, &truncated, &other_type]) {
        exec_blob(
            &db,
            &format!("UPDATE steps SET output = $1 WHERE run_id = {run} AND seq = 0"),
            blob,
        );
        exec(
            &db,
            &format!(
                "UPDATE runs SET status = 'pending', output = NULL, finished_at = NULL WHERE id = {run}"
            ),
        );
    }
    let count =
        |sql: &str, run: i64| -> i64 { query_i64(&db, &sql.replace("?1", &run.to_string())) };
    let attempts_before: Vec<i64> = bad
        .iter()
        .map(|r| count("SELECT count(*) FROM attempts WHERE run_id = ?1", *r))
        .collect();
    let others = start(&db, "fixture.slow", r#"{"steps":3,"ms":5}"#, 10);
    let a = serve(dir.path(), "b", &db, 2, 2000, &[]);
    wait_until(
        "the damaged runs to be parked",
        Duration::from_secs(30),
        || bad.iter().all(|r| status(&db, *r) == "blocked"),
    );
    wait_until(
        "the other runs to complete",
        Duration::from_secs(60),
        || others.iter().all(|r| status(&db, *r) == "completed"),
    );
    for (i, run) in bad.iter().enumerate() {
        let note = query_text(&db, &format!("SELECT note FROM runs WHERE id = {run}"));
        for part in [
            format!("run {run}"),
            "'fixture.sleep'".into(),
            "seq 0".into(),
            "u64".into(),
        ] {
            assert!(note.contains(&part), "note {note:?} names {part}");
        }
        assert_eq!(
            count("SELECT count(*) FROM attempts WHERE run_id = ?1", *run),
            attempts_before[i],
            "no retry consumed"
        );
        assert_eq!(
            count("SELECT count(*) FROM steps WHERE run_id = ?1", *run),
            2
        );
        assert_eq!(
            count("SELECT interruptions FROM runs WHERE id = ?1", *run),
            0
        );
    }
    // "Deploy a compatible build": the data decodes again; resume retries the run.
    for run in &bad {
        exec_blob(
            &db,
            &format!("UPDATE steps SET output = $1 WHERE run_id = {run} AND seq = 0"),
            &good,
        );
        let out = Command::new(bin())
            .args(["resume", &run.to_string(), "--db"])
            .arg(&db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    wait_until(
        "the resumed runs to complete",
        Duration::from_secs(30),
        || bad.iter().all(|r| status(&db, *r) == "completed"),
    );
    drop(a);
}

fn refused(path: &std::path::Path, what: &str, message: &[&str]) {
    let before = file_bytes(path);
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let files = listing();
    for args in [vec!["stats"], vec!["serve"]] {
        let out = Command::new(bin())
            .args(&args)
            .arg("--db")
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: {args:?} refused");
        assert!(
            message.iter().any(|m| err.contains(m)),
            "{what}: clear message, got {err:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err:?}");
        assert_eq!(file_bytes(path), before, "{what}: bytes unchanged");
        assert_eq!(listing(), files, "{what}: no stray files");
    }
}

// SQLite-only: about damaged SQLite files (a PostgreSQL store has no file of waymark's).
#[test]
fn damaged_and_foreign_files_are_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    start(&good, "fixture.slow", r#"{"steps":1,"ms":1}"#, 50);
    {
        // Fold the WAL into the main file: the copies below are single files.
        let c = rusqlite::Connection::open(&good).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        c.execute_batch("PRAGMA journal_mode = DELETE").unwrap();
    }
    let original = file_bytes(&good);
    assert!(original.len() >= 8192, "a multi-page database");
    let case = |name: &str, data: &[u8]| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let p = sub.join("x.db");
        std::fs::write(&p, data).unwrap();
        p
    };
    let half = case("truncated", &original[..original.len() / 2]);
    refused(
        &half,
        "truncated",
        &["integrity check", "not a waymark database", "malformed"],
    );
    let zero = case("zero", &[]);
    refused(&zero, "zero-length", &["zero-length"]);
    let mut flipped = original.clone();
    flipped[3] ^= 0x10; // "SQLite format 3" magic
    let flipped = case("flipped", &flipped);
    refused(&flipped, "bit-flipped header", &["not a waymark database"]);
    let mut flipped_page = original.clone();
    // Page 1's b-tree header starts at offset 100: a flipped page type breaks the schema.
    flipped_page[100] ^= 0x08;
    let flipped_page = case("flipped_page", &flipped_page);
    refused(
        &flipped_page,
        "bit-flipped page",
        &[
            "integrity check",
            "not a waymark database",
            "malformed",
            "corrupt",
        ],
    );
    let foreign_dir = dir.path().join("foreign");
    std::fs::create_dir(&foreign_dir).unwrap();
    let foreign = foreign_dir.join("x.db");
    {
        let c = rusqlite::Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE notes(x); INSERT INTO notes VALUES (1);")
            .unwrap();
    }
    refused(&foreign, "foreign", &["another application"]);
}

/// The tables of a PostgreSQL database (schema `public`) with their row counts: what
/// "left untouched" compares.
fn pg_tables(url: &str) -> Vec<(String, i64)> {
    let mut c = pg_cluster_client(url);
    let names: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    names
        .into_iter()
        .map(|t| {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM \"{t}\""), &[])
                .unwrap()
                .get(0);
            (t, n)
        })
        .collect()
}

// PostgreSQL's counterpart of the file tests above (a database has no file to damage):
// a database holding another application's `runs` table, one whose waymark schema
// version is -1, and one whose `waymark_meta.value` is TEXT. Must hold: `stats` and `serve` are refused with a one-line message naming
// the cause, and the database is left as it was (no table created, no row changed).
#[test]
fn a_foreign_or_unknown_version_postgres_database_is_refused_untouched() {
    let foreign = fresh_pg_db();
    pg_cluster_client(&foreign)
        .batch_execute("CREATE TABLE runs(x integer); INSERT INTO runs VALUES (1);")
        .unwrap();
    let negative = fresh_pg_db();
    pg_cluster_client(&negative)
        .batch_execute(
            "CREATE TABLE waymark_meta(key text PRIMARY KEY, value bigint NOT NULL);
             INSERT INTO waymark_meta VALUES ('schema_version', -1);",
        )
        .unwrap();
    // Another application's table of our meta table's name, its version a TEXT.
    let text_version = fresh_pg_db();
    pg_cluster_client(&text_version)
        .batch_execute(
            "CREATE TABLE waymark_meta(key text PRIMARY KEY, value text NOT NULL);
             INSERT INTO waymark_meta VALUES ('schema_version', 'seven');",
        )
        .unwrap();
    for (url, what, message) in [
        (
            &text_version,
            "text version",
            &["not a waymark database", "waymark_meta"][..],
        ),
        (
            &foreign,
            "foreign",
            &["another application", "\"runs\""][..],
        ),
        (&negative, "negative version", &["schema version -1"][..]),
    ] {
        let before = pg_tables(url);
        for args in [vec!["stats"], vec!["serve"]] {
            let out = Command::new(bin())
                .args(&args)
                .args(["--db", url])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: {args:?} refused");
            assert!(
                message.iter().all(|m| err.contains(m)),
                "{what}: {args:?}: clear message, got {err:?}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err:?}");
            assert_eq!(pg_tables(url), before, "{what}: {args:?}: untouched");
        }
    }
}
