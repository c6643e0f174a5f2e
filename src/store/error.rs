//! The storage layer's error type.

use std::path::PathBuf;

/// What went wrong in the storage layer. Each variant says what the caller does next.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists but is not an SQLite database (or is zero-length). Left untouched.
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// An SQLite database that belongs to another application. Left untouched.
    ForeignFile {
        /// The file.
        path: PathBuf,
        /// Its `PRAGMA application_id`.
        application_id: i64,
    },
    /// Written by a newer waymark: refuse rather than misread it. Left untouched.
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// Our application_id with a schema version waymark never writes (negative): damaged
    /// or forged. Left untouched.
    InvalidSchemaVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// `PRAGMA quick_check` found damage. Left untouched.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first lines of `quick_check`'s report.
        detail: String,
    },
    /// No database at this path and creation was not requested.
    Missing {
        /// The path asked for.
        path: PathBuf,
    },
    /// The file or its directory is not writable (read-only mount, permissions).
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// What the OS or SQLite said.
        detail: String,
    },
    /// The disk (or a file size limit) is full: the write did not commit.
    DiskFull {
        /// What SQLite said.
        detail: String,
    },
    /// A pragma did not take the value we set (read back differs).
    Pragma {
        /// The pragma.
        name: &'static str,
        /// The value set.
        wanted: String,
        /// The value read back.
        got: String,
    },
    /// The write was fenced off: this owner no longer holds the run at this epoch.
    /// The worker must abandon the run and write nothing more for it.
    LeaseLost {
        /// The run.
        run_id: i64,
        /// The epoch the writer held.
        epoch: i64,
    },
    /// A journal entry for `(run_id, seq)` already exists; journal entries are write-once.
    JournalConflict {
        /// The run.
        run_id: i64,
        /// The journal sequence number.
        seq: i64,
    },
    /// No run with this id.
    NotFound {
        /// The id asked for.
        run_id: i64,
    },
    /// The writer thread has stopped (engine shut down or storage failed).
    WriterStopped,
    /// The run already ended (`completed`, `failed` or `cancelled`); it takes no more events.
    RunFinished {
        /// The run.
        run_id: i64,
        /// How it ended.
        status: String,
    },
    /// The run has not finished: only a completed, failed or cancelled run can be retried
    /// or restarted (cancel it first, or wait for it).
    RunNotFinished {
        /// The run.
        run_id: i64,
        /// Its status now.
        status: String,
    },
    /// The idempotency key names an existing run started with another input (or another
    /// workflow): nothing was started. Use another key, or ask for the existing run with
    /// an explicit key-conflict policy.
    KeyConflict {
        /// The key.
        key: String,
        /// The run that holds it.
        existing_run: i64,
    },
    /// A row of this run holds a value of the wrong type (damaged or foreign data): the run
    /// is parked `blocked` with `detail` (naming the row and column); the storage is fine.
    Undecodable {
        /// The run parked.
        run_id: i64,
        /// The row and column, and what was wrong.
        detail: String,
    },
    /// Another process held the database's write lock for all of `waited`: the call was
    /// not applied. Retry later, or find the process holding the lock.
    Locked {
        /// How long the call waited.
        waited: std::time::Duration,
    },
    /// An invariant of the store broke (a bug, not bad data): please report it.
    Internal(String),
    /// A PostgreSQL error (the server's SQLSTATE `code` when it answered).
    Postgres {
        /// What the store was doing.
        context: &'static str,
        /// The server's SQLSTATE, when the server answered.
        code: Option<String>,
        /// The error's text.
        detail: String,
    },
    /// The connection to the PostgreSQL server broke before the commit's answer arrived:
    /// the change may or may not have been committed.
    OutcomeUnknown {
        /// What the store was doing.
        context: &'static str,
        /// The error's text.
        detail: String,
    },
    /// Any other SQLite error, with what we were doing.
    Sqlite {
        /// What we were doing.
        context: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Wrap an SQLite error with context, classifying disk-full and read-only errors.
    pub fn sqlite(context: &'static str, source: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if let rusqlite::Error::SqliteFailure(e, msg) = &source {
            let detail = format!(
                "{context}: {}",
                msg.clone().unwrap_or_else(|| e.to_string())
            );
            match e.code {
                ErrorCode::DiskFull => return StoreError::DiskFull { detail },
                ErrorCode::SystemIoFailure if e.extended_code == libc_ioerr_write() => {
                    return StoreError::DiskFull { detail }
                }
                _ => {}
            }
        }
        StoreError::Sqlite { context, source }
    }

    /// True for errors after which the engine should stop claiming new work.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull { .. }
                | StoreError::ReadOnly { .. }
                | StoreError::OutcomeUnknown { .. }
        ) || matches!(self, StoreError::Postgres { code, .. } if postgres_unavailable(code.as_deref()))
            || matches!(self, StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. }
                if matches!(e.code, rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::DatabaseCorrupt))
    }
}

/// SQLITE_IOERR_WRITE: what a write under RLIMIT_FSIZE (EFBIG) surfaces as.
/// A PostgreSQL failure of the server, the connection or a transient condition, not of
/// one statement's logic: no answer from the server (`None`: connection refused or
/// closed), or SQLSTATE class 08 (connection exception), 53 (insufficient resources), 57
/// (operator intervention: shutdown, crash recovery, statement timeout), 58 (system
/// error), 55P03 (lock not available), 40001/40P01 (serialization failure, deadlock, once
/// the store's own retries are spent).
fn postgres_unavailable(code: Option<&str>) -> bool {
    match code {
        None => true,
        Some(c) => {
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c.starts_with("58")
                || matches!(c, "55P03" | "40001" | "40P01")
        }
    }
}

const fn libc_ioerr_write() -> i32 {
    10 | (3 << 8)
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use StoreError::*;
        match self {
            NotADatabase { path, detail } => write!(
                f,
                "{} is not a waymark database ({detail}); refusing to touch it",
                path.display()
            ),
            ForeignFile { path, application_id } => write!(
                f,
                "{} is an SQLite database of another application (application_id {application_id:#x}); refusing to touch it",
                path.display()
            ),
            NewerSchema { path, found, supported } => write!(
                f,
                "{} has waymark schema version {found}, newer than this build supports ({supported}); upgrade waymark to open it",
                path.display()
            ),
            InvalidSchemaVersion { path, found } => write!(
                f,
                "{} is marked as a waymark database but has schema version {found}, which waymark never writes; refusing to touch it, restore from a backup",
                path.display()
            ),
            Corrupt { path, detail } => write!(
                f,
                "{} failed its integrity check ({detail}); refusing to open it, restore from a backup",
                path.display()
            ),
            Missing { path } => write!(f, "no database at {}", path.display()),
            ReadOnly { path, detail } => write!(
                f,
                "cannot write {} ({detail}); waymark needs write access to the file and its directory (for the -wal and -shm files)",
                path.display()
            ),
            DiskFull { detail } => write!(f, "disk full, write not committed: {detail}"),
            Pragma { name, wanted, got } => {
                write!(f, "PRAGMA {name}: set {wanted}, read back {got}")
            }
            LeaseLost { run_id, epoch } => write!(
                f,
                "lease lost on run {run_id} (epoch {epoch}): another owner holds it now; write rejected"
            ),
            JournalConflict { run_id, seq } => {
                write!(f, "journal entry for run {run_id} seq {seq} already recorded")
            }
            NotFound { run_id } => write!(f, "no run with id {run_id}"),
            WriterStopped => write!(f, "the database writer has stopped"),
            RunFinished { run_id, status } => write!(f, "run {run_id} already ended ({status})"),
            RunNotFinished { run_id, status } => write!(
                f,
                "run {run_id} is {status}, not finished: only completed, failed or cancelled runs can be retried or restarted"
            ),
            KeyConflict { key, existing_run } => write!(
                f,
                "idempotency key '{key}' already names run {existing_run}, started with another input; nothing was started"
            ),
            Undecodable { run_id, detail } => {
                write!(f, "run {run_id} has data this build cannot read: {detail}")
            }
            Locked { waited } => write!(
                f,
                "the database is locked by another process: no write lock after waiting {waited:?}; nothing was written (retry later, or stop the process holding the lock)"
            ),
            Postgres { context, code: Some(code), detail } => write!(f, "postgres error while {context}: {detail} (SQLSTATE {code})"),
            Postgres { context, code: None, detail } => write!(f, "postgres error while {context}: {detail}"),
            OutcomeUnknown { context, detail } => write!(
                f,
                "the connection to PostgreSQL broke while {context} was committing ({detail}): the change may or may not have been committed"
            ),
            Internal(what) => write!(f, "internal store error (a waymark bug, please report): {what}"),
            Sqlite { context, source } => write!(f, "sqlite error while {context}: {source}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sqlite { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result alias of the storage layer.
pub type StoreResult<T> = Result<T, StoreError>;
