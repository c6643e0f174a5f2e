//! Time, injected. Leases, timers and retries read time only through [`Clock`].
//!
//! Invariant: wall-clock time (`now_ms`) is what we *store* (timestamps in the
//! database, comparable across processes); monotonic time (`mono`) is what we
//! *judge liveness by* inside one process, so a wall-clock jump can cost early
//! reclaims but never makes a dead owner look alive forever.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Source of time for an engine.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock milliseconds since the Unix epoch (may jump).
    fn now_ms(&self) -> i64;
    /// Monotonic instant (never jumps).
    fn mono(&self) -> Instant {
        Instant::now()
    }
}

/// The real system clock, optionally shifted by an offset that tests move
/// (`WAYMARK_TEST_CLOCK_OFFSET_FILE` names a file holding the offset in ms;
/// it is re-read at most every 100 ms).
#[derive(Debug, Default)]
pub struct SystemClock {
    offset_file: Option<std::path::PathBuf>,
    cached: AtomicI64,
    cached_at: AtomicI64,
}

impl SystemClock {
    /// A system clock that honours the test offset file when the environment names one.
    pub fn from_env() -> Self {
        SystemClock {
            offset_file: std::env::var_os("WAYMARK_TEST_CLOCK_OFFSET_FILE").map(Into::into),
            cached: AtomicI64::new(0),
            cached_at: AtomicI64::new(i64::MIN),
        }
    }
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let real = system_ms();
        let Some(path) = &self.offset_file else {
            return real;
        };
        let at = self.cached_at.load(Ordering::Relaxed);
        if real.saturating_sub(at) > 100 {
            let off = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0);
            self.cached.store(off, Ordering::Relaxed);
            self.cached_at.store(real, Ordering::Relaxed);
        }
        real + self.cached.load(Ordering::Relaxed)
    }
}

/// A clock tests move by hand. Monotonic time is real; wall time is `base + offset`.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset_ms: AtomicI64,
}

impl ManualClock {
    /// A manual clock starting at real time.
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock::default())
    }
    /// Jump wall time by `delta_ms` (may be negative).
    pub fn jump(&self, delta_ms: i64) {
        self.offset_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        system_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}
