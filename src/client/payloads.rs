//! Stored payloads read as JSON through the types the client's registry has for them: the
//! one path tools use to show payloads (the admin CLI's `show --json`, the web console).
//!
//! Invariant: decoding goes through [`Registry::payload_to_json`] (the registered type's
//! converter) or, for an event stored as JSON, the codec's own JSON reader; a payload that
//! neither reads is [`Undecodable`] with the reason, never a panic and never a guess.

use super::Client;
use crate::codec;
use crate::store::{RunRow, StepRow};
use crate::workflow::registry::{PayloadOf, Registry};

/// Why a stored payload cannot be shown as JSON (no registered type for it in this
/// binary, or its bytes do not decode as that type), and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Why, for people.
    pub reason: String,
    /// The stored payload's size in bytes.
    pub bytes: usize,
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", self.reason, self.bytes)
    }
}

/// A stored payload as JSON, or why it is not shown.
pub type PayloadJson = Result<serde_json::Value, Undecodable>;

fn through(registry: Option<&Registry>, of: PayloadOf<'_>, bytes: &[u8]) -> PayloadJson {
    let undecodable = |reason: String| Undecodable {
        reason,
        bytes: bytes.len(),
    };
    match registry.and_then(|r| r.payload_to_json(of, bytes).map(|v| (r, v))) {
        Some((_, Ok(v))) => Ok(v),
        Some((r, Err(why))) => Err(undecodable(format!(
            "does not decode as {}: {why}",
            r.payload_type_name(of).unwrap_or("its registered type")
        ))),
        None => Err(undecodable(
            "no registered type for this payload in this binary (use the application's own binary)"
                .into(),
        )),
    }
}

fn version(run: &RunRow) -> u32 {
    u32::try_from(run.version).unwrap_or(0)
}

impl Client {
    fn registry(&self) -> Option<&Registry> {
        self.shared.registry.as_deref()
    }

    /// A run's stored input ([`Client::run_input`]) as JSON through its workflow's
    /// registered input type.
    pub fn input_json(&self, run: &RunRow, input: &[u8]) -> PayloadJson {
        let of = PayloadOf::WorkflowInput {
            name: &run.workflow,
            version: version(run),
        };
        through(self.registry(), of, input)
    }

    /// A run's output (if it has one) as JSON through its workflow's registered output type.
    pub fn output_json(&self, run: &RunRow) -> Option<PayloadJson> {
        let of = PayloadOf::WorkflowOutput {
            name: &run.workflow,
            version: version(run),
        };
        Some(through(self.registry(), of, run.output.as_deref()?))
    }

    /// A journal entry's output (if it has one) as JSON: a step's through its registered
    /// output type, an event's as [`Client::event_json`]; other entries (sleeps, child
    /// runs) are not shown.
    pub fn entry_output_json(&self, entry: &StepRow) -> Option<PayloadJson> {
        let bytes = entry.output.as_deref()?;
        Some(match entry.kind.as_str() {
            "step" => through(self.registry(), PayloadOf::StepOutput(&entry.name), bytes),
            "event" => self.event_json(&entry.name, bytes),
            kind => Err(Undecodable {
                reason: format!("a {kind} entry"),
                bytes: bytes.len(),
            }),
        })
    }

    /// An event payload as JSON: through the event's registered type; events are stored as
    /// JSON, so one without a type here (or of another type) is shown as the JSON it holds.
    pub fn event_json(&self, name: &str, payload: &[u8]) -> PayloadJson {
        match through(self.registry(), PayloadOf::Event(name), payload) {
            Ok(v) => Ok(v),
            Err(not) => codec::decode_json::<serde_json::Value>(payload, self.shared.payload_max)
                .map_err(|_| not),
        }
    }
}
