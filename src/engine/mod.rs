//! The engine: threads around one store. It holds handles, not state: everything a run
//! needs to continue is in the database.
//!
//! Threads: one writer (in the store), one dispatcher, `workers` workers, one heartbeat,
//! one reaper. No async runtime.

#[doc(hidden)]
pub mod admin;
#[doc(hidden)]
pub mod control;
#[doc(hidden)]
pub mod dispatch;
#[doc(hidden)]
mod env;
#[doc(hidden)]
pub mod health;
#[doc(hidden)]
pub mod lease;
#[doc(hidden)]
pub mod reaper;
pub mod schedule;
#[doc(hidden)]
pub mod worker;

use crate::clock::{Clock, SystemClock};
use crate::codec;
use crate::config::{Config, Isolation};
use crate::error::Error;
use crate::host;
use crate::store::{EngineRow, NewRun, RunStatus, Storage, Store, StoreError, StoreOptions};
use crate::workflow::registry::{Registry, Workflow};
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::store::{AttemptRow, RunRow, StepRow};

/// Options for starting a run.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Starting twice with the same key returns the first run's id and creates nothing.
    pub idempotency_key: Option<String>,
    /// Queue name (default `"default"`).
    pub queue: Option<String>,
    /// Higher runs first.
    pub priority: i64,
    /// Do not start before this wall-clock time (ms since the Unix epoch).
    pub not_before_ms: Option<i64>,
    /// Fail the run if it has not finished by this wall-clock time (ms since the epoch).
    pub deadline_ms: Option<i64>,
}

impl StartOptions {
    /// Options with an idempotency key.
    pub fn key(key: impl Into<String>) -> Self {
        StartOptions {
            idempotency_key: Some(key.into()),
            ..Default::default()
        }
    }
}

/// A claimed run handed to a worker, with the incarnation that claimed it (its fence owner).
pub(crate) type Work = (Arc<str>, crate::store::Claimed);

/// Shared state of the engine's threads: handles and flags only.
pub struct Inner {
    pub(crate) store: Arc<dyn Storage>,
    /// The same store for API calls: bounded wait for the write lock (`Config::lock_wait_max`).
    pub(crate) api: Arc<dyn Storage>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) config: Config,
    pub(crate) clock: Arc<dyn Clock>,
    /// This host and PID namespace ([`host::host_id`]), stored in our engine row.
    pub(crate) boot_id: String,
    pub(crate) workflows_json: Arc<str>,
    pub(crate) lease: lease::LeaseGuard,
    pub(crate) shutdown: AtomicBool,
    /// Set at the end of the shutdown grace: child steps still running are killed.
    pub(crate) abort_steps: AtomicBool,
    workers_live: AtomicUsize,
    pub(crate) storage_failed: AtomicBool,
    pub(crate) health: health::Health,
    pub(crate) in_flight: AtomicI64,
    wake_tx: Sender<()>,
    finished: (Mutex<u64>, Condvar),
    in_process: crate::exec::InProcess,
    child: crate::isolation::ChildExecutor,
    pool: crate::isolation::PoolExecutor,
    pub(crate) control: control::Control,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("owner", &self.owner())
            .field("store", &self.store)
            .finish()
    }
}

impl Inner {
    /// The incarnation id this engine claims and writes as now (see [`lease::LeaseGuard`]).
    pub(crate) fn owner(&self) -> Arc<str> {
        self.lease.owner()
    }

    /// True once the shutdown grace ended: executions still running are being killed.
    pub(crate) fn steps_aborted(&self) -> bool {
        self.abort_steps.load(Ordering::SeqCst)
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub(crate) fn wake_dispatcher(&self) {
        let _ = self.wake_tx.try_send(());
    }

    pub(crate) fn notify_finished(&self) {
        *self.finished.0.lock() += 1;
        self.finished.1.notify_all();
    }

    /// Remember a storage failure: after disk-full or I/O errors the engine stops claiming
    /// and renewing until a probe write succeeds (see [`health`]).
    pub(crate) fn note_store_error(&self, e: &StoreError) {
        self.health.failed(self, e);
    }

    pub(crate) fn executor(&self, isolation: Isolation) -> &dyn crate::exec::Executor {
        match isolation {
            Isolation::InProcess => &self.in_process,
            Isolation::Child => &self.child,
            Isolation::Pool => &self.pool,
        }
    }
}

/// A running engine. Dropping it shuts it down gracefully.
pub struct Engine {
    inner: Arc<Inner>,
    stop_tx: Option<Sender<()>>,
    /// Heartbeat, reaper and feature poller: they outlive the workers at shutdown.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Workers and the dispatcher.
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    work_tx: Mutex<Option<Sender<Work>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("inner", &self.inner)
            .finish()
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::Config(format!("cannot start thread {name}: {e}")))
}

impl Engine {
    /// Open the database in `config` and start executing runs of `registry`'s workflows.
    pub fn start(registry: Registry, config: Config) -> Result<Engine, Error> {
        Self::start_with_clock(registry, config, Arc::new(SystemClock::from_env()))
    }

    /// [`Engine::start`] with an injected clock (tests).
    pub fn start_with_clock(
        registry: Registry,
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, Error> {
        config.validate()?;
        let child = crate::isolation::executor::preflight(&config, &registry)?;
        // A step child whose engine stays stopped (SIGSTOP) for half a TTL ends its own tree:
        // another engine may reclaim the run after one TTL without being able to signal it.
        crate::isolation::set_stopped_kill(config.lease_ttl / 2);
        let opts = StoreOptions {
            create: true,
            synchronous: config.synchronous,
            busy_timeout: config.busy_timeout,
            quick_check: config.quick_check_on_open && !config.quick_check_always,
            readers_max: 4,
            lock_wait_max: Some(config.lock_wait_max),
            vfs: config.vfs.clone(),
        };
        // `api` bounds its wait for the write lock (API calls); the engine's own threads
        // use `store`, which waits as long as another process holds the lock.
        let sqlite = Store::open(&config.db_path, &opts, clock.clone())?;
        if config.quick_check_always {
            // Opt-in: check every open whatever the size (Store::open skipped it).
            let path = config.db_path.clone();
            sqlite.read(|c| crate::store::schema::quick_check(c, &path))?;
        }
        let store: Arc<dyn Storage> = Arc::new(sqlite.with_lock_wait(None));
        let api: Arc<dyn Storage> = Arc::new(sqlite);
        let owner: Arc<str> = host::random_id().into();
        let (pid, pid_start) = host::this_process();
        let boot_id = host::host_id();
        store.register_engine(EngineRow {
            id: owner.clone(),
            pid,
            pid_start,
            boot_id: boot_id.clone(),
        })?;
        let (wake_tx, wake_rx) = bounded(1);
        let workflows_json: Arc<str> = registry.workflow_keys_json().into();
        let pool = crate::isolation::PoolExecutor::new(
            child.clone(),
            config.pool_runs_max,
            config.pool_rss_max_bytes,
            config.workers,
        );
        let inner = Arc::new(Inner {
            store,
            api,
            registry: Arc::new(registry),
            lease: lease::LeaseGuard::new(config.lease_ttl, owner),
            config,
            clock,
            boot_id,
            workflows_json,
            shutdown: AtomicBool::new(false),
            abort_steps: AtomicBool::new(false),
            workers_live: AtomicUsize::new(0),
            storage_failed: AtomicBool::new(false),
            health: health::Health::default(),
            in_flight: AtomicI64::new(0),
            wake_tx,
            finished: (Mutex::new(0), Condvar::new()),
            in_process: crate::exec::InProcess,
            pool,
            child,
            control: control::Control::default(),
        });
        log::info!(
            "engine {} started on {} (pid {pid}, {} workers)",
            inner.owner(),
            inner.config.db_path.display(),
            inner.config.workers
        );
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (work_tx, work_rx) = bounded::<Work>(inner.config.workers);
        let mut threads = Vec::new();
        let mut workers = Vec::new();
        for i in 0..inner.config.workers {
            let (inner, rx) = (inner.clone(), work_rx.clone());
            inner.workers_live.fetch_add(1, Ordering::SeqCst);
            workers.push(spawn(&format!("waymark-worker-{i}"), move || {
                worker_loop(&inner, rx);
                inner.workers_live.fetch_sub(1, Ordering::SeqCst);
                inner.notify_finished();
            })?);
        }
        let (i2, s2) = (inner.clone(), stop_rx.clone());
        threads.push(spawn("waymark-heartbeat", move || {
            lease::heartbeat_loop(&i2, s2)
        })?);
        let (i3, s3) = (inner.clone(), stop_rx.clone());
        threads.push(spawn("waymark-reaper", move || {
            reaper::reaper_loop(&i3, s3)
        })?);
        let (i5, s5) = (inner.clone(), stop_rx.clone());
        threads.push(spawn("waymark-control", move || {
            control::control_loop(&i5, s5)
        })?);
        let (i4, w4) = (inner.clone(), work_tx.clone());
        workers.push(spawn("waymark-dispatcher", move || {
            dispatch::dispatch_loop(&i4, w4, wake_rx)
        })?);
        Ok(Engine {
            inner,
            stop_tx: Some(stop_tx),
            threads: Mutex::new(threads),
            workers: Mutex::new(workers),
            work_tx: Mutex::new(Some(work_tx)),
        })
    }

    /// This engine's current incarnation id (the `owner` of the runs it holds). It changes
    /// if another engine judged this one dead and fenced it: the engine then continues
    /// under a new id.
    pub fn owner_id(&self) -> Arc<str> {
        self.inner.owner()
    }

    /// The database file this engine runs on (for tools that read it directly).
    #[doc(hidden)]
    pub fn db_path(&self) -> &std::path::Path {
        &self.inner.config.db_path
    }

    /// The storage seam (every transition and query) for tools and tests.
    #[doc(hidden)]
    pub fn store(&self) -> &dyn Storage {
        &*self.inner.store
    }

    fn new_run<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        input: &I,
        opts: StartOptions,
    ) -> Result<NewRun, Error> {
        let input =
            codec::encode(input, self.inner.config.payload_bytes_max).map_err(|source| {
                Error::Payload {
                    run_id: None,
                    step: None,
                    source,
                }
            })?;
        Ok(NewRun {
            workflow: wf.name().to_string(),
            version: wf.get_version() as i64,
            input,
            idempotency_key: opts.idempotency_key,
            queue: opts.queue.unwrap_or_else(|| "default".into()),
            priority: opts.priority,
            ready_at: opts.not_before_ms,
            parent_id: None,
            deadline_at: opts.deadline_ms,
        })
    }

    /// Start a run of `wf`. With an idempotency key already used, returns that run's id.
    pub fn start_run<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        input: &I,
        opts: StartOptions,
    ) -> Result<i64, Error> {
        let run = self.new_run(wf, input, opts)?;
        let started = self.inner.api.enqueue(run)?;
        self.inner.wake_dispatcher();
        Ok(started.id)
    }

    /// Start many runs in one transaction. Returns their ids in order.
    pub fn start_many<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        inputs: &[(I, StartOptions)],
    ) -> Result<Vec<i64>, Error> {
        let runs = inputs
            .iter()
            .map(|(i, o)| self.new_run(wf, i, o.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let started = self.inner.api.enqueue_many(runs)?;
        self.inner.wake_dispatcher();
        Ok(started.into_iter().map(|s| s.id).collect())
    }

    /// The run's current row.
    pub fn run(&self, run_id: i64) -> Result<RunRow, Error> {
        self.inner
            .store
            .run(run_id)?
            .ok_or(Error::Store(StoreError::NotFound { run_id }))
    }

    /// The run's journal.
    pub fn journal(&self, run_id: i64) -> Result<Vec<StepRow>, Error> {
        Ok(self.inner.store.journal(run_id)?)
    }

    /// Every recorded execution attempt of the run's steps, in order.
    pub fn attempts(&self, run_id: i64) -> Result<Vec<AttemptRow>, Error> {
        Ok(self.inner.store.attempts(run_id)?)
    }

    /// Wait until the run is final (completed, failed, cancelled) or parked, up to `timeout`.
    pub fn wait(&self, run_id: i64, timeout: Duration) -> Result<RunRow, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = *self.inner.finished.0.lock();
            let row = self.run(run_id)?;
            if row.status.is_final() || row.status.is_parked() {
                return Ok(row);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimeout { run_id });
            }
            let mut g = self.inner.finished.0.lock();
            if *g == seen {
                let wait = (deadline - now).min(Duration::from_millis(100));
                self.inner.finished.1.wait_for(&mut g, wait);
            }
        }
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
                self.inner.config.payload_bytes_max,
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

    /// Move a `blocked` run back to pending (after deploying a build that can read it).
    pub fn resume(&self, run_id: i64) -> Result<(), Error> {
        self.inner.api.resume(run_id)?;
        self.inner.wake_dispatcher();
        Ok(())
    }

    /// Stop cleanly: stop claiming, let in-flight runs reach their next step boundary while
    /// their leases stay renewed, release them (a fenced release, not an interruption) so
    /// another engine can claim them at once, and stop all threads.
    ///
    /// In-flight steps get [`Config::shutdown_grace`] to finish; a step that finishes in time
    /// has its result recorded. At the end of the grace, child steps still running are killed
    /// (their whole process group) and their runs released. An in-process step cannot be
    /// killed: shutdown keeps renewing its lease until it returns, however long that takes,
    /// and never releases a run whose step still runs.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(stop_tx) = self.stop_tx.take() else {
            return Ok(());
        };
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.wake_dispatcher();
        drop(self.work_tx.lock().take());
        // Heartbeat, reaper and poller keep running while the workers finish.
        let grace_end = Instant::now() + self.inner.config.shutdown_grace;
        let mut g = self.inner.finished.0.lock();
        while self.inner.workers_live.load(Ordering::SeqCst) > 0 {
            let now = Instant::now();
            if now >= grace_end && !self.inner.steps_aborted() {
                log::warn!(
                    "engine {}: shutdown grace of {:?} ended; killing child steps still running \
                     (in-process steps cannot be killed: their leases stay renewed until they return)",
                    self.inner.owner(),
                    self.inner.config.shutdown_grace
                );
                self.inner.abort_steps.store(true, Ordering::SeqCst);
                self.inner.control.stop_all();
            }
            let wait = grace_end
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(50));
            self.inner.finished.1.wait_for(&mut g, wait);
        }
        drop(g);
        for t in self.workers.lock().drain(..) {
            let _ = t.join();
        }
        drop(stop_tx);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        let owner = self.inner.owner();
        self.inner.store.stop_engine(&owner)?;
        log::info!("engine {owner} stopped");
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("engine shutdown: {e}");
        }
    }
}

fn worker_loop(inner: &Inner, rx: Receiver<Work>) {
    while let Ok((owner, claimed)) = rx.recv() {
        worker::execute_run(inner, owner, claimed);
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        inner.wake_dispatcher();
    }
}
