//! This engine's own lease: the heartbeat that renews it and the guard that fences us.
//!
//! Invariant (self-fencing): the lease is considered valid only until
//! `last renewal sent + lease_ttl * 2/3` on our monotonic clock. Other engines reclaim our
//! runs only after observing no heartbeat progress for a full `lease_ttl` on *their*
//! monotonic clock, which starts no earlier than our last renewal: so we stop writing
//! before anyone may take over.

use crate::engine::Inner;
use crate::store::{Op, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Tracks until when this engine may act on its leases.
#[derive(Debug)]
pub struct LeaseGuard {
    origin: Instant,
    valid_until_ns: AtomicU64,
    window: Duration,
}

impl LeaseGuard {
    pub fn new(ttl: Duration) -> Self {
        let g = LeaseGuard {
            origin: Instant::now(),
            valid_until_ns: AtomicU64::new(0),
            window: ttl * 2 / 3,
        };
        g.renewed(Instant::now());
        g
    }

    /// A renewal sent at `sent` committed.
    pub fn renewed(&self, sent: Instant) {
        let until = sent.saturating_duration_since(self.origin) + self.window;
        self.valid_until_ns
            .fetch_max(until.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Our engine row is gone or fenced: every lease is lost for good.
    pub fn revoke(&self) {
        self.valid_until_ns.store(0, Ordering::SeqCst);
    }

    /// May we still act on our leases?
    pub fn valid(&self) -> bool {
        (Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos() as u64)
            < self.valid_until_ns.load(Ordering::SeqCst)
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
        if inner.storage_failed.load(Ordering::SeqCst) && !inner.health.try_recover(inner) {
            // After a storage failure this engine neither claims nor renews: its runs pass to
            // other engines after one TTL instead of staying held by an engine that cannot
            // write. The guard lapses too, so its workers stop acting on them. It probes with
            // backoff and resumes once a write commits again (engine::health).
            continue;
        }
        let sent = Instant::now();
        match inner.store.call(Op::Heartbeat {
            owner: inner.owner.clone(),
            lease_ms: inner.config.lease_ttl.as_millis() as i64,
        }) {
            Ok(_) => inner.lease.renewed(sent),
            Err(StoreError::LeaseLost { .. }) => {
                log::error!(
                    "engine {} was declared dead by another engine; abandoning every run",
                    inner.owner
                );
                inner.lease.revoke();
            }
            Err(e) => {
                log::error!("heartbeat failed: {e}");
                inner.note_store_error(&e);
            }
        }
    }
}
