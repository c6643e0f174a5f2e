//! The harness's reads of the database under test, on either store: an SQLite file (a
//! read-only rusqlite connection) or a PostgreSQL database (a `postgres` client of its own).
//! One method per question the harness asks; writes go through the `Storage` seam (see
//! [`open`]) or, for the rows the harness corrupts on purpose, through [`Reader::corrupt`].

use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{is_postgres, open_storage, Storage, StoreOptions};

/// A journal entry as the harness reads it: seq, status, output, name, kind.
pub type JournalRow = (i64, String, Option<Vec<u8>>, String, String);

/// A run as the harness reads it: id, idempotency key, status, output, error.
pub type RunRecord = (i64, Option<String>, String, Option<Vec<u8>>, Option<String>);

/// An event as the harness reads it: id, payload, consumed seq.
pub type EventRecord = (i64, Vec<u8>, Option<i64>);

/// A run's status, note and its owner's pid.
pub type RunState = (String, Option<String>, Option<u32>);

/// How the harness corrupts one run (see [`super::corrupt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// A run-row column the claim reads holds garbage: on SQLite `deadline_at = 'soon'`
    /// (TEXT in an INTEGER column); on PostgreSQL, whose typed columns cannot hold that, a
    /// flipped byte in the run's input payload (the codec's checksum finds it).
    RunRow,
    /// A journal entry for seq 0 whose output is not an encoded output (on SQLite: TEXT,
    /// not a BLOB; on PostgreSQL: bytes without the codec's header).
    JournalOutput,
}

/// The harness's read connection.
pub enum Reader {
    Sqlite(Connection),
    Postgres(postgres::Client),
}

/// Open the store the engines use, for the harness's own writes (enqueue, events, cancels).
pub fn open(db: &Path, opts: &StoreOptions) -> Result<Arc<dyn Storage>, String> {
    open_storage(db, opts, Arc::new(SystemClock::from_env()), 2)
        .map(|o| o.api)
        .map_err(|e| format!("opening {}: {e}", name(db)))
}

/// `db` for messages (a URL without its password).
pub fn name(db: &Path) -> String {
    let s = db.to_string_lossy();
    if is_postgres(db) {
        waymark::internal::store::pg::redact(&s)
    } else {
        s.into_owned()
    }
}

impl Reader {
    /// A read connection to `db` (an existing SQLite file, or a PostgreSQL URL).
    pub fn open(db: &Path) -> Result<Reader, String> {
        let err = |e: String| format!("opening {}: {e}", name(db));
        if is_postgres(db) {
            let url = db.to_str().unwrap_or_default();
            let client =
                postgres::Client::connect(url, postgres::NoTls).map_err(|e| err(e.to_string()))?;
            return Ok(Reader::Postgres(client));
        }
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| err(e.to_string()))?;
        Ok(Reader::Sqlite(conn))
    }

    /// Rows of a query without parameters or with one BIGINT parameter, as a closure per
    /// store; errors as text.
    fn rows<T>(
        &mut self,
        sqlite: &str,
        postgres: &str,
        param: Option<i64>,
        lite: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        pg: impl Fn(&postgres::Row) -> Result<T, postgres::Error>,
    ) -> Result<Vec<T>, String> {
        match self {
            Reader::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sqlite).map_err(|e| e.to_string())?;
                let rows = match param {
                    Some(p) => stmt.query_map([p], lite),
                    None => stmt.query_map([], lite),
                };
                rows.and_then(|it| it.collect())
                    .map_err(|e| format!("reading the database: {e}"))
            }
            Reader::Postgres(c) => {
                let rows = match param {
                    Some(p) => c.query(postgres, &[&p]),
                    None => c.query(postgres, &[]),
                }
                .map_err(|e| format!("reading the database: {e}"))?;
                rows.iter()
                    .map(|r| pg(r).map_err(|e| format!("reading the database: {e}")))
                    .collect()
            }
        }
    }

    /// One BIGINT answer.
    fn count(&mut self, sql: &str, param: Option<i64>) -> Result<i64, String> {
        let (lite, pg) = (sql.replace("$1", "?1"), sql);
        let got = self.rows(&lite, pg, param, |r| r.get(0), |r| r.try_get(0))?;
        got.into_iter()
            .next()
            .ok_or_else(|| "reading the database: no answer".to_string())
    }

    /// How many runs the database holds.
    pub fn run_count(&mut self) -> Result<i64, String> {
        self.count("SELECT count(*) FROM runs", None)
    }

    /// Runs not yet final (pending, running or suspended).
    pub fn active_runs(&mut self) -> Result<i64, String> {
        self.count(
            "SELECT count(*) FROM runs WHERE status IN ('pending', 'running', 'suspended')",
            None,
        )
    }

    /// The number of active runs if none of them can move on its own (none running, none
    /// pending or suspended due by `due_by`, in ms), else 0.
    pub fn stuck_runs(&mut self, due_by: i64) -> Result<i64, String> {
        self.count(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM runs WHERE status = 'running'
                   OR (status IN ('pending', 'suspended') AND ready_at <= $1))
                THEN 0
                ELSE (SELECT count(*) FROM runs WHERE status IN ('pending', 'running', 'suspended'))
                END",
            Some(due_by),
        )
    }

    /// Journal sequence numbers holding more than one entry.
    pub fn duplicate_entries(&mut self) -> Result<i64, String> {
        self.count(
            "SELECT count(*) FROM (SELECT run_id, seq FROM steps GROUP BY run_id, seq HAVING count(*) > 1) AS d",
            None,
        )
    }

    /// Every run.
    pub fn runs(&mut self) -> Result<Vec<RunRecord>, String> {
        const SQL: &str = "SELECT id, idempotency_key, status, output, error FROM runs";
        self.rows(
            SQL,
            SQL,
            None,
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            |r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            },
        )
    }

    /// Run `id`'s journal, by seq.
    pub fn journal(&mut self, id: i64) -> Result<Vec<JournalRow>, String> {
        self.rows(
            // `CAST(output AS BLOB)`: a row the harness corrupted holds TEXT.
            "SELECT seq, status, CAST(output AS BLOB), name, kind FROM steps WHERE run_id = ?1 ORDER BY seq",
            "SELECT seq, status, output, name, kind FROM steps WHERE run_id = $1 ORDER BY seq",
            Some(id),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            |r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            },
        )
    }

    /// Run `id`'s events.
    pub fn events(&mut self, id: i64) -> Result<Vec<EventRecord>, String> {
        self.rows(
            "SELECT id, payload, consumed_seq FROM events WHERE run_id = ?1",
            "SELECT id, payload, consumed_seq FROM events WHERE run_id = $1",
            Some(id),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            |r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
        )
    }

    /// Status, note and owner pid of every run, by id.
    pub fn states(&mut self) -> Result<HashMap<i64, RunState>, String> {
        const SQL: &str =
            "SELECT r.id, r.status, r.note, e.pid FROM runs r LEFT JOIN engines e ON e.id = r.owner";
        let pid = |p: Option<i64>| p.and_then(|p| u32::try_from(p).ok());
        let rows = self.rows(
            SQL,
            SQL,
            None,
            |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, pid(r.get(3)?)))),
            |r| {
                Ok((
                    r.try_get(0)?,
                    (r.try_get(1)?, r.try_get(2)?, pid(r.try_get(3)?)),
                ))
            },
        )?;
        Ok(rows.into_iter().collect())
    }

    /// Corrupt the run whose idempotency key is `key` as `how` says (for `JournalOutput`,
    /// `first_step` names the step at seq 0) and make it due at once, in one transaction.
    /// Writes on a read connection: on SQLite the caller passes a writable one
    /// ([`Reader::open_writable`]).
    pub fn corrupt(
        &mut self,
        key: &str,
        how: Corruption,
        first_step: &str,
    ) -> Result<String, String> {
        let err = |e: String| format!("corrupting the rows of run {key}: {e}");
        match self {
            Reader::Sqlite(conn) => {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| err(e.to_string()))?;
                let id: i64 = tx
                    .query_row(
                        "SELECT id FROM runs WHERE idempotency_key = ?1",
                        [key],
                        |r| r.get(0),
                    )
                    .map_err(|e| err(e.to_string()))?;
                let done = match how {
                    Corruption::RunRow => {
                        tx.execute(
                            "UPDATE runs SET deadline_at = 'soon', ready_at = 0 WHERE id = ?1",
                            [id],
                        )
                        .map_err(|e| err(e.to_string()))?;
                        format!("run {id}: deadline_at = 'soon'")
                    }
                    Corruption::JournalOutput => {
                        tx.execute(
                            "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error, recorded_at)
                             VALUES (?1, 0, ?2, 'step', 'completed', 1, 'not an encoded output', NULL, 0)",
                            rusqlite::params![id, first_step],
                        )
                        .map_err(|e| err(e.to_string()))?;
                        tx.execute("UPDATE runs SET ready_at = 0 WHERE id = ?1", [id])
                            .map_err(|e| err(e.to_string()))?;
                        format!("run {id}: journal seq 0 output is TEXT")
                    }
                };
                tx.commit().map_err(|e| err(e.to_string()))?;
                Ok(done)
            }
            Reader::Postgres(client) => {
                let mut tx = client.transaction().map_err(|e| err(e.to_string()))?;
                let id: i64 = tx
                    .query_one(
                        "SELECT id FROM runs WHERE idempotency_key = $1 FOR UPDATE",
                        &[&key],
                    )
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| err(e.to_string()))?;
                let done = match how {
                    Corruption::RunRow => {
                        // The last byte of the sealed input flipped: its checksum fails.
                        tx.execute(
                            "UPDATE runs SET input = set_byte(input, length(input) - 1,
                                 get_byte(input, length(input) - 1) # 255), ready_at = 0
                             WHERE id = $1",
                            &[&id],
                        )
                        .map_err(|e| err(e.to_string()))?;
                        format!("run {id}: a byte of its input flipped")
                    }
                    Corruption::JournalOutput => {
                        tx.execute(
                            "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error, recorded_at)
                             VALUES ($1, 0, $2, 'step', 'completed', 1, 'not an encoded output'::bytea, NULL, 0)",
                            &[&id, &first_step],
                        )
                        .map_err(|e| err(e.to_string()))?;
                        tx.execute("UPDATE runs SET ready_at = 0 WHERE id = $1", &[&id])
                            .map_err(|e| err(e.to_string()))?;
                        format!("run {id}: journal seq 0 output is not encoded")
                    }
                };
                tx.commit().map_err(|e| err(e.to_string()))?;
                Ok(done)
            }
        }
    }

    /// A connection that may write (SQLite: read-write; PostgreSQL: the same client).
    pub fn open_writable(db: &Path) -> Result<Reader, String> {
        if is_postgres(db) {
            return Reader::open(db);
        }
        let conn = Connection::open(db).map_err(|e| format!("opening {}: {e}", name(db)))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        Ok(Reader::Sqlite(conn))
    }
}
