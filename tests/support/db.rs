//! Read-only peeks at a test's database with plain rusqlite.

use rusqlite::{params, Connection, OpenFlags};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// A read-only connection (`SQLITE_OPEN_READ_ONLY`).
pub fn reader(db: &Path) -> Connection {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

/// A read-write connection made `query_only` (never creates the file): for peeks that must
/// work where a read-only open cannot (e.g. no `-shm` file yet).
pub fn peek(db: &Path) -> Connection {
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open db for assertions");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch("PRAGMA query_only = 1").unwrap();
    c
}

/// Status of run `id`.
pub fn status(db: &Path, id: i64) -> String {
    reader(db)
        .query_row("SELECT status FROM runs WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .unwrap()
}

/// Status of run `id`, or None if there is no such run (or it cannot be read).
pub fn try_status(db: &Path, id: i64) -> Option<String> {
    let c = peek(db);
    c.query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0))
        .ok()
}

/// One integer from a query.
pub fn query_i64(db: &Path, sql: &str) -> i64 {
    reader(db).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// One integer from a query, or None if the database is not readable yet.
pub fn try_query_i64(db: &Path, sql: &str) -> Option<i64> {
    if !db.exists() {
        return None;
    }
    let c = peek(db);
    c.query_row(sql, [], |r| r.get(0)).ok()
}

/// Runs by status.
pub fn counts(db: &Path) -> HashMap<String, i64> {
    let c = reader(db);
    let mut s = c
        .prepare("SELECT status, count(*) FROM runs GROUP BY status")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs with `status`.
pub fn count(db: &Path, status: &str) -> i64 {
    counts(db).get(status).copied().unwrap_or(0)
}

/// Journal of a run: (seq, name, kind, status).
pub fn journal(db: &Path, run_id: i64) -> Vec<(i64, String, String, String)> {
    let c = reader(db);
    let mut s = c
        .prepare("SELECT seq, name, kind, status FROM steps WHERE run_id = ?1 ORDER BY seq")
        .unwrap();
    s.query_map(params![run_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// `(run_id, seq)` pairs recorded in the journal.
pub fn journal_keys(db: &Path) -> Vec<(i64, i64)> {
    let c = peek(db);
    let mut s = c
        .prepare("SELECT run_id, seq FROM steps ORDER BY run_id, seq")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A file's bytes, for "left untouched" checks (the files in these tests are small).
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}
