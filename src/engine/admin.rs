//! Operations on runs an application or an operator asks for: sending events, cancelling,
//! queue limits, retention. Each is one guarded transition through the storage seam (the
//! engine's [`crate::Client`]); the engine's own reaction (flags, wake-ups) follows it.

use super::control::WHY_CANCEL;
use crate::engine::Engine;
use crate::error::Error;
use crate::store::RunStatus;
use crate::workflow::EventName;
use serde::Serialize;
use std::time::Duration;

pub use crate::client::{purge, send_event_bytes, PURGE_BATCH_RUNS, VACUUM_BATCH_PAGES};

impl Engine {
    /// Send event `event` (a typed [`crate::Event`] handle, or a name) with `payload` (as
    /// JSON) to a run; see [`crate::Client::send_event`]. Returns the event id.
    pub fn send_event<T: Serialize>(
        &self,
        run_id: i64,
        event: impl EventName<T>,
        payload: &T,
    ) -> Result<i64, Error> {
        self.inner.client.send_event(run_id, event, payload)
    }

    /// Cancel a run and its descendants. A pending, suspended or blocked run ends
    /// `cancelled` at once; a running one is told (its steps see the flag, a child process
    /// is killed) and ends `cancelled` at its next step boundary. Nothing of it runs again.
    /// Returns the run's status after the request.
    pub fn cancel(&self, run_id: i64) -> Result<RunStatus, Error> {
        let status = self.inner.client.cancel(run_id)?;
        self.inner.control.flag_all(run_id, WHY_CANCEL);
        self.inner.notify_finished();
        Ok(status)
    }

    /// Limit queue `queue` to `concurrency` runs running at once across every engine
    /// sharing the file (`None` removes the limit). Runs choose a queue with
    /// [`crate::StartOptions::queue`].
    pub fn set_queue_limit(&self, queue: &str, concurrency: Option<u32>) -> Result<(), Error> {
        self.inner.client.set_queue_limit(queue, concurrency)
    }

    /// Delete runs that finished more than `older_than` ago, with their journals, attempts
    /// and events, in bounded batches, then return free pages to the file system.
    /// Returns the number of runs deleted.
    pub fn purge(&self, older_than: Duration) -> Result<u64, Error> {
        self.inner.client.purge(older_than)
    }
}
