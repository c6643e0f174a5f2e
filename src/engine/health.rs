//! Storage health: what the engine does after a write failed for lack of storage (disk full,
//! read-only file, I/O error), and how it comes back.
//!
//! Policy:
//! - On the first such failure the engine stops claiming and stops renewing its leases
//!   (`Inner::storage_failed`), so its runs pass to other engines after one TTL instead of
//!   staying held by an engine that cannot write; its lease guard lapses, so its workers
//!   abandon their runs at their next write.
//! - Meanwhile the heartbeat thread probes with a small write (`Storage::probe`, which renews
//!   nothing), with backoff from [`PROBE_BACKOFF_INITIAL`] to [`PROBE_BACKOFF_MAX`], once no
//!   worker holds a run any more.
//! - A probe that commits means the storage is back: the engine hands back (fenced release)
//!   every run still recorded as its own, which no worker executes any more, then claims and
//!   renews again. Nothing is restarted.
//! - Persistent failure: at least `Config::storage_failures_max` consecutive failed writes
//!   spanning at least `Config::storage_failure_stop_after`. The engine then stops for good
//!   (no more probes; it stays inert until restarted) and says so in the log once.

use crate::engine::Inner;
use crate::store::{Fence, StoreError};
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// First wait between a storage failure and the first probe.
pub const PROBE_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest wait between two probes.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    /// When the current failure episode began (`None`: healthy).
    since: Option<Instant>,
    /// Consecutive failed writes in this episode.
    failures: u32,
    backoff: Duration,
    next_probe: Option<Instant>,
    /// Persistent failure declared: the engine stays inert until restarted.
    stopped: bool,
}

/// The engine's storage health (see the module docs).
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

impl Health {
    /// Record a failed write. Returns nothing; sets `inner.storage_failed` on the first one.
    pub(crate) fn failed(&self, inner: &Inner, e: &StoreError) {
        if !e.is_storage_failure() {
            return;
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        if !inner.storage_failed.swap(true, Ordering::SeqCst) || st.since.is_none() {
            log::error!(
                "storage failure, this engine stops claiming new runs and retries with backoff until a write succeeds: {e}"
            );
            *st = State {
                since: Some(now),
                failures: 1,
                backoff: PROBE_BACKOFF_INITIAL,
                next_probe: Some(now + PROBE_BACKOFF_INITIAL),
                stopped: st.stopped,
            };
            return;
        }
        st.failures = st.failures.saturating_add(1);
        let since = st.since.unwrap_or(now);
        if !st.stopped
            && st.failures >= inner.config.storage_failures_max
            && now.duration_since(since) >= inner.config.storage_failure_stop_after
        {
            st.stopped = true;
            log::error!(
                "storage failed persistently ({} consecutive failed writes over {:?}); this engine stops for good: restart it once the storage is fixed. Last error: {e}",
                st.failures,
                now.duration_since(since)
            );
        }
    }

    /// Called by the heartbeat thread while `storage_failed` is set: probe (with backoff)
    /// and, if the storage accepts writes again, hand back our orphaned runs and clear
    /// `storage_failed`. Returns true if the engine is healthy again.
    pub(crate) fn try_recover(&self, inner: &Inner) -> bool {
        {
            let st = self.state.lock();
            if st.stopped || st.next_probe.is_some_and(|t| Instant::now() < t) {
                return false;
            }
        }
        // Workers still executing runs abandon them once the lease guard lapses (no
        // renewals now); wait for them, so no worker acts on a run we hand back below.
        if inner.in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let owner = inner.owner();
        if let Err(e) = inner.store.probe(&owner) {
            self.probe_failed(inner, &e);
            return false;
        }
        // Runs still recorded as ours: their workers gave them up while writes failed (a
        // release that failed too). No worker runs them (in_flight is 0 and the dispatcher
        // does not claim meanwhile): hand them back, fenced, before renewing leases again.
        let runs = match inner.store.runs_of_owner(&owner) {
            Ok(runs) => runs,
            Err(e) => {
                self.probe_failed(inner, &e);
                return false;
            }
        };
        for (run_id, epoch) in runs {
            let fence = Fence {
                run_id,
                owner: owner.clone(),
                epoch,
            };
            match inner.store.release(&fence) {
                Ok(_) | Err(StoreError::LeaseLost { .. }) => {}
                Err(e) => {
                    self.probe_failed(inner, &e);
                    return false;
                }
            }
            log::warn!("run {run_id}: handed back after the storage failure");
        }
        let mut st = self.state.lock();
        let (failures, since) = (st.failures, st.since);
        *st = State::default();
        inner.storage_failed.store(false, Ordering::SeqCst);
        log::warn!(
            "storage accepts writes again after {failures} failed writes over {:?}: this engine claims new runs again",
            since.map(|s| s.elapsed()).unwrap_or_default()
        );
        inner.wake_dispatcher();
        true
    }

    fn probe_failed(&self, inner: &Inner, e: &StoreError) {
        log::debug!("storage probe failed: {e}");
        self.failed(inner, e);
        let mut st = self.state.lock();
        st.backoff = (st.backoff * 2).clamp(PROBE_BACKOFF_INITIAL, PROBE_BACKOFF_MAX);
        st.next_probe = Some(Instant::now() + st.backoff);
    }
}
