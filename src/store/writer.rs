//! The writer thread: owns the only writing connection and group-commits.
//!
//! Invariants:
//! - It takes whatever commands are queued (at most [`BATCH_COMMANDS_MAX`]); a lone caller
//!   is never delayed, and under load (previous batch larger than one) it waits at most
//!   [`GATHER_MAX`] (and at most half the recent commit time) for the batch to reach the
//!   previous batch's size. It applies them in
//!   one `BEGIN IMMEDIATE` transaction, a savepoint each, so one failing command does not
//!   sink the others.
//! - A caller is answered only after COMMIT returned; if COMMIT fails, every command of the
//!   batch is answered with that error (nothing is acknowledged that did not commit).
//! - SQLITE_BUSY never reaches a caller: BEGIN is retried with backoff while another
//!   process holds the write lock.

use super::error::{StoreError, StoreResult};
use super::transitions::{apply, Done, Op};
use crate::clock::Clock;
use crate::fault;
use crossbeam_channel::{bounded, Receiver, Sender};
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most commands applied in one transaction.
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Longest the writer waits to gather a batch under load (never for a lone caller).
pub const GATHER_MAX: Duration = Duration::from_micros(200);
/// Commands that may wait for the writer before callers block.
pub const QUEUE_COMMANDS_MAX: usize = 4096;

type Reply = Sender<StoreResult<Done>>;

/// Counters of the writer thread (for benches and diagnostics): transactions committed
/// (or attempted) and commands applied. `commands / batches` is the mean group size.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
}

/// A handle to the writer thread. Cloning shares the thread.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: Sender<(Op, Reply)>,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Start the writer thread on `conn`.
    pub fn start(
        conn: Connection,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = bounded::<(Op, Reply)>(QUEUE_COMMANDS_MAX);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("waymark-writer".into())
            .spawn(move || run(conn, rx, clock, &thread_stats))
            .map_err(|_| StoreError::WriterStopped)?;
        Ok((Writer { tx, stats }, handle))
    }

    /// `(batches, commands)` applied so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.batches.load(Ordering::Relaxed),
            self.stats.commands.load(Ordering::Relaxed),
        )
    }

    /// A handle whose thread is gone: every call fails with `WriterStopped`.
    pub fn disconnected() -> Writer {
        let (tx, _) = bounded(0);
        Writer {
            tx,
            stats: Arc::default(),
        }
    }

    /// Apply `op` and wait until it committed (or failed).
    pub fn call(&self, op: Op) -> StoreResult<Done> {
        let (reply_tx, reply_rx) = bounded(1);
        self.tx
            .send((op, reply_tx))
            .map_err(|_| StoreError::WriterStopped)?;
        reply_rx.recv().map_err(|_| StoreError::WriterStopped)?
    }
}

/// Batches between two looks at the WAL's size.
const WAL_CHECK_BATCHES: u64 = 64;
/// WAL frames (pages, 4 KiB each) above which the writer forces a TRUNCATE checkpoint.
pub const WAL_FRAMES_TRUNCATE: i64 = 2048;

/// `wal_autocheckpoint` is PASSIVE: while other processes keep reading, it cannot reset the
/// WAL and the file grows without bound (measured: 30 MB in 30 s with four engines). Every
/// `WAL_CHECK_BATCHES` batches, if the WAL holds more than `WAL_FRAMES_TRUNCATE` frames, run
/// a TRUNCATE checkpoint: it waits (through the bounded busy handler) for readers to move to
/// the latest snapshot, then resets the WAL to zero bytes. A busy result is only logged.
fn bound_wal(conn: &Connection) {
    let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    match frames {
        Ok(n) if n > WAL_FRAMES_TRUNCATE => {
            match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            }) {
                Ok(0) => log::info!("WAL had {n} frames: truncated by a checkpoint"),
                Ok(_) => {
                    log::info!("WAL has {n} frames: truncating checkpoint was busy, will retry")
                }
                Err(e) => log::warn!("WAL checkpoint failed: {e}"),
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("reading the WAL size failed: {e}"),
    }
}

fn run(
    mut conn: Connection,
    rx: Receiver<(Op, Reply)>,
    clock: Arc<dyn Clock>,
    stats: &WriterStats,
) {
    let mut batch: Vec<(Op, Reply)> = Vec::with_capacity(BATCH_COMMANDS_MAX);
    // Size of the previous batch: the load signal. A lone caller (previous batch of one)
    // is never delayed; under load the writer waits up to GATHER_MAX for as many commands
    // as the previous batch had, since callers answered by the last COMMIT need a moment
    // to send their next command and an fsync costs far more than the wait.
    // The wait is also capped at half the recent commit time, so on a fast disk waiting
    // never costs more than half an fsync.
    let mut last_len = 1usize;
    let mut commit_ewma = GATHER_MAX * 2;
    let mut batches: u64 = 0;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        if last_len > 1 && batch.len() < last_len {
            let deadline = Instant::now() + GATHER_MAX.min(commit_ewma / 2);
            while batch.len() < last_len.min(BATCH_COMMANDS_MAX) {
                match rx.recv_deadline(deadline) {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
        }
        last_len = batch.len();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let started = Instant::now();
        commit_batch(&mut conn, &mut batch, &*clock);
        commit_ewma = (commit_ewma * 7 + started.elapsed()) / 8;
        batches += 1;
        if batches.is_multiple_of(WAL_CHECK_BATCHES) {
            bound_wal(&conn);
        }
    }
    log::debug!("writer thread stopping: all handles dropped");
}

fn begin_immediate(conn: &Connection) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                log::warn!("database is busy (another process holds the write lock); retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                // Not a lock conflict: the transaction could not start. Let the
                // statements report it (they run in autocommit and fail the same way).
                log::error!("BEGIN IMMEDIATE failed: {e}");
                return;
            }
        }
    }
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<(Op, Reply)>, clock: &dyn Clock) {
    begin_immediate(conn);
    let in_tx = !conn.is_autocommit();
    let now = clock.now_ms();
    let mut results: Vec<(StoreResult<Done>, Reply)> = Vec::with_capacity(batch.len());
    for (op, reply) in batch.drain(..) {
        let result = if in_tx {
            apply_in_savepoint(conn, op, now)
        } else {
            Err(StoreError::sqlite(
                "beginning a write transaction",
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some("could not begin a write transaction".into()),
                ),
            ))
        };
        results.push((result, reply));
    }
    if in_tx {
        fault::point(fault::Point::BeforeCommit);
        if let Err(e) = conn.execute_batch("COMMIT") {
            let err_text = e.to_string();
            let _ = conn.execute_batch("ROLLBACK");
            log::error!("COMMIT failed, nothing of this batch is acknowledged: {err_text}");
            let classified = StoreError::sqlite("committing a batch", e);
            for (result, _) in results.iter_mut() {
                *result = Err(match &classified {
                    StoreError::DiskFull { detail } => StoreError::DiskFull {
                        detail: detail.clone(),
                    },
                    _ => StoreError::sqlite(
                        "committing a batch",
                        rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                            Some(err_text.clone()),
                        ),
                    ),
                });
            }
        } else {
            fault::point(fault::Point::AfterCommit);
        }
    }
    for (result, reply) in results {
        let _ = reply.send(result);
    }
}

fn apply_in_savepoint(conn: &Connection, op: Op, now: i64) -> StoreResult<Done> {
    if conn.is_autocommit() {
        // SQLite rolled the whole transaction back (disk full, I/O error): applying more
        // commands now would commit each on its own. Refuse; COMMIT will report the cause.
        return Err(StoreError::DiskFull {
            detail: "transaction aborted by an earlier error in its batch".into(),
        });
    }
    conn.execute_batch("SAVEPOINT cmd")
        .map_err(|e| StoreError::sqlite("opening a savepoint", e))?;
    let result = apply(conn, op, now);
    let end = if result.is_ok() {
        conn.execute_batch("RELEASE cmd")
    } else {
        conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd")
    };
    match (result, end) {
        (Ok(done), Ok(())) => Ok(done),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(StoreError::sqlite("releasing a savepoint", e)),
    }
}
