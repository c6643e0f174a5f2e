//! Control of running runs: cancellation and deadline flags, the admission of a claimed
//! run, and the poller that notices cancels, deadlines, unknown versions and due schedules.
//! (The `Engine` calls that request them are in `admin`.)
//!
//! Invariants:
//! - Every run this engine executes has a stop flag here (the `Ctx::cancel` flag handed to
//!   executors). It is set when the database says `cancel_requested` (polled every
//!   `poll_interval`, and at once for a local `Engine::cancel`) or the run's deadline passed.
//! - A claimed run that is already cancelled or past its deadline is ended before any of its
//!   user code runs (`Control::admit`); a flagged run ends at its next step boundary.
//!   Either way the ending write is fenced: a run reclaimed by another engine is left alone.
//! - Nothing is held only in memory: the flag mirrors `cancel_requested` / `deadline_at`.
//!   The flag is only the fast path: the store's parking transitions read
//!   `cancel_requested` themselves, and a sweep (every [`CANCEL_SWEEP_INTERVAL`]) cancels
//!   parked runs whose request was never carried out.

use crate::engine::worker::Ending;
use crate::engine::Inner;
use crate::store::{Claimed, Fence, StoreError};
use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WHY_NONE: u8 = 0;
pub(crate) const WHY_CANCEL: u8 = 1;
const WHY_DEADLINE: u8 = 2;
/// Stopped because the lease of the claiming incarnation lapsed: not a cancel.
const WHY_LAPSE: u8 = 3;

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
pub struct Control {
    runs: Mutex<HashMap<(i64, i64), Arc<RunFlags>>>,
}

/// Held by the worker while it executes a run; unregisters this execution's flag on drop.
#[derive(Debug)]
pub struct RunGuard<'a> {
    control: &'a Control,
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
        let mut runs = self.control.runs.lock();
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

impl Control {
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
    pub(crate) fn flag_all(&self, run_id: i64, why: u8) {
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
        // The claim read the flag in its own transaction; a cancel requested since is
        // flagged by the poller (`running_cancel_requests`) like any cancel of a running run.
        let now = inner.clock.now_ms();
        let stop = if claimed.cancel_requested {
            Some(WHY_CANCEL)
        } else if claimed.deadline_at.is_some_and(|d| d <= now) {
            Some(WHY_DEADLINE)
        } else {
            None
        };
        if let Some(why) = stop {
            finish(inner, fence, stop_ending(why, fence, claimed.deadline_at));
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
            control: self,
            key,
            flags,
        })
    }

    /// How a run whose stop flag interrupted it ends. Only a cancel or a passed deadline
    /// ends it: a flag raised without a reason (the end of the shutdown grace) or for a
    /// lapsed lease hands the run back (fenced release), as `Ctx` does when it sees the
    /// shutdown or the lapse first; no cancel was requested, so it must not end `cancelled`.
    pub(crate) fn stopped(&self, guard: &RunGuard<'_>, fence: &Fence) -> Ending {
        match guard.flags.why.load(Ordering::SeqCst) {
            why @ (WHY_CANCEL | WHY_DEADLINE) => stop_ending(why, fence, guard.flags.deadline_at),
            _ => {
                log::warn!(
                    "run {}: stopped without a cancel or deadline (shutdown or lapsed lease); releasing it",
                    fence.run_id
                );
                Ending::Release
            }
        }
    }
}

fn stop_ending(why: u8, fence: &Fence, deadline_at: Option<i64>) -> Ending {
    if why == WHY_DEADLINE {
        let error = format!(
            "run {} passed its deadline (deadline_at {} ms) before it finished",
            fence.run_id,
            deadline_at.unwrap_or_default()
        );
        log::warn!("{error}");
        Ending::Fail(error)
    } else {
        log::info!("run {} cancelled", fence.run_id);
        Ending::Cancelled("cancelled".into())
    }
}

fn finish(inner: &Inner, fence: &Fence, ending: Ending) {
    match inner.store.finish(fence, Vec::new(), ending, None) {
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
    let ids = inner.store.parked_cancel_requests(CANCEL_SWEEP_RUNS_MAX)?;
    if ids.is_empty() {
        return Ok(());
    }
    log::warn!(
        "{} parked runs had a cancel requested but were not cancelled; cancelling them",
        ids.len()
    );
    for run_id in ids {
        match inner.store.cancel(run_id) {
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
    let cancelled = inner.store.running_cancel_requests(&inner.owner())?;
    for (id, epoch) in cancelled {
        inner.control.flag(id, epoch, WHY_CANCEL);
    }
    for f in inner.control.runs.lock().values() {
        if f.deadline_at.is_some_and(|d| d <= now) {
            f.raise(WHY_DEADLINE);
        }
    }
    crate::engine::schedule::fire_due(inner)?;
    if expire {
        // Read first: an idle engine should not open a write transaction every second.
        let names_json = known_names_json(&inner.workflows_json);
        let unknown_version =
            inner
                .store
                .pending_unknown_versions(now, &names_json, &inner.workflows_json)?;
        let expired = inner.store.deadlines_passed(now)?;
        if unknown_version {
            let n = inner.store.park_unknown_versions(
                &names_json.into(),
                &inner.workflows_json,
                1000,
            )?;
            if n > 0 {
                log::warn!(
                    "{n} runs parked as blocked_version: this build lacks their workflow version"
                );
                inner.notify_finished();
            }
        }
        if expired {
            let n = inner.store.expire_deadlines(1000)?;
            if n > 0 {
                log::warn!("{n} runs failed: their deadline passed before they finished");
                inner.notify_finished();
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
pub fn control_loop(inner: &Inner, stop: Receiver<()>) {
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
