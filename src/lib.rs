//! # waymark
//!
//! An embedded, single-node durable workflow executor on one SQLite file, for Linux.
//!
//! A **workflow** is a registered Rust function that calls registered, typed **steps**
//! through a [`Ctx`]. Every step result is journaled in SQLite; after a crash the workflow
//! is replayed and journaled steps return their recorded output without running again (a
//! step runs at least once; its recorded result exists exactly once). Runs are held under
//! leases with heartbeats and fenced by an epoch, so a stale owner's writes are rejected.
//! Steps run in child processes under memory and CPU caps by default.
//!
//! ## Quickstart
//!
//! ```no_run
//! use waymark::{Config, Ctx, Engine, Registry, StartOptions, Step, StepCtx, StepError, Workflow, WorkflowError};
//! use std::time::Duration;
//!
//! const DOUBLE: Step<u64, u64> = Step::new("double");
//! const PIPELINE: Workflow<u64, u64> = Workflow::new("pipeline");
//!
//! fn double(_: &StepCtx, x: u64) -> Result<u64, StepError> { Ok(x * 2) }
//!
//! fn pipeline(ctx: &mut Ctx<'_>, x: u64) -> Result<u64, WorkflowError> {
//!     let a = ctx.step(DOUBLE, &x)?;
//!     ctx.step(DOUBLE, &a)
//! }
//!
//! fn build_registry() -> Registry {
//!     let mut registry = Registry::new();
//!     registry.step(DOUBLE, double);
//!     registry.workflow(PIPELINE, pipeline);
//!     registry
//! }
//!
//! // First line of main: steps run in child processes of this binary (the default).
//! waymark::hook(build_registry);
//! let engine = Engine::start(build_registry(), Config::new("app.db")).unwrap();
//! let id = engine.start_run(PIPELINE, &21, StartOptions::key("job-21")).unwrap();
//! assert_eq!(engine.wait_output(PIPELINE, id, Duration::from_secs(10)).unwrap(), 84);
//! engine.shutdown().unwrap();
//! ```
//!
//! ## Map of the types
//!
//! | you want to | use |
//! |---|---|
//! | name a step or a workflow with its types | [`Step`], [`Workflow`] (typed `const` handles) |
//! | say which functions implement them | [`Registry`] (`step`, `command`, `workflow`), per-step [`StepOptions`] |
//! | let steps run in child processes of your binary | [`hook`], first line of `main` |
//! | run workflows | [`Engine`] with a [`Config`] ([`Isolation`], [`StepLimits`], [`RetryPolicy`], [`MemoryRlimit`], [`Synchronous`]) |
//! | start runs | [`Engine::start_run`], [`Engine::start_many`], [`StartOptions`] (idempotency key, queue, delay, deadline) |
//! | write a workflow | [`Ctx`]: `step`, `sleep`, `wait_event`, `start_child` / `join` ([`ChildRun`]) |
//! | write a step | a function of [`StepCtx`] and its input returning `Result<_, `[`StepError`]`>`; or a program: [`CommandSpec`] → [`CommandOutput`] |
//! | see a run | [`Engine::run`] ([`RunRow`], [`RunStatus`]), [`Engine::journal`] ([`StepRow`]), [`Engine::attempts`] ([`AttemptRow`], [`FailureClass`]) |
//! | operate runs | [`Engine::cancel`], [`Engine::send_event`], [`Engine::resume`], [`Engine::purge`], [`Engine::set_queue_limit`], schedules ([`ScheduleSpec`], [`Missed`]) |
//! | handle errors | [`Error`] (engine calls), [`StoreError`] (storage), [`WorkflowError`] (inside a workflow) |
//!
//! Guarantees and how each is tested: README.md ("Guarantees and how they are tested").
//!
//! The library never prints; it logs through the `log` crate. The one exception is
//! [`cli`] (the `cli` feature): the admin command line an application embeds in its
//! binary, which prints its results.

#![deny(missing_docs)]
#![warn(unnameable_types)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "waymark supports Linux only: it relies on rlimits (RLIMIT_DATA, RLIMIT_CPU), prctl, \
     pidfds, /proc (process start times, PID namespaces) and process groups"
);

mod client;
mod clock;
mod codec;
mod config;
#[cfg(feature = "console")]
#[cfg_attr(docsrs, doc(cfg(feature = "console")))]
pub mod console;
mod engine;
mod error;
mod exec;
mod fault;
mod host;
mod isolation;
mod outcome;
mod step;
mod store;
mod workflow;

#[cfg(feature = "cli")]
#[path = "cli_admin/mod.rs"]
pub mod cli;
pub use client::{
    Client, ClientConfig, PayloadJson, RunEvent, StartOptions, Subscription, Undecodable,
};
pub use codec::{CodecError, Format as PayloadFormat};
pub use config::{Config, Isolation, RetryPolicy, StepLimits};
pub use engine::counters::EngineCounters;
pub use engine::schedule::{Missed, ScheduleSpec};
pub use engine::{AttemptRow, Engine, RunRow, StepRow};
pub use error::{Error, StepError, WorkflowError};
pub use isolation::hook;
pub use isolation::{CommandOutput, CommandSpec, MemoryRlimit};
pub use outcome::{Failure, FailureClass};
/// Moving an SQLite file's runs into PostgreSQL (`waymark copy`; feature `postgres`).
#[cfg(feature = "postgres")]
pub use store::pg::copy::{CopyError, CopyOptions, CopyReport};
pub use store::{OnKeyConflict, RunFilter, RunStatus, StoreError, Synchronous, UnknownStatus};
pub use workflow::{
    ChildRun, Ctx, Event, EventName, PayloadOf, Registry, Step, StepCtx, StepOptions, Workflow,
};

/// Internals for the `waymark` binary, its tests and benches. Not part of the API: no
/// stability promise, no documentation beyond the code.
#[doc(hidden)]
pub mod internal {
    pub mod client {
        pub use crate::client::*;
    }
    pub mod clock {
        pub use crate::clock::*;
    }
    pub mod codec {
        pub use crate::codec::*;
    }
    pub mod engine {
        pub use crate::engine::*;
    }
    pub mod exec {
        pub use crate::exec::*;
    }
    pub mod fault {
        pub use crate::fault::*;
    }
    pub mod host {
        pub use crate::host::*;
    }
    pub mod isolation {
        pub use crate::isolation::*;
    }
    pub mod store {
        pub use crate::store::*;
    }
    pub mod workflow {
        pub use crate::workflow::registry::*;
    }
}
