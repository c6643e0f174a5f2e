//! Engine side of the durable features: cancellation and deadlines of running runs, the
//! poller that notices them, and the `Engine` calls `send_event`, `cancel`, `purge`.
//!
//! Invariants:
//! - Every run this engine executes has a stop flag here (the `Ctx::cancel` flag handed to
//!   executors). It is set when the database says `cancel_requested` (polled every
//!   `poll_interval`, and at once for a local `Engine::cancel`) or the run's deadline passed.
//! - A claimed run that is already cancelled or past its deadline is ended before any of its
//!   user code runs (`Features::admit`); a flagged run ends at its next step boundary.
//!   Either way the ending write is fenced: a run reclaimed by another engine is left alone.
//! - Nothing is held only in memory: the flag mirrors `cancel_requested` / `deadline_at`.
//!   The flag is only the fast path: the store's parking transitions read
//!   `cancel_requested` themselves, and a sweep (every [`CANCEL_SWEEP_INTERVAL`]) cancels
//!   parked runs whose request was never carried out.

use crate::engine::{Engine, Inner};
use crate::error::Error;
use crate::store::{Claimed, Done, Fence, Op, StoreError};
use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use rusqlite::params;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WHY_NONE: u8 = 0;
const WHY_CANCEL: u8 = 1;
const WHY_DEADLINE: u8 = 2;
/// Stopped because the lease of the claiming incarnation lapsed: not a cancel.
const WHY_LAPSE: u8 = 3;

/// Runs deleted per purge command (bounded so the writer is never held long).
pub const PURGE_BATCH_RUNS: i64 = 256;
/// Pages returned to the file system per vacuum command.
pub const VACUUM_BATCH_PAGES: i64 = 2048;
/// How often the poller sweeps for parked runs whose cancel was requested but not carried
/// out (a backstop: every transition that parks a run already honours the request).
pub const CANCEL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Runs the sweep cancels per pass (each is one `Cancel` command).
pub const CANCEL_SWEEP_RUNS_MAX: i64 = 256;

#[derive(Debug)]
struct RunFlags {
    stop: Arc<AtomicBool>,
    why: AtomicU8,
    deadline_at: Option<i64>,
    /// The incarnation that claimed the run (its fence owner).
    owner: Arc<str>,
}

/// Stop flags of the runs this engine executes, keyed by `(run id, epoch)`: one engine can
/// hold a stale execution of a run (its step still running after the run was reclaimed) and
/// a fresh one (claimed again at a higher epoch). Each has its own flag, and the stale one's
/// end removes only its own.
#[derive(Debug, Default)]
pub struct Features {
    runs: Mutex<HashMap<(i64, i64), Arc<RunFlags>>>,
}

/// Held by the worker while it executes a run; unregisters this execution's flag on drop.
#[derive(Debug)]
pub struct RunGuard<'a> {
    features: &'a Features,
    key: (i64, i64),
    flags: Arc<RunFlags>,
}

impl RunGuard<'_> {
    /// The flag the `Ctx` and executors watch.
    pub fn cancel(&self) -> Arc<AtomicBool> {
        self.flags.stop.clone()
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        let mut runs = self.features.runs.lock();
        if runs
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flags))
        {
            runs.remove(&self.key);
        }
    }
}

impl RunFlags {
    fn raise(&self, why: u8) {
        let _ = self
            .why
            .compare_exchange(WHY_NONE, why, Ordering::SeqCst, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Features {
    /// Raise the stop flag of every run this engine executes, without a reason: the end of
    /// the shutdown grace (executors kill child steps; `Ctx` sees the shutdown first and
    /// releases the runs instead of ending them).
    pub(crate) fn stop_all(&self) {
        for f in self.runs.lock().values() {
            f.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Raise the stop flag, without a reason, of every execution whose claiming incarnation
    /// may no longer act (`lease.valid_for` is false: its lease lapsed or was revoked).
    /// Executors then kill child steps at once instead of letting them run on while another
    /// engine may reclaim the run; `Ctx` sees the lapsed lease first and writes nothing but
    /// a fenced release. An in-process step cannot be stopped this way (it returns when it
    /// returns), which is the documented in-process exception.
    pub(crate) fn stop_lapsed(&self, lease: &crate::engine::lease::LeaseGuard) -> usize {
        let mut n = 0;
        for f in self.runs.lock().values() {
            if !lease.valid_for(&f.owner) && !f.stop.load(Ordering::SeqCst) {
                f.raise(WHY_LAPSE);
                n += 1;
            }
        }
        n
    }

    /// Was the execution of `run_id` at `epoch` stopped because its lease lapsed (rather
    /// than cancelled or past its deadline)?
    pub(crate) fn lapsed(&self, run_id: i64, epoch: i64) -> bool {
        self.runs
            .lock()
            .get(&(run_id, epoch))
            .is_some_and(|f| f.why.load(Ordering::SeqCst) == WHY_LAPSE)
    }

    /// Raise the stop flag of the execution of `run_id` at `epoch`.
    fn flag(&self, run_id: i64, epoch: i64, why: u8) {
        if let Some(f) = self.runs.lock().get(&(run_id, epoch)) {
            f.raise(why);
        }
    }

    /// Raise the stop flag of every execution of `run_id` here (a local cancel: whatever
    /// epoch each runs at, nothing of the run may continue).
    fn flag_all(&self, run_id: i64, why: u8) {
        for (_, f) in self.runs.lock().iter().filter(|(k, _)| k.0 == run_id) {
            f.raise(why);
        }
    }

    /// Register a just-claimed run. Returns `None` after ending it (fenced) if it was
    /// cancelled or its deadline passed before any of its code ran.
    pub(crate) fn admit<'a>(
        &'a self,
        inner: &Inner,
        claimed: &Claimed,
        fence: &Fence,
    ) -> Option<RunGuard<'a>> {
        let cancel_requested = inner.store.read(|c| {
            c.prepare_cached("SELECT cancel_requested FROM runs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![claimed.run_id], |r| r.get::<_, i64>(0)))
                .map_err(|e| StoreError::sqlite("reading cancel_requested", e))
        });
        let now = inner.clock.now_ms();
        let stop = match cancel_requested {
            Ok(1) => Some(WHY_CANCEL),
            Ok(_) if claimed.deadline_at.is_some_and(|d| d <= now) => Some(WHY_DEADLINE),
            Ok(_) => None,
            Err(e) => {
                log::error!("run {}: {e}; releasing it", claimed.run_id);
                finish(
                    inner,
                    Op::Release {
                        fence: fence.clone(),
                    },
                );
                return None;
            }
        };
        if let Some(why) = stop {
            finish(inner, stop_op(why, fence.clone(), claimed.deadline_at));
            return None;
        }
        let flags = Arc::new(RunFlags {
            stop: Arc::new(AtomicBool::new(false)),
            why: AtomicU8::new(WHY_NONE),
            deadline_at: claimed.deadline_at,
            owner: fence.owner.clone(),
        });
        let key = (claimed.run_id, claimed.epoch);
        self.runs.lock().insert(key, flags.clone());
        Some(RunGuard {
            features: self,
            key,
            flags,
        })
    }

    /// The command that ends a run whose stop flag interrupted it.
    pub(crate) fn stopped_op(&self, guard: &RunGuard<'_>, fence: Fence) -> Op {
        stop_op(
            guard.flags.why.load(Ordering::SeqCst),
            fence,
            guard.flags.deadline_at,
        )
    }
}

fn stop_op(why: u8, fence: Fence, deadline_at: Option<i64>) -> Op {
    if why == WHY_DEADLINE {
        let error = format!(
            "run {} passed its deadline (deadline_at {} ms) before it finished",
            fence.run_id,
            deadline_at.unwrap_or_default()
        );
        log::warn!("{error}");
        Op::Fail { fence, error }
    } else {
        log::info!("run {} cancelled", fence.run_id);
        Op::FinishCancelled {
            fence,
            reason: "cancelled".into(),
        }
    }
}

fn finish(inner: &Inner, op: Op) {
    match inner.store.call(op) {
        Ok(_) | Err(StoreError::LeaseLost { .. }) => {}
        Err(e) => {
            log::error!("recording a cancellation or deadline failed: {e}");
            inner.note_store_error(&e);
        }
    }
    inner.notify_finished();
}

/// The backstop of cancellation: finish runs that are parked (`suspended`, `blocked`,
/// `blocked_version`) with `cancel_requested = 1`. Every transition that parks a running run
/// ends it `cancelled` instead when the flag is set, so this finds only what an older build
/// (or a path that forgot the flag) left behind. Pending runs are left to the claim, whose
/// admission ends them cancelled before any of their code runs. Read first: an idle engine
/// writes nothing.
fn sweep_cancel_requests(inner: &Inner) -> Result<(), StoreError> {
    let ids: Vec<i64> = inner.store.read(|c| {
        c.prepare_cached(
            "SELECT id FROM runs WHERE status IN ('suspended', 'blocked', 'blocked_version')
               AND cancel_requested = 1 LIMIT ?1",
        )
        .and_then(|mut s| {
            s.query_map(params![CANCEL_SWEEP_RUNS_MAX], |r| r.get(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(|e| StoreError::sqlite("looking for unfinished cancellations", e))
    })?;
    if ids.is_empty() {
        return Ok(());
    }
    log::warn!(
        "{} parked runs had a cancel requested but were not cancelled; cancelling them",
        ids.len()
    );
    for run_id in ids {
        match inner.store.call(Op::Cancel { run_id }) {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    inner.notify_finished();
    Ok(())
}

/// One pass of the poller: flag runs cancelled in the database or past their deadline, and
/// fail pending or suspended runs past their deadline.
fn poll(inner: &Inner, expire: bool) -> Result<(), StoreError> {
    let now = inner.clock.now_ms();
    let cancelled: Vec<(i64, i64)> = inner.store.read(|c| {
        c.prepare_cached(
            "SELECT id, epoch FROM runs WHERE owner = ?1 AND status = 'running' AND cancel_requested = 1",
        )
        .and_then(|mut s| {
            s.query_map(params![&*inner.owner()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .map_err(|e| StoreError::sqlite("reading cancellation requests", e))
    })?;
    for (id, epoch) in cancelled {
        inner.features.flag(id, epoch, WHY_CANCEL);
    }
    for f in inner.features.runs.lock().values() {
        if f.deadline_at.is_some_and(|d| d <= now) {
            f.raise(WHY_DEADLINE);
        }
    }
    crate::engine::schedule::fire_due(inner)?;
    if expire {
        // Read first: an idle engine should not open a write transaction every second.
        let names_json = known_names_json(&inner.workflows_json);
        let (unknown_version, expired) = inner.store.read(|c| {
            let unknown: bool = c
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'pending' AND ready_at <= ?1
                       AND workflow IN (SELECT value FROM json_each(?2))
                       AND (workflow || '@' || version) NOT IN (SELECT value FROM json_each(?3)))",
                )
                .and_then(|mut s| {
                    s.query_row(params![now, names_json, &*inner.workflows_json], |r| r.get(0))
                })
                .map_err(|e| StoreError::sqlite("looking for unknown versions", e))?;
            let expired: bool = c
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM runs WHERE deadline_at <= ?1 AND finished_at IS NULL
                       AND status IN ('pending', 'suspended'))",
                )
                .and_then(|mut s| s.query_row(params![now], |r| r.get(0)))
                .map_err(|e| StoreError::sqlite("looking for expired deadlines", e))?;
            Ok((unknown, expired))
        })?;
        if unknown_version {
            if let Done::Count(n) = inner.store.call(Op::ParkUnknownVersions {
                names_json: names_json.into(),
                workflows_json: inner.workflows_json.clone(),
                limit: 1000,
            })? {
                if n > 0 {
                    log::warn!(
                        "{n} runs parked as blocked_version: this build lacks their workflow version"
                    );
                    inner.notify_finished();
                }
            }
        }
        if expired {
            if let Done::Count(n) = inner.store.call(Op::ExpireDeadlines { limit: 1000 })? {
                if n > 0 {
                    log::warn!("{n} runs failed: their deadline passed before they finished");
                    inner.notify_finished();
                }
            }
        }
    }
    Ok(())
}

/// Workflow names (without versions) from the registry's `name@version` JSON array.
fn known_names_json(workflows_json: &str) -> String {
    let keys: Vec<String> = serde_json::from_str(workflows_json).unwrap_or_default();
    let mut names: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.rsplit_once('@').map(|(n, _)| n))
        .collect();
    names.sort_unstable();
    names.dedup();
    serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
}

/// Poll for cancellations, deadlines and unknown versions until `stop` closes.
pub fn features_loop(inner: &Inner, stop: Receiver<()>) {
    let mut last_expire = Instant::now() - Duration::from_secs(60);
    let mut last_sweep: Option<Instant> = None;
    loop {
        let expire = last_expire.elapsed() >= Duration::from_secs(1);
        if expire {
            last_expire = Instant::now();
        }
        if let Err(e) = poll(inner, expire) {
            log::error!("feature poller: {e}");
            inner.note_store_error(&e);
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= CANCEL_SWEEP_INTERVAL) {
            last_sweep = Some(Instant::now());
            if let Err(e) = sweep_cancel_requests(inner) {
                log::error!("feature poller: {e}");
                inner.note_store_error(&e);
            }
        }
        match stop.recv_timeout(inner.config.poll_interval.max(Duration::from_millis(20))) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

impl Engine {
    /// Send the event `name` with `payload` (as JSON) to a run. Kept until the run waits for
    /// it ([`crate::Ctx::wait_event`]); a run suspended waiting for it is woken at once.
    /// Returns the event id. A finished run refuses events.
    pub fn send_event<T: Serialize>(
        &self,
        run_id: i64,
        name: &str,
        payload: &T,
    ) -> Result<i64, Error> {
        let payload = serde_json::to_vec(payload).map_err(|e| {
            Error::Config(format!(
                "event '{name}' payload does not encode as JSON: {e}"
            ))
        })?;
        send_event_bytes(
            &self.inner.api,
            run_id,
            name,
            payload,
            self.inner.config.payload_bytes_max,
        )
        .inspect(|_| self.inner.wake_dispatcher())
    }

    /// Cancel a run and its descendants. A pending, suspended or blocked run ends
    /// `cancelled` at once; a running one is told (its steps see the flag, a child process
    /// is killed) and ends `cancelled` at its next step boundary. Nothing of it runs again.
    /// Returns the run's status after the request.
    pub fn cancel(&self, run_id: i64) -> Result<String, Error> {
        let status = match self.inner.api.call(Op::Cancel { run_id })? {
            Done::Cancel { status } => status,
            other => return Err(Error::Config(format!("unexpected writer answer {other:?}"))),
        };
        self.inner.features.flag_all(run_id, WHY_CANCEL);
        self.inner.notify_finished();
        Ok(status)
    }

    /// Limit queue `queue` to `concurrency` runs running at once across every engine
    /// sharing the file (`None` removes the limit). Runs choose a queue with
    /// [`crate::StartOptions::queue`].
    pub fn set_queue_limit(&self, queue: &str, concurrency: Option<u32>) -> Result<(), Error> {
        self.inner.api.call(Op::SetQueueLimit {
            queue: queue.to_string(),
            concurrency: concurrency.map(i64::from),
        })?;
        self.inner.wake_dispatcher();
        Ok(())
    }

    /// Delete runs that finished more than `older_than` ago, with their journals, attempts
    /// and events, in bounded batches, then return free pages to the file system.
    /// Returns the number of runs deleted.
    pub fn purge(&self, older_than: Duration) -> Result<u64, Error> {
        let before = self.inner.clock.now_ms()
            - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
        Ok(purge(&self.inner.api, before)?)
    }
}

/// Encode-checked event delivery shared by the engine and the CLI: `payload` is JSON, stored
/// sealed (`codec::seal`).
pub fn send_event_bytes(
    store: &crate::store::Store,
    run_id: i64,
    name: &str,
    payload: Vec<u8>,
    payload_max: u64,
) -> Result<i64, Error> {
    if payload.len() as u64 > payload_max {
        return Err(Error::Config(format!(
            "event '{name}' payload is {} bytes, over the limit of {payload_max}",
            payload.len()
        )));
    }
    match store.call(Op::SendEvent {
        run_id,
        name: name.to_string(),
        payload: crate::codec::seal(crate::codec::Format::Json, &payload),
    })? {
        Done::Sent { event_id, .. } => Ok(event_id),
        other => Err(Error::Config(format!("unexpected writer answer {other:?}"))),
    }
}

/// Purge runs finished before `before` (ms) in batches of [`PURGE_BATCH_RUNS`], then vacuum
/// incrementally. Each batch is its own writer command, so other writes interleave.
pub fn purge(store: &crate::store::Store, before: i64) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let n = match store.call(Op::Purge {
            before,
            limit: PURGE_BATCH_RUNS,
        })? {
            Done::Count(n) => n as i64,
            _ => 0,
        };
        total += n as u64;
        if n < PURGE_BATCH_RUNS {
            break;
        }
    }
    // Returns the free pages left; stop when none are left or a pass freed nothing.
    let mut left = usize::MAX;
    loop {
        match store.call(Op::IncrementalVacuum {
            pages: VACUUM_BATCH_PAGES,
        })? {
            Done::Count(n) if n > 0 && n < left => left = n,
            _ => break,
        }
    }
    Ok(total)
}
