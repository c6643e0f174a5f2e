//! The engine: threads around one store. It holds handles, not state: everything a run
//! needs to continue is in the database.
//!
//! Threads: one writer (in the store), one dispatcher, `workers` workers, one heartbeat,
//! one reaper. No async runtime.

#[doc(hidden)]
pub mod admin;
#[doc(hidden)]
pub mod control;
pub mod counters;
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

use crate::client::Client;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Isolation};
use crate::error::Error;
use crate::host;
use crate::store::{EngineRow, RunStatus, Storage, StoreError, StoreOptions};
use crate::workflow::registry::{Registry, Workflow};
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::store::{AttemptRow, RunRow, StepRow};

pub use crate::client::StartOptions;

/// A claimed run handed to a worker, with the incarnation that claimed it (its fence owner).
pub(crate) type Work = (Arc<str>, crate::store::Claimed);

/// Shared state of the engine's threads: handles and flags only.
pub struct Inner {
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) config: Config,
    pub(crate) clock: Arc<dyn Clock>,
    /// This host and PID namespace ([`host::host_id`]), stored in our engine row.
    pub(crate) boot_id: String,
    /// The store is shared by engines on several hosts (PostgreSQL): another boot id is
    /// another host, judged by its heartbeat only (`host::place`).
    pub(crate) hosts_shared: bool,
    pub(crate) workflows_json: Arc<str>,
    pub(crate) lease: lease::LeaseGuard,
    pub(crate) shutdown: AtomicBool,
    /// Set at the end of the shutdown grace: child steps still running are killed.
    pub(crate) abort_steps: AtomicBool,
    workers_live: AtomicUsize,
    pub(crate) storage_failed: AtomicBool,
    pub(crate) health: health::Health,
    pub(crate) in_flight: AtomicI64,
    /// When a worker's claim last woke due suspended runs (see `claim_next`).
    pub(crate) last_sweep: Mutex<Instant>,
    wake_tx: Sender<()>,
    finished: (Mutex<u64>, Condvar),
    in_process: crate::exec::InProcess,
    child: crate::isolation::ChildExecutor,
    pool: crate::isolation::PoolExecutor,
    pub(crate) control: control::Control,
    /// Renewals and claim latency (see [`counters`]).
    pub(crate) counters: Arc<counters::Counters>,
    /// The reads, waits and run operations the engine shares with [`Client`].
    pub(crate) client: Client,
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

    /// What a worker that is ending a run may claim for itself in the same commit: one
    /// run, under the conditions the dispatcher claims under (not stopping, storage
    /// healthy, our lease valid). Its worker slot stays taken, so the dispatcher's
    /// invariant (never more claimed runs than workers) holds.
    /// Take an idle worker's slot (as the dispatcher does before it claims); false if
    /// every worker is busy.
    pub(crate) fn reserve_worker(&self) -> bool {
        let workers = self.config.workers as i64;
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < workers).then_some(n + 1)
            })
            .is_ok()
    }

    /// Give back a slot taken by [`Inner::reserve_worker`] that got no run.
    pub(crate) fn unreserve_worker(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Storage healthy and our lease valid: the condition every claimer claims under.
    pub(crate) fn may_claim(&self) -> bool {
        !self.storage_failed.load(Ordering::SeqCst) && self.lease.valid()
    }

    pub(crate) fn claim_next(&self) -> Option<crate::store::ClaimNext> {
        if self.shutting_down() || !self.may_claim() {
            return None;
        }
        // Waking due suspended runs costs two statements: at most once per poll interval.
        let sweep = match self.last_sweep.try_lock() {
            Some(mut last) if last.elapsed() >= self.config.poll_interval => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        Some(crate::store::ClaimNext {
            owner: self.owner(),
            limit: 1,
            workflows_json: self.workflows_json.clone(),
            lease_ms: self.config.lease_ttl.as_millis() as i64,
            sweep,
            only_started: false,
        })
    }

    pub(crate) fn notify_finished(&self) {
        *self.finished.0.lock() += 1;
        self.finished.1.notify_all();
        self.client.nudge();
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
        // PostgreSQL: one connection per worker and per engine thread, plus a few for API
        // calls.
        let pool_max = u32::try_from(config.workers)
            .unwrap_or(u32::MAX)
            .saturating_add(8);
        let opened = crate::store::open_storage(&config.db_path, &opts, clock.clone(), pool_max)?;
        if let (true, Some(sqlite)) = (config.quick_check_always, &opened.sqlite) {
            // Opt-in: check every open whatever the size (Store::open skipped it).
            let path = config.db_path.clone();
            sqlite.read(|c| crate::store::schema::quick_check(c, &path))?;
        }
        let store: Arc<dyn Storage> = opened.engine;
        let api: Arc<dyn Storage> = opened.api;
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
        let registry = Arc::new(registry);
        let wake = wake_tx.clone();
        let client = Client::over(
            api.clone(),
            Some(registry.clone()),
            config.payload_bytes_max,
            clock.clone(),
            Some(Box::new(move || {
                let _ = wake.try_send(());
            })),
        );
        let hosts_shared = store.spans_hosts();
        let inner = Arc::new(Inner {
            store,
            client,
            registry,
            lease: lease::LeaseGuard::new(config.lease_ttl, owner),
            config,
            clock,
            boot_id,
            hosts_shared,
            workflows_json,
            shutdown: AtomicBool::new(false),
            abort_steps: AtomicBool::new(false),
            workers_live: AtomicUsize::new(0),
            storage_failed: AtomicBool::new(false),
            health: health::Health::default(),
            in_flight: AtomicI64::new(0),
            last_sweep: Mutex::new(Instant::now()),
            wake_tx,
            finished: (Mutex::new(0), Condvar::new()),
            in_process: crate::exec::InProcess,
            pool,
            child,
            control: control::Control::default(),
            counters: Arc::default(),
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
        if inner.hosts_shared {
            let (i6, s6) = (inner.clone(), stop_rx.clone());
            threads.push(spawn("waymark-watch", move || {
                dispatch::watch_loop(&i6, s6)
            })?);
        }
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

    /// This engine's counters since it started: writer commits and commands, lease
    /// renewals, claim latency (what `/metrics` of a console in this process adds).
    pub fn counters(&self) -> counters::EngineCounters {
        self.inner.counters.snapshot(self.inner.store.write_stats())
    }

    /// A reader of [`Engine::counters`] that does not keep the engine running (the
    /// console's `/metrics`).
    #[cfg_attr(not(feature = "console"), allow(dead_code))]
    pub(crate) fn counters_reader(&self) -> impl Fn() -> counters::EngineCounters + Send + Sync {
        let (counters, store) = (self.inner.counters.clone(), self.inner.store.clone());
        move || counters.snapshot(store.write_stats())
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

    /// The [`Client`] this engine's reads and run operations go through (share it with
    /// code that should not hold the engine).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Start a run of `wf`; see [`Client::start_run`] (the engine's registry is checked:
    /// a workflow it lacks is [`Error::UnknownWorkflow`] unless
    /// [`StartOptions::for_other_build`]).
    pub fn start_run<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        input: &I,
        opts: StartOptions,
    ) -> Result<i64, Error> {
        // With an idle worker, the run is started already claimed by it (one commit less,
        // no hand-off through the dispatcher). Only the run just created is claimed (one
        // row lookup); older pending runs are the dispatcher's and the workers'.
        if !self.inner.reserve_worker() {
            return self.inner.client.start_run(wf, input, opts);
        }
        let Some(mut next) = self.inner.claim_next() else {
            self.inner.unreserve_worker();
            return self.inner.client.start_run(wf, input, opts);
        };
        next.only_started = true;
        let owner = next.owner.clone();
        let keyed = opts.idempotency_key.is_some();
        match self
            .inner
            .client
            .start_claiming(wf, input, opts.clone(), next)
        {
            Ok((id, mut claimed)) => {
                match claimed.pop() {
                    Some(run) => self.dispatch_claimed(owner, run),
                    None => self.inner.unreserve_worker(),
                }
                Ok(id)
            }
            Err(Error::Store(e @ StoreError::OutcomeUnknown { .. })) => {
                self.inner.unreserve_worker();
                // The commit may have claimed the run for a worker that never got it: the
                // storage-failure path hands back every run recorded as ours once no worker
                // holds one (engine/health.rs).
                self.inner.note_store_error(&e);
                if keyed {
                    // The key finds the run if the lost commit happened: start again.
                    log::warn!("{e}; starting again by idempotency key");
                    return self.inner.client.start_run(wf, input, opts);
                }
                Err(Error::Store(e))
            }
            Err(e) => {
                self.inner.unreserve_worker();
                Err(e)
            }
        }
    }

    /// Hand a run claimed for a reserved worker slot to the workers; if they are gone
    /// (shutdown), give it back (fenced release) so that no claimed run is left unowned.
    fn dispatch_claimed(&self, owner: Arc<str>, run: crate::store::Claimed) {
        let fence = crate::store::Fence {
            run_id: run.run_id,
            owner: owner.clone(),
            epoch: run.epoch,
        };
        let sent = match self.work_tx.lock().as_ref() {
            Some(tx) => tx.try_send((owner, run)).is_ok(),
            None => false,
        };
        if !sent {
            self.inner.unreserve_worker();
            if let Err(e) = self.inner.store.release(&fence) {
                log::warn!(
                    "run {}: releasing a run claimed at start failed: {e}",
                    fence.run_id
                );
            }
            self.inner.wake_dispatcher();
        }
    }

    /// Start many runs in one transaction. Returns their ids in order.
    pub fn start_many<I: Serialize, O>(
        &self,
        wf: Workflow<I, O>,
        inputs: &[(I, StartOptions)],
    ) -> Result<Vec<i64>, Error> {
        self.inner.client.start_many(wf, inputs)
    }

    /// The run's current row.
    pub fn run(&self, run_id: i64) -> Result<RunRow, Error> {
        self.inner.client.run(run_id)
    }

    /// The run's journal ([`StoreError::NotFound`] for no such run).
    pub fn journal(&self, run_id: i64) -> Result<Vec<StepRow>, Error> {
        self.inner.client.journal(run_id)
    }

    /// Every recorded execution attempt of the run's steps, in order.
    pub fn attempts(&self, run_id: i64) -> Result<Vec<AttemptRow>, Error> {
        self.inner.client.attempts(run_id)
    }

    /// Runs matching `filter`; see [`Client::list`].
    pub fn list(&self, filter: &crate::store::RunFilter) -> Result<Vec<RunRow>, Error> {
        self.inner.client.list(filter)
    }

    /// How many runs are in each status.
    pub fn stats(&self) -> Result<std::collections::BTreeMap<RunStatus, u64>, Error> {
        self.inner.client.stats()
    }

    /// Wait until the run is final (completed, failed, cancelled) or parked, up to `timeout`.
    pub fn wait(&self, run_id: i64, timeout: Duration) -> Result<RunRow, Error> {
        self.inner.client.wait(run_id, timeout)
    }

    /// Wait until every run of `ids` is final or parked; see [`Client::wait_all`].
    pub fn wait_all(&self, ids: &[i64], timeout: Duration) -> Result<Vec<RunRow>, Error> {
        self.inner.client.wait_all(ids, timeout)
    }

    /// Wait until any run of `ids` is final or parked; see [`Client::wait_any`].
    pub fn wait_any(&self, ids: &[i64], timeout: Duration) -> Result<RunRow, Error> {
        self.inner.client.wait_any(ids, timeout)
    }

    /// Wait for the run and decode its output.
    pub fn wait_output<I, O: DeserializeOwned>(
        &self,
        wf: Workflow<I, O>,
        run_id: i64,
        timeout: Duration,
    ) -> Result<O, Error> {
        self.inner.client.wait_output(wf, run_id, timeout)
    }

    /// Subscribe to run state changes; see [`Client::subscribe`].
    pub fn subscribe(&self) -> Result<crate::client::Subscription, Error> {
        self.inner.client.subscribe()
    }

    /// Retry a finished run as a new run; see [`Client::retry`].
    pub fn retry(&self, run_id: i64) -> Result<i64, Error> {
        self.inner.client.retry(run_id)
    }

    /// Restart a finished run from step `from_seq` as a new run; see [`Client::restart`].
    pub fn restart(&self, run_id: i64, from_seq: i64) -> Result<i64, Error> {
        self.inner.client.restart(run_id, from_seq)
    }

    /// Move a `blocked` run back to pending (after deploying a build that can read it).
    pub fn resume(&self, run_id: i64) -> Result<(), Error> {
        self.inner.client.resume(run_id)
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
    while let Ok(work) = rx.recv() {
        // A worker that ends a run claims its next one in the same commit (see
        // `Inner::claim_next`): no hand-off through the dispatcher while work is queued.
        let mut next = Some(work);
        while let Some((owner, claimed)) = next.take() {
            next = worker::execute_run(inner, owner, claimed);
        }
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        inner.wake_dispatcher();
    }
}
