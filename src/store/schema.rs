//! Schema versions and forward migrations.
//!
//! Invariant: migrations run inside one `BEGIN IMMEDIATE` transaction that re-reads
//! `user_version` first, so two engines opening a fresh file at once migrate it once.
//! Migration N takes the schema from version N-1 to N; they are never edited once released.

use super::error::{StoreError, StoreResult};
use super::pragmas::APPLICATION_ID;
use rusqlite::Connection;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 5;

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
    -- (note text: store::feature_ops::child_note).
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
    // 5: per-attempt step logs (bounded by the engine: head + tail, see
    // Config::step_log_head_bytes) and the memory-cap mechanism an attempt ran under.
    r#"
    ALTER TABLE attempts ADD COLUMN logs TEXT;
    ALTER TABLE attempts ADD COLUMN memory_cap TEXT;
    "#,
];

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
}
