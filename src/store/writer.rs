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
//!   process holds the write lock. A bounded caller ([`Writer::call_within`]) gives up after
//!   its wait with [`StoreError::Locked`], and its command is then never applied (a command
//!   is either taken by the writer inside its transaction or abandoned by its caller, never
//!   both: one atomic state per command).
//! - The connection is never used for a new batch while it is inside a transaction: if COMMIT
//!   and then ROLLBACK both fail, it is closed (SQLite rolls the transaction back) and a
//!   fresh one is opened, so a later COMMIT cannot commit what was reported failed.

use super::error::{StoreError, StoreResult};
use super::reply::{oneshot, RecvTimeoutError};
use super::write::{apply, Done, Op};
use crate::clock::Clock;
use crate::fault;
use crossbeam_channel::{bounded, Receiver, Sender};
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most commands applied in one transaction.
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Longest the writer waits to gather a batch under load (never for a lone caller).
pub const GATHER_MAX: Duration = Duration::from_micros(200);
/// Commands that may wait for the writer before callers block.
pub const QUEUE_COMMANDS_MAX: usize = 4096;

type Reply = super::reply::Sender<StoreResult<Done>>;

/// Opens a fresh writing connection (same file, same pragmas) when the current one cannot
/// be trusted any more.
pub type Reopen = Box<dyn Fn() -> StoreResult<Connection> + Send>;

/// States of a bounded command: queued, taken by the writer, abandoned by its caller.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// One queued command. `claim` is set for bounded callers (see [`Writer::call_within`]).
#[derive(Debug)]
struct Cmd {
    op: Op,
    reply: Reply,
    claim: Option<Arc<AtomicU8>>,
}

impl Cmd {
    /// The writer takes the command: false if its caller already gave up on it.
    fn take(&self) -> bool {
        self.claim.as_ref().is_none_or(|c| {
            c.compare_exchange(QUEUED, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
    }

    fn abandoned(&self) -> bool {
        self.claim
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst) == ABANDONED)
    }
}

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
    tx: Sender<Cmd>,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Start the writer thread on `conn`.
    pub fn start(
        conn: Connection,
        clock: Arc<dyn Clock>,
        reopen: Reopen,
    ) -> StoreResult<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = bounded::<Cmd>(QUEUE_COMMANDS_MAX);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("waymark-writer".into())
            .spawn(move || run(conn, rx, clock, &thread_stats, reopen))
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

    /// Apply `op` and wait until it committed (or failed), however long another process
    /// holds the write lock (the engine's own threads; their leases self-fence).
    pub fn call(&self, op: Op) -> StoreResult<Done> {
        let (reply_tx, reply_rx) = oneshot();
        self.tx
            .send(Cmd {
                op,
                reply: reply_tx,
                claim: None,
            })
            .map_err(|_| StoreError::WriterStopped)?;
        reply_rx.recv().map_err(|_| StoreError::WriterStopped)?
    }

    /// [`Writer::call`] for API callers: if the writer has not taken `op` into a
    /// transaction within `wait` (another process holds the write lock), give up with
    /// [`StoreError::Locked`]; the command is then never applied. Once taken, the answer
    /// (after COMMIT) is awaited: the lock is ours by then.
    pub fn call_within(&self, op: Op, wait: Duration) -> StoreResult<Done> {
        let started = Instant::now();
        let (reply_tx, reply_rx) = oneshot();
        let claim = Arc::new(AtomicU8::new(QUEUED));
        self.tx
            .send_timeout(
                Cmd {
                    op,
                    reply: reply_tx,
                    claim: Some(claim.clone()),
                },
                wait,
            )
            .map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => {
                    StoreError::Locked { waited: wait }
                }
                crossbeam_channel::SendTimeoutError::Disconnected(_) => StoreError::WriterStopped,
            })?;
        let left = wait.saturating_sub(started.elapsed());
        match reply_rx.recv_timeout(left) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Closed) => Err(StoreError::WriterStopped),
            Err(RecvTimeoutError::Timeout) => {
                if claim
                    .compare_exchange(QUEUED, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Err(StoreError::Locked {
                        waited: started.elapsed(),
                    });
                }
                // Taken: the writer holds the lock and answers after its COMMIT.
                reply_rx.recv().map_err(|_| StoreError::WriterStopped)?
            }
        }
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
    rx: Receiver<Cmd>,
    clock: Arc<dyn Clock>,
    stats: &WriterStats,
    reopen: Reopen,
) {
    let mut batch: Vec<Cmd> = Vec::with_capacity(BATCH_COMMANDS_MAX);
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
        if !conn.is_autocommit() {
            // Left inside a transaction (COMMIT and ROLLBACK both failed): never reuse it.
            match fresh_connection(conn, &reopen) {
                Ok(c) => conn = c,
                Err(failed) => {
                    let (old, e) = *failed;
                    conn = old;
                    log::error!("cannot reopen the database after a failed rollback: {e}");
                    for cmd in batch.drain(..) {
                        if cmd.take() {
                            cmd.reply.send(Err(StoreError::sqlite(
                                "reopening the database after a failed rollback",
                                rusqlite::Error::SqliteFailure(
                                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                                    Some(e.to_string()),
                                ),
                            )));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        commit_batch(&mut conn, &mut batch, &*clock);
        if !conn.is_autocommit() {
            // COMMIT and ROLLBACK both failed: the connection still holds the write lock.
            // Close it now, not at the next command, so other processes are not locked out
            // while this engine is idle (the check above retries if this fails).
            conn = match fresh_connection(conn, &reopen) {
                Ok(c) => c,
                Err(failed) => {
                    let (old, e) = *failed;
                    log::error!("cannot reopen the database after a failed rollback: {e}");
                    old
                }
            };
        }
        commit_ewma = (commit_ewma * 7 + started.elapsed()) / 8;
        batches += 1;
        if batches.is_multiple_of(WAL_CHECK_BATCHES) {
            bound_wal(&conn);
        }
    }
    log::debug!("writer thread stopping: all handles dropped");
}

/// Close `old` (SQLite rolls back its open transaction) and open a fresh connection.
/// On failure the old connection is handed back, still not to be used for a batch.
fn fresh_connection(
    old: Connection,
    reopen: &Reopen,
) -> Result<Connection, Box<(Connection, StoreError)>> {
    log::error!("the writing connection is stuck inside a failed transaction: reopening it");
    match old.close() {
        Ok(()) => {}
        Err((old, e)) => {
            return Err(Box::new((
                old,
                StoreError::sqlite("closing a stuck connection", e),
            )));
        }
    }
    loop {
        match reopen() {
            Ok(c) => return Ok(c),
            Err(e) => {
                // No connection at all: keep trying (callers wait; nothing is acknowledged).
                log::error!("reopening the database failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Begin the batch's transaction, waiting out other processes' write locks. Returns false
/// (nothing to do) once every command of the batch was abandoned by its bounded caller.
fn begin_immediate(conn: &Connection, batch: &[Cmd]) -> bool {
    let mut backoff = Duration::from_millis(5);
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return true,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                if batch.iter().all(Cmd::abandoned) {
                    return false;
                }
                log::warn!("database is busy (another process holds the write lock); retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                // Not a lock conflict: the transaction could not start. Let the
                // statements report it (they run in autocommit and fail the same way).
                log::error!("BEGIN IMMEDIATE failed: {e}");
                return true;
            }
        }
    }
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<Cmd>, clock: &dyn Clock) {
    if !begin_immediate(conn, batch) {
        batch.clear();
        return;
    }
    let in_tx = !conn.is_autocommit();
    let now = clock.now_ms();
    let mut results: Vec<(StoreResult<Done>, Reply)> = Vec::with_capacity(batch.len());
    for cmd in batch.drain(..) {
        if !cmd.take() {
            continue; // its caller gave up waiting (StoreError::Locked): never applied
        }
        let Cmd { op, reply, .. } = cmd;
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
        let claimed = results
            .iter()
            .any(|(r, _)| matches!(r, Ok(Done::Claimed(c)) if !c.is_empty()));
        let simulated = claimed && fault::fails(fault::Point::CommitClaim);
        let committed = if simulated {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("fault injection: COMMIT failed".into()),
            ))
        } else {
            conn.execute_batch("COMMIT")
        };
        if let Err(e) = committed {
            let err_text = e.to_string();
            if !simulated {
                let _ = conn.execute_batch("ROLLBACK");
            }
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
        reply.send(result);
    }
}

/// Run a statement without parameters through the statement cache: the savepoint
/// statements run twice per command, and parsing them each time cost the writer thread
/// more than the commands' own SQL (profile of `bench --only W2`).
pub(crate) fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn apply_in_savepoint(conn: &Connection, op: Op, now: i64) -> StoreResult<Done> {
    if conn.is_autocommit() {
        // SQLite rolled the whole transaction back (disk full, I/O error): applying more
        // commands now would commit each on its own. Refuse; COMMIT will report the cause.
        return Err(StoreError::DiskFull {
            detail: "transaction aborted by an earlier error in its batch".into(),
        });
    }
    cached(conn, "SAVEPOINT cmd").map_err(|e| StoreError::sqlite("opening a savepoint", e))?;
    let result = apply(conn, op, now);
    let end = if result.is_ok() {
        cached(conn, "RELEASE cmd")
    } else {
        cached(conn, "ROLLBACK TO cmd").and_then(|()| cached(conn, "RELEASE cmd"))
    };
    match (result, end) {
        (Ok(done), Ok(())) => Ok(done),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(StoreError::sqlite("releasing a savepoint", e)),
    }
}
