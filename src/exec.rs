//! The seam between "a step must run" and "where it runs".
//!
//! Invariant: the caller ([`crate::Ctx`]) journals whatever an [`Executor`] returns; an
//! executor never writes the journal itself, except to record where an attempt runs
//! (pid and start time) before the step can have any effect, through [`Attempts`].
//!
//! Dependency direction: imports the step layer, config, outcome and the store's plain
//! types; never the engine, never the process code ([`crate::isolation`] implements
//! [`Executor`] on top of this module, the engine implements [`Attempts`]).

use crate::config::StepLimits;
use crate::outcome::{Failure, FailureClass, Outcome};
use crate::step::{ErasedStepError, StepCtx, StepDef};
use crate::store::{AttemptRow, Fence, StoreError};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// One execution of one step.
#[derive(Debug)]
pub struct ExecRequest<'a> {
    /// The run and the lease (owner, epoch) the step runs under.
    pub fence: &'a Fence,
    /// The step's journal sequence number.
    pub seq: i64,
    /// 1 for the first execution.
    pub attempt: i64,
    /// The step to run.
    pub step: &'a StepDef,
    /// Its encoded input.
    pub input: &'a [u8],
    /// Its limits.
    pub limits: &'a StepLimits,
    /// Largest encoded output accepted.
    pub payload_limit: u64,
    /// Set when the run is cancelled or past its deadline.
    pub cancel: Arc<AtomicBool>,
}

impl ExecRequest<'_> {
    /// The step context handed to the step function.
    pub fn step_ctx(&self) -> StepCtx {
        StepCtx {
            run_id: self.fence.run_id,
            seq: self.seq,
            attempt: self.attempt as u32,
            cancel: self.cancel.clone(),
            deadline: self.limits.timeout.map(|t| std::time::Instant::now() + t),
        }
    }
}

/// Runs a step somewhere and classifies how it ended.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Run `req` and say how it ended. `attempts` records where it ran.
    fn execute(&self, attempts: &dyn Attempts, req: &ExecRequest<'_>) -> Outcome;
}

/// An earlier, unfinished attempt of the same step (its owner died or was fenced).
#[derive(Debug, Clone)]
pub struct EarlierAttempt {
    /// The attempt as recorded.
    pub row: AttemptRow,
    /// `Some(host)` when its owner ran in another PID namespace or boot: its pid names
    /// some other process here and must never be signalled.
    pub elsewhere: Option<String>,
}

/// Where executors record attempts (the engine implements it over its store).
pub trait Attempts: Send + Sync {
    /// Record that `req` runs in process `(pid, pid_start)`, before it gets its input.
    fn started(
        &self,
        req: &ExecRequest<'_>,
        pid: Option<u32>,
        pid_start: Option<u64>,
    ) -> Result<(), StoreError>;
    /// Record that `req` ended well (`reason` for people), with what it left (as
    /// [`Attempts::detail`]), in one commit. The journal entry that follows is what counts;
    /// an error here means the lease was lost or storage failed (and the detail is lost
    /// with it).
    fn succeeded(
        &self,
        req: &ExecRequest<'_>,
        reason: String,
        logs: String,
        memory_cap: Option<String>,
    ) -> Result<(), StoreError>;
    /// Store what `req` left besides its outcome: its captured logs and the memory-cap
    /// mechanism. Best effort (a lost lease only loses them).
    fn detail(
        &self,
        req: &ExecRequest<'_>,
        logs: String,
        memory_cap: Option<String>,
    ) -> Result<(), StoreError>;
    /// Bounds of a child attempt's captured logs: (head bytes, tail bytes).
    fn log_bounds(&self) -> (u64, u64);
    /// Unfinished attempts of the same step by other owners or epochs.
    fn earlier(&self, req: &ExecRequest<'_>) -> Result<Vec<EarlierAttempt>, StoreError>;
}

/// Record the start of `req` in process `pid`; the one path for "attempt not recorded".
pub fn record_start(
    attempts: &dyn Attempts,
    req: &ExecRequest<'_>,
    pid: u32,
) -> Result<(), Failure> {
    attempts
        .started(req, Some(pid), crate::host::pid_start_time(pid))
        .map_err(|e| {
            Failure::new(
                FailureClass::Spawn,
                format!(
                    "step '{}' of run {}: attempt not recorded: {e}",
                    req.step.name(),
                    req.fence.run_id
                ),
            )
        })
}

/// Runs steps on the calling worker thread. A panic is caught and classified; there is no
/// memory cap, and the timeout is cooperative ([`StepCtx::check`]).
#[derive(Debug, Default)]
pub struct InProcess;

/// The message of a caught panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Classify the result of calling a step function (in this process or in a child).
pub fn classify_call(
    result: std::thread::Result<Result<Vec<u8>, ErasedStepError>>,
    req: &ExecRequest<'_>,
) -> Outcome {
    match result {
        Ok(Ok(bytes)) if bytes.len() as u64 > req.limits.output_bytes_max => Err(Failure::new(
            FailureClass::OutputLimit,
            format!(
                "output over limit ({} bytes > {} bytes)",
                bytes.len(),
                req.limits.output_bytes_max
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(ErasedStepError::Step(e))) => Err(Failure {
            class: FailureClass::StepError,
            reason: e.message,
            permanent: e.permanent,
        }),
        Ok(Err(ErasedStepError::Codec(e))) => Err(Failure {
            class: FailureClass::Protocol,
            reason: format!(
                "step '{}' of run {}: {e}",
                req.step.name(),
                req.fence.run_id
            ),
            permanent: true,
        }),
        Err(payload) => Err(Failure::new(
            FailureClass::Panic,
            format!("panicked: {}", panic_message(&*payload)),
        )),
    }
}

impl Executor for InProcess {
    fn execute(&self, _attempts: &dyn Attempts, req: &ExecRequest<'_>) -> Outcome {
        crate::fault::point(crate::fault::Point::InStep);
        let ctx = req.step_ctx();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            req.step.call(&ctx, req.input, req.payload_limit)
        }));
        let outcome = classify_call(result, req);
        if outcome.is_err() && req.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Failure {
                class: FailureClass::Cancelled,
                reason: "cancelled".into(),
                permanent: true,
            });
        }
        outcome
    }
}
