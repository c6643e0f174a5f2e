//! Storage: one SQLite file, one writer thread, a pool of readers.
//!
//! Invariants:
//! - The database files are opened only through SQLite, never with `std::fs` (closing any
//!   descriptor on them would drop SQLite's POSIX locks). `std::fs::metadata` (stat) is fine.
//! - A file that is not ours (foreign, newer schema, corrupt, zero-length) is refused before
//!   anything is written to it.
//! - Only [`transitions`] writes; only the writer thread runs it.

pub mod error;
#[cfg(feature = "postgres")]
#[doc(hidden)]
pub mod pg;
pub mod pragmas;
#[doc(hidden)]
pub mod queries;
mod reply;
#[doc(hidden)]
pub mod schema;
pub mod seam;
pub mod views;
pub mod watch;
#[doc(hidden)]
pub mod write;
#[doc(hidden)]
pub mod writer;

pub use error::{StoreError, StoreResult};
pub use pragmas::{ConnSettings, Synchronous};
pub use seam::{ChildStart, Sent, Started, Storage};
pub use views::{AttemptRow, RunChange, RunFilter, RunRow, RunStatus, StepRow, UnknownStatus};
pub use views::{
    EngineInfo, EventInfo, QueueInfo, RunQuery, RunTotals, ScheduleInfo, StepDurations,
    DURATION_BUCKETS_MS,
};
pub use watch::ChangeWatch;
pub use write::{Awaited, ScheduleRow};
pub use write::{
    ClaimNext, Claimed, Done, Ending, EngineRow, Entry, Fence, NewRun, OnKeyConflict, Op,
};
pub use writer::{Writer, WriterStats};

/// Default of [`StoreOptions::lock_wait_max`] and `Config::lock_wait_max`: how long an API
/// call waits for the write lock held by another process before failing with
/// [`StoreError::Locked`].
pub const LOCK_WAIT_MAX_DEFAULT: Duration = Duration::from_secs(10);

use crate::clock::Clock;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Create the file if it does not exist.
    pub create: bool,
    /// SQLite's `synchronous`.
    pub synchronous: Synchronous,
    /// SQLite's busy timeout per call.
    pub busy_timeout: Duration,
    /// Run `PRAGMA quick_check` before using an existing file, under the policy of
    /// [`quick_check_needed`]: always for files up to [`QUICK_CHECK_ALWAYS_BYTES`], and for
    /// larger files only when an engine did not stop cleanly (false: never).
    pub quick_check: bool,
    /// Reader connections in the pool.
    pub readers_max: u32,
    /// How long [`Store::call`] waits for the write lock while another process holds it,
    /// then fails with [`StoreError::Locked`] (nothing written). `None`: wait as long as it
    /// takes (the engine's own threads).
    pub lock_wait_max: Option<Duration>,
    /// Name of a registered SQLite VFS to open the files with (`None`: SQLite's default).
    /// Only for the power-loss simulator of `waymark torture --power-loss`.
    #[doc(hidden)]
    pub vfs: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            create: true,
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            quick_check: true,
            readers_max: 4,
            lock_wait_max: Some(LOCK_WAIT_MAX_DEFAULT),
            vfs: None,
        }
    }
}

/// An open waymark database: a writer handle and a reader pool. Clones share them; when the
/// last clone is dropped the writer thread drains its queue, closes its connection and is joined.
#[derive(Clone)]
pub struct Store {
    path: Arc<PathBuf>,
    // Readers drop first so the writer's connection is the last to close (it checkpoints).
    readers: r2d2::Pool<ReadManager>,
    writer: Arc<WriterOwner>,
    lock_wait_max: Option<Duration>,
    /// Opens the dedicated connection of a change watch ([`Store::watch`]).
    watch_conn: Arc<ReadManager>,
}

struct WriterOwner {
    writer: Writer,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for WriterOwner {
    fn drop(&mut self) {
        // Disconnect the channel (replace our only sender), then wait for the thread to finish.
        self.writer = Writer::disconnected();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn classify_open(path: &Path, e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::PermissionDenied => {
                return StoreError::ReadOnly {
                    path: path.into(),
                    detail: e.to_string(),
                }
            }
            rusqlite::ErrorCode::NotADatabase => {
                return StoreError::NotADatabase {
                    path: path.into(),
                    detail: e.to_string(),
                }
            }
            rusqlite::ErrorCode::DatabaseCorrupt => {
                return StoreError::Corrupt {
                    path: path.into(),
                    detail: e.to_string(),
                }
            }
            _ => {}
        }
    }
    StoreError::sqlite("opening the database", e)
}

/// Files up to this size (database plus WAL) are quick-checked at every open: it costs
/// about 8 ms per MB here (1.9 s for 1M finished runs, 229 MB), so up to 32 MiB it stays
/// well under the 500 ms open budget.
pub const QUICK_CHECK_ALWAYS_BYTES: u64 = 32 * 1024 * 1024;

/// Whether an open should pay for `PRAGMA quick_check`.
///
/// Small files: always. Larger files: only when the last engines did not stop cleanly, i.e.
/// an engine row without `stopped_at` whose process is gone (crashed, killed, or from before
/// a reboot: the cases where a torn write from a lying disk could have left damage). A
/// clean shutdown stamps `stopped_at`; a live engine on this host vouches for the file.
/// An unreadable engines table counts as unclean. Trade-off: damage from outside (a bad
/// disk under a cleanly stopped engine) is then found by SQLite when the damaged page is
/// read, not at open; `Config::quick_check_always` restores the check at every open.
pub fn quick_check_needed(conn: &Connection, path: &Path) -> bool {
    let wal = {
        let mut p = path.as_os_str().to_owned();
        p.push("-wal");
        PathBuf::from(p)
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if size(path) + size(&wal) <= QUICK_CHECK_ALWAYS_BYTES {
        return true;
    }
    let rows: rusqlite::Result<Vec<(i64, i64, String)>> = conn
        .prepare("SELECT pid, pid_start, boot_id FROM engines WHERE stopped_at IS NULL")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        });
    let here = crate::host::host_id();
    match rows {
        Ok(rows) => rows.iter().any(|(pid, start, b)| {
            use crate::host::{liveness, place, Liveness, Place};
            // An SQLite file lives on this host: another boot id is an earlier boot.
            match place(&here, b, false) {
                Place::EarlierBoot | Place::OtherHost => true,
                Place::SameNamespace => liveness(*pid as u32, *start as u64) == Liveness::Dead,
                // Another container's engine: its pid means nothing here.
                Place::OtherNamespace => false,
            }
        }),
        Err(e) => {
            log::warn!(
                "cannot read engine records of {} ({e}); checking the file",
                path.display()
            );
            true
        }
    }
}

/// Longest we wait for a zero-length file to get its header before refusing it.
const ZERO_LENGTH_WAIT_MAX: Duration = Duration::from_secs(2);

/// A zero-length file is what another process opening the same fresh path sees for a few
/// milliseconds, between its create and its first write (the header). Wait (stat only, no
/// descriptor) up to `ZERO_LENGTH_WAIT_MAX` for it to grow before calling it not a database.
fn grows_soon(path: &Path, busy_timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + busy_timeout.min(ZERO_LENGTH_WAIT_MAX);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return true;
        }
    }
    false
}

/// Open a connection after checking the file is ours. Writes nothing unless `create`
/// made a fresh file. Returns the connection and whether the file is new.
fn open_checked(path: &Path, opts: &StoreOptions) -> StoreResult<Connection> {
    let existed = match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 && !grows_soon(path, opts.busy_timeout) => {
            return Err(StoreError::NotADatabase {
                path: path.into(),
                detail: "zero-length file".into(),
            })
        }
        Ok(_) => true,
        Err(_) if !opts.create => return Err(StoreError::Missing { path: path.into() }),
        Err(_) => false,
    };
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if !existed {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn =
        open_with_vfs(path, flags, opts.vfs.as_deref()).map_err(|e| classify_open(path, e))?;
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        return Err(StoreError::ReadOnly {
            path: path.into(),
            detail: "file is not writable".into(),
        });
    }
    conn.busy_timeout(opts.busy_timeout)
        .map_err(|e| StoreError::sqlite("setting busy_timeout", e))?;
    let version = schema::check_identity(&conn, path)?;
    if existed && version > 0 && opts.quick_check && quick_check_needed(&conn, path) {
        schema::quick_check(&conn, path)?;
    }
    if !existed {
        use std::os::unix::fs::PermissionsExt;
        // chmod by path (no descriptor is opened): the file holds every run's data.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            StoreError::ReadOnly {
                path: path.into(),
                detail: e.to_string(),
            }
        })?;
    }
    Ok(conn)
}

/// Longest `Store::open` keeps retrying a migration while another process holds the lock.
const MIGRATE_BUSY_WAIT_MAX: Duration = Duration::from_secs(60);

fn is_busy(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(f, _), .. }
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Migrate only if the schema is behind (a read, no lock): opening a current database must
/// not need the write lock, or a process holding it longer than busy_timeout would make
/// every open fail with SQLITE_BUSY. A needed migration that meets a busy database is
/// retried with backoff (and logged) for up to `MIGRATE_BUSY_WAIT_MAX`.
fn migrate_when_needed(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    if schema::check_identity(conn, path)? == schema::SCHEMA_VERSION {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match schema::migrate(conn, path) {
            Err(e) if is_busy(&e) && started.elapsed() < MIGRATE_BUSY_WAIT_MAX => {
                log::warn!(
                    "{}: database is busy during migration (another process holds the write lock); retrying in {backoff:?}",
                    path.display()
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(StoreError::Sqlite { source, .. }) => return Err(classify_open(path, source)),
            other => return other,
        }
    }
}

impl Store {
    /// Open (and if allowed create and migrate) the database at `path`.
    pub fn open(path: &Path, opts: &StoreOptions, clock: Arc<dyn Clock>) -> StoreResult<Store> {
        memstatus_off();
        let mut conn = open_checked(path, opts)?;
        let settings = ConnSettings {
            synchronous: opts.synchronous,
            busy_timeout: opts.busy_timeout,
        };
        let vfs = opts.vfs.clone();
        // Setting WAL mode (and auto_vacuum on a fresh file) can meet SQLITE_BUSY without the
        // busy handler being called, while another process creates or migrates the same new
        // file: retry with backoff, like a migration, instead of failing the open.
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            match pragmas::apply(&conn, settings) {
                Err(e) if is_busy(&e) && started.elapsed() < MIGRATE_BUSY_WAIT_MAX => {
                    log::warn!(
                        "{}: database is busy while setting pragmas (another process is creating or migrating it); retrying in {backoff:?}",
                        path.display()
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(StoreError::Sqlite { source, .. }) => return Err(classify_open(path, source)),
                Err(other) => return Err(other),
                Ok(()) => break,
            }
        }
        migrate_when_needed(&mut conn, path)?;
        pragmas::install_busy_handler(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        let reopen_path = path.to_path_buf();
        let reopen_vfs = vfs.clone();
        let reopen: writer::Reopen =
            Box::new(move || writer_connection(&reopen_path, settings, reopen_vfs.as_deref()));
        let (writer, thread) = Writer::start(conn, clock, reopen)?;
        let writer = Arc::new(WriterOwner {
            writer,
            thread: parking_lot::Mutex::new(Some(thread)),
        });
        let readers = r2d2::Pool::builder()
            .max_size(opts.readers_max.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(30))
            .build(ReadManager {
                path: path.into(),
                settings,
                vfs: vfs.clone(),
            })
            .map_err(|e| StoreError::ReadOnly {
                path: path.into(),
                detail: e.to_string(),
            })?;
        Ok(Store {
            path: Arc::new(path.into()),
            writer,
            readers,
            lock_wait_max: opts.lock_wait_max,
            watch_conn: Arc::new(ReadManager {
                path: path.into(),
                settings,
                vfs,
            }),
        })
    }

    /// A handle on the same store whose [`Store::call`] waits at most `wait` for the write
    /// lock (`None`: without bound).
    pub fn with_lock_wait(&self, wait: Option<Duration>) -> Store {
        Store {
            lock_wait_max: wait,
            ..self.clone()
        }
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Apply a write command and wait for its commit; with a `lock_wait_max`, give up with
    /// [`StoreError::Locked`] (nothing written) if another process holds the write lock
    /// that long.
    pub fn call(&self, op: Op) -> StoreResult<Done> {
        match self.lock_wait_max {
            Some(wait) => self.writer.writer.call_within(op, wait),
            None => self.writer.writer.call(op),
        }
    }

    /// The writer's `(batches, commands)` counters: `commands / batches` is the mean
    /// number of commands that shared one transaction (one fsync).
    pub fn writer_stats(&self) -> (u64, u64) {
        self.writer.writer.stats()
    }

    /// A change watch on this database (its own read connection; see [`watch`]).
    pub fn watch(&self) -> StoreResult<watch::SqliteWatch> {
        use r2d2::ManageConnection;
        let conn = self
            .watch_conn
            .connect()
            .map_err(|e| StoreError::sqlite("opening a watch connection", e))?;
        watch::SqliteWatch::new(conn, &self.path)
    }

    /// Run `f` on a pooled read connection.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let conn = self.readers.get().map_err(|e| StoreError::Sqlite {
            context: "getting a reader connection",
            source: rusqlite::Error::InvalidParameterName(e.to_string()),
        })?;
        f(&conn)
    }
}

/// A store opened from a `Config`'s database name, for the engine (`engine`: waits for
/// the write lock as long as it takes) and for API calls (`api`: bounded by
/// `lock_wait_max`). The same database behind both.
pub struct Opened {
    /// For the engine's own threads.
    pub engine: Arc<dyn seam::Storage>,
    /// For API calls.
    pub api: Arc<dyn seam::Storage>,
    /// The SQLite store, when the database is an SQLite file.
    pub sqlite: Option<Store>,
}

/// Does `db` name a PostgreSQL database (`postgres://...` or `postgresql://...`)?
pub fn is_postgres(db: &Path) -> bool {
    db.to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// Open the database `db` names: a PostgreSQL URL (feature `postgres`) or an SQLite file.
/// `pool_max` bounds a PostgreSQL store's connections.
pub fn open_storage(
    db: &Path,
    opts: &StoreOptions,
    clock: Arc<dyn Clock>,
    pool_max: u32,
) -> StoreResult<Opened> {
    if is_postgres(db) {
        #[cfg(feature = "postgres")]
        {
            let url = db.to_str().unwrap_or_default();
            let store: Arc<dyn seam::Storage> = Arc::new(pg::PgStore::open(url, pool_max, clock)?);
            return Ok(Opened {
                engine: store.clone(),
                api: store,
                sqlite: None,
            });
        }
        #[cfg(not(feature = "postgres"))]
        {
            let _ = pool_max;
            return Err(StoreError::Internal(format!(
                "{} names a PostgreSQL database, but this build has no PostgreSQL support (cargo feature `postgres`)",
                db.display()
            )));
        }
    }
    let sqlite = Store::open(db, opts, clock)?;
    Ok(Opened {
        engine: Arc::new(sqlite.with_lock_wait(None)),
        api: Arc::new(sqlite.clone()),
        sqlite: Some(sqlite),
    })
}

/// A fresh writing connection on an existing, already checked and migrated file (the
/// writer's replacement for a connection it can no longer trust).
fn writer_connection(
    path: &Path,
    settings: ConnSettings,
    vfs: Option<&str>,
) -> StoreResult<Connection> {
    let mut conn = open_with_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        vfs,
    )
    .map_err(|e| classify_open(path, e))?;
    pragmas::apply(&conn, settings)?;
    pragmas::install_busy_handler(&mut conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Turn SQLite's memory statistics off, once, before SQLite initialises: with them on,
/// every allocation of every connection of the process takes one global mutex (measured:
/// `pthread_mutex_lock`/`unlock` were 20 % of the writer thread's time under
/// `bench --only W2 --workers 32`, contended by the readers). If the application already
/// used SQLite, `sqlite3_config` refuses (SQLITE_MISUSE) and nothing changes; waymark
/// reads no memory statistic. Public for programs (the bench) that open SQLite themselves
/// before any store: called first, it gives their engines what an application whose first
/// SQLite use is waymark gets.
pub fn memstatus_off() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called before any connection of ours is opened; SQLite checks that it is
        // not initialised yet and otherwise returns SQLITE_MISUSE without changing anything.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            )
        };
        log::debug!("SQLITE_CONFIG_MEMSTATUS=0: rc {rc}");
    });
}

/// r2d2 manager for read connections (query_only, same pragmas).
#[derive(Debug)]
pub struct ReadManager {
    path: PathBuf,
    settings: ConnSettings,
    vfs: Option<String>,
}

/// Open a connection with SQLite's default VFS, or the named one.
fn open_with_vfs(path: &Path, flags: OpenFlags, vfs: Option<&str>) -> rusqlite::Result<Connection> {
    match vfs {
        Some(name) => Connection::open_with_flags_and_vfs(path, flags, name),
        None => Connection::open_with_flags(path, flags),
    }
}

impl r2d2::ManageConnection for ReadManager {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = open_with_vfs(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            self.vfs.as_deref(),
        )?;
        conn.busy_timeout(self.settings.busy_timeout)?;
        conn.execute_batch(
            "PRAGMA query_only = 1; PRAGMA cache_size = -2048; PRAGMA temp_store = 2;",
        )?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), rusqlite::Error> {
        conn.execute_batch("")
    }

    fn has_broken(&self, _conn: &mut Connection) -> bool {
        false
    }
}
