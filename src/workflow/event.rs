//! Typed event handles: `const APPROVE: Event<bool> = Event::new("approve");`, registered
//! like steps ([`crate::Registry::event`]), waited for with [`crate::Ctx::wait_event`] and
//! sent with `send_event` of a [`crate::Client`] or an [`crate::Engine`].
//!
//! Payloads travel as JSON. A handle makes the sender's and the waiter's types agree at
//! compile time; a send by name (a `&str`) is checked against the registered type where
//! the sender's registry knows the event. A payload that still does not decode when a run
//! waits for it parks the run `blocked` (the event is set aside), never fails it.

use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// A typed handle naming an event whose payload is a `T` (as JSON).
pub struct Event<T> {
    name: &'static str,
    _payload: PhantomData<fn() -> T>,
}

impl<T> Event<T> {
    /// The event named `name`.
    pub const fn new(name: &'static str) -> Self {
        Event {
            name,
            _payload: PhantomData,
        }
    }
    /// The event's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Event<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Event<T> {}

impl<T> std::fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Event<{}>({:?})", std::any::type_name::<T>(), self.name)
    }
}

/// Something naming an event with payload type `T`: a typed [`Event<T>`] handle, or a
/// plain name (`&str`, `String`) whose type the caller chooses.
pub trait EventName<T> {
    /// The event's name.
    fn event_name(&self) -> &str;
}

impl<T> EventName<T> for Event<T> {
    fn event_name(&self) -> &str {
        self.name
    }
}

impl<T> EventName<T> for &str {
    fn event_name(&self) -> &str {
        self
    }
}

impl<T> EventName<T> for String {
    fn event_name(&self) -> &str {
        self
    }
}

impl<T> EventName<T> for &String {
    fn event_name(&self) -> &str {
        self
    }
}

/// A registered event: its payload type's name and a decode check of a JSON payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventDef {
    pub(crate) type_name: &'static str,
    pub(crate) check: fn(&[u8]) -> Result<(), String>,
}

fn check_json<T: DeserializeOwned>(payload: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<T>(payload)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl EventDef {
    pub(crate) fn of<T: DeserializeOwned>() -> Self {
        EventDef {
            type_name: std::any::type_name::<T>(),
            check: check_json::<T>,
        }
    }
}

/// Longest payload excerpt quoted in a "does not decode" message.
const EXCERPT_CHARS_MAX: usize = 64;

/// "event 'approve' payload \"yes\" does not decode as bool: ..."
pub(crate) fn mismatch(name: &str, payload: &[u8], type_name: &str, why: &str) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut excerpt: String = text.chars().take(EXCERPT_CHARS_MAX).collect();
    if text.chars().count() > EXCERPT_CHARS_MAX {
        excerpt.push_str("...");
    }
    format!("event '{name}' payload {excerpt} does not decode as {type_name}: {why}")
}
