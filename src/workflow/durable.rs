//! Durable waits on the workflow context: timers, events and child runs.
//!
//! Invariants:
//! - Every wait is a journal entry at the next sequence number, so replay sees the same
//!   answer: a timer's wake-up time is journaled the first time and read back afterwards
//!   (never recomputed from "now"); an event payload or a child's outcome is journaled once.
//! - A wait that cannot be satisfied yet suspends the run in the database (status
//!   `suspended`, `ready_at` = when to look again); no thread waits. The worker that ran the
//!   workflow is released at once.
//! - Nothing here writes except through fenced writer commands.
//! - Every wait, and `start_child`, is a cancellation boundary: if a cancel was requested
//!   for the run, the command ends it `cancelled` (with its descendants) in its own
//!   transaction instead (`Awaited::Cancelled`), whether or not this engine's stop flag
//!   has seen the request yet.

use crate::codec;
use crate::error::WorkflowError;
use crate::store::Awaited;
use crate::store::{ChildStart, NewRun};
use crate::workflow::ctx::{Ctx, Interrupt};
use crate::workflow::event::{mismatch, EventName};
use crate::workflow::registry::Workflow;
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A child run started by [`Ctx::start_child`]; pass it to [`Ctx::join`].
#[derive(Debug)]
pub struct ChildRun<O> {
    id: i64,
    _out: PhantomData<fn() -> O>,
}

impl<O> ChildRun<O> {
    /// The child's run id.
    pub fn id(&self) -> i64 {
        self.id
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Ctx<'_> {
    /// Journal (first time) or read back (replay) a timer named `name`; returns its wake-up
    /// time in ms. With `suspend`, a timer not yet due suspends the run.
    fn timer(
        &mut self,
        name: &str,
        suspend: bool,
        wake: impl FnOnce(i64) -> i64,
    ) -> Result<i64, WorkflowError> {
        let (seq, recorded) = self.next_entry(name, "sleep")?;
        let now = self.env.now_ms();
        let wake = match recorded {
            Some(entry) => {
                let bytes = entry.output.as_deref().unwrap_or_default();
                match codec::decode::<i64>(bytes, self.payload_limit()) {
                    Ok(wake) => wake,
                    Err(e) => {
                        let msg = format!(
                            "run {}: timer '{name}' (seq {seq}) does not decode: {e}",
                            self.fence.run_id
                        );
                        return Err(self.interrupt(Interrupt::Blocked(msg)));
                    }
                }
            }
            None => {
                let wake = wake(now);
                let stopped =
                    self.write(|s, fence| s.timer(fence, seq, name.to_string(), wake, suspend))?;
                crate::fault::point(crate::fault::Point::AfterCheckpoint);
                if stopped {
                    return Err(self.interrupt(Interrupt::Parked));
                }
                return Ok(wake);
            }
        };
        if suspend && now < wake {
            let note = format!("sleeping until {wake}");
            return Err(self.interrupt(Interrupt::Suspend { until: wake, note }));
        }
        Ok(wake)
    }

    /// Sleep durably for `duration`: the wake-up time is journaled, the run is suspended
    /// (no thread waits) and resumes by replay when due, also after a restart.
    pub fn sleep(&mut self, duration: Duration) -> Result<(), WorkflowError> {
        let ms = duration_ms(duration);
        self.timer("sleep", true, |now| now.saturating_add(ms))
            .map(|_| ())
    }

    /// Sleep durably until `ms` (milliseconds since the Unix epoch).
    pub fn sleep_until_ms(&mut self, ms: i64) -> Result<(), WorkflowError> {
        self.timer("sleep", true, |_| ms).map(|_| ())
    }

    /// Sleep durably until the wall-clock time `at`.
    pub fn sleep_until(&mut self, at: SystemTime) -> Result<(), WorkflowError> {
        let ms = at.duration_since(UNIX_EPOCH).map(duration_ms).unwrap_or(0);
        self.sleep_until_ms(ms)
    }

    /// The current wall-clock time in ms, journaled: replay returns the first answer.
    pub fn now_ms(&mut self) -> Result<i64, WorkflowError> {
        self.timer("now", false, |now| now)
    }

    /// Wait up to `timeout` for the event `event` (an [`crate::Event`] handle, or a name)
    /// sent to this run with `send_event` of a [`crate::Client`] or [`crate::Engine`] (or
    /// `waymark send`). Returns `None` on timeout. An event sent before the wait is kept and
    /// delivered here; each event is delivered into exactly one wait. Payloads travel as JSON.
    ///
    /// A payload that does not decode as `T` is never delivered: the event is set aside and
    /// the run parks `blocked` with the reason ("event 'approve' payload \"yes\" does not
    /// decode as bool"); after a correct send and `resume` it continues with that event.
    pub fn wait_event<T: DeserializeOwned>(
        &mut self,
        event: impl EventName<T>,
        timeout: Duration,
    ) -> Result<Option<T>, WorkflowError> {
        let name = event.event_name();
        let ms = duration_ms(timeout);
        let deadline = self.timer(&format!("wait:{name}"), false, |now| now.saturating_add(ms))?;
        let (seq, recorded) = self.next_entry(name, "event")?;
        let payload = match recorded {
            Some(entry) if entry.status == "completed" => entry.output.unwrap_or_default(),
            Some(_) => return Ok(None),
            None => {
                // Look at the next event first: only a payload that decodes is delivered.
                let next = match self.env.store().next_event(self.fence.run_id, name) {
                    Ok(next) => next,
                    Err(e) => return Err(self.interrupt(Interrupt::Storage(e))),
                };
                let upto = match next {
                    Some((event_id, payload)) => {
                        match codec::decode_json::<T>(&payload, self.payload_limit()) {
                            Ok(_) => {}
                            // A payload of the wrong type: set the event aside, park the run.
                            Err(codec::CodecError::Invalid { detail, .. }) => {
                                let body = codec::open(&payload).map(|(_, b)| b).unwrap_or(&[]);
                                let note =
                                    mismatch(name, body, std::any::type_name::<T>(), &detail);
                                log::warn!("run {}: {note}; run parked", self.fence.run_id);
                                self.write(|s, fence| s.reject_event(fence, event_id, note))?;
                                return Err(self.interrupt(Interrupt::Parked));
                            }
                            // Damaged bytes (checksum, header) or over the limit: bad data.
                            Err(e) => {
                                let msg = format!(
                                    "run {}: payload of event '{name}' (event {event_id}): {e}",
                                    self.fence.run_id
                                );
                                return Err(self.interrupt(Interrupt::Blocked(msg)));
                            }
                        }
                        Some(event_id)
                    }
                    None => None,
                };
                match self
                    .write(|s, fence| s.await_event(fence, seq, name.to_string(), deadline, upto))?
                {
                    Awaited::Delivered(payload) => {
                        crate::fault::point(crate::fault::Point::AfterCheckpoint);
                        payload
                    }
                    Awaited::Failed(_) => return Ok(None),
                    _ => return Err(self.interrupt(Interrupt::Parked)),
                }
            }
        };
        match codec::decode_json::<T>(&payload, self.payload_limit()) {
            Ok(v) => Ok(Some(v)),
            // The bytes changed after they were written: bad data, park the run.
            Err(
                e @ (codec::CodecError::Checksum { .. }
                | codec::CodecError::Truncated { .. }
                | codec::CodecError::UnknownFormat { .. }
                | codec::CodecError::WrongFormat { .. }),
            ) => {
                let msg = format!(
                    "run {}: payload of event '{name}' (seq {seq}): {e}",
                    self.fence.run_id
                );
                Err(self.interrupt(Interrupt::Blocked(msg)))
            }
            Err(e) => Err(WorkflowError::Step {
                seq,
                name: name.to_string(),
                reason: format!(
                    "event '{name}' of run {} does not decode as {}: {e}",
                    self.fence.run_id,
                    std::any::type_name::<T>()
                ),
            }),
        }
    }

    /// Start a child run of `wf` (durably: replay returns the same child; a crash between
    /// creating and journaling it cannot create two). Cancelling this run cancels it.
    pub fn start_child<I: Serialize, O>(
        &mut self,
        wf: Workflow<I, O>,
        input: &I,
    ) -> Result<ChildRun<O>, WorkflowError> {
        let name = format!("child:{}", wf.name());
        let (seq, recorded) = self.next_entry(&name, "child")?;
        if let Some(entry) = recorded {
            let bytes = entry.output.as_deref().unwrap_or_default();
            let id = match codec::decode::<i64>(bytes, self.payload_limit()) {
                Ok(id) => id,
                Err(e) => {
                    let msg = format!(
                        "run {}: child entry '{name}' (seq {seq}) does not decode: {e}",
                        self.fence.run_id
                    );
                    return Err(self.interrupt(Interrupt::Blocked(msg)));
                }
            };
            return Ok(ChildRun {
                id,
                _out: PhantomData,
            });
        }
        let input = match codec::encode(input, self.payload_limit()) {
            Ok(b) => b,
            Err(e) => {
                return Err(WorkflowError::Step {
                    seq,
                    name,
                    reason: format!("input of the child of run {}: {e}", self.fence.run_id),
                })
            }
        };
        let run = NewRun {
            workflow: wf.name().to_string(),
            version: wf.get_version() as i64,
            input,
            idempotency_key: Some(format!("child:{}:{seq}", self.fence.run_id)),
            queue: "default".into(),
            priority: 0,
            ready_at: None,
            parent_id: Some(self.fence.run_id),
            deadline_at: None,
        };
        let started = self.write(|s, fence| s.start_child(fence, seq, name, run))?;
        self.env.wake_dispatcher();
        match started {
            ChildStart::Started(id) => Ok(ChildRun {
                id,
                _out: PhantomData,
            }),
            // A cancel was requested: the child was created already cancelled and this run
            // ended `cancelled` in the same command.
            ChildStart::ParentCancelled => Err(self.interrupt(Interrupt::Parked)),
        }
    }

    /// Wait for a child run to end and return its output (suspending this run meanwhile).
    /// A failed or cancelled child is a [`WorkflowError::Step`] error the workflow may handle.
    pub fn join<O: DeserializeOwned>(&mut self, child: &ChildRun<O>) -> Result<O, WorkflowError> {
        let name = format!("join:{}", child.id);
        let (seq, recorded) = self.next_entry(&name, "join")?;
        let output = match recorded {
            Some(entry) if entry.status == "completed" => entry.output.unwrap_or_default(),
            Some(entry) => {
                return Err(WorkflowError::Step {
                    seq,
                    name,
                    reason: entry.error.unwrap_or_default(),
                })
            }
            None => match self
                .write(|s, fence| s.await_child(fence, seq, name.clone(), child.id))?
            {
                Awaited::Delivered(bytes) => bytes,
                Awaited::Failed(reason) => return Err(WorkflowError::Step { seq, name, reason }),
                _ => return Err(self.interrupt(Interrupt::Parked)),
            },
        };
        self.decode_recorded(seq, &name, &output)
    }
}
