//! Cron schedules: parsing, due-time arithmetic, and firing.
//!
//! Invariants:
//! - A firing is `Storage::fire_schedule`: a guarded update of the schedule's `next_due` (only if
//!   it still holds the due time this engine read) plus an enqueue keyed
//!   `sched:NAME:DUE`, in one transaction. Several engines racing, or a crash between
//!   reading and firing, cannot fire a due time twice; nothing is kept in memory.
//! - Missed due times (everything was down): with [`Missed::CatchUp`] each one gets a run;
//!   with [`Missed::Skip`] only the latest missed one does, the older ones are skipped.
//!
//! Cron expressions are parsed by the `cron` crate (5 fields `min hour dom mon dow`, or
//! 6-7 fields with seconds first and an optional year); times are UTC.

use crate::engine::{Engine, Inner};
use crate::error::Error;
use crate::store::ScheduleRow;
use crate::store::{NewRun, StoreError};
use crate::workflow::registry::Workflow;
use chrono::{TimeZone, Utc};
use serde::Serialize;
use std::str::FromStr;

/// What to do with due times missed while no engine ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Start one run per missed due time.
    CatchUp,
    /// Start one run for the latest missed due time only.
    Skip,
}

/// Most catch-up firings of one schedule per poller pass (the next pass continues).
const CATCH_UP_PER_PASS: usize = 100;
/// Most due times stepped over when skipping (guards against absurd expressions).
const SKIP_STEPS_MAX: usize = 1_000_000;

/// Parse a cron expression (5 fields get a leading `0` seconds field).
pub fn parse(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("bad cron expression '{expr}': {e}"))
}

/// The first due time strictly after `ms` (ms since the epoch, UTC).
pub fn next_after(schedule: &cron::Schedule, ms: i64) -> Option<i64> {
    let at = Utc.timestamp_millis_opt(ms).single()?;
    schedule.after(&at).next().map(|d| d.timestamp_millis())
}

fn fire(inner: &Inner, row: &ScheduleRow, fire_at: i64, next: i64) -> Result<bool, StoreError> {
    let run = NewRun {
        workflow: row.workflow.clone(),
        version: row.version,
        input: row.input.clone(),
        idempotency_key: Some(format!("sched:{}:{fire_at}", row.name)),
        queue: row.queue.clone(),
        priority: 0,
        ready_at: None,
        parent_id: None,
        deadline_at: None,
    };
    let fired = inner
        .store
        .fire_schedule(row.name.clone(), row.next_due, next, run)?;
    Ok(fired.is_some())
}

/// Fire every due schedule (one poller pass).
pub(crate) fn fire_due(inner: &Inner) -> Result<(), StoreError> {
    let now = inner.clock.now_ms();
    let rows = inner.store.due_schedules(now, 64)?;
    let mut fired = false;
    for mut row in rows {
        let schedule = match parse(&row.cron) {
            Ok(s) => s,
            Err(e) => {
                log::error!("schedule '{}': {e}", row.name);
                continue;
            }
        };
        if row.catch_up {
            let mut n = 0;
            while row.next_due <= now && n < CATCH_UP_PER_PASS {
                let Some(next) = next_after(&schedule, row.next_due) else {
                    break;
                };
                if !fire(inner, &row, row.next_due, next)? {
                    break; // another engine fired it
                }
                row.next_due = next;
                fired = true;
                n += 1;
            }
        } else {
            let mut latest = row.next_due;
            let mut steps = 0;
            while let Some(n) = next_after(&schedule, latest) {
                if n > now || steps >= SKIP_STEPS_MAX {
                    break;
                }
                latest = n;
                steps += 1;
            }
            if steps > 0 {
                log::warn!(
                    "schedule '{}': skipping {steps} missed due times, firing the latest ({latest})",
                    row.name
                );
            }
            if let Some(next) = next_after(&schedule, latest) {
                fired |= fire(inner, &row, latest, next)?;
            }
        }
    }
    if fired {
        inner.wake_dispatcher();
    }
    Ok(())
}

impl crate::client::Client {
    /// Create or replace a schedule whose input is already encoded (tools that decode JSON
    /// through a registry, like the CLI's `schedule`). See [`Engine::schedule_with`].
    #[doc(hidden)]
    pub fn put_schedule(&self, spec: ScheduleSpec<'_>) -> Result<(), Error> {
        put_schedule(self.store(), self.now_ms(), spec)
    }
}

impl Engine {
    /// Start a run of `wf` with `input` at every due time of `cron` (UTC; 5 fields, or 6-7
    /// with seconds), from now on. Missed due times (no engine running) are skipped except
    /// the latest; see [`Engine::schedule_with`]. Replaces a schedule of the same name.
    pub fn schedule<I: Serialize, O>(
        &self,
        name: &str,
        cron: &str,
        wf: Workflow<I, O>,
        input: &I,
    ) -> Result<(), Error> {
        self.schedule_with(name, cron, wf, input, Missed::Skip)
    }

    /// [`Engine::schedule`] choosing what happens to missed due times.
    pub fn schedule_with<I: Serialize, O>(
        &self,
        name: &str,
        cron: &str,
        wf: Workflow<I, O>,
        input: &I,
        missed: Missed,
    ) -> Result<(), Error> {
        let input =
            crate::codec::encode(input, self.inner.config.payload_bytes_max).map_err(|source| {
                Error::Payload {
                    run_id: None,
                    step: None,
                    source,
                }
            })?;
        put_schedule(
            &*self.inner.store,
            self.inner.clock.now_ms(),
            ScheduleSpec {
                name,
                cron,
                workflow: wf.name(),
                version: wf.get_version() as i64,
                input,
                missed,
            },
        )
    }
}

/// A schedule to save (engine API and CLI).
#[derive(Debug)]
pub struct ScheduleSpec<'a> {
    /// Unique name of the schedule.
    pub name: &'a str,
    /// Cron expression (with seconds), evaluated in UTC.
    pub cron: &'a str,
    /// Workflow started at each due time.
    pub workflow: &'a str,
    /// Its version.
    pub version: i64,
    /// Encoded input of each run.
    pub input: Vec<u8>,
    /// What to do with due times missed while no engine ran.
    pub missed: Missed,
}

/// Validate and save a schedule; its first due time is the first after `now`.
pub fn put_schedule(
    store: &dyn crate::store::Storage,
    now: i64,
    spec: ScheduleSpec<'_>,
) -> Result<(), Error> {
    let schedule = parse(spec.cron).map_err(Error::Config)?;
    let next_due = next_after(&schedule, now).ok_or_else(|| {
        Error::Config(format!(
            "cron expression '{}' has no future due time",
            spec.cron
        ))
    })?;
    store.put_schedule(ScheduleRow {
        name: spec.name.to_string(),
        cron: spec.cron.to_string(),
        workflow: spec.workflow.to_string(),
        version: spec.version,
        input: spec.input,
        queue: "default".into(),
        catch_up: spec.missed == Missed::CatchUp,
        next_due,
    })?;
    Ok(())
}
