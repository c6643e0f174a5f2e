//! The torture's driver of events and cancels: it races `Engine`-independent writes (the
//! CLI's `waymark send` and `waymark cancel` paths: `Op::SendEvent`, `Op::Cancel` on a
//! store of its own) against the runs' durable waits and the harness's faults.
//!
//! Each run that waits for an event gets it at a seeded [`Moment`]: before the run starts,
//! while the run is suspended waiting for it, or while the engine that owns the run is being
//! killed, paused (SIGSTOP) or shut down. A few runs are cancelled at a seeded moment: while
//! suspended in a wait, while running a step, or while their owner is down. After three
//! kills, pauses or shutdowns of other engines, an owner-down moment takes the next one while
//! the run is under way (`fault`). A moment that never comes falls back to `late`: once every
//! active run is parked with nothing due (the finish), so no run waits for an event that is
//! never sent. What was sent and what each cancel answered is the checker's input.

use super::db::{self, Reader, RunState};
use super::workload::{mix, RunIn, Wait, EVENT};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::write::event_note;
use waymark::internal::store::{Storage, StoreError, StoreOptions};

/// When the driver acts on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Moment {
    /// Before any engine starts (an event kept until the wait is reached).
    Early,
    /// While the run is suspended (for an event: waiting for it).
    Waiting,
    /// While the run is running (a step under way).
    Running,
    /// While the engine that owns the run is being killed, paused or shut down.
    OwnerDown,
    /// While another engine is being killed, paused or shut down (an owner-down moment
    /// that did not meet the run's owner three times).
    Fault,
    /// Fallback: at the finish.
    Late,
}

impl Moment {
    pub fn name(self) -> &'static str {
        match self {
            Moment::Early => "early",
            Moment::Waiting => "waiting",
            Moment::Running => "running",
            Moment::OwnerDown => "owner-down",
            Moment::Fault => "fault",
            Moment::Late => "late",
        }
    }
}

/// An event the driver sent.
#[derive(Debug, Clone)]
pub struct SentEvent {
    pub payload: u64,
    /// `Some(event id)` if accepted; `None` if refused because the run had ended.
    pub event_id: Option<i64>,
    pub at: Moment,
}

/// A cancel the driver requested: the run's status in the cancel's answer.
#[derive(Debug, Clone)]
pub struct CancelAck {
    pub status: String,
    pub at: Moment,
}

impl CancelAck {
    /// The cancel was acknowledged for an unfinished run: it must end `cancelled`.
    pub fn acknowledged(&self) -> bool {
        !matches!(self.status.as_str(), "completed" | "failed")
    }
}

struct Plan {
    index: u64,
    id: i64,
    /// The run waits for an event: when to send it, and its payload.
    event: Option<(Moment, u64)>,
    cancel: Option<Moment>,
    /// Kills, pauses and shutdowns of engines that did not own the run.
    missed: u32,
}

pub(super) struct Driver {
    store: Arc<dyn Storage>,
    reader: Reader,
    plans: Vec<Plan>,
    pub events: HashMap<u64, SentEvent>,
    pub cancels: HashMap<u64, CancelAck>,
    /// Runs with at least one durable wait.
    pub waits: u64,
}

/// The payload of run `index`'s event (seeded; the workflow mixes it into later values).
pub fn payload(seed: u64, index: u64) -> u64 {
    mix(seed ^ 0xe7e7 ^ mix(index))
}

/// The durable waits of run `index` (1 in `share` runs waits, none with `share` 0): a short
/// sleep, an event wait, or both, before seeded steps.
pub fn plan_waits(seed: u64, index: u64, steps: u32, share: u64) -> Vec<(u32, Wait)> {
    let w = mix(seed ^ 0x3a17 ^ mix(index));
    if share == 0 || !w.is_multiple_of(share) {
        return Vec::new();
    }
    let at = |k: u64| ((w >> k) % u64::from(steps + 1)) as u32;
    let sleep = (
        0,
        Wait::Sleep {
            ms: 20 + (w >> 40) % 180,
        },
    );
    let mut waits = match (w >> 8) % 3 {
        0 => vec![(at(16), sleep.1)],
        1 => vec![(at(24), Wait::Event)],
        _ => vec![(at(16), sleep.1), (at(24), Wait::Event)],
    };
    // In step order; a sleep and an event wait at the same step: the sleep first.
    waits.sort_by_key(|(k, w)| (*k, matches!(w, Wait::Event)));
    waits
}

impl Driver {
    /// Plan events and cancels for `runs` (ids by index), leaving `excluded` runs alone.
    pub fn new(
        db: &Path,
        runs: &[RunIn],
        ids: &HashMap<u64, i64>,
        seed: u64,
        excluded: &HashSet<u64>,
    ) -> Result<Driver, String> {
        let opts = StoreOptions {
            create: false,
            readers_max: 1,
            // Never hold the harness long behind a paused engine's write lock: retry later.
            lock_wait_max: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let store = db::open(db, &opts)?;
        let reader = Reader::open(db)?;
        let mut plans = Vec::new();
        let mut waits = 0;
        for r in runs {
            if !r.waits.is_empty() {
                waits += 1;
            }
            if excluded.contains(&r.index) {
                continue;
            }
            let c = mix(seed ^ 0xca9c ^ mix(r.index));
            let has_event = r.waits.iter().any(|(_, w)| *w == Wait::Event);
            let event = has_event.then(|| {
                let at = [Moment::Early, Moment::Waiting, Moment::OwnerDown][(c % 3) as usize];
                (at, payload(seed, r.index))
            });
            // A quarter of the waiting runs, and one in forty of the others, are cancelled.
            let cancel = if !r.waits.is_empty() && (c >> 8).is_multiple_of(4) {
                Some(
                    [Moment::Waiting, Moment::Running, Moment::OwnerDown][((c >> 16) % 3) as usize],
                )
            } else if r.waits.is_empty() && (c >> 8).is_multiple_of(40) {
                Some([Moment::Running, Moment::OwnerDown][((c >> 16) % 2) as usize])
            } else {
                None
            };
            // Cancelled while waiting: its event comes late, so the cancel meets the wait.
            let event = match (event, cancel) {
                (Some((_, p)), Some(Moment::Waiting)) => Some((Moment::Late, p)),
                (e, _) => e,
            };
            if event.is_some() || cancel.is_some() {
                let id = *ids
                    .get(&r.index)
                    .ok_or_else(|| format!("run {} was not enqueued", r.index))?;
                plans.push(Plan {
                    index: r.index,
                    id,
                    event,
                    cancel,
                    missed: 0,
                });
            }
        }
        Ok(Driver {
            store,
            reader,
            plans,
            events: HashMap::new(),
            cancels: HashMap::new(),
            waits,
        })
    }

    /// Before any engine starts: send the early events.
    pub fn early(&mut self) {
        for i in 0..self.plans.len() {
            if matches!(self.plans[i].event, Some((Moment::Early, _))) {
                self.send(i, Moment::Early);
            }
        }
    }

    /// One look: act on runs in their waiting or running moment.
    pub fn tick(&mut self) {
        let states = match self.states() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("torture driver: {e}");
                return;
            }
        };
        for i in 0..self.plans.len() {
            let (status, note, _) = match states.get(&self.plans[i].id) {
                Some(s) => s,
                None => continue,
            };
            let suspended = status == "suspended";
            let cancel_at = match self.plans[i].cancel {
                Some(Moment::Waiting) if suspended => Some(Moment::Waiting),
                Some(Moment::Running) if status == "running" => Some(Moment::Running),
                _ => None,
            };
            if let Some(at) = cancel_at {
                self.cancel(i, at);
            }
            let waiting = suspended && note.as_deref() == Some(event_note(EVENT).as_str());
            let send_at = match self.plans[i].event {
                Some((Moment::Waiting, _)) if waiting => Some(Moment::Waiting),
                _ => None,
            };
            if let Some(at) = send_at {
                self.send(i, at);
            }
        }
    }

    /// The engine process `pid` is being killed, paused or shut down: act on the runs it owns
    /// whose moment is `OwnerDown`.
    pub fn owner_down(&mut self, pid: u32) {
        let states = match self.states() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("torture driver: {e}");
                return;
            }
        };
        for i in 0..self.plans.len() {
            let wants = self.plans[i].cancel == Some(Moment::OwnerDown)
                || matches!(self.plans[i].event, Some((Moment::OwnerDown, _)));
            let Some((status, _, owner)) = states.get(&self.plans[i].id) else {
                continue;
            };
            if !wants || !matches!(status.as_str(), "running" | "suspended" | "pending") {
                continue;
            }
            let at = if status == "running" && *owner == Some(pid) {
                Moment::OwnerDown
            } else if self.plans[i].missed >= 3 && status != "pending" {
                Moment::Fault
            } else {
                self.plans[i].missed += 1;
                continue;
            };
            if self.plans[i].cancel == Some(Moment::OwnerDown) {
                self.cancel(i, at);
            }
            if matches!(self.plans[i].event, Some((Moment::OwnerDown, _))) {
                self.send(i, at);
            }
        }
    }

    /// Are events or cancels still to be done?
    pub fn pending(&self) -> bool {
        self.plans
            .iter()
            .any(|p| p.cancel.is_some() || p.event.is_some())
    }

    /// The fallback: every cancel and event not yet done, now (retrying a locked database).
    pub fn finish(&mut self) -> Result<(), String> {
        for _ in 0..30 {
            for i in 0..self.plans.len() {
                if self.plans[i].cancel.is_some() {
                    self.cancel(i, Moment::Late);
                }
                if self.plans[i].event.is_some() {
                    self.send(i, Moment::Late);
                }
            }
            if self
                .plans
                .iter()
                .all(|p| p.cancel.is_none() && p.event.is_none())
            {
                return Ok(());
            }
        }
        Err("the driver could not send its events and cancels (database locked)".into())
    }

    /// Status, note and owner pid of every run.
    fn states(&mut self) -> Result<HashMap<i64, RunState>, String> {
        self.reader.states()
    }

    /// Send plan `i`'s event (done: the plan's event is cleared; locked: kept for later).
    fn send(&mut self, i: usize, at: Moment) {
        let Some((_, payload)) = self.plans[i].event else {
            return;
        };
        let p = &self.plans[i];
        let bytes = waymark::internal::codec::seal(
            waymark::internal::codec::Format::Json,
            &serde_json::to_vec(&payload).unwrap_or_default(),
        );
        let event_id = match self.store.send_event(p.id, EVENT.into(), bytes) {
            Ok(sent) => Some(sent.event_id),
            Err(StoreError::RunFinished { .. }) => None,
            other => {
                log::warn!("torture driver: sending run {} its event: {other:?}", p.id);
                return;
            }
        };
        self.events.insert(
            p.index,
            SentEvent {
                payload,
                event_id,
                at,
            },
        );
        self.plans[i].event = None;
    }

    /// Cancel plan `i`'s run (done: the plan's cancel is cleared; locked: kept for later).
    fn cancel(&mut self, i: usize, at: Moment) {
        if self.plans[i].cancel.is_none() {
            return;
        }
        let p = &self.plans[i];
        match self.store.cancel(p.id) {
            Ok(status) => {
                self.cancels.insert(p.index, CancelAck { status, at });
                self.plans[i].cancel = None;
            }
            other => log::warn!("torture driver: cancelling run {}: {other:?}", p.id),
        }
    }
}

/// How long every active run may stay parked with nothing due to wake it before the finish
/// counts them stalled: longer than the engines' backstop sweep of cancelled parked runs
/// ([`waymark::engine::features::CANCEL_SWEEP_INTERVAL`]), so only what it cannot mend counts.
pub const STUCK_AFTER: Duration = Duration::from_secs(20);

/// The number of active runs if none of them can move on its own (none running, none
/// pending or suspended due within a minute on the engines' clock), else 0.
pub fn stuck_runs(reader: &mut Reader) -> Result<i64, String> {
    use waymark::internal::clock::Clock;
    let now = SystemClock::from_env().now_ms();
    reader.stuck_runs(now + 60_000)
}
