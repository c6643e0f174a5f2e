//! This engine's own lease: the incarnation it writes as, the heartbeat that renews it and
//! the guard that fences us.
//!
//! Invariants:
//! - Self-fencing: the lease is considered valid only until `last renewal sent + lease_ttl *
//!   2/3` on our monotonic clock. Other engines reclaim our runs only after observing no
//!   heartbeat progress for a full `lease_ttl` on *their* monotonic clock, which starts no
//!   earlier than our last renewal: so we stop writing before anyone may take over.
//! - A reclaim fences the whole incarnation it judged (`engines.stopped_at`, in the same
//!   transaction, conditional on the heartbeat value it judged). A fenced incarnation's
//!   renewal fails; the guard then revokes it for good: [`LeaseGuard::valid_for`] is false
//!   for every run claimed under it, forever, even after the engine re-registers under a new
//!   incarnation id to take new work. A guard never becomes valid again for a run it lost.
//! - A guard that lapsed and is renewed again records when ([`LeaseGuard::resumed_at`]): the
//!   reaper counts another engine's heartbeat silence only from then, since a stall that
//!   kept us from writing (another process holding the write lock) kept it from writing too.

use crate::engine::Inner;
use crate::host;
use crate::store::{EngineRow, StoreError};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tracks which incarnation this engine writes as, and until when it may act on its leases.
#[derive(Debug)]
pub struct LeaseGuard {
    origin: Instant,
    valid_until_ns: AtomicU64,
    /// When our lease last became valid again after it had lapsed (a renewal committed
    /// after a stall): other engines' heartbeats may have been stalled by the same cause.
    resumed_ns: AtomicU64,
    window: Duration,
    owner: RwLock<Arc<str>>,
}

impl LeaseGuard {
    pub fn new(ttl: Duration, owner: Arc<str>) -> Self {
        let g = LeaseGuard {
            origin: Instant::now(),
            valid_until_ns: AtomicU64::new(0),
            resumed_ns: AtomicU64::new(0),
            window: ttl * 2 / 3,
            owner: RwLock::new(owner),
        };
        g.renewed(Instant::now());
        g
    }

    /// The incarnation id this engine claims and writes as now.
    pub fn owner(&self) -> Arc<str> {
        self.owner.read().clone()
    }

    /// A renewal sent at `sent` committed.
    pub fn renewed(&self, sent: Instant) {
        let now = self.since_origin(Instant::now());
        if now >= self.valid_until_ns.load(Ordering::SeqCst) {
            // We could not write for the whole window: whatever stalled us (a write lock
            // held by another process, a stalled disk) may have stalled everyone. Recorded
            // before the lease becomes valid again, so the reaper never sees one without
            // the other.
            self.resumed_ns.fetch_max(now, Ordering::SeqCst);
        }
        let until = sent.saturating_duration_since(self.origin) + self.window;
        self.valid_until_ns
            .fetch_max(until.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Our incarnation was fenced or its row is gone: every lease it held is lost for good.
    /// `next` is the incarnation the engine continues as (after registering it).
    pub fn revoke(&self, next: Arc<str>) {
        let mut owner = self.owner.write();
        self.valid_until_ns.store(0, Ordering::SeqCst);
        *owner = next;
    }

    fn since_origin(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// The instant our lease last became valid again after lapsing (or was first renewed).
    /// Another engine's heartbeat standing still counts as silence only after this: while
    /// we could not write ourselves, its silence proves nothing.
    pub fn resumed_at(&self) -> Instant {
        self.origin + Duration::from_nanos(self.resumed_ns.load(Ordering::SeqCst))
    }

    /// May the current incarnation act on its leases (claim new runs)?
    pub fn valid(&self) -> bool {
        (Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos() as u64)
            < self.valid_until_ns.load(Ordering::SeqCst)
    }

    /// May we still act on a run claimed as `owner`? False for good once that incarnation
    /// was revoked.
    pub fn valid_for(&self, owner: &str) -> bool {
        let current = self.owner.read();
        **current == *owner && self.valid()
    }
}

/// Heartbeat loop: renew every `heartbeat_interval` until `stop` fires.
pub fn heartbeat_loop(inner: &Inner, stop: crossbeam_channel::Receiver<()>) {
    loop {
        if let Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
            stop.recv_timeout(inner.config.heartbeat_interval)
        {
            return;
        }
        // Executions whose lease lapsed (or was revoked) stop their child steps now: another
        // engine may reclaim them after one TTL.
        let stopped = inner.control.stop_lapsed(&inner.lease);
        if stopped > 0 {
            log::warn!("lease lapsed: stopping the steps of {stopped} run(s) this engine can no longer act on");
        }
        if inner.storage_failed.load(Ordering::SeqCst) && !inner.health.try_recover(inner) {
            // After a storage failure this engine neither claims nor renews: its runs pass to
            // other engines after one TTL instead of staying held by an engine that cannot
            // write. The guard lapses too, so its workers stop acting on them. It probes with
            // backoff and resumes once a write commits again (engine::health).
            continue;
        }
        let sent = Instant::now();
        let owner = inner.lease.owner();
        match inner
            .store
            .heartbeat(&owner, inner.config.lease_ttl.as_millis() as i64)
        {
            Ok(_) => {
                inner.lease.renewed(sent);
                inner.counters.renewed();
            }
            Err(StoreError::LeaseLost { .. }) => reincarnate(inner, &owner),
            Err(e) => {
                log::error!("heartbeat failed: {e}");
                inner.note_store_error(&e);
            }
        }
    }
}

/// Our incarnation `lost` was fenced by another engine's reclaim (or its row removed):
/// abandon every run it held and continue as a new incarnation that can take new work.
fn reincarnate(inner: &Inner, lost: &Arc<str>) {
    let next: Arc<str> = host::random_id().into();
    log::error!(
        "engine {lost} was declared dead by another engine; abandoning every run it held and \
         continuing as engine {next}"
    );
    // Revoke first: from here on no worker acts on a run claimed as `lost`.
    inner.lease.revoke(next.clone());
    let (pid, pid_start) = host::this_process();
    let sent = Instant::now();
    match inner.store.register_engine(EngineRow {
        id: next,
        pid,
        pid_start,
        boot_id: inner.boot_id.clone(),
    }) {
        Ok(_) => inner.lease.renewed(sent),
        Err(e) => {
            // The guard stays lapsed; the next heartbeat fails with LeaseLost and retries.
            log::error!("registering a new incarnation failed: {e}");
            inner.note_store_error(&e);
        }
    }
}
