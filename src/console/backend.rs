//! The console's only door to the data: [`Backend`]. Every page and action goes through
//! it; [`StoreBackend`] serves it from a [`Client`] (payloads decoded and events checked
//! through the client's registry, when it has one) and the storage seam under it.
//!
//! Invariant: reads go through the store's reader pool (no write lock is held while a page
//! renders); each action is one guarded transition of the storage seam.

use crate::client::{Client, PayloadJson, Undecodable};
use crate::clock::Clock;
use crate::engine::counters::EngineCounters;
use crate::error::Error;
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

impl From<Error> for BackendError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(StoreError::NotFound { run_id }) => {
                BackendError::NotFound(format!("no run {run_id}"))
            }
            e @ Error::EventType { .. } => BackendError::Bad(e.to_string()),
            e => BackendError::Failed(e.to_string()),
        }
    }
}

/// Result of a backend call.
pub type BResult<T> = Result<T, BackendError>;

/// Everything the run page shows.
#[derive(Debug, Clone)]
pub struct RunDetail {
    /// The run's row.
    pub run: RunRow,
    /// Its input as JSON (through the registered type), or why not.
    pub input: PayloadJson,
    /// Its output as JSON, if it has one.
    pub output: Option<PayloadJson>,
    /// Its journal.
    pub journal: Vec<StepRow>,
    /// Each journal entry's output as JSON (same order as `journal`), if it has one.
    pub outputs: Vec<Option<PayloadJson>>,
    /// Its attempts.
    pub attempts: Vec<AttemptRow>,
    /// Events sent to it.
    pub events: Vec<EventInfo>,
    /// Each event's payload as JSON (same order as `events`).
    pub payloads: Vec<PayloadJson>,
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
    /// The counters of the engine this console runs in, if it runs in one.
    pub engine: Option<EngineCounters>,
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

/// Reads the counters of the engine a console runs in.
pub type CountersReader = Box<dyn Fn() -> EngineCounters + Send + Sync>;

/// [`Backend`] over a [`Client`] and its storage seam.
pub struct StoreBackend {
    client: Client,
    store: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    engine: Option<CountersReader>,
}

impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBackend")
            .field("client", &self.client)
            .field("engine", &self.engine.is_some())
            .finish()
    }
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

    /// Serve `client`'s file; `engine` reads the counters of the engine the console runs
    /// in, if it does.
    pub fn new(client: Client, engine: Option<CountersReader>) -> Self {
        let (store, clock) = client.storage();
        StoreBackend {
            client,
            store,
            clock,
            engine,
        }
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
        let input = match self.store.run_input(id) {
            Ok(Some(bytes)) => self.client.input_json(&run, &bytes),
            Ok(None) => Err(Undecodable {
                reason: "no stored input".into(),
                bytes: 0,
            }),
            Err(e) => Err(Undecodable {
                reason: e.to_string(),
                bytes: 0,
            }),
        };
        let output = self.client.output_json(&run);
        let outputs = journal
            .iter()
            .map(|s| self.client.entry_output_json(s))
            .collect();
        let payloads = events
            .iter()
            .map(|e| self.client.event_json(&e.name, &e.payload))
            .collect();
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
            input,
            output,
            journal,
            outputs,
            attempts,
            events,
            payloads,
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
            engine: self.engine.as_ref().map(|read| read()),
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
        if self.store.run(id)?.is_none() {
            return Err(BackendError::NotFound(format!("no run {id}")));
        }
        // The client's checked send: JSON, and of the registered type where known.
        Ok(self.client.send_event_json(id, name, json)?)
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
