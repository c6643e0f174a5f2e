//! The workflow context: journaled step calls and deterministic replay.
//!
//! Invariants:
//! - Sequence numbers are assigned in call order from 0; replay of a journaled sequence
//!   number returns the recorded result without running the step.
//! - A replay that asks for another step than the journal holds at that sequence number is
//!   a non-determinism error on the run, never a panic.
//! - Once the engine interrupts a run (lease lost, suspend, shutdown, bad data), every further
//!   call returns [`WorkflowError::Interrupted`] and the workflow's return value is ignored.

use crate::codec;
use crate::error::WorkflowError;
use crate::exec::ExecRequest;
use crate::fault;
use crate::outcome::Failure;
use crate::store::{Entry, Fence, StepRow, Storage, StoreError};
use crate::workflow::registry::{Step, StepDef};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What a workflow's context needs from the engine running it. The engine implements it;
/// the workflow code never names engine internals.
pub(crate) trait RunEnv: crate::exec::Attempts {
    /// The engine's configuration.
    fn config(&self) -> &crate::config::Config;
    /// The store the run lives in.
    fn store(&self) -> &dyn crate::store::Storage;
    /// What can run.
    fn registry(&self) -> &std::sync::Arc<crate::workflow::registry::Registry>;
    /// Where steps of this isolation run.
    fn executor(&self, isolation: crate::config::Isolation) -> &dyn crate::exec::Executor;
    /// Is the lease of incarnation `owner` still valid on our monotonic clock?
    fn lease_valid_for(&self, owner: &str) -> bool;
    /// Was the run at this epoch stopped because its owner's lease lapsed?
    fn lapsed(&self, run_id: i64, epoch: i64) -> bool;
    /// The engine is shutting down.
    fn shutting_down(&self) -> bool;
    /// The engine killed in-flight child steps (shutdown grace over).
    fn steps_aborted(&self) -> bool;
    /// Wall time, ms since the epoch.
    fn now_ms(&self) -> i64;
    /// A run became ready: wake the dispatcher.
    fn wake_dispatcher(&self);
}

/// Why the engine took a run away from its workflow function.
#[derive(Debug)]
pub(crate) enum Interrupt {
    /// A write was fenced off: another owner holds the run now.
    LeaseLost,
    /// Our own lease guard ran out (heartbeats did not commit in time): stop acting on the
    /// run; it may still be ours, so the worker hands it back with a fenced release.
    LeaseExpired,
    Shutdown,
    Suspend {
        until: i64,
        note: String,
    },
    NonDeterminism(String),
    Blocked(String),
    Fail(String),
    Storage(StoreError),
    /// The run was cancelled or passed its deadline (see `engine::features`).
    Cancelled,
    /// A feature command already suspended the run, or ended it cancelled, in its own
    /// transaction: write nothing.
    Parked,
}

/// Outcome of an attempt killed at the end of an engine's shutdown grace.
pub(crate) const ATTEMPT_SHUTDOWN: &str = "shutdown";
/// Outcome of an attempt stopped because its engine's lease lapsed while it ran.
pub(crate) const ATTEMPT_LEASE_LAPSED: &str = "lease_lapsed";

/// Does an attempt with this outcome spend one of the step's retries? Only an attempt that
/// ended with a failure of its own does: one cut by its engine's death (no outcome) or by a
/// clean shutdown does not.
pub(crate) fn counts_as_failure(outcome: Option<&str>) -> bool {
    matches!(outcome, Some(o) if o != ATTEMPT_SHUTDOWN && o != ATTEMPT_LEASE_LAPSED && o != "success")
}

/// Handed to a workflow function; every durable operation goes through it.
pub struct Ctx<'a> {
    pub(crate) env: &'a dyn RunEnv,
    pub(crate) fence: Fence,
    pub(crate) workflow: String,
    pub(crate) journal: Vec<StepRow>,
    /// Per seq: the last attempt number recorded, and how many attempts failed on their own.
    pub(crate) last_attempts: HashMap<i64, (i64, i64)>,
    pub(crate) next_seq: i64,
    pub(crate) interrupt: Option<Interrupt>,
    pub(crate) cancel: Arc<AtomicBool>,
    /// Step results not committed yet: recorded at the run's next durable operation (the
    /// next step, wait or write) or with the run's ending, whichever comes first. Nothing
    /// outside the deterministic workflow code has seen them by then, so a crash before
    /// that commit costs only a re-run of the step (at-least-once), as a crash just before
    /// an immediate checkpoint would; and a three-step run commits its last step with its
    /// completion.
    pub(crate) pending: Vec<Entry>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("run_id", &self.fence.run_id)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl<'a> Ctx<'a> {
    /// The id of the run being executed.
    pub fn run_id(&self) -> i64 {
        self.fence.run_id
    }

    /// The name of the workflow being executed.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    /// True while replaying journaled steps (useful to silence logs on replay).
    pub fn is_replaying(&self) -> bool {
        (self.next_seq as usize) < self.journal.len()
    }

    pub(crate) fn payload_limit(&self) -> u64 {
        self.env.config().payload_bytes_max
    }

    pub(crate) fn interrupt(&mut self, why: Interrupt) -> WorkflowError {
        if self.interrupt.is_none() {
            self.interrupt = Some(why);
        }
        WorkflowError::Interrupted
    }

    /// Err if the run was interrupted or must stop (shutdown, lease no longer valid).
    pub(crate) fn check_live(&mut self) -> Result<(), WorkflowError> {
        if self.interrupt.is_some() {
            return Err(WorkflowError::Interrupted);
        }
        self.check_lease()?;
        if self.env.shutting_down() {
            return Err(self.interrupt(Interrupt::Shutdown));
        }
        if self.cancel.load(std::sync::atomic::Ordering::SeqCst) {
            if self.lapsed() {
                return Err(self.interrupt(Interrupt::LeaseExpired));
            }
            return Err(self.interrupt(Interrupt::Cancelled));
        }
        Ok(())
    }

    /// Err if the run was interrupted or the lease of the incarnation that claimed it is
    /// no longer valid (expired, or revoked for good after a fence).
    pub(crate) fn check_lease(&mut self) -> Result<(), WorkflowError> {
        if self.interrupt.is_some() {
            return Err(WorkflowError::Interrupted);
        }
        if !self.env.lease_valid_for(&self.fence.owner) {
            return Err(self.interrupt(Interrupt::LeaseExpired));
        }
        Ok(())
    }

    /// Was this execution stopped because the lease of its incarnation lapsed?
    fn lapsed(&self) -> bool {
        self.env.lapsed(self.fence.run_id, self.fence.epoch)
    }

    /// Read (no commit) whether the run is still ours at the claim's epoch; if not, the run
    /// was taken from us (reclaimed while we were paused): stop, write nothing more.
    pub(crate) fn check_fence(&mut self) -> Result<(), WorkflowError> {
        let fence = self.fence.clone();
        match self.env.store().fence_holds(&fence) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.interrupt(Interrupt::LeaseLost)),
            Err(e) => Err(self.interrupt(Interrupt::Storage(e))),
        }
    }

    /// Commit the step results not committed yet (one transaction, fenced).
    pub(crate) fn flush(&mut self) -> Result<(), WorkflowError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.pending);
        let n = entries.len();
        let fence = self.fence.clone();
        match self.env.store().checkpoints(&fence, entries) {
            Ok(()) => {
                for _ in 0..n {
                    fault::point(fault::Point::AfterCheckpoint);
                }
                Ok(())
            }
            Err(StoreError::LeaseLost { .. }) => Err(self.interrupt(Interrupt::LeaseLost)),
            Err(e) => Err(self.interrupt(Interrupt::Storage(e))),
        }
    }

    /// Write through the store (after the pending step results), turning fencing and
    /// storage errors into interrupts.
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&dyn Storage, &Fence) -> Result<T, StoreError>,
    ) -> Result<T, WorkflowError> {
        self.flush()?;
        let fence = self.fence.clone();
        match f(self.env.store(), &fence) {
            Ok(v) => Ok(v),
            Err(StoreError::LeaseLost { .. }) => Err(self.interrupt(Interrupt::LeaseLost)),
            Err(e) => Err(self.interrupt(Interrupt::Storage(e))),
        }
    }

    /// Take the next sequence number; returns the journal entry if one is recorded,
    /// after checking it was recorded for `name` (else non-determinism).
    pub(crate) fn next_entry(
        &mut self,
        name: &str,
        kind: &str,
    ) -> Result<(i64, Option<StepRow>), WorkflowError> {
        self.check_live()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        match self.journal.get(seq as usize) {
            Some(entry) if entry.name != name || entry.kind != kind => {
                let msg = format!(
                    "non-determinism in run {} at seq {seq}: the journal holds {} '{}', replay asked for {kind} '{name}'",
                    self.fence.run_id, entry.kind, entry.name
                );
                Err(self.interrupt(Interrupt::NonDeterminism(msg)))
            }
            Some(entry) => Ok((seq, Some(entry.clone()))),
            None if seq >= self.env.config().steps_per_run_max => {
                let msg = format!(
                    "run {} has more than {} journal entries (steps_per_run_max)",
                    self.fence.run_id,
                    self.env.config().steps_per_run_max
                );
                Err(self.interrupt(Interrupt::Fail(msg)))
            }
            None => Ok((seq, None)),
        }
    }

    /// Decode a recorded output, parking the run as `blocked` if it does not decode.
    pub(crate) fn decode_recorded<O: DeserializeOwned>(
        &mut self,
        seq: i64,
        name: &str,
        bytes: &[u8],
    ) -> Result<O, WorkflowError> {
        codec::decode::<O>(bytes, self.payload_limit()).map_err(|e| {
            let msg = format!(
                "cannot decode the recorded output of step '{name}' (seq {seq}) of run {} as {}: {e}",
                self.fence.run_id,
                std::any::type_name::<O>()
            );
            self.interrupt(Interrupt::Blocked(msg))
        })
    }

    /// Record a journal entry (write-once, fenced): committed with the run's next durable
    /// operation or its ending (see `pending`).
    pub(crate) fn record(&mut self, entry: Entry) -> Result<(), WorkflowError> {
        self.pending.push(entry);
        Ok(())
    }

    /// Call a registered step: replayed from the journal if recorded, executed otherwise.
    pub fn step<I: Serialize, O: DeserializeOwned>(
        &mut self,
        step: Step<I, O>,
        input: &I,
    ) -> Result<O, WorkflowError> {
        let name = step.name();
        let (seq, recorded) = self.next_entry(name, "step")?;
        if let Some(entry) = recorded {
            return if entry.status == "completed" {
                self.decode_recorded(seq, name, entry.output.as_deref().unwrap_or_default())
            } else {
                Err(WorkflowError::Step {
                    seq,
                    name: name.into(),
                    reason: entry.error.unwrap_or_default(),
                })
            };
        }
        let registry = self.env.registry().clone();
        let Some(def) = registry.get_step(name) else {
            let msg = format!(
                "run {} calls step '{name}' (seq {seq}), which is not registered",
                self.fence.run_id
            );
            return Err(self.interrupt(Interrupt::Fail(msg)));
        };
        let input = match codec::encode(input, self.payload_limit()) {
            Ok(bytes) => bytes,
            Err(e) => {
                let reason = format!(
                    "input of step '{name}' (seq {seq}) of run {}: {e}",
                    self.fence.run_id
                );
                self.record(Entry {
                    seq,
                    name: name.into(),
                    kind: "step",
                    completed: false,
                    attempts: 0,
                    output: None,
                    error: Some(reason.clone()),
                })?;
                return Err(WorkflowError::Step {
                    seq,
                    name: name.into(),
                    reason,
                });
            }
        };
        let output = self.execute(seq, def, &input)?;
        self.decode_recorded(seq, name, &output)
    }

    fn execute(&mut self, seq: i64, def: &StepDef, input: &[u8]) -> Result<Vec<u8>, WorkflowError> {
        let name = def.name().to_string();
        let (last, failures) = self.last_attempts.get(&seq).copied().unwrap_or((0, 0));
        let attempt = last + 1;
        let policy = def
            .options()
            .retry
            .clone()
            .unwrap_or_else(|| self.env.config().retry.clone());
        let limits = def
            .options()
            .limits
            .clone()
            .unwrap_or_else(|| self.env.config().limits.clone());
        let isolation = if def.is_command() {
            crate::config::Isolation::Child
        } else {
            def.options()
                .isolation
                .unwrap_or(self.env.config().isolation)
        };
        // Earlier results are committed before this step can have any effect.
        self.flush()?;
        if isolation == crate::config::Isolation::InProcess {
            // A child step's fenced AttemptStart commit proves the run is still ours before
            // it can have any effect; an in-process step gets the same proof from a read, so
            // an owner that lost the run while paused starts no step on it.
            self.check_fence()?;
        }
        let request = ExecRequest {
            fence: &self.fence,
            seq,
            attempt,
            step: def,
            input,
            limits: &limits,
            payload_limit: self.payload_limit(),
            cancel: self.cancel.clone(),
        };
        let outcome = self.env.executor(isolation).execute(self.env, &request);
        fault::point(fault::Point::AfterStep);
        if outcome.is_err() && self.env.steps_aborted() {
            // Killed at the end of the shutdown grace: not a failure of the step and no
            // spent retry; the run is released for another engine.
            self.write(|s, fence| {
                s.attempt_end(
                    fence,
                    seq,
                    attempt,
                    ATTEMPT_SHUTDOWN,
                    "killed at the end of the engine's shutdown grace".into(),
                )
            })?;
            return Err(self.interrupt(Interrupt::Shutdown));
        }
        if outcome.is_err() && self.lapsed() {
            // Stopped because our lease lapsed while it ran: not a failure of the step and
            // no spent retry; the run goes back (fenced release) or is already another's.
            let _ = self.env.store().attempt_end(
                &self.fence,
                seq,
                attempt,
                ATTEMPT_LEASE_LAPSED,
                "stopped: the engine's lease lapsed while the step ran".into(),
            );
            return Err(self.interrupt(Interrupt::LeaseExpired));
        }
        // Only the lease decides whether a finished step's result may be recorded: a shutdown
        // or a cancel takes effect at the next boundary, after the result is kept.
        self.check_lease()?;
        match outcome {
            Ok(output) => {
                self.record(Entry {
                    seq,
                    name,
                    kind: "step",
                    completed: true,
                    attempts: attempt,
                    output: Some(output.clone()),
                    error: None,
                })?;
                Ok(output)
            }
            Err(failure) => self.failed(seq, name, (attempt, failures + 1), &policy, failure),
        }
    }

    fn failed(
        &mut self,
        seq: i64,
        name: String,
        (attempt, failures): (i64, i64),
        policy: &crate::config::RetryPolicy,
        failure: Failure,
    ) -> Result<Vec<u8>, WorkflowError> {
        let run_id = self.fence.run_id;
        self.write(|s, fence| {
            s.attempt_end(
                fence,
                seq,
                attempt,
                failure.class.name(),
                failure.reason.clone(),
            )
        })?;
        if self.cancel.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(self.interrupt(Interrupt::Cancelled));
        }
        let retry = !failure.permanent
            && policy.retry_on.contains(&failure.class)
            && failures < policy.attempts_max as i64
            && !self.cancel.load(std::sync::atomic::Ordering::Relaxed);
        if retry {
            let delay = policy.delay(failures as u32 + 1, crate::host::random_u64());
            let until = self.env.now_ms() + delay.as_millis() as i64;
            log::info!("run {run_id}: step '{name}' (seq {seq}) attempt {attempt} failed ({}); retrying in {delay:?}", failure.reason);
            let note = format!(
                "retrying step '{name}' (seq {seq}) after attempt {attempt}: {}",
                failure.reason
            );
            return Err(self.interrupt(Interrupt::Suspend { until, note }));
        }
        let reason = format!("{} (attempt {attempt})", failure.reason);
        self.record(Entry {
            seq,
            name: name.clone(),
            kind: "step",
            completed: false,
            attempts: attempt,
            output: None,
            error: Some(reason.clone()),
        })?;
        Err(WorkflowError::Step { seq, name, reason })
    }
}
