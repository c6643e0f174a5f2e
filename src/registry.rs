//! Registration of workflows and steps under stable names.
//!
//! Invariant: a step or workflow is looked up by name (and version); the typed handles
//! [`Step`] and [`Workflow`] make the caller's types match the registered function's
//! at compile time. Everything stored is bincode of those types.

use crate::codec::{self, CodecError};
use crate::config::{Isolation, RetryPolicy, StepLimits};
use crate::ctx::Ctx;
use crate::error::{StepError, WorkflowError};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A typed handle naming a step: `const FETCH: Step<Url, Page> = Step::new("fetch");`
pub struct Step<I, O> {
    name: &'static str,
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

/// A typed handle naming a workflow and its version:
/// `const ORDER: Workflow<Order, Receipt> = Workflow::new("order");`
pub struct Workflow<I, O> {
    name: &'static str,
    version: u32,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Workflow<I, O> {
    /// Version 1 of the workflow registered under `name`.
    pub const fn new(name: &'static str) -> Self {
        Workflow {
            name,
            version: 1,
            _types: PhantomData,
        }
    }
    /// The same workflow at another version.
    pub const fn version(self, version: u32) -> Self {
        Workflow {
            name: self.name,
            version,
            _types: PhantomData,
        }
    }
    /// The workflow's registered name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The workflow's version (1 unless set with [`Workflow::version`]).
    pub fn get_version(&self) -> u32 {
        self.version
    }
}

impl<I, O> Clone for Workflow<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, O> Copy for Workflow<I, O> {}

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
pub(crate) type WorkflowFn =
    dyn Fn(&mut Ctx<'_>, &[u8]) -> Result<Vec<u8>, WorkflowFailure> + Send + Sync;

/// Why an erased workflow call failed.
#[derive(Debug)]
pub enum WorkflowFailure {
    /// The stored input does not decode as the workflow's input type.
    Input(CodecError),
    /// The output is over the limit.
    Output(CodecError),
    /// The workflow returned an error.
    Workflow(WorkflowError),
}

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

/// A registered workflow.
pub struct WorkflowDef {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) run: Arc<WorkflowFn>,
}

/// The set of workflows and steps an engine can run.
#[derive(Default)]
pub struct Registry {
    steps: HashMap<String, StepDef>,
    workflows: HashMap<(String, u32), WorkflowDef>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .field("workflows", &self.workflows.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Register `f` as the step `step`. Returns its options to adjust.
    pub fn step<I, O, F>(&mut self, step: Step<I, O>, f: F) -> &mut StepOptions
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(&StepCtx, I) -> Result<O, StepError> + Send + Sync + 'static,
    {
        let run =
            move |ctx: &StepCtx, input: &[u8], limit: u64| -> Result<Vec<u8>, ErasedStepError> {
                let input: I = codec::decode(input, limit).map_err(ErasedStepError::Codec)?;
                let out = f(ctx, input).map_err(ErasedStepError::Step)?;
                codec::encode(&out, limit).map_err(ErasedStepError::Codec)
            };
        let def = StepDef {
            name: step.name.to_string(),
            run: Arc::new(run),
            options: StepOptions::default(),
            command: false,
        };
        self.steps.insert(step.name.to_string(), def);
        &mut self
            .steps
            .get_mut(step.name)
            .expect("just inserted")
            .options
    }

    /// Register `step` as a command step: its input names a program to run in a child
    /// process (always, whatever the isolation); exit status 0 gives its output.
    pub fn command(
        &mut self,
        step: Step<crate::child::CommandSpec, crate::child::CommandOutput>,
    ) -> &mut StepOptions {
        let run = |_: &StepCtx, _: &[u8], _: u64| -> Result<Vec<u8>, ErasedStepError> {
            Err(ErasedStepError::Step(StepError::permanent(
                "command steps run only in child processes",
            )))
        };
        let def = StepDef {
            name: step.name.to_string(),
            run: Arc::new(run),
            options: StepOptions::default(),
            command: true,
        };
        self.steps.insert(step.name.to_string(), def);
        &mut self
            .steps
            .get_mut(step.name)
            .expect("just inserted")
            .options
    }

    /// Names of every registered step, sorted.
    pub fn step_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.steps.keys().cloned().collect();
        v.sort();
        v
    }

    pub(crate) fn step_defs(&self) -> impl Iterator<Item = &StepDef> {
        self.steps.values()
    }

    /// Register `f` as the workflow `wf` (at its version).
    pub fn workflow<I, O, F>(&mut self, wf: Workflow<I, O>, f: F)
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(&mut Ctx<'_>, I) -> Result<O, WorkflowError> + Send + Sync + 'static,
    {
        let run = move |ctx: &mut Ctx<'_>, input: &[u8]| -> Result<Vec<u8>, WorkflowFailure> {
            let limit = ctx.payload_limit();
            let input: I = codec::decode(input, limit).map_err(WorkflowFailure::Input)?;
            let out = f(ctx, input).map_err(WorkflowFailure::Workflow)?;
            codec::encode(&out, limit).map_err(WorkflowFailure::Output)
        };
        self.workflows.insert(
            (wf.name.to_string(), wf.version),
            WorkflowDef {
                name: wf.name.to_string(),
                version: wf.version,
                run: Arc::new(run),
            },
        );
    }

    /// The step registered under `name`.
    pub fn get_step(&self, name: &str) -> Option<&StepDef> {
        self.steps.get(name)
    }

    pub(crate) fn get_workflow(&self, name: &str, version: u32) -> Option<&WorkflowDef> {
        self.workflows.get(&(name.to_string(), version))
    }

    /// `workflow@version` of every registered workflow, as a JSON array (for claims).
    pub(crate) fn workflow_keys_json(&self) -> String {
        let keys: Vec<String> = self
            .workflows
            .values()
            .map(|w| format!("{}@{}", w.name, w.version))
            .collect();
        serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into())
    }
}
