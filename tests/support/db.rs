//! Read-only peeks at a test's database: plain rusqlite for an SQLite file, the plain
//! `postgres` client for a `postgres://` URL (the helpers below take either; their SQL is
//! written in what both dialects read alike). `reader` and `peek` are SQLite's own.

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
    if let Some(url) = pg_url(db) {
        return super::pg::pg_cluster_client(url)
            .query_one("SELECT status FROM runs WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
    }
    reader(db)
        .query_row("SELECT status FROM runs WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .unwrap()
}

/// Status of run `id`, or None if there is no such run (or it cannot be read).
pub fn try_status(db: &Path, id: i64) -> Option<String> {
    if let Some(url) = pg_url(db) {
        let mut c = postgres::Client::connect(url, postgres::NoTls).ok()?;
        return c
            .query_opt("SELECT status FROM runs WHERE id = $1", &[&id])
            .ok()
            .flatten()
            .map(|r| r.get(0));
    }
    let c = peek(db);
    c.query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0))
        .ok()
}

/// One integer from a query.
pub fn query_i64(db: &Path, sql: &str) -> i64 {
    if let Some(url) = pg_url(db) {
        return pg_i64(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    reader(db).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// One integer from a query, or None if the database is not readable yet.
pub fn try_query_i64(db: &Path, sql: &str) -> Option<i64> {
    if let Some(url) = pg_url(db) {
        return pg_i64(url, sql).ok();
    }
    if !db.exists() {
        return None;
    }
    let c = peek(db);
    c.query_row(sql, [], |r| r.get(0)).ok()
}

/// Runs by status.
pub fn counts(db: &Path) -> HashMap<String, i64> {
    if let Some(url) = pg_url(db) {
        return super::pg::pg_cluster_client(url)
            .query("SELECT status, count(*) FROM runs GROUP BY status", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    }
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
    if let Some(url) = pg_url(db) {
        return super::pg::pg_cluster_client(url)
            .query(
                "SELECT seq, name, kind, status FROM steps WHERE run_id = $1 ORDER BY seq",
                &[&run_id],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
    }
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
    if let Some(url) = pg_url(db) {
        return super::pg::pg_cluster_client(url)
            .query("SELECT run_id, seq FROM steps ORDER BY run_id, seq", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    }
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

/// The URL when `db` names a PostgreSQL database.
pub fn pg_url(db: &Path) -> Option<&str> {
    db.to_str()
        .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// One integer from a query on PostgreSQL (a `count(*)` is BIGINT there; an INTEGER
/// expression is widened).
fn pg_i64(url: &str, sql: &str) -> Result<i64, postgres::Error> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    let row = c.query_one(&format!("SELECT ({sql})::bigint"), &[])?;
    Ok(row.get(0))
}
