//! Read-only peeks at a test's database: plain rusqlite for an SQLite file, the plain
//! `postgres` client for a `postgres://` URL (the helpers below take either; their SQL is
//! written in what both dialects read alike). `reader` and `peek` are SQLite's own.
//! [`exec`] and [`exec_blob`] are the writes of tests that damage or steer rows.

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

/// Every row of a query, each value as text (`NULL` for null; blobs as hex): for
/// comparisons of whole rows on either store.
pub fn rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    if let Some(url) = pg_url(db) {
        use postgres::types::Type;
        let mut c = super::pg::pg_cluster_client(url);
        return c
            .query(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        let t = r.columns()[i].type_().clone();
                        let text = if t == Type::INT8 {
                            r.get::<_, Option<i64>>(i).map(|v| v.to_string())
                        } else if t == Type::INT4 {
                            r.get::<_, Option<i32>>(i).map(|v| v.to_string())
                        } else if t == Type::BOOL {
                            r.get::<_, Option<bool>>(i).map(|v| (v as i64).to_string())
                        } else if t == Type::BYTEA {
                            r.get::<_, Option<Vec<u8>>>(i).map(|v| hex(&v))
                        } else {
                            r.get::<_, Option<String>>(i)
                        };
                        text.unwrap_or_else(|| "NULL".into())
                    })
                    .collect()
            })
            .collect();
    }
    let c = peek(db);
    let mut s = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = s.column_count();
    s.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "NULL".to_string(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Real(v) => v.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Blob(b) => hex(b),
            })
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// One text value from a query.
pub fn query_text(db: &Path, sql: &str) -> String {
    rows(db, sql)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The storage seam on the database `db` names (an SQLite file or a PostgreSQL URL), for
/// store-level tests.
pub fn storage(db: &Path) -> std::sync::Arc<dyn waymark::internal::store::Storage> {
    waymark::internal::store::open_storage(
        db,
        &waymark::internal::store::StoreOptions::default(),
        std::sync::Arc::new(waymark::internal::clock::SystemClock::from_env()),
        4,
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", db.display()))
    .api
}

/// One BLOB (BYTEA) value from a query.
pub fn query_blob(db: &Path, sql: &str) -> Vec<u8> {
    let hex = query_text(db, sql);
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("a hex blob"))
        .collect()
}

/// One open connection for repeated peeks (a sampler, a polling thread) on either store,
/// instead of a connection per query.
pub enum Peeker {
    Sqlite(Connection),
    Postgres(postgres::Client),
}

impl Peeker {
    /// A connection to the database `db` names (an SQLite file, opened `query_only`, or a
    /// PostgreSQL URL).
    pub fn open(db: &Path) -> Peeker {
        match pg_url(db) {
            Some(url) => Peeker::Postgres(super::pg::pg_cluster_client(url)),
            None => Peeker::Sqlite(peek(db)),
        }
    }

    /// One integer from a query with no parameters, or None if it could not be read.
    pub fn try_i64(&mut self, sql: &str) -> Option<i64> {
        match self {
            Peeker::Sqlite(c) => c.prepare_cached(sql).ok()?.query_row([], |r| r.get(0)).ok(),
            Peeker::Postgres(c) => c
                .query_one(&format!("SELECT ({sql})::bigint"), &[])
                .ok()
                .map(|r| r.get(0)),
        }
    }

    /// The first column of every row of a query with no parameters, as integers.
    pub fn ids(&mut self, sql: &str) -> Vec<i64> {
        match self {
            Peeker::Sqlite(c) => c
                .prepare_cached(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
            Peeker::Postgres(c) => c
                .query(sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }
    }
}

/// Another session holding the store's write lock until [`WriteLock::release`] (or drop):
/// on SQLite `BEGIN IMMEDIATE`; on PostgreSQL a transaction holding every waymark table
/// `IN EXCLUSIVE MODE` (reads go on, every write and `FOR UPDATE` waits), what a
/// maintenance job or a stuck operator's session does to engines.
pub enum WriteLock {
    Sqlite(Connection),
    /// The session holding the locks, and the database's URL.
    Postgres(postgres::Client, String),
}

impl WriteLock {
    /// Take the lock (waits while another writer holds it).
    pub fn take(db: &Path) -> WriteLock {
        match pg_url(db) {
            Some(url) => {
                let mut c = super::pg::pg_cluster_client(url);
                let tables: Vec<String> = c
                    .query(
                        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                assert!(!tables.is_empty(), "no waymark tables in {url} yet");
                c.batch_execute(&format!(
                    "BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE",
                    tables.join(", ")
                ))
                .unwrap();
                WriteLock::Postgres(c, url.to_string())
            }
            None => {
                let c = Connection::open(db).expect("open db");
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                WriteLock::Sqlite(c)
            }
        }
    }

    /// How many sessions wait for a lock in the database now with a statement on `runs`
    /// (PostgreSQL's `pg_stat_activity`, read on a session of its own: the holder's would
    /// keep one snapshot per transaction; an engine's heartbeat on `engines` is not
    /// counted); None on SQLite, whose waiters retry in their busy handlers, unseen from
    /// outside. Lets a test check that its scenario happened.
    pub fn waiters(&self) -> Option<i64> {
        match self {
            WriteLock::Sqlite(_) => None,
            WriteLock::Postgres(_, url) => Some(
                super::pg::pg_cluster_client(url)
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'
                           AND query ~ '\\mruns\\M'",
                        &[],
                    )
                    .unwrap()
                    .get(0),
            ),
        }
    }

    /// Wait until at least `n` sessions wait for the lock ([`WriteLock::waiters`]; at once
    /// on SQLite), or fail with `what` after a generous timeout.
    pub fn wait_for_waiters(&self, n: i64, what: &str) {
        super::wait_until(what, Duration::from_secs(30), || {
            self.waiters().is_none_or(|w| w >= n)
        })
    }

    /// Commit: the waiting writers go on.
    pub fn release(self) {
        match self {
            WriteLock::Sqlite(c) => c.execute_batch("COMMIT").unwrap(),
            WriteLock::Postgres(mut c, _) => c.batch_execute("COMMIT").unwrap(),
        }
    }
}

/// Run one statement that changes the database (a test damaging or steering rows), with
/// its values inlined; the rows it changed. `sql` must read alike in both dialects.
pub fn exec(db: &Path, sql: &str) -> u64 {
    exec_blob_opt(db, sql, None)
}

/// [`exec`] with one BLOB (BYTEA) parameter written `$1` (SQLite reads `$1` as a named
/// parameter, PostgreSQL as the first positional one).
pub fn exec_blob(db: &Path, sql: &str, blob: &[u8]) -> u64 {
    exec_blob_opt(db, sql, Some(blob))
}

fn exec_blob_opt(db: &Path, sql: &str, blob: Option<&[u8]>) -> u64 {
    if let Some(url) = pg_url(db) {
        let mut c = super::pg::pg_cluster_client(url);
        return match blob {
            Some(b) => c.execute(sql, &[&b]),
            None => c.execute(sql, &[]),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let c = Connection::open(db).expect("open db for writing");
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    match blob {
        Some(b) => c.execute(sql, [b]),
        None => c.execute(sql, []),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}")) as u64
}

/// One row of the `attempts` table as stored (not as the engine reads it back).
#[derive(Debug, Clone)]
pub struct StoredAttempt {
    pub seq: i64,
    pub attempt: i64,
    pub owner: String,
    pub pid: Option<u32>,
    /// `None` while the attempt is open.
    pub outcome: Option<String>,
    /// `None` where no logs were ever written for the attempt.
    pub logs: Option<String>,
    pub memory_cap: Option<String>,
}

/// Every attempt row of run `run_id`, by seq and attempt, on either store.
pub fn stored_attempts(db: &Path, run_id: i64) -> Vec<StoredAttempt> {
    let opt = |v: &String| (v != "NULL").then(|| v.clone());
    rows(
        db,
        &format!(
            "SELECT seq, attempt, owner, pid, outcome, logs, memory_cap FROM attempts
             WHERE run_id = {run_id} ORDER BY seq, attempt"
        ),
    )
    .iter()
    .map(|r| StoredAttempt {
        seq: r[0].parse().unwrap(),
        attempt: r[1].parse().unwrap(),
        owner: r[2].clone(),
        pid: r[3].parse().ok(),
        outcome: opt(&r[4]),
        logs: opt(&r[5]),
        memory_cap: opt(&r[6]),
    })
    .collect()
}
