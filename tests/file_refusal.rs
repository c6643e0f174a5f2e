//! Scenario: waymark is pointed at files that are not (or no longer) its databases: one from a
//! newer schema, another application's SQLite file, garbage, a zero-length file, and a
//! waymark database with a damaged b-tree page.
//! Must hold: each is refused with a clear one-line error and a non-zero exit, and the file is
//! left byte-for-byte unchanged with no -wal/-shm created.

mod support;
use rusqlite::Connection;
use std::path::Path;
use support::*;

fn assert_refused(db: &Path, expect: &str) {
    let before = file_bytes(db);
    for args in [
        vec!["stats", "--db", db.to_str().unwrap()],
        vec!["demo", "--db", db.to_str().unwrap(), "--runs", "1"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} must fail on {}",
            db.display()
        );
        assert!(
            err.contains(expect),
            "{args:?}: expected '{expect}' in: {err}"
        );
        assert!(!err.contains("panicked"), "no panic: {err}");
    }
    assert_eq!(before, file_bytes(db), "file left untouched");
    for ext in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(ext);
        assert!(!Path::new(&p).exists(), "no {ext} file created");
    }
}

fn make_waymark_db(db: &Path) {
    let out = run(&["demo", "--db", db.to_str().unwrap(), "--runs", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let dir = tempdir();
    let db = dir.path().join("newer.db");
    make_waymark_db(&db);
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA journal_mode=DELETE; PRAGMA user_version = 99;")
        .unwrap();
    assert_refused(&db, "newer than this build supports");
}

#[test]
fn another_applications_sqlite_file_is_refused() {
    let dir = tempdir();
    let db = dir.path().join("foreign.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    assert_refused(&db, "another application");
}

#[test]
fn garbage_and_zero_length_files_are_refused() {
    let dir = tempdir();
    let db = dir.path().join("garbage.db");
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    assert_refused(&db, "not a waymark database");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert_refused(&empty, "zero-length");
}

#[test]
fn a_corrupt_waymark_database_is_refused() {
    let dir = tempdir();
    let db = dir.path().join("corrupt.db");
    make_waymark_db(&db);
    // Everything into the main file (the last connection to close checkpoints, but a
    // client's watch connection may still be closing when the demo process exits).
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let mut bytes = file_bytes(&db);
    let page = 4096;
    assert!(bytes.len() > 4 * page);
    // Smash the b-tree page headers of pages 2..4 (the first pages after the header page).
    for p in 1..4 {
        for b in &mut bytes[p * page..p * page + 64] {
            *b = 0xff;
        }
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = run(&["stats", "--db", db.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("integrity check")
            || err.contains("malformed")
            || err.contains("not a waymark database"),
        "{err}"
    );
    assert_refused(&db, "");
}

#[test]
fn a_missing_database_and_bad_arguments_are_one_line_errors() {
    let dir = tempdir();
    let missing = dir.path().join("missing.db");
    let out = run(&["runs", "--db", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    assert!(
        !missing.exists(),
        "inspecting a missing database creates nothing"
    );
    let out = run(&["show", "abc", "--db", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad run id"));
    let out = run(&["runs", "--no-such-flag"]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}
