//! Operations on runs an application or an operator asks for: sending events, cancelling,
//! queue limits, retention. Each is one guarded transition through the storage seam; the
//! engine's own reaction (flags, wake-ups) follows it.

use super::control::WHY_CANCEL;
use crate::engine::Engine;
use crate::error::Error;
use crate::store::{RunStatus, Storage, StoreError};
use serde::Serialize;
use std::time::Duration;

/// Runs deleted per purge command (bounded so the writer is never held long).
pub const PURGE_BATCH_RUNS: i64 = 256;
/// Pages returned to the file system per vacuum command.
pub const VACUUM_BATCH_PAGES: i64 = 2048;

impl Engine {
    /// Send the event `name` with `payload` (as JSON) to a run. Kept until the run waits for
    /// it ([`crate::Ctx::wait_event`]); a run suspended waiting for it is woken at once.
    /// Returns the event id. A finished run refuses events.
    pub fn send_event<T: Serialize>(
        &self,
        run_id: i64,
        name: &str,
        payload: &T,
    ) -> Result<i64, Error> {
        let payload = serde_json::to_vec(payload).map_err(|e| {
            Error::Config(format!(
                "event '{name}' payload does not encode as JSON: {e}"
            ))
        })?;
        send_event_bytes(
            &*self.inner.api,
            run_id,
            name,
            payload,
            self.inner.config.payload_bytes_max,
        )
        .inspect(|_| self.inner.wake_dispatcher())
    }

    /// Cancel a run and its descendants. A pending, suspended or blocked run ends
    /// `cancelled` at once; a running one is told (its steps see the flag, a child process
    /// is killed) and ends `cancelled` at its next step boundary. Nothing of it runs again.
    /// Returns the run's status after the request.
    pub fn cancel(&self, run_id: i64) -> Result<RunStatus, Error> {
        let status = self
            .inner
            .api
            .cancel(run_id)?
            .parse::<RunStatus>()
            .map_err(|e| Error::internal(format!("cancel of run {run_id} answered {e}")))?;
        self.inner.control.flag_all(run_id, WHY_CANCEL);
        self.inner.notify_finished();
        Ok(status)
    }

    /// Limit queue `queue` to `concurrency` runs running at once across every engine
    /// sharing the file (`None` removes the limit). Runs choose a queue with
    /// [`crate::StartOptions::queue`].
    pub fn set_queue_limit(&self, queue: &str, concurrency: Option<u32>) -> Result<(), Error> {
        self.inner
            .api
            .set_queue_limit(queue.to_string(), concurrency.map(i64::from))?;
        self.inner.wake_dispatcher();
        Ok(())
    }

    /// Delete runs that finished more than `older_than` ago, with their journals, attempts
    /// and events, in bounded batches, then return free pages to the file system.
    /// Returns the number of runs deleted.
    pub fn purge(&self, older_than: Duration) -> Result<u64, Error> {
        let before = self.inner.clock.now_ms()
            - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
        Ok(purge(&*self.inner.api, before)?)
    }
}

/// Encode-checked event delivery shared by the engine and the CLI: `payload` is JSON, stored
/// sealed (`codec::seal`).
pub fn send_event_bytes(
    store: &dyn Storage,
    run_id: i64,
    name: &str,
    payload: Vec<u8>,
    payload_max: u64,
) -> Result<i64, Error> {
    if payload.len() as u64 > payload_max {
        return Err(Error::Payload {
            run_id: Some(run_id),
            step: Some(format!("event '{name}'")),
            source: crate::codec::CodecError::TooLarge {
                size: payload.len() as u64,
                limit: payload_max,
            },
        });
    }
    let sealed = crate::codec::seal(crate::codec::Format::Json, &payload);
    Ok(store.send_event(run_id, name.to_string(), sealed)?.event_id)
}

/// Purge runs finished before `before` (ms) in batches of [`PURGE_BATCH_RUNS`], then vacuum
/// incrementally. Each batch is its own writer command, so other writes interleave.
pub fn purge(store: &dyn Storage, before: i64) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let n = store.purge(before, PURGE_BATCH_RUNS)? as i64;
        total += n as u64;
        if n < PURGE_BATCH_RUNS {
            break;
        }
    }
    // Returns the free pages left; stop when none are left or a pass freed nothing.
    let mut left = usize::MAX;
    loop {
        match store.incremental_vacuum(VACUUM_BATCH_PAGES)? {
            n if n > 0 && n < left => left = n,
            _ => break,
        }
    }
    Ok(total)
}

impl Engine {
    /// The engine's storage and clock, for an in-process reader (the console).
    #[cfg_attr(not(feature = "console"), allow(dead_code))]
    pub(crate) fn storage(
        &self,
    ) -> (
        std::sync::Arc<dyn Storage>,
        std::sync::Arc<dyn crate::clock::Clock>,
    ) {
        (self.inner.api.clone(), self.inner.clock.clone())
    }
}
