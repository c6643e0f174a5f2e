//! Recovery: find runs whose owner is dead and make them claimable again.
//!
//! Policy, at open and every `reap_interval`:
//! - An owner is dead at once if it is provably gone on this host: its engine row names a
//!   `(pid, start time)` in *our* PID namespace that no longer exists (an unreadable /proc
//!   proves nothing), a boot id of an earlier boot (only on a store that lives on this host:
//!   on a store shared by hosts, PostgreSQL, another boot id is another host, judged by its
//!   heartbeat alone), or it stopped (or was fenced) while still holding runs. A pid from another PID namespace (another container on this host) is never
//!   looked up here.
//! - Otherwise it is dead once *we* have seen its heartbeat counter not move for a full
//!   `lease_ttl` on our own monotonic clock (a wall-clock jump cannot fake liveness or death),
//!   counted only while our own lease is valid and from the moment it last became valid
//!   again: a stall that kept us from writing (a write lock held by another process) kept the
//!   owner from renewing too, so its silence then proves nothing.
//! - An owner with no engine row falls back to the wall-clock lease expiry on an SQLite file
//!   (one host, one clock); on a store shared by hosts, to a `lease_ttl` of our own
//!   monotonic clock from when we first saw it so (another host's clock is never compared
//!   with ours).
//!
//! Each reclaim is guarded by the `(status, epoch)` read here, so a run that completed or was
//! reclaimed in between is left alone; and the judgement is re-validated in the reclaim's own
//! transaction, which fences the owner's incarnation only if its heartbeat counter still
//! reads the value judged (see `Storage::reclaim_many`).

use crate::engine::Inner;
use crate::fault;
use crate::host;
use crate::store::StoreResult;
use std::collections::HashMap;
use std::time::Instant;

/// Runs reclaimed per writer command.
const RECLAIM_CHUNK: usize = 500;

/// What the reaper remembers between passes: last heartbeat value seen per owner.
#[derive(Debug, Default)]
pub struct Reaper {
    seen: HashMap<String, (i64, Instant)>,
    passes: u64,
}

impl Reaper {
    /// One pass. Returns the number of runs reclaimed.
    pub fn pass(&mut self, inner: &Inner) -> StoreResult<usize> {
        self.passes += 1;
        let my_boot = &inner.boot_id;
        let owners = inner.store.owners()?;
        let now_mono = Instant::now();
        let now = inner.clock.now_ms();
        let mut reclaimed = 0;
        let mut live = HashMap::new();
        for o in owners {
            if *o.id == *inner.owner() {
                continue;
            }
            let why = match (o.pid, o.pid_start, o.boot_id.as_deref(), o.beat) {
                _ if o.stopped => Some("stopped while holding runs".to_string()),
                (Some(pid), Some(start), Some(boot), Some(beat)) => {
                    let place = host::place(my_boot, boot, inner.hosts_shared);
                    if place == host::Place::EarlierBoot {
                        Some(format!("owner {} ran before a reboot", o.id))
                    } else if place == host::Place::SameNamespace
                        && host::liveness(pid as u32, start as u64) == host::Liveness::Dead
                    {
                        Some(format!("owner engine {} (pid {pid}) is dead", o.id))
                    } else {
                        // Alive, unknown, or in another PID namespace (its pid means nothing
                        // here): judged by its heartbeat on our monotonic clock only.
                        let entry = self.seen.entry(o.id.clone()).or_insert((beat, now_mono));
                        if entry.0 != beat {
                            *entry = (beat, now_mono);
                        }
                        live.insert(o.id.clone(), *entry);
                        // Silence counts only while we could write ourselves: a write lock
                        // held by another process stalls every engine's heartbeat at once,
                        // and proves nothing about the owner (it may be mid-step).
                        let since = entry.1.max(inner.lease.resumed_at());
                        let quiet = now_mono.saturating_duration_since(since);
                        (inner.lease.valid() && quiet >= inner.config.lease_ttl).then(|| {
                            format!(
                                "owner engine {} (pid {pid}) sent no heartbeat for {quiet:?}",
                                o.id
                            )
                        })
                    }
                }
                // No engine record on a store shared by hosts: its lease's expiry was
                // written by another host's wall clock, never compared with ours; judged by
                // a TTL of silence on our monotonic clock from when we first saw it so.
                _ if inner.hosts_shared => {
                    let entry = self.seen.entry(o.id.clone()).or_insert((-1, now_mono));
                    live.insert(o.id.clone(), *entry);
                    let since = entry.1.max(inner.lease.resumed_at());
                    let quiet = now_mono.saturating_duration_since(since);
                    (inner.lease.valid() && quiet >= inner.config.lease_ttl)
                        .then(|| format!("owner {} has no engine record for {quiet:?}", o.id))
                }
                _ => o
                    .lease_expires_at
                    .filter(|&t| t < now)
                    .map(|_| format!("owner {} has no engine record and its lease expired", o.id)),
            };
            let Some(why) = why else { continue };
            let runs = inner.store.runs_of_owner(&o.id)?;
            // One command per chunk: recovering thousands of runs costs a few commits.
            for chunk in runs.chunks(RECLAIM_CHUNK) {
                fault::point(fault::Point::ReaperBeforeReclaim);
                let done = inner.store.reclaim_many(
                    &o.id.as_str().into(),
                    o.beat,
                    chunk.to_vec(),
                    why.clone(),
                    inner.config.interruptions_max,
                )?;
                for (run_id, _) in done.iter().filter(|(_, ok)| *ok) {
                    log::debug!("reclaimed run {run_id}: {why}");
                }
                let n = done.iter().filter(|(_, ok)| *ok).count();
                if n > 0 {
                    log::warn!("reclaimed {n} runs: {why}");
                }
                reclaimed += n;
            }
        }
        self.seen = live;
        if self.passes % 30 == 1 {
            self.forget_dead_engines(inner)?;
            let note = format!(
                "not claimable by engine pid {}: no registered workflow ",
                std::process::id()
            );
            inner.store.note_unrunnable(&inner.workflows_json, note)?;
        }
        if reclaimed > 0 {
            inner.wake_dispatcher();
        }
        Ok(reclaimed)
    }

    fn forget_dead_engines(&self, inner: &Inner) -> StoreResult<()> {
        for e in inner.store.idle_engines()? {
            if *e.id == *inner.owner() {
                continue;
            }
            // An engine in another PID namespace is forgotten only once stopped; forgetting a
            // live one is harmless anyway (it re-registers under a new incarnation).
            let gone = e.stopped
                || match host::place(
                    &inner.boot_id,
                    e.boot_id.as_deref().unwrap_or(""),
                    inner.hosts_shared,
                ) {
                    host::Place::EarlierBoot => true,
                    host::Place::OtherNamespace | host::Place::OtherHost => false,
                    host::Place::SameNamespace => {
                        host::liveness(e.pid.unwrap_or(0) as u32, e.pid_start.unwrap_or(0) as u64)
                            == host::Liveness::Dead
                    }
                };
            if gone {
                inner.store.forget_engine(&e.id)?;
            }
        }
        Ok(())
    }
}

/// Reaper loop: one pass at once, then every `reap_interval` until `stop` fires.
pub fn reaper_loop(inner: &Inner, stop: crossbeam_channel::Receiver<()>) {
    let mut reaper = Reaper::default();
    loop {
        if let Err(e) = reaper.pass(inner) {
            log::error!("reaper pass failed: {e}");
            inner.note_store_error(&e);
        }
        if let Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
            stop.recv_timeout(inner.config.reap_interval)
        {
            return;
        }
    }
}
