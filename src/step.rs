//! What a step is, below everything that runs one: its typed handle, the context a step
//! function gets, its options, and the type-erased definition an executor calls.
//!
//! Dependency direction: imports only the leaf modules (config, codec, error); the
//! executors ([`crate::exec`], [`crate::isolation`]) and the workflow code build on it.

use crate::codec::CodecError;
use crate::config::{Isolation, RetryPolicy, StepLimits};
use crate::error::StepError;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A typed handle naming a step: `const FETCH: Step<Url, Page> = Step::new("fetch");`
pub struct Step<I, O> {
    pub(crate) name: &'static str,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Step<I, O> {
    /// A handle for the step registered under `name`.
    pub const fn new(name: &'static str) -> Self {
        Step {
            name,
            _types: PhantomData,
        }
    }
    /// The step's stable name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl<I, O> Clone for Step<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, O> Copy for Step<I, O> {}

/// What a step function sees: its idempotency key, attempt number and cancellation.
#[derive(Debug, Clone)]
pub struct StepCtx {
    pub(crate) run_id: i64,
    pub(crate) seq: i64,
    pub(crate) attempt: u32,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) deadline: Option<std::time::Instant>,
}

impl StepCtx {
    /// A context for running a step outside an engine (child processes, tests).
    pub fn new(run_id: i64, seq: i64, attempt: u32) -> Self {
        StepCtx {
            run_id,
            seq,
            attempt,
            cancel: Arc::new(AtomicBool::new(false)),
            deadline: None,
        }
    }
    /// Stable across re-executions of this step: hand it to outside systems to dedupe.
    pub fn idempotency_key(&self) -> String {
        format!("{}-{}", self.run_id, self.seq)
    }
    /// The run this step belongs to.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }
    /// The step's journal sequence number in its run.
    pub fn seq(&self) -> i64 {
        self.seq
    }
    /// 1 for the first execution, 2 for the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// True once the run was cancelled or the step's timeout passed: stop soon.
    pub fn should_stop(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
    }
    /// `Err` once the step should stop (cooperative cancellation and timeout).
    pub fn check(&self) -> Result<(), StepError> {
        if self.should_stop() {
            Err(StepError::permanent("step stopped: cancelled or timed out"))
        } else {
            Ok(())
        }
    }
}

/// A failure of a type-erased step call: the step's own error, or its bytes were bad.
#[derive(Debug)]
pub enum ErasedStepError {
    /// The step returned an error.
    Step(StepError),
    /// Its input or output bytes were bad.
    Codec(CodecError),
}

pub(crate) type StepFn =
    dyn Fn(&StepCtx, &[u8], u64) -> Result<Vec<u8>, ErasedStepError> + Send + Sync;
/// Per-step options; unset fields take the engine's defaults.
#[derive(Debug, Clone, Default)]
pub struct StepOptions {
    /// Where the step runs.
    pub isolation: Option<Isolation>,
    /// Its limits when it runs in a child process.
    pub limits: Option<StepLimits>,
    /// Its retry policy.
    pub retry: Option<RetryPolicy>,
}

/// A registered step.
pub struct StepDef {
    pub(crate) name: String,
    pub(crate) run: Arc<StepFn>,
    pub(crate) options: StepOptions,
    /// A command step (an external program run through the child trampoline).
    pub(crate) command: bool,
}

impl std::fmt::Debug for StepDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepDef")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish()
    }
}

impl StepDef {
    /// Run the step on encoded input here, in this process.
    pub fn call(
        &self,
        ctx: &StepCtx,
        input: &[u8],
        limit: u64,
    ) -> Result<Vec<u8>, ErasedStepError> {
        (self.run)(ctx, input, limit)
    }
    /// The step's registered name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The options it was registered with.
    pub fn options(&self) -> &StepOptions {
        &self.options
    }
    /// True for a command step (registered with [`Registry::command`]).
    pub fn is_command(&self) -> bool {
        self.command
    }
}

/// Where a step child looks up the step it must run: the [`crate::Registry`] built by the
/// host's `build_registry`.
pub trait StepSource {
    /// The step registered under `name`.
    fn get_step(&self, name: &str) -> Option<&StepDef>;
    /// Names of every registered step, sorted.
    fn step_names(&self) -> Vec<String>;
    /// Every registered step.
    fn all_steps(&self) -> Vec<&StepDef>;
}
