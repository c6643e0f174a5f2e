//! This engine's own counters, for people and `/metrics` (a console embedded in the
//! engine's process shows them): lease renewals and claim latency, beside the writer's
//! commits and commands (counted by the store's writer thread).
//!
//! Invariant: counting costs a relaxed atomic add or two on the paths that count (the
//! heartbeat's renewal, the dispatcher's claim); nothing reads them but
//! [`crate::Engine::counters`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (µs) of the claim latency histogram's buckets (the last bucket is `+Inf`).
pub const CLAIM_LATENCY_BUCKETS_US: [u64; 10] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

/// The live counters (relaxed atomics), shared by the engine's threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    renewals: AtomicU64,
    claims: AtomicU64,
    claim_us_sum: AtomicU64,
    /// Claims per bucket of [`CLAIM_LATENCY_BUCKETS_US`] (not cumulative).
    claim_buckets: [AtomicU64; CLAIM_LATENCY_BUCKETS_US.len()],
}

impl Counters {
    /// A heartbeat renewal committed.
    pub(crate) fn renewed(&self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// A claim transaction committed after `took`.
    pub(crate) fn claimed(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.claims.fetch_add(1, Ordering::Relaxed);
        self.claim_us_sum.fetch_add(us, Ordering::Relaxed);
        if let Some(i) = CLAIM_LATENCY_BUCKETS_US.iter().position(|le| us <= *le) {
            self.claim_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A snapshot, with the writer's `(commits, commands)`.
    pub(crate) fn snapshot(&self, (commits, commands): (u64, u64)) -> EngineCounters {
        let mut below = 0;
        let claim_latency_buckets = CLAIM_LATENCY_BUCKETS_US
            .iter()
            .zip(&self.claim_buckets)
            .map(|(le, n)| {
                below += n.load(Ordering::Relaxed);
                (*le, below)
            })
            .collect();
        EngineCounters {
            writer_commits: commits,
            writer_commands: commands,
            lease_renewals: self.renewals.load(Ordering::Relaxed),
            claims: self.claims.load(Ordering::Relaxed),
            claim_latency_us_sum: self.claim_us_sum.load(Ordering::Relaxed),
            claim_latency_buckets,
        }
    }
}

/// A read-only snapshot of one engine's counters since it started ([`crate::Engine::counters`]).
/// Each counter is read on its own (relaxed): two of them may be a moment apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineCounters {
    /// Write transactions the writer thread committed (or attempted): group commits.
    pub writer_commits: u64,
    /// Commands those transactions applied (`writer_commands / writer_commits` is the mean
    /// group size).
    pub writer_commands: u64,
    /// Lease renewals (heartbeats) that committed.
    pub lease_renewals: u64,
    /// Claim transactions that committed (each may claim several runs, or none).
    pub claims: u64,
    /// Their total latency, in µs.
    pub claim_latency_us_sum: u64,
    /// Cumulative histogram of claim latency: `(upper bound in µs, claims at or below it)`,
    /// bounds from 250 µs to 1 s; `claims` is the `+Inf` bucket.
    pub claim_latency_buckets: Vec<(u64, u64)>,
}
