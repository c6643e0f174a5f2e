//! Errors of the engine layer, and the error types user code sees.

use crate::codec::CodecError;
use crate::store::{RunStatus, StoreError};

/// What went wrong in an engine call. Each variant says what the caller can do next.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The storage layer failed (see [`StoreError`]; `DiskFull`, `ReadOnly`, ... are actionable).
    Store(StoreError),
    /// No workflow of this name and version is registered in this engine.
    UnknownWorkflow {
        /// The workflow name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A payload could not be encoded or decoded. Names the run and step where known.
    Payload {
        /// The run, where known.
        run_id: Option<i64>,
        /// The step, where known.
        step: Option<String>,
        /// What was wrong with the bytes.
        source: CodecError,
    },
    /// The run ended failed; `error` is its recorded reason.
    RunFailed {
        /// The run.
        run_id: i64,
        /// Its recorded error.
        error: String,
    },
    /// The run was cancelled.
    RunCancelled {
        /// The run.
        run_id: i64,
    },
    /// The run is parked (`blocked` or `blocked_version`) and needs an operator.
    RunBlocked {
        /// The run.
        run_id: i64,
        /// [`RunStatus::Blocked`] or [`RunStatus::BlockedVersion`].
        status: RunStatus,
        /// Why it is parked.
        note: String,
    },
    /// The run id belongs to another workflow than the handle the caller passed.
    WrongWorkflow {
        /// The run.
        run_id: i64,
        /// The workflow of the handle passed.
        asked: String,
        /// The run's workflow.
        actual: String,
    },
    /// The idempotency key names an existing run started with another input (or another
    /// workflow): nothing was started. Use another key, or choose
    /// [`OnKeyConflict::ReturnExisting`](crate::OnKeyConflict::ReturnExisting).
    KeyConflict {
        /// The key.
        key: String,
        /// The run that holds it.
        existing_run: i64,
    },
    /// An event payload does not match the event's registered type (or is not JSON):
    /// nothing was sent.
    EventType {
        /// The run it was for.
        run_id: i64,
        /// What is wrong, naming the event, the payload and the expected type.
        detail: String,
    },
    /// An invariant of waymark itself broke (a bug, not bad input): please report it with
    /// the text.
    Internal(String),
    /// Waiting for the run timed out; it is still going.
    WaitTimeout {
        /// The run.
        run_id: i64,
    },
    /// The configuration is invalid.
    Config(String),
    /// The engine is shutting down.
    ShuttingDown,
    /// Child-process isolation is not usable (for example the host's `main` lacks the hook).
    Isolation(String),
}

impl Error {
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Error::Internal(what.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Store(e) => write!(f, "{e}"),
            Error::UnknownWorkflow { name, version } => write!(
                f,
                "unknown workflow '{name}' version {version}: register it in the Registry before starting runs"
            ),
            Error::Payload { run_id, step, source } => {
                write!(f, "payload error")?;
                if let Some(r) = run_id {
                    write!(f, " in run {r}")?;
                }
                if let Some(s) = step {
                    write!(f, " at step '{s}'")?;
                }
                write!(f, ": {source}")
            }
            Error::RunFailed { run_id, error } => write!(f, "run {run_id} failed: {error}"),
            Error::RunCancelled { run_id } => write!(f, "run {run_id} was cancelled"),
            Error::RunBlocked { run_id, status, note } => write!(f, "run {run_id} is {status}: {note}"),
            Error::WrongWorkflow { run_id, asked, actual } => write!(
                f,
                "run {run_id} is a run of workflow '{actual}', not of '{asked}' (the handle passed)"
            ),
            Error::KeyConflict { key, existing_run } => write!(
                f,
                "idempotency key '{key}' already names run {existing_run}, started with another input; nothing was started"
            ),
            Error::EventType { run_id, detail } => write!(f, "not sent to run {run_id}: {detail}"),
            Error::Internal(what) => write!(f, "internal error (a waymark bug, please report): {what}"),
            Error::WaitTimeout { run_id } => write!(f, "timed out waiting for run {run_id}"),
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::ShuttingDown => write!(f, "the engine is shutting down"),
            Error::Isolation(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Store(e) => Some(e),
            Error::Payload { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::KeyConflict { key, existing_run } => {
                Error::KeyConflict { key, existing_run }
            }
            e => Error::Store(e),
        }
    }
}

/// A step's own failure, returned by step functions.
///
/// `retryable` errors are retried by the step's retry policy; `permanent` ones are not.
/// Any `std::error::Error` converts into a retryable `StepError` with `?`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepError {
    /// What went wrong, for people.
    pub message: String,
    /// Retrying is pointless: the retry policy does not retry it.
    pub permanent: bool,
}

impl StepError {
    /// A failure worth retrying (the default for `?`).
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        StepError {
            message: message.to_string(),
            permanent: false,
        }
    }
    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        StepError {
            message: message.to_string(),
            permanent: true,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError::retryable(e)
    }
}

/// What a workflow function returns on failure, and what [`crate::Ctx`] calls return.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkflowError {
    /// A step failed for good (after its retries). The workflow may handle it or return it.
    Step {
        /// The step's journal sequence number.
        seq: i64,
        /// The step's name.
        name: String,
        /// Its last failure.
        reason: String,
    },
    /// The workflow decided to fail.
    Failed(String),
    /// The engine took the run away (suspended, lease lost, shutting down, non-determinism,
    /// undecodable data). Return it with `?`; whatever the workflow returns afterwards is ignored.
    Interrupted,
}

impl WorkflowError {
    /// A workflow failure with this message.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        WorkflowError::Failed(message.to_string())
    }
}

impl std::fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkflowError::Step { seq, name, reason } => {
                write!(f, "step '{name}' (seq {seq}) failed: {reason}")
            }
            WorkflowError::Failed(m) => f.write_str(m),
            WorkflowError::Interrupted => f.write_str("interrupted by the engine"),
        }
    }
}

impl std::error::Error for WorkflowError {}
