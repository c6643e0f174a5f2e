//! The console's only door to the data: [`Backend`]. Every page and action goes through
//! it, so the storage seam (today) or the worker-less `Client` (once it lands) can serve
//! the console without a page changing.
//!
//! Invariant: reads go through the store's reader pool (no write lock is held while a page
//! renders); each action is one guarded transition of the storage seam.

use crate::client::send_event_bytes;
use crate::clock::Clock;
use crate::codec::PAYLOAD_BYTES_MAX;
use crate::store::{
    AttemptRow, EngineInfo, EventInfo, QueueInfo, RunQuery, RunRow, RunStatus, RunTotals,
    ScheduleInfo, StepDurations, StepRow, Storage, StoreError,
};
use std::sync::Arc;

/// A heartbeat older than this (ms) does not count an engine as live in `/metrics`.
pub const LIVE_BEAT_AGE_MS: i64 = 30_000;

/// Why a backend call failed, classified by the HTTP answer it becomes.
#[derive(Debug)]
pub enum BackendError {
    /// No such run (404).
    NotFound(String),
    /// The request is malformed (400).
    Bad(String),
    /// The store refused or failed (500; the message says why).
    Failed(String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::NotFound(m) | BackendError::Bad(m) | BackendError::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        BackendError::Failed(e.to_string())
    }
}

impl From<crate::error::Error> for BackendError {
    fn from(e: crate::error::Error) -> Self {
        BackendError::Failed(e.to_string())
    }
}

/// Result of a backend call.
pub type BResult<T> = Result<T, BackendError>;

/// Everything the run page shows.
#[derive(Debug, Clone)]
pub struct RunDetail {
    /// The run's row.
    pub run: RunRow,
    /// Its journal.
    pub journal: Vec<StepRow>,
    /// Its attempts.
    pub attempts: Vec<AttemptRow>,
    /// Events sent to it.
    pub events: Vec<EventInfo>,
    /// Its child runs (newest first, at most [`CHILDREN_MAX`]).
    pub children: Vec<RunRow>,
    /// The engine holding its lease: `(last heartbeat counter, when, ms)`.
    pub lease_beat: Option<(Option<i64>, Option<i64>)>,
}

/// Child runs listed on a run page.
pub const CHILDREN_MAX: i64 = 100;

/// What `/metrics` reads.
#[derive(Debug, Clone)]
pub struct MetricsData {
    /// Runs per status.
    pub counts: Vec<(String, i64)>,
    /// Attempt durations.
    pub durations: Vec<StepDurations>,
    /// Totals.
    pub totals: RunTotals,
}

/// The console's data access: reads for the pages, one call per action.
pub trait Backend: Send + Sync {
    /// Runs matching `filter`, newest first, ids below `before`.
    fn runs(&self, filter: &RunQuery, before: Option<i64>, limit: i64) -> BResult<Vec<RunRow>>;
    /// Runs per status.
    fn counts(&self) -> BResult<Vec<(String, i64)>>;
    /// One run with its journal, attempts, events, children and lease.
    fn run(&self, id: i64) -> BResult<Option<RunDetail>>;
    /// Engine incarnations.
    fn engines(&self) -> BResult<Vec<EngineInfo>>;
    /// Queues with limits and usage.
    fn queues(&self) -> BResult<Vec<QueueInfo>>;
    /// Schedules.
    fn schedules(&self) -> BResult<Vec<ScheduleInfo>>;
    /// What `/metrics` shows.
    fn metrics(&self) -> BResult<MetricsData>;
    /// Now (ms), from the store's clock.
    fn now_ms(&self) -> i64;
    /// Cancel a run and its descendants; its status afterwards.
    fn cancel(&self, id: i64) -> BResult<RunStatus>;
    /// Send event `name` with a JSON payload; the event id.
    fn send_event(&self, id: i64, name: &str, json: &str) -> BResult<i64>;
    /// Run a failed or cancelled run again from the start.
    fn retry(&self, id: i64) -> BResult<()>;
    /// Run a run again from journal entry `seq`.
    fn restart(&self, id: i64, seq: i64) -> BResult<()>;
}

/// [`Backend`] over the storage seam.
#[derive(Debug)]
pub struct StoreBackend {
    store: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
}

impl StoreBackend {
    /// A new run retrying `id` (all its successful entries, or those before `from_seq`).
    fn retry_from(&self, id: i64, from_seq: Option<i64>) -> BResult<()> {
        match self.store.retry(id, from_seq) {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => Err(BackendError::NotFound(format!("no run {id}"))),
            Err(e @ StoreError::RunNotFinished { .. }) => Err(BackendError::Bad(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Serve `store`, reading time from `clock`.
    pub fn new(store: Arc<dyn Storage>, clock: Arc<dyn Clock>) -> Self {
        StoreBackend { store, clock }
    }
}

impl Backend for StoreBackend {
    fn runs(&self, filter: &RunQuery, before: Option<i64>, limit: i64) -> BResult<Vec<RunRow>> {
        Ok(self.store.runs_filtered(filter, before, limit)?)
    }
    fn counts(&self) -> BResult<Vec<(String, i64)>> {
        Ok(self.store.stats()?)
    }
    fn run(&self, id: i64) -> BResult<Option<RunDetail>> {
        let Some(run) = self.store.run(id)? else {
            return Ok(None);
        };
        // A run with undecodable journal or attempt rows still gets its page: the bad part
        // is shown as missing (the error is logged), the rest as stored.
        let journal = self.store.journal(id).unwrap_or_else(|e| {
            log::warn!("console: journal of run {id}: {e}");
            Vec::new()
        });
        let attempts = self.store.attempts(id).unwrap_or_else(|e| {
            log::warn!("console: attempts of run {id}: {e}");
            Vec::new()
        });
        let events = self.store.events_of(id)?;
        let children = self.store.runs_filtered(
            &RunQuery {
                parent: Some(id),
                ..Default::default()
            },
            None,
            CHILDREN_MAX,
        )?;
        let lease_beat = match &run.owner {
            Some(owner) if run.status == RunStatus::Running => self
                .store
                .engines()?
                .into_iter()
                .find(|e| &e.id == owner)
                .map(|e| (e.beat, e.beat_at)),
            _ => None,
        };
        Ok(Some(RunDetail {
            run,
            journal,
            attempts,
            events,
            children,
            lease_beat,
        }))
    }
    fn engines(&self) -> BResult<Vec<EngineInfo>> {
        Ok(self.store.engines()?)
    }
    fn queues(&self) -> BResult<Vec<QueueInfo>> {
        Ok(self.store.queues()?)
    }
    fn schedules(&self) -> BResult<Vec<ScheduleInfo>> {
        Ok(self.store.schedules()?)
    }
    fn metrics(&self) -> BResult<MetricsData> {
        Ok(MetricsData {
            counts: self.store.stats()?,
            durations: self.store.step_durations()?,
            totals: self.store.run_totals(self.now_ms(), LIVE_BEAT_AGE_MS)?,
        })
    }
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
    fn cancel(&self, id: i64) -> BResult<RunStatus> {
        if self.store.run(id)?.is_none() {
            return Err(BackendError::NotFound(format!("no run {id}")));
        }
        let status = self.store.cancel(id)?;
        status
            .parse::<RunStatus>()
            .map_err(|e| BackendError::Failed(format!("cancel of run {id} answered {e}")))
    }
    fn send_event(&self, id: i64, name: &str, json: &str) -> BResult<i64> {
        if name.is_empty() {
            return Err(BackendError::Bad("an event needs a name".into()));
        }
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| BackendError::Bad(format!("the payload is not JSON: {e}")))?;
        let payload = serde_json::to_vec(&value).map_err(|e| BackendError::Bad(e.to_string()))?;
        if self.store.run(id)?.is_none() {
            return Err(BackendError::NotFound(format!("no run {id}")));
        }
        Ok(send_event_bytes(
            &*self.store,
            id,
            name,
            payload,
            PAYLOAD_BYTES_MAX,
        )?)
    }
    fn retry(&self, id: i64) -> BResult<()> {
        self.retry_from(id, None)
    }
    fn restart(&self, id: i64, seq: i64) -> BResult<()> {
        if seq < 0 {
            return Err(BackendError::Bad(format!(
                "restart of run {id} from seq {seq}: journal seqs count from 0"
            )));
        }
        self.retry_from(id, Some(seq))
    }
}
