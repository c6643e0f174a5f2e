//! What workflow code sees: the registry of named, typed steps and workflows, and the
//! contexts a workflow and a step are given.
//!
//! Dependency direction: this module reaches the engine only through
//! [`crate::exec::RunEnv`]; it never names engine internals.

pub(crate) mod ctx;
pub(crate) mod durable;
pub(crate) mod event;
pub(crate) mod registry;

pub use ctx::Ctx;
pub use durable::ChildRun;
pub use event::{Event, EventName};
pub use registry::{PayloadOf, Registry, Step, StepCtx, StepOptions, Workflow};
