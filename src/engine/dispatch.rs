//! The dispatcher: claims ready runs in short transactions and hands them to workers.
//!
//! Invariant: it never claims more runs than there are idle workers, so a claimed run
//! starts executing at once and its lease is never held by a queue. It takes the idle
//! workers' slots (`in_flight`) before its claim, as every other claimer does
//! (`Engine::start_run`; a worker claiming at its run's end keeps its own slot), and checks
//! that it may claim (storage healthy, lease valid) only once it holds them: the storage
//! recovery, which hands back our runs when no slot is taken, then never races a claim.
//! It takes the write lock only when a read shows something claimable.

use crate::engine::Inner;

use std::sync::atomic::Ordering;

/// Claim and dispatch until shutdown.
pub fn dispatch_loop(
    inner: &Inner,
    work: crossbeam_channel::Sender<super::Work>,
    wake: crossbeam_channel::Receiver<()>,
) {
    let workers = inner.config.workers as i64;
    while !inner.shutting_down() {
        let busy = inner.in_flight.load(Ordering::SeqCst);
        let can_claim = workers - busy > 0 && inner.may_claim();
        // Look before taking the write lock: an idle engine polls with a read, not a write
        // transaction (which would contend with other engine processes on the file).
        let can_claim = can_claim
            && inner
                .store
                .claimable(inner.clock.now_ms(), &inner.workflows_json)
                .unwrap_or(true);
        // Take the idle workers' slots before claiming for them: `Engine::start_run` also
        // claims for an idle worker (`Inner::reserve_worker`), and a slot counted here but
        // taken there meanwhile would leave a claimed run queued with no worker.
        let mut free = if can_claim {
            reserve_idle(inner, workers)
        } else {
            0
        };
        // Checked again with the slots taken: a storage failure's recovery hands back every
        // run recorded as ours once no slot is taken (engine/health.rs). A claim decided
        // before a failure (the read above can wait long) but committed after the
        // recovery's look at the slots would be handed back under its worker's feet.
        if free > 0 && !inner.may_claim() {
            inner.in_flight.fetch_sub(free, Ordering::SeqCst);
            free = 0;
        }
        let mut claimed_all = false;
        if free > 0 {
            let owner = inner.owner();
            let claim_started = std::time::Instant::now();
            match inner.store.claim(
                &owner,
                free,
                &inner.workflows_json,
                inner.config.lease_ttl.as_millis() as i64,
            ) {
                Ok(runs) => {
                    inner.counters.claimed(claim_started.elapsed());
                    claimed_all = runs.len() as i64 == free;
                    // Give back the slots that got no run.
                    inner
                        .in_flight
                        .fetch_sub(free - runs.len() as i64, Ordering::SeqCst);
                    for run in runs {
                        if work.send((owner.clone(), run)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    inner.in_flight.fetch_sub(free, Ordering::SeqCst);
                    log::error!("claiming runs failed: {e}");
                    inner.note_store_error(&e);
                }
            }
        }
        if !claimed_all || free == 0 {
            let _ = wake.recv_timeout(inner.config.poll_interval);
        }
    }
}

/// Take every idle worker's slot (`in_flight` up to `workers`) in one atomic step; returns
/// how many were taken.
fn reserve_idle(inner: &Inner, workers: i64) -> i64 {
    match inner
        .in_flight
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < workers).then_some(workers)
        }) {
        Ok(before) => workers - before,
        Err(_) => 0,
    }
}

/// On a store shared by hosts (PostgreSQL), wake the dispatcher as soon as another process
/// or host commits a run change (`LISTEN`/`NOTIFY` through `Storage::watch`) instead of at
/// its next poll; the poll stays as the backstop (and for due timers). A watch that fails
/// is opened again after a pause; until then the poll alone serves.
pub fn watch_loop(inner: &Inner, stop: crossbeam_channel::Receiver<()>) {
    use crossbeam_channel::RecvTimeoutError;
    use std::time::Duration;
    let mut watch: Option<Box<dyn crate::store::ChangeWatch>> = None;
    loop {
        if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
            return;
        }
        let Some(w) = watch.as_mut() else {
            match inner.store.watch() {
                Ok(w) => watch = Some(w),
                Err(e) => {
                    log::debug!("change watch unavailable ({e}); the dispatcher polls");
                    if !matches!(
                        stop.recv_timeout(Duration::from_secs(1)),
                        Err(RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                }
            }
            continue;
        };
        match w.wait_change(Duration::from_millis(500)) {
            Ok(true) => inner.wake_dispatcher(),
            Ok(false) => {}
            Err(e) => {
                log::debug!("change watch failed ({e}); opening it again");
                watch = None;
            }
        }
    }
}
