//! The [`Client`]: a handle on a waymark file without workers, threads of its own or leases,
//! for another process or thread (a GUI, a CLI, a request handler): start runs, send events,
//! cancel, retry, restart, list and read runs, wait for one, all or any, and subscribe to
//! run state changes. The [`crate::Engine`] offers the same calls through the same code (it
//! holds a `Client` on its own store).
//!
//! Invariants:
//! - Every change is one guarded transition through the storage seam ([`Storage`]); the
//!   client never writes otherwise and holds no lease: runs it starts are claimed by any
//!   engine on the file.
//! - Waits and subscriptions learn of commits by change detection ([`watcher`]): one thread
//!   per client, started by the first wait or subscription, blocked in `poll(2)` when idle.

mod payloads;
mod watcher;

use crate::clock::{Clock, SystemClock};
use crate::codec;
use crate::error::Error;
use crate::store::{
    AttemptRow, NewRun, OnKeyConflict, RunFilter, RunRow, RunStatus, StepRow, Storage, StoreError,
    StoreOptions,
};
use crate::workflow::registry::{Registry, Workflow};
use crate::workflow::EventName;
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use payloads::{PayloadJson, Undecodable};
pub use watcher::{RunEvent, Subscription};

/// Options for starting a run.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Starting twice with the same key (same workflow, same input) returns the first run's
    /// id and creates nothing. The same key with another input is
    /// [`Error::KeyConflict`], unless [`StartOptions::on_key_conflict`] says otherwise.
    pub idempotency_key: Option<String>,
    /// Queue name (default `"default"`).
    pub queue: Option<String>,
    /// Higher runs first.
    pub priority: i64,
    /// Do not start before this wall-clock time (ms since the Unix epoch).
    pub not_before_ms: Option<i64>,
    /// Fail the run if it has not finished by this wall-clock time (ms since the epoch).
    pub deadline_ms: Option<i64>,
    /// What a key naming a run with another input does (default: an error).
    pub key_conflict: OnKeyConflict,
    /// The run is meant for another build: start it even though the starter's registry
    /// does not have its workflow (it waits until an engine that has it claims it).
    pub for_other_build: bool,
}

impl StartOptions {
    /// Options with an idempotency key.
    pub fn key(key: impl Into<String>) -> Self {
        StartOptions {
            idempotency_key: Some(key.into()),
            ..Default::default()
        }
    }

    /// Choose what a key naming a run with another input does.
    pub fn on_key_conflict(mut self, policy: OnKeyConflict) -> Self {
        self.key_conflict = policy;
        self
    }

    /// Start the run even though this starter's registry does not have its workflow at
    /// its version: it is meant for another build (another binary, or the next deploy),
    /// whose engine will claim it. Without this, such a start is [`Error::UnknownWorkflow`].
    pub fn for_other_build(mut self) -> Self {
        self.for_other_build = true;
        self
    }
}

/// How a [`Client`] opens its file.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The waymark file (it must exist: an engine created it).
    pub db_path: PathBuf,
    /// How long a write waits for the write lock held by another process before failing
    /// with [`StoreError::Locked`] (nothing written).
    pub lock_wait_max: Duration,
    /// SQLite's busy timeout per call.
    pub busy_timeout: Duration,
    /// Largest input or event payload accepted, in bytes.
    pub payload_bytes_max: u64,
    /// The application's registry, if the client has one: starts of unknown workflows are
    /// refused and events sent by name are checked against their registered types.
    pub registry: Option<Arc<Registry>>,
    /// Create the file (with its schema) if it does not exist (default: it must exist).
    pub create: bool,
}

impl ClientConfig {
    /// Defaults for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ClientConfig {
            db_path: path.into(),
            lock_wait_max: crate::store::LOCK_WAIT_MAX_DEFAULT,
            busy_timeout: Duration::from_secs(5),
            payload_bytes_max: codec::PAYLOAD_BYTES_MAX,
            registry: None,
            create: false,
        }
    }

    /// Check starts and sends against `registry` (the application's own).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(Arc::new(registry));
        self
    }
}

/// A handle on a waymark file without workers or leases. Cheap to clone (clones share one
/// connection pool, one writer and one change watch).
///
/// Without a registry ([`ClientConfig::registry`]) a client cannot know which workflows
/// exist or what type an event carries: it starts any workflow (as if
/// [`StartOptions::for_other_build`]) and sends any JSON payload; a run then waits for an
/// engine that has its workflow, and a payload of the wrong type parks the waiting run
/// `blocked` (never fails it).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Storage>,
    registry: Option<Arc<Registry>>,
    payload_max: u64,
    clock: Arc<dyn Clock>,
    /// Called after a change that may make a run claimable (an engine wakes its dispatcher).
    after_change: Option<Box<dyn Fn() + Send + Sync>>,
    watcher: Mutex<Option<Arc<watcher::Watcher>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.lock().take() {
            w.stop_and_join();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("store", &self.shared.store)
            .field("registry", &self.shared.registry.is_some())
            .finish()
    }
}

impl Client {
    /// Open the existing waymark file at `path` with default settings and no registry.
    pub fn open(path: impl Into<PathBuf>) -> Result<Client, Error> {
        Client::open_with(ClientConfig::new(path))
    }

    /// Open with `config`.
    pub fn open_with(config: ClientConfig) -> Result<Client, Error> {
        let opts = StoreOptions {
            create: config.create,
            busy_timeout: config.busy_timeout,
            // A damaged file is refused here as in an engine (same open-time policy).
            quick_check: true,
            readers_max: 2,
            lock_wait_max: Some(config.lock_wait_max),
            ..StoreOptions::default()
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::from_env());
        let store = crate::store::open_storage(&config.db_path, &opts, clock.clone(), 4)?.api;
        Ok(Client::over(
            store,
            config.registry,
            config.payload_bytes_max,
            clock,
            None,
        ))
    }

    /// A client over an open store (the engine's own).
    pub(crate) fn over(
        store: Arc<dyn Storage>,
        registry: Option<Arc<Registry>>,
        payload_max: u64,
        clock: Arc<dyn Clock>,
        after_change: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> Client {
        Client {
            shared: Arc::new(Shared {
                store,
                registry,
                payload_max,
                clock,
                after_change,
                watcher: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn store(&self) -> &dyn Storage {
        &*self.shared.store
    }

    /// The storage seam and the clock this client uses (for in-process readers: the console).
    #[cfg_attr(not(feature = "console"), allow(dead_code))]
    pub(crate) fn storage(&self) -> (Arc<dyn Storage>, Arc<dyn Clock>) {
        (self.shared.store.clone(), self.shared.clock.clone())
    }

    fn changed(&self) {
        if let Some(f) = &self.shared.after_change {
            f();
        }
        self.nudge();
    }

    /// Wake this client's waiters to look again (a change this process knows of).
    pub(crate) fn nudge(&self) {
        if let Some(w) = self.shared.watcher.lock().as_ref() {
            w.bump();
        }
    }

    fn new_run(
        &self,
        workflow: &str,
        version: u32,
        input: Vec<u8>,
        opts: StartOptions,
    ) -> Result<(NewRun, OnKeyConflict), Error> {
        if let Some(registry) = &self.shared.registry {
            if !opts.for_other_build && !registry.has_workflow(workflow, version) {
                return Err(Error::UnknownWorkflow {
                    name: workflow.to_string(),
                    version,
                });
            }
        }
        Ok((
            NewRun {
                workflow: workflow.to_string(),
                version: i64::from(version),
                input,
                idempotency_key: opts.idempotency_key,
                queue: opts.queue.unwrap_or_else(|| "default".into()),
                priority: opts.priority,
                ready_at: opts.not_before_ms,
                parent_id: None,
                deadline_at: opts.deadline_ms,
            },
            opts.key_conflict,
        ))
    }

    fn encode<I: Serialize>(&self, input: &I) -> Result<Vec<u8>, Error> {
        codec::encode(input, self.shared.payload_max).map_err(|source| Error::Payload {
            run_id: None,
            step: None,
            source,
        })
    }

    /// Start a run of `wf`. With an idempotency key already used for the same workflow and
    /// input, returns that run's id; with another input, [`Error::KeyConflict`] (see
    /// [`StartOptions::on_key_conflict`]). With a registry that lacks `wf` at its version,
    /// [`Error::UnknownWorkflow`] (see [`StartOptions::for_other_build`]).
    pub fn start_run<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        input: &I,
        opts: StartOptions,
    ) -> Result<i64, Error> {
        let input = self.encode(input)?;
        self.start_encoded(wf.name(), wf.get_version(), input, opts)
    }

    /// Start many runs in one transaction (all or none). Returns their ids in order.
    pub fn start_many<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        inputs: &[(I, StartOptions)],
    ) -> Result<Vec<i64>, Error> {
        let runs = inputs
            .iter()
            .map(|(i, o)| self.new_run(wf.name(), wf.get_version(), self.encode(i)?, o.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let started = self.store().start_runs(runs)?;
        self.changed();
        Ok(started.into_iter().map(|s| s.id).collect())
    }

    /// Start a run from an already encoded input (tools that decode JSON through a
    /// registry). Same rules as [`Client::start_run`].
    #[doc(hidden)]
    pub fn start_encoded(
        &self,
        workflow: &str,
        version: u32,
        input: Vec<u8>,
        opts: StartOptions,
    ) -> Result<i64, Error> {
        let run = self.new_run(workflow, version, input, opts)?;
        let started = self.store().start_runs(vec![run])?;
        self.changed();
        started
            .first()
            .map(|s| s.id)
            .ok_or_else(|| Error::internal("start answered no run"))
    }

    /// [`Client::start_run`] whose commit also claims a run for an engine's idle worker
    /// (see `Storage::start_runs_claiming`): the engine's start path.
    pub(crate) fn start_claiming<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        input: &I,
        opts: StartOptions,
        next: crate::store::ClaimNext,
    ) -> Result<(i64, Vec<crate::store::Claimed>), Error> {
        let input = self.encode(input)?;
        let run = self.new_run(wf.name(), wf.get_version(), input, opts)?;
        let (started, claimed) = self.store().start_runs_claiming(vec![run], next)?;
        self.changed();
        let id = started
            .first()
            .map(|s| s.id)
            .ok_or_else(|| Error::internal("start answered no run"))?;
        Ok((id, claimed))
    }

    /// Send event `event` (a typed [`crate::Event`] handle, or a name) with `payload` to a
    /// run. Kept until the run waits for it ([`crate::Ctx::wait_event`]); a run suspended
    /// waiting for it is woken at once. Returns the event id. A finished run refuses events.
    ///
    /// With a handle the payload type is checked at compile time; by name it is checked
    /// against the type registered for the event if this client has a registry
    /// ([`Error::EventType`]).
    pub fn send_event<T: Serialize>(
        &self,
        run_id: i64,
        event: impl EventName<T>,
        payload: &T,
    ) -> Result<i64, Error> {
        let name = event.event_name();
        let payload = serde_json::to_vec(payload).map_err(|e| Error::EventType {
            run_id,
            detail: format!("event '{name}' payload does not encode as JSON: {e}"),
        })?;
        self.send_event_bytes(run_id, name, payload)
    }

    /// Send event `name` with a JSON payload given as text (tools: the CLI's `send`).
    /// The text must be JSON; it is checked against the registered type where known.
    pub fn send_event_json(&self, run_id: i64, name: &str, json: &str) -> Result<i64, Error> {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(json) {
            return Err(Error::EventType {
                run_id,
                detail: format!("event '{name}' payload is not JSON: {e}"),
            });
        }
        self.send_event_bytes(run_id, name, json.as_bytes().to_vec())
    }

    fn send_event_bytes(&self, run_id: i64, name: &str, payload: Vec<u8>) -> Result<i64, Error> {
        if let Some(registry) = &self.shared.registry {
            registry
                .check_event(name, &payload)
                .map_err(|detail| Error::EventType { run_id, detail })?;
        }
        let id = send_event_bytes(self.store(), run_id, name, payload, self.shared.payload_max)?;
        self.changed();
        Ok(id)
    }

    /// Cancel a run and its descendants. A pending, suspended or blocked run ends
    /// `cancelled` at once; a running one is told and ends `cancelled` at its next step
    /// boundary. Returns the run's status after the request (a finished run keeps its
    /// status: compare with [`RunStatus::is_final`]).
    pub fn cancel(&self, run_id: i64) -> Result<RunStatus, Error> {
        let status = self
            .store()
            .cancel(run_id)?
            .parse::<RunStatus>()
            .map_err(|e| Error::internal(format!("cancel of run {run_id} answered {e}")))?;
        self.nudge();
        Ok(status)
    }

    /// Move a parked (`blocked`, `blocked_version`) run back to pending.
    pub fn resume(&self, run_id: i64) -> Result<(), Error> {
        self.store().resume(run_id)?;
        self.changed();
        Ok(())
    }

    /// Retry a finished run (failed, cancelled or completed) as a NEW run with the same
    /// workflow and input, linked to it (`retry_of`; the old run shows `retried_as`). The
    /// new run's journal starts with copies of the old run's entries before its first
    /// failed one, so those steps replay without running; it executes from the step that
    /// failed. The old run is not changed; a child run it started in the copied part becomes
    /// the new run's child (the new run joins it; it is not started again; of two retries of
    /// one run, the first takes it). Returns the new run's id.
    pub fn retry(&self, run_id: i64) -> Result<i64, Error> {
        let id = self.store().retry(run_id, None)?;
        self.changed();
        Ok(id)
    }

    /// Like [`Client::retry`], keeping only the old run's journal entries before seq
    /// `from_seq` (seqs count from 0, as [`StepRow::seq`]): the entries from `from_seq` on
    /// run again (`restart(run, 1)` re-runs all but the first step).
    pub fn restart(&self, run_id: i64, from_seq: i64) -> Result<i64, Error> {
        if from_seq < 0 {
            return Err(Error::Config(format!(
                "restart of run {run_id} from seq {from_seq}: journal seqs count from 0"
            )));
        }
        let id = self.store().retry(run_id, Some(from_seq))?;
        self.changed();
        Ok(id)
    }

    /// Runs matching `filter` (see [`RunFilter`] for paging).
    pub fn list(&self, filter: &RunFilter) -> Result<Vec<RunRow>, Error> {
        Ok(self.store().list(filter)?)
    }

    /// The run's current row; [`StoreError::NotFound`] if there is none.
    pub fn run(&self, run_id: i64) -> Result<RunRow, Error> {
        self.store()
            .run(run_id)?
            .ok_or(Error::Store(StoreError::NotFound { run_id }))
    }

    fn must_exist(&self, run_id: i64) -> Result<(), Error> {
        if self.store().run_exists(run_id)? {
            Ok(())
        } else {
            Err(Error::Store(StoreError::NotFound { run_id }))
        }
    }

    /// The run's journal; [`StoreError::NotFound`] if there is no such run.
    pub fn journal(&self, run_id: i64) -> Result<Vec<StepRow>, Error> {
        let rows = self.store().journal(run_id)?;
        if rows.is_empty() {
            self.must_exist(run_id)?;
        }
        Ok(rows)
    }

    /// Every recorded execution attempt of the run's steps, in order;
    /// [`StoreError::NotFound`] if there is no such run.
    pub fn attempts(&self, run_id: i64) -> Result<Vec<AttemptRow>, Error> {
        let rows = self.store().attempts(run_id)?;
        if rows.is_empty() {
            self.must_exist(run_id)?;
        }
        Ok(rows)
    }

    /// The run's stored input (sealed bincode of its workflow's input type; decode it with
    /// [`crate::Registry::payload_to_json`]); [`StoreError::NotFound`] if there is no such run.
    pub fn run_input(&self, run_id: i64) -> Result<Vec<u8>, Error> {
        self.store()
            .run_input(run_id)?
            .ok_or(Error::Store(StoreError::NotFound { run_id }))
    }

    /// Now, in milliseconds since the Unix epoch, by the clock this client reads (tools
    /// show ages with it).
    pub fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// What became of an attempt without a recorded outcome (`a.outcome` is `None`):
    /// `running`, or how it was cut off once its run moved on ("interrupted: owner pid N
    /// died", "interrupted: owner (pid N) lost its lease"). An attempt with an outcome
    /// reads as that outcome.
    pub fn attempt_state(&self, run: &RunRow, a: &AttemptRow) -> Result<String, Error> {
        if let Some(o) = &a.outcome {
            return Ok(o.clone());
        }
        let moved_on =
            run.status.is_final() || run.epoch != a.epoch || run.status != RunStatus::Running;
        if !moved_on {
            return Ok("running".into());
        }
        // The reaper's reason names the owner and its pid ("owner engine ID (pid N) is
        // dead"); it is kept for the run's last interruption only.
        if let Some(why) = run
            .last_interruption
            .as_deref()
            .filter(|w| w.contains(a.owner.as_str()))
        {
            let pid = why
                .split("(pid ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .and_then(|p| p.parse::<i64>().ok());
            return Ok(match pid {
                Some(pid) if why.ends_with("is dead") => {
                    format!("interrupted: owner pid {pid} died")
                }
                _ => format!("interrupted: owner lost its lease ({why})"),
            });
        }
        let owners = self.store().owners()?;
        let Some(e) = owners.iter().find(|o| o.id == a.owner) else {
            return Ok("interrupted: owner lost its lease (its engine record is gone)".into());
        };
        let Some(pid) = e.pid else {
            return Ok("interrupted: owner lost its lease".into());
        };
        let alive = e.boot_id.as_deref() == Some(crate::host::boot_id().as_str())
            && u32::try_from(pid)
                .ok()
                .and_then(crate::host::pid_start_time)
                .is_some_and(|start| Some(start as i64) == e.pid_start);
        Ok(if alive {
            format!("interrupted: owner (pid {pid}) lost its lease")
        } else {
            format!("interrupted: owner pid {pid} died")
        })
    }

    /// Start many runs of one workflow from already encoded inputs, in one transaction
    /// (tools that decode JSON through a registry). Same rules as [`Client::start_run`].
    #[doc(hidden)]
    pub fn start_many_encoded(
        &self,
        workflow: &str,
        version: u32,
        runs: Vec<(Vec<u8>, StartOptions)>,
    ) -> Result<Vec<i64>, Error> {
        let runs = runs
            .into_iter()
            .map(|(input, o)| self.new_run(workflow, version, input, o))
            .collect::<Result<Vec<_>, _>>()?;
        let started = self.store().start_runs(runs)?;
        self.changed();
        Ok(started.into_iter().map(|s| s.id).collect())
    }

    /// How many runs are in each status (statuses without runs are absent).
    pub fn stats(&self) -> Result<BTreeMap<RunStatus, u64>, Error> {
        let mut out = BTreeMap::new();
        for (status, n) in self.store().stats()? {
            match status.parse::<RunStatus>() {
                Ok(s) => {
                    out.insert(s, u64::try_from(n).unwrap_or(0));
                }
                Err(e) => log::warn!("stats: {e}"),
            }
        }
        Ok(out)
    }

    fn watcher(&self) -> Result<Arc<watcher::Watcher>, Error> {
        let mut slot = self.shared.watcher.lock();
        if let Some(w) = slot.as_ref() {
            return Ok(w.clone());
        }
        let w = watcher::Watcher::start(&self.shared.store)?;
        *slot = Some(w.clone());
        Ok(w)
    }

    /// Wait until `done` holds for the rows of `ids` read together, up to `timeout`.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Client) -> Result<Option<T>, Error>,
        timed_out: impl FnOnce() -> Error,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + timeout;
        let watcher = self.watcher()?;
        loop {
            let seen = watcher.generation();
            if let Some(v) = done(self)? {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            watcher.wait_past(seen, deadline - now);
        }
    }

    /// Wait until the run is final (completed, failed, cancelled) or parked (blocked),
    /// up to `timeout` ([`Error::WaitTimeout`] after it).
    pub fn wait(&self, run_id: i64, timeout: Duration) -> Result<RunRow, Error> {
        self.wait_until(
            timeout,
            |c| {
                let row = c.run(run_id)?;
                Ok(settled(&row).then_some(row))
            },
            || Error::WaitTimeout { run_id },
        )
    }

    /// Wait until every run of `ids` is final or parked; their rows in the order of `ids`.
    pub fn wait_all(&self, ids: &[i64], timeout: Duration) -> Result<Vec<RunRow>, Error> {
        let mut rows: Vec<Option<RunRow>> = vec![None; ids.len()];
        let mut pending_first = 0usize;
        let result = self.wait_until(
            timeout,
            |c| {
                for (i, id) in ids.iter().enumerate() {
                    if rows[i].is_none() {
                        let row = c.run(*id)?;
                        if settled(&row) {
                            rows[i] = Some(row);
                        }
                    }
                }
                pending_first = rows.iter().position(Option::is_none).unwrap_or(ids.len());
                Ok((pending_first == ids.len()).then_some(()))
            },
            || Error::WaitTimeout { run_id: 0 },
        );
        match result {
            Ok(()) => Ok(rows.into_iter().flatten().collect()),
            Err(Error::WaitTimeout { .. }) => Err(Error::WaitTimeout {
                run_id: ids.get(pending_first).copied().unwrap_or(0),
            }),
            Err(e) => Err(e),
        }
    }

    /// Wait until any run of `ids` is final or parked; that run's row (the first in `ids`
    /// order when several are).
    pub fn wait_any(&self, ids: &[i64], timeout: Duration) -> Result<RunRow, Error> {
        self.wait_until(
            timeout,
            |c| {
                for id in ids {
                    let row = c.run(*id)?;
                    if settled(&row) {
                        return Ok(Some(row));
                    }
                }
                Ok(None)
            },
            || Error::WaitTimeout {
                run_id: ids.first().copied().unwrap_or(0),
            },
        )
    }

    /// Wait for the run and decode its output.
    pub fn wait_output<I, O: DeserializeOwned>(
        &self,
        wf: Workflow<I, O>,
        run_id: i64,
        timeout: Duration,
    ) -> Result<O, Error> {
        let row = self.run(run_id)?;
        if row.workflow != wf.name() {
            return Err(Error::WrongWorkflow {
                run_id,
                asked: wf.name().to_string(),
                actual: row.workflow,
            });
        }
        let row = self.wait(run_id, timeout)?;
        match row.status {
            RunStatus::Completed => codec::decode(
                row.output.as_deref().unwrap_or_default(),
                self.shared.payload_max,
            )
            .map_err(|source| Error::Payload {
                run_id: Some(run_id),
                step: None,
                source,
            }),
            RunStatus::Cancelled => Err(Error::RunCancelled { run_id }),
            RunStatus::Failed => Err(Error::RunFailed {
                run_id,
                error: row.error.unwrap_or_default(),
            }),
            status => Err(Error::RunBlocked {
                run_id,
                status,
                note: row.note.unwrap_or_default(),
            }),
        }
    }

    /// Subscribe to run state changes from now on (every run created and every status
    /// change, by any process on the file), e.g. for progress bars.
    pub fn subscribe(&self) -> Result<Subscription, Error> {
        self.watcher()?.subscribe(&*self.shared.store)
    }

    /// Limit queue `queue` to `concurrency` runs running at once across every engine
    /// sharing the file (`None` removes the limit).
    pub fn set_queue_limit(&self, queue: &str, concurrency: Option<u32>) -> Result<(), Error> {
        self.store()
            .set_queue_limit(queue.to_string(), concurrency.map(i64::from))?;
        self.changed();
        Ok(())
    }

    /// How many runs a purge of runs finished more than `older_than` ago would delete among
    /// those that finished within the last `recent` (a guard for tools: deleting young
    /// runs is rarely meant).
    pub fn purge_would_delete_recent(
        &self,
        older_than: Duration,
        recent: Duration,
    ) -> Result<u64, Error> {
        let now = self.shared.clock.now_ms();
        let before = now - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
        let from = now - i64::try_from(recent.as_millis()).unwrap_or(i64::MAX / 2);
        if before <= from {
            return Ok(0);
        }
        Ok(self.store().finished_between(from, before)?)
    }

    /// Delete runs that finished more than `older_than` ago, with their journals, attempts
    /// and events, in bounded batches, then return free pages to the file system.
    /// Returns the number of runs deleted.
    pub fn purge(&self, older_than: Duration) -> Result<u64, Error> {
        let before = self.shared.clock.now_ms()
            - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
        Ok(purge(self.store(), before)?)
    }
}

/// Final or parked: nothing more happens without an operator.
fn settled(row: &RunRow) -> bool {
    row.status.is_final() || row.status.is_parked()
}

/// Runs deleted per purge command (bounded so the writer is never held long).
pub const PURGE_BATCH_RUNS: i64 = 256;
/// Pages returned to the file system per vacuum command.
pub const VACUUM_BATCH_PAGES: i64 = 2048;

/// Size-checked event delivery: `payload` is JSON, stored sealed (`codec::seal`).
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
