//! Every pragma waymark sets, in one table, with the reason for each; each is read back.

use super::error::{StoreError, StoreResult};
use rusqlite::Connection;
use std::time::Duration;

/// `PRAGMA application_id` value that marks a file as waymark's ("WYMK").
pub const APPLICATION_ID: i64 = 0x5759_4d4b;

/// Durability of commits. `Full` is the default: in WAL mode `Normal` can lose the
/// last commits on power loss, which would un-complete a run a caller saw finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync the WAL on every commit (default).
    #[default]
    Full,
    /// fsync only at checkpoints: faster, may lose the last commits on power loss
    /// (never on a process crash).
    Normal,
}

impl Synchronous {
    fn value(self) -> i64 {
        match self {
            Synchronous::Full => 2,
            Synchronous::Normal => 1,
        }
    }
}

/// Connection settings shared by the writer and readers.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// SQLite's `synchronous`.
    pub synchronous: Synchronous,
    /// SQLite's busy timeout per call.
    pub busy_timeout: Duration,
}

/// Pragmas for every connection: (name, value, why).
///
/// - `auto_vacuum=INCREMENTAL` (fresh files only): purged pages can be returned to the
///   file system (`PRAGMA incremental_vacuum`), so retention shrinks the file.
/// - `journal_mode=WAL`: readers never block the writer, commits are one append + fsync.
/// - `synchronous`: see [`Synchronous`].
/// - `busy_timeout`: explicit on every connection; replaced on writers by a short-sleep
///   handler bounded by the same timeout (see [`install_busy_handler`]).
/// - `foreign_keys=OFF`: the schema has none; transitions guard references themselves.
/// - `temp_store=MEMORY`: sorts for claims never touch the disk.
/// - `cache_size=-4096`: 4 MiB page cache per connection keeps engine memory bounded.
/// - `wal_autocheckpoint=1000`: bounds the WAL (about 4 MiB) under steady load.
pub fn apply(conn: &Connection, s: ConnSettings) -> StoreResult<()> {
    conn.busy_timeout(s.busy_timeout)
        .map_err(|e| StoreError::sqlite("setting busy_timeout", e))?;
    // Must precede journal_mode=WAL: switching to WAL writes page 1 of a fresh file, after
    // which auto_vacuum can no longer change. A no-op (not an error) once tables exist.
    // Only on an empty file: on an existing one the pragma cannot change anything and would
    // still want the write lock, so an open would fail while another process holds it.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite("reading the schema", e))?;
    if tables == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
            .map_err(|e| StoreError::sqlite("setting auto_vacuum", e))?;
    }
    set_str(conn, "journal_mode", "wal")?;
    set_int(conn, "synchronous", s.synchronous.value())?;
    set_int(conn, "foreign_keys", 0)?;
    set_int(conn, "temp_store", 2)?;
    set_int(conn, "cache_size", -4096)?;
    set_int(conn, "wal_autocheckpoint", 1000)?;
    Ok(())
}

fn set_int(conn: &Connection, name: &'static str, value: i64) -> StoreResult<()> {
    conn.execute_batch(&format!("PRAGMA {name} = {value}"))
        .map_err(|e| StoreError::sqlite("setting a pragma", e))?;
    let got: i64 = conn
        .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite("reading back a pragma", e))?;
    if got != value {
        return Err(StoreError::Pragma {
            name,
            wanted: value.to_string(),
            got: got.to_string(),
        });
    }
    Ok(())
}

fn set_str(conn: &Connection, name: &'static str, value: &str) -> StoreResult<()> {
    let got: String = conn
        .query_row(&format!("PRAGMA {name} = {value}"), [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite("setting a pragma", e))?;
    if !got.eq_ignore_ascii_case(value) {
        return Err(StoreError::Pragma {
            name,
            wanted: value.to_string(),
            got,
        });
    }
    Ok(())
}

thread_local! {
    static BUSY_SINCE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Longest a writer waits in the busy handler before SQLite returns SQLITE_BUSY
/// to the caller (the writer thread then backs off and retries; callers never see it).
pub const BUSY_WAIT_MAX: Duration = Duration::from_secs(2);

/// Sleeps taken in the busy handler by this process so far (every writing connection): the
/// time a writer spent waiting for another process's write lock is about this many times
/// the sleep (benches report it per commit).
static BUSY_SLEEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Busy-handler sleeps of this process so far: how often a writer waited [`BUSY_SLEEP`] for
/// another process's write lock.
pub fn busy_sleeps() -> u64 {
    BUSY_SLEEPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The one sleep of the busy handler.
pub const BUSY_SLEEP: Duration = Duration::from_micros(200);

fn short_sleep_busy_handler(count: i32) -> bool {
    // SQLite's stock handler sleeps up to 100 ms at a time, so a waiting writer can
    // starve while another process commits between its sleeps. Sleep 0.2 ms instead.
    let now = std::time::Instant::now();
    let since = BUSY_SINCE.with(|c| {
        if count == 0 || c.get().is_none() {
            c.set(Some(now));
        }
        c.get().unwrap_or(now)
    });
    if now.duration_since(since) >= BUSY_WAIT_MAX {
        BUSY_SINCE.with(|c| c.set(None));
        return false;
    }
    // A constant short sleep: a waiter that backs off to longer sleeps keeps losing the
    // lock to a busy writer that re-takes it right after each COMMIT (measured: worst
    // wait 107-117 ms and p99 53-62 ms with 1 ms sleeps after 20 tries; p99 24-25 ms with
    // 0.2 ms sleeps; 3 processes, `waymark bench --quick --only F`).
    BUSY_SLEEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(BUSY_SLEEP);
    true
}

/// Replace the busy timeout on a writing connection by a short-sleep busy handler.
pub fn install_busy_handler(conn: &mut Connection) -> StoreResult<()> {
    conn.busy_handler(Some(short_sleep_busy_handler))
        .map_err(|e| StoreError::sqlite("installing the busy handler", e))
}
