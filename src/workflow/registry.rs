//! Registration of workflows and steps under stable names.
//!
//! Invariant: a step or workflow is looked up by name (and version); the typed handles
//! [`Step`] and [`Workflow`] make the caller's types match the registered function's
//! at compile time. Everything stored is bincode of those types.

use crate::codec::{self, CodecError};
use crate::error::{StepError, WorkflowError};
pub use crate::step::{ErasedStepError, Step, StepCtx, StepDef, StepOptions, StepSource};
use crate::workflow::ctx::Ctx;
use crate::workflow::event::{Event, EventDef};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

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

/// A registered workflow.
pub struct WorkflowDef {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) run: Arc<WorkflowFn>,
}

/// The set of workflows and steps an engine can run, and the types of the events they wait for.
#[derive(Default)]
pub struct Registry {
    steps: HashMap<String, StepDef>,
    workflows: HashMap<(String, u32), WorkflowDef>,
    events: HashMap<String, EventDef>,
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
        step: Step<crate::isolation::CommandSpec, crate::isolation::CommandOutput>,
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

    /// Register the event `event`: a send by name through a Client or Engine holding this
    /// registry is checked against its payload type `T` before it is kept.
    pub fn event<T: DeserializeOwned + 'static>(&mut self, event: Event<T>) -> &mut Self {
        self.events
            .insert(event.name().to_string(), EventDef::of::<T>());
        self
    }

    /// Check a JSON payload for event `name` against its registered type; an event not
    /// registered here passes (this registry cannot know its type).
    pub(crate) fn check_event(&self, name: &str, payload: &[u8]) -> Result<(), String> {
        match self.events.get(name) {
            Some(def) => (def.check)(payload).map_err(|why| {
                crate::workflow::event::mismatch(name, payload, def.type_name, &why)
            }),
            None => Ok(()),
        }
    }

    /// Is workflow `name` registered at `version`?
    pub(crate) fn has_workflow(&self, name: &str, version: u32) -> bool {
        self.workflows.contains_key(&(name.to_string(), version))
    }

    /// The step registered under `name`.
    #[doc(hidden)]
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

impl StepSource for Registry {
    fn get_step(&self, name: &str) -> Option<&StepDef> {
        Registry::get_step(self, name)
    }
    fn step_names(&self) -> Vec<String> {
        Registry::step_names(self)
    }
    fn all_steps(&self) -> Vec<&StepDef> {
        self.steps.values().collect()
    }
}
