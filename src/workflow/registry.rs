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
    input: JsonCodec,
    output: JsonCodec,
}

/// Type-erased converters of one registered type between its stored bincode and JSON
/// (for tools: `show --json` displays, `start --json` encodes).
#[derive(Debug, Clone, Copy)]
struct JsonCodec {
    type_name: &'static str,
    to_json: fn(&[u8]) -> Result<serde_json::Value, String>,
    from_json: fn(&str) -> Result<Vec<u8>, String>,
}

fn bincode_to_json<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
) -> Result<serde_json::Value, String> {
    let value: T = codec::decode(bytes, codec::PAYLOAD_BYTES_MAX).map_err(|e| e.to_string())?;
    serde_json::to_value(&value).map_err(|e| e.to_string())
}

fn json_to_bincode<T: Serialize + DeserializeOwned>(json: &str) -> Result<Vec<u8>, String> {
    let value: T = serde_json::from_str(json).map_err(|e| {
        format!(
            "JSON {} does not decode as {}: {e}",
            excerpt(json),
            std::any::type_name::<T>()
        )
    })?;
    codec::encode(&value, codec::PAYLOAD_BYTES_MAX).map_err(|e| e.to_string())
}

fn json_to_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let value: serde_json::Value =
        codec::decode_json(bytes, codec::PAYLOAD_BYTES_MAX).map_err(|e| e.to_string())?;
    T::deserialize(&value).map_err(|e| {
        format!(
            "payload does not decode as {}: {e}",
            std::any::type_name::<T>()
        )
    })?;
    Ok(value)
}

fn json_to_sealed_json<T: DeserializeOwned>(json: &str) -> Result<Vec<u8>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("{} is not JSON: {e}", excerpt(json)))?;
    T::deserialize(&value).map_err(|e| {
        format!(
            "JSON {} does not decode as {}: {e}",
            excerpt(json),
            std::any::type_name::<T>()
        )
    })?;
    codec::encode_json(&value, codec::PAYLOAD_BYTES_MAX).map_err(|e| e.to_string())
}

/// Longest excerpt of a JSON text quoted in an error.
const JSON_EXCERPT_CHARS_MAX: usize = 64;

fn excerpt(json: &str) -> String {
    let mut out: String = json.chars().take(JSON_EXCERPT_CHARS_MAX).collect();
    if json.chars().count() > JSON_EXCERPT_CHARS_MAX {
        out.push_str("...");
    }
    out
}

impl JsonCodec {
    fn bincode<T: Serialize + DeserializeOwned>() -> Self {
        JsonCodec {
            type_name: std::any::type_name::<T>(),
            to_json: bincode_to_json::<T>,
            from_json: json_to_bincode::<T>,
        }
    }
    fn json<T: DeserializeOwned>() -> Self {
        JsonCodec {
            type_name: std::any::type_name::<T>(),
            to_json: json_to_json::<T>,
            from_json: json_to_sealed_json::<T>,
        }
    }
}

/// Which stored payload a JSON conversion is about ([`Registry::payload_to_json`],
/// [`Registry::payload_from_json`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadOf<'a> {
    /// The input of a run of workflow `name` at `version`.
    WorkflowInput {
        /// Workflow name.
        name: &'a str,
        /// Workflow version.
        version: u32,
    },
    /// The output of a run of workflow `name` at `version`.
    WorkflowOutput {
        /// Workflow name.
        name: &'a str,
        /// Workflow version.
        version: u32,
    },
    /// The recorded output of step `name`.
    StepOutput(&'a str),
    /// The payload of event `name`.
    Event(&'a str),
}

/// The set of workflows and steps an engine can run, and the types of the events they wait for.
#[derive(Default)]
pub struct Registry {
    steps: HashMap<String, StepDef>,
    workflows: HashMap<(String, u32), WorkflowDef>,
    events: HashMap<String, EventDef>,
    step_outputs: HashMap<String, JsonCodec>,
    event_codecs: HashMap<String, JsonCodec>,
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
    ///
    /// Inputs and outputs are `Serialize + DeserializeOwned` both ways, so tools can show
    /// and accept them as JSON ([`Registry::payload_to_json`]).
    pub fn step<I, O, F>(&mut self, step: Step<I, O>, f: F) -> &mut StepOptions
    where
        I: Serialize + DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
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
        self.step_outputs
            .insert(step.name.to_string(), JsonCodec::bincode::<O>());
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
        self.step_outputs.insert(
            step.name.to_string(),
            JsonCodec::bincode::<crate::isolation::CommandOutput>(),
        );
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
    ///
    /// Inputs and outputs are `Serialize + DeserializeOwned` both ways, so tools can show
    /// and accept them as JSON ([`Registry::payload_to_json`]).
    pub fn workflow<I, O, F>(&mut self, wf: Workflow<I, O>, f: F)
    where
        I: Serialize + DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
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
                input: JsonCodec::bincode::<I>(),
                output: JsonCodec::bincode::<O>(),
            },
        );
    }

    /// Register the event `event`: a send by name through a Client or Engine holding this
    /// registry is checked against its payload type `T` before it is kept.
    pub fn event<T: DeserializeOwned + 'static>(&mut self, event: Event<T>) -> &mut Self {
        self.events
            .insert(event.name().to_string(), EventDef::of::<T>());
        self.event_codecs
            .insert(event.name().to_string(), JsonCodec::json::<T>());
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

    fn codec(&self, of: PayloadOf<'_>) -> Option<&JsonCodec> {
        match of {
            PayloadOf::WorkflowInput { name, version } => {
                self.get_workflow(name, version).map(|w| &w.input)
            }
            PayloadOf::WorkflowOutput { name, version } => {
                self.get_workflow(name, version).map(|w| &w.output)
            }
            PayloadOf::StepOutput(name) => self.step_outputs.get(name),
            PayloadOf::Event(name) => self.event_codecs.get(name),
        }
    }

    /// A stored payload as JSON, decoded through the type registered for it: `None` when
    /// this registry has no type for it, `Some(Err(why))` when the bytes do not decode.
    pub fn payload_to_json(
        &self,
        of: PayloadOf<'_>,
        bytes: &[u8],
    ) -> Option<Result<serde_json::Value, String>> {
        self.codec(of).map(|c| (c.to_json)(bytes))
    }

    /// A JSON text encoded as the stored payload of its registered type (bincode for
    /// workflow inputs, sealed JSON for events): `None` when this registry has no type for
    /// it, `Some(Err(why))` when the JSON does not decode as that type.
    pub fn payload_from_json(
        &self,
        of: PayloadOf<'_>,
        json: &str,
    ) -> Option<Result<Vec<u8>, String>> {
        self.codec(of).map(|c| (c.from_json)(json))
    }

    /// The Rust type registered for a payload (for messages), if any.
    pub fn payload_type_name(&self, of: PayloadOf<'_>) -> Option<&'static str> {
        self.codec(of).map(|c| c.type_name)
    }

    /// `(name, version)` of every registered workflow, sorted.
    pub fn workflows(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self.workflows.keys().cloned().collect();
        v.sort();
        v
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
