//! The seam between "a step must run" and "where it runs".
//!
//! Invariant: the caller ([`crate::Ctx`]) journals whatever an [`Executor`] returns; an
//! executor never writes the journal itself, except to record where an attempt runs
//! (pid and start time) before the step can have any effect.

use crate::config::StepLimits;
use crate::engine::Inner;
use crate::outcome::{Failure, FailureClass, Outcome};
use crate::registry::{ErasedStepError, StepCtx, StepDef};
use crate::store::Fence;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// One execution of one step.
#[derive(Debug)]
pub struct ExecRequest<'a> {
    pub fence: &'a Fence,
    pub seq: i64,
    pub attempt: i64,
    pub step: &'a StepDef,
    pub input: &'a [u8],
    pub limits: &'a StepLimits,
    pub payload_limit: u64,
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
    fn execute(&self, inner: &Inner, req: &ExecRequest<'_>) -> Outcome;
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
    fn execute(&self, _inner: &Inner, req: &ExecRequest<'_>) -> Outcome {
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
