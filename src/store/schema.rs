//! Schema versions and forward migrations.
//!
//! Invariant: migrations run inside one `BEGIN IMMEDIATE` transaction that re-reads
//! `user_version` first, so two engines opening a fresh file at once migrate it once.
//! Migration N takes the schema from version N-1 to N; they are never edited once released.

use super::error::{StoreError, StoreResult};
use super::pragmas::APPLICATION_ID;
use rusqlite::Connection;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 8;

const MIGRATIONS: &[&str] = &[
    // 1: the durable core.
    r#"
    CREATE TABLE engines (
        id         TEXT PRIMARY KEY,      -- incarnation id, fresh at every engine start
        pid        INTEGER NOT NULL,
        pid_start  INTEGER NOT NULL,      -- /proc start time: (pid, pid_start) names one process
        boot_id    TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        beat       INTEGER NOT NULL DEFAULT 0,   -- bumped by every heartbeat
        beat_at    INTEGER NOT NULL,
        stopped_at INTEGER
    );
    CREATE TABLE runs (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow          TEXT NOT NULL,
        version           INTEGER NOT NULL DEFAULT 1,
        input             BLOB NOT NULL,
        status            TEXT NOT NULL,
        idempotency_key   TEXT UNIQUE,
        queue             TEXT NOT NULL DEFAULT 'default',
        priority          INTEGER NOT NULL DEFAULT 0,
        ready_at          INTEGER NOT NULL,      -- not before (pending) / wake-up time (suspended)
        owner             TEXT,                  -- engines.id holding the lease
        epoch             INTEGER NOT NULL DEFAULT 0,  -- bumped by every claim and reclaim
        lease_expires_at  INTEGER,
        interruptions     INTEGER NOT NULL DEFAULT 0,
        last_interruption TEXT,
        output            BLOB,
        error             TEXT,
        note              TEXT,                  -- why a run waits (unknown workflow, backoff, ...)
        parent_id         INTEGER,
        deadline_at       INTEGER,
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL,
        finished_at       INTEGER
    );
    CREATE INDEX runs_claim ON runs(priority DESC, ready_at, id) WHERE status = 'pending';
    CREATE INDEX runs_wake ON runs(ready_at) WHERE status = 'suspended';
    CREATE INDEX runs_owner ON runs(owner) WHERE status = 'running';
    CREATE INDEX runs_status ON runs(status);
    CREATE INDEX runs_finished ON runs(finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE steps (
        run_id      INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL DEFAULT 'step',
        status      TEXT NOT NULL,            -- completed | failed
        attempts    INTEGER NOT NULL,
        output      BLOB,
        error       TEXT,
        recorded_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, seq)             -- write-once: INSERT, never upsert
    ) WITHOUT ROWID;
    CREATE TABLE attempts (
        run_id     INTEGER NOT NULL,
        seq        INTEGER NOT NULL,
        attempt    INTEGER NOT NULL,
        name       TEXT NOT NULL,
        owner      TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        pid        INTEGER,
        pid_start  INTEGER,
        started_at INTEGER NOT NULL,
        ended_at   INTEGER,
        outcome    TEXT,                      -- NULL while running or if interrupted
        reason     TEXT,
        PRIMARY KEY (run_id, seq, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id       INTEGER NOT NULL,
        name         TEXT NOT NULL,
        payload      BLOB NOT NULL,
        sent_at      INTEGER NOT NULL,
        consumed_seq INTEGER
    );
    CREATE INDEX events_run ON events(run_id, name, id);
    "#,
    // 2: durable features (timers, events, cancellation, children, deadlines, retention).
    r#"
    CREATE INDEX runs_parent ON runs(parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX runs_deadline ON runs(deadline_at) WHERE deadline_at IS NOT NULL AND finished_at IS NULL;
    -- A child's end wakes its parent if the parent is suspended waiting for it
    -- (note text: store::write::child_note).
    CREATE TRIGGER runs_wake_parent AFTER UPDATE OF status ON runs
    WHEN NEW.parent_id IS NOT NULL AND NEW.status IN ('completed', 'failed', 'cancelled')
    BEGIN
        UPDATE runs SET ready_at = NEW.updated_at, updated_at = NEW.updated_at
        WHERE id = NEW.parent_id AND status = 'suspended' AND note = 'waiting for child ' || NEW.id;
    END;
    "#,
    // 3: queues with concurrency limits (a queue without a row here is unlimited).
    r#"
    CREATE TABLE queues (
        name        TEXT PRIMARY KEY,
        concurrency INTEGER NOT NULL CHECK (concurrency >= 0)   -- most runs 'running' at once
    ) WITHOUT ROWID;
    CREATE INDEX runs_queue_claim ON runs(queue, priority DESC, ready_at, id) WHERE status = 'pending';
    CREATE INDEX runs_queue_running ON runs(queue) WHERE status = 'running';
    "#,
    // 4: cron schedules. A firing is a guarded update of next_due plus an enqueue with the
    // idempotency key 'sched:NAME:DUE', in one transaction (store::feature_ops).
    r#"
    CREATE TABLE schedules (
        name       TEXT PRIMARY KEY,
        cron       TEXT NOT NULL,
        workflow   TEXT NOT NULL,
        version    INTEGER NOT NULL,
        input      BLOB NOT NULL,
        queue      TEXT NOT NULL DEFAULT 'default',
        catch_up   INTEGER NOT NULL DEFAULT 0,   -- 1: one run per missed due time; 0: one run for the latest
        next_due   INTEGER NOT NULL,             -- ms since the epoch
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX schedules_due ON schedules(next_due);
    "#,
    // 5: every stored payload carries a header (header version, format tag, CRC-32; see
    // codec.rs). Seals in place what version 4 stored bare: bincode everywhere except
    // event payloads (JSON, also when a consumed event is journaled as kind 'event').
    // A value of another storage class is left as it is (decoders report it).
    r#"
    UPDATE runs SET input = waymark_seal(input, 1) WHERE typeof(input) = 'blob';
    UPDATE runs SET output = waymark_seal(output, 1) WHERE typeof(output) = 'blob';
    UPDATE steps SET output = waymark_seal(output, CASE kind WHEN 'event' THEN 2 ELSE 1 END)
        WHERE typeof(output) = 'blob';
    UPDATE events SET payload = waymark_seal(payload, 2) WHERE typeof(payload) = 'blob';
    UPDATE schedules SET input = waymark_seal(input, 1) WHERE typeof(input) = 'blob';
    "#,
    // 6: retry and restart links, copied journal entries, and the change log that clients
    // watch (wait, wait_all, subscribe) instead of scanning runs.
    r#"
    ALTER TABLE runs ADD COLUMN retry_of INTEGER;        -- the finished run this one retries
    CREATE INDEX runs_retry_of ON runs(retry_of) WHERE retry_of IS NOT NULL;
    ALTER TABLE steps ADD COLUMN copied_from INTEGER;    -- run whose entry this is a copy of
    CREATE TABLE run_changes (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        at     INTEGER NOT NULL
    );
    -- One row per run created and per status change; the newest 65536 are kept (a reader
    -- that falls further behind sees a gap in seq and re-reads what it watches).
    CREATE TRIGGER run_changes_insert AFTER INSERT ON runs
    BEGIN
        INSERT INTO run_changes(run_id, status, at) VALUES (NEW.id, NEW.status, NEW.updated_at);
        DELETE FROM run_changes WHERE seq <= last_insert_rowid() - 65536;
    END;
    CREATE TRIGGER run_changes_status AFTER UPDATE OF status ON runs
    WHEN NEW.status IS NOT OLD.status
    BEGIN
        INSERT INTO run_changes(run_id, status, at) VALUES (NEW.id, NEW.status, NEW.updated_at);
        DELETE FROM run_changes WHERE seq <= last_insert_rowid() - 65536;
    END;
    "#,
    // 7: per-attempt step logs (bounded by the engine: head + tail, see
    // Config::step_log_head_bytes) and the memory-cap mechanism an attempt ran under.
    r#"
    ALTER TABLE attempts ADD COLUMN logs TEXT;
    ALTER TABLE attempts ADD COLUMN memory_cap TEXT;
    "#,
    // 8: pending runs by workflow and version, so "is there a run this engine can take?"
    // is one seek per registered workflow, not a walk past every pending run of a version
    // this engine does not run (runs of another build, queued behind a rolling upgrade).
    r#"
    CREATE INDEX runs_pending_workflow ON runs(workflow, version) WHERE status = 'pending';
    "#,
];

/// `waymark_seal(body, format_tag)`: the SQL face of [`crate::codec::seal`], for migration 5.
fn register_seal(conn: &Connection) -> rusqlite::Result<()> {
    use crate::codec::{seal, Format};
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "waymark_seal",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let format = match ctx.get::<i64>(1)? {
                1 => Format::Bincode1Fixint,
                2 => Format::Json,
                other => {
                    return Err(rusqlite::Error::UserFunctionError(
                        format!("waymark_seal: unknown format {other}").into(),
                    ))
                }
            };
            let body = ctx.get_raw(0).as_blob().map_err(|e| {
                rusqlite::Error::UserFunctionError(format!("waymark_seal: {e}").into())
            })?;
            Ok(seal(format, body))
        },
    )
}

/// Check `application_id` and `user_version` of a just-opened file without writing.
/// Returns the schema version found (0 for a fresh, empty file).
pub fn check_identity(conn: &Connection, path: &std::path::Path) -> StoreResult<i64> {
    let not_db = |e: rusqlite::Error| match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            StoreError::NotADatabase {
                path: path.into(),
                detail: e.to_string(),
            }
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseCorrupt => {
            StoreError::Corrupt {
                path: path.into(),
                detail: e.to_string(),
            }
        }
        _ => StoreError::sqlite("reading the database header", e),
    };
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(not_db)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(not_db)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(not_db)?;
    if app != APPLICATION_ID && !(app == 0 && version == 0 && tables == 0) {
        return Err(StoreError::ForeignFile {
            path: path.into(),
            application_id: app,
        });
    }
    if version < 0 {
        // Our application_id with a version we never write: damaged or forged. Migrating
        // from it would skip every migration and stamp an empty file current.
        return Err(StoreError::InvalidSchemaVersion {
            path: path.into(),
            found: version,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.into(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// Run `PRAGMA quick_check`; any answer but "ok" refuses the file.
pub fn quick_check(conn: &Connection, path: &std::path::Path) -> StoreResult<()> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| StoreError::Corrupt {
            path: path.into(),
            detail: e.to_string(),
        })?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|it| it.collect())
        .map_err(|e| StoreError::Corrupt {
            path: path.into(),
            detail: e.to_string(),
        })?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: path.into(),
            detail: rows.join("; "),
        })
    }
}

/// Bring the schema to [`SCHEMA_VERSION`] in one IMMEDIATE transaction.
pub fn migrate(conn: &mut Connection, path: &std::path::Path) -> StoreResult<()> {
    // auto_vacuum must be chosen before the first table exists; harmless if raced.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
        .map_err(|e| StoreError::sqlite("setting auto_vacuum", e))?;
    register_seal(conn).map_err(|e| StoreError::sqlite("registering waymark_seal", e))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| StoreError::sqlite("beginning the migration", e))?;
    let found = check_identity(&tx, path)?;
    let done = usize::try_from(found).map_err(|_| StoreError::InvalidSchemaVersion {
        path: path.into(),
        found,
    })?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::sqlite("migrating the schema", e))?;
        log::info!("migrated {} to schema version {}", path.display(), i + 1);
    }
    if found < SCHEMA_VERSION {
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(|e| StoreError::sqlite("stamping the schema version", e))?;
    }
    tx.commit()
        .map_err(|e| StoreError::sqlite("committing the migration", e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_match_the_version() {
        assert_eq!(super::MIGRATIONS.len() as i64, super::SCHEMA_VERSION);
    }

    // A file at schema version 1 (the durable core) with a run in it migrates forward to
    // the current version in place, keeping its data.
    #[test]
    fn a_version_1_file_migrates_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(super::MIGRATIONS[0]).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 1;
             INSERT INTO runs(workflow, input, status, ready_at, created_at, updated_at)
             VALUES ('wf', x'00', 'pending', 0, 0, 0);",
            super::APPLICATION_ID
        ))
        .unwrap();
        super::migrate(&mut conn, &path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, super::SCHEMA_VERSION);
        let runs: i64 = conn
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, 1);
        for table in ["queues", "schedules"] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table} exists");
        }
        // Migrating again is a no-op.
        super::migrate(&mut conn, &path).unwrap();
    }

    // A file at schema version 4 holds bare payloads (no header); migration 5 seals each
    // with the format of its column (JSON for events and consumed-event journal entries),
    // leaves NULLs and values of other storage classes alone, and every payload then
    // decodes to what was stored.
    #[test]
    fn a_version_4_file_gets_its_payloads_sealed() {
        use crate::codec::{decode, decode_json};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        for sql in &super::MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 4;",
            super::APPLICATION_ID
        ))
        .unwrap();
        let bare = |v: u64| v.to_le_bytes().to_vec();
        conn.execute(
            "INSERT INTO runs(workflow, input, output, status, ready_at, created_at, updated_at)
             VALUES ('wf', ?1, ?2, 'completed', 0, 0, 0), ('wf', ?3, NULL, 'pending', 0, 0, 0)",
            rusqlite::params![bare(1), bare(2), bare(3)],
        )
        .unwrap();
        let steps: [(i64, &str, Option<Vec<u8>>); 5] = [
            (0, "step", Some(bare(10))),
            (1, "sleep", Some(bare(11))),
            (2, "event", Some(b"{\"go\":12}".to_vec())),
            (3, "child", Some(bare(13))),
            (4, "step", None),
        ];
        for (seq, kind, output) in &steps {
            conn.execute(
                "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, recorded_at)
                 VALUES (1, ?1, 'x', ?2, 'completed', 1, ?3, 0)",
                rusqlite::params![seq, kind, output],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO events(run_id, name, payload, sent_at) VALUES (2, 'go', CAST('7' AS BLOB), 0);
             INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, recorded_at)
                 VALUES (2, 0, 'x', 'step', 'completed', 1, 'text, not a blob', 0);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO schedules(name, cron, workflow, version, input, next_due, created_at, updated_at)
             VALUES ('s', '* * * * * *', 'wf', 1, ?1, 0, 0, 0)",
            [bare(20)],
        )
        .unwrap();
        super::migrate(&mut conn, &path).unwrap();
        let blob = |sql: &str| -> Vec<u8> { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        let lim = 1024;
        assert_eq!(
            decode::<u64>(&blob("SELECT input FROM runs WHERE id = 1"), lim),
            Ok(1)
        );
        assert_eq!(
            decode::<u64>(&blob("SELECT output FROM runs WHERE id = 1"), lim),
            Ok(2)
        );
        assert_eq!(
            decode::<u64>(&blob("SELECT input FROM runs WHERE id = 2"), lim),
            Ok(3)
        );
        let step = |seq: i64| {
            blob(&format!(
                "SELECT output FROM steps WHERE run_id = 1 AND seq = {seq}"
            ))
        };
        assert_eq!(decode::<u64>(&step(0), lim), Ok(10));
        assert_eq!(decode::<i64>(&step(1), lim), Ok(11));
        assert_eq!(
            decode_json::<serde_json::Value>(&step(2), lim).unwrap(),
            serde_json::json!({"go": 12})
        );
        assert_eq!(decode::<i64>(&step(3), lim), Ok(13));
        assert_eq!(
            decode_json::<u64>(&blob("SELECT payload FROM events"), lim),
            Ok(7)
        );
        assert_eq!(
            decode::<u64>(&blob("SELECT input FROM schedules"), lim),
            Ok(20)
        );
        let untouched: (Option<Vec<u8>>, String, Option<Vec<u8>>) = conn
            .query_row(
                "SELECT (SELECT output FROM steps WHERE run_id = 1 AND seq = 4),
                        (SELECT output FROM steps WHERE run_id = 2),
                        (SELECT output FROM runs WHERE id = 2)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(untouched, (None, "text, not a blob".into(), None));
        // Migrating again does not seal twice.
        super::migrate(&mut conn, &path).unwrap();
        let again: Vec<u8> = conn
            .query_row(
                "SELECT output FROM steps WHERE run_id = 1 AND seq = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(decode::<u64>(&again, lim), Ok(10));
    }
}
