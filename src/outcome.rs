//! How one execution of a step ended, wherever it ran.

/// The class of a failed step execution. Stored in `attempts.outcome` by [`FailureClass::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// The step returned its own error.
    StepError,
    /// The step panicked.
    Panic,
    /// The step went over its memory cap.
    MemoryLimit,
    /// The step went over its CPU-seconds cap.
    CpuLimit,
    /// The step ran past its wall-clock timeout.
    Timeout,
    /// The run was cancelled while the step ran.
    Cancelled,
    /// The step's process was killed by a signal nobody here sent.
    Signal,
    /// The step produced more output than allowed.
    OutputLimit,
    /// The child wrote something that is not a valid frame.
    Protocol,
    /// The step's process could not be started.
    Spawn,
}

impl FailureClass {
    /// Stable name stored in the database.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::StepError => "error",
            FailureClass::Panic => "panic",
            FailureClass::MemoryLimit => "memory_limit",
            FailureClass::CpuLimit => "cpu_limit",
            FailureClass::Timeout => "timeout",
            FailureClass::Cancelled => "cancelled",
            FailureClass::Signal => "signal",
            FailureClass::OutputLimit => "output_limit",
            FailureClass::Protocol => "protocol",
            FailureClass::Spawn => "spawn",
        }
    }
}

/// A failed execution: its class, a human reason, and whether the step itself said
/// retrying is pointless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub class: FailureClass,
    /// For people.
    pub reason: String,
    /// The step said retrying is pointless.
    pub permanent: bool,
}

impl Failure {
    /// A failure of `class` with `reason`.
    pub fn new(class: FailureClass, reason: impl Into<String>) -> Self {
        Failure {
            class,
            reason: reason.into(),
            permanent: false,
        }
    }
}

/// The result of one step execution: encoded output, or a classified failure.
pub type Outcome = Result<Vec<u8>, Failure>;
