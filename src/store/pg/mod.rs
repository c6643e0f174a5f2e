//! PostgreSQL as the store (feature `postgres`): the same [`Storage`] seam, the same guards,
//! for applications whose engines run on several hosts.
//!
//! Invariants (beyond the seam's contract, which holds word for word):
//! - Every write command is one transaction on a pooled connection, at READ COMMITTED:
//!   guards are single `UPDATE ... WHERE` statements (PostgreSQL re-checks the `WHERE` of a
//!   row it waited for), claims take rows with `FOR UPDATE SKIP LOCKED`, and a queue's
//!   limit and a schedule's firing lock their own row first, so they hold across hosts.
//! - A transaction that fails by serialization or deadlock is retried from the start; no
//!   other failure is retried here (the engine's health logic owns storage failures).
//! - The connection lost during COMMIT answers [`StoreError::OutcomeUnknown`].
//! - Nothing here compares the wall clock of another host with ours: `now` is our clock,
//!   and liveness is judged by the reaper from heartbeat counters on our monotonic clock.
//!
//! Dependency direction: `pg` uses the store's plain types (`write::{Op, Done, ...}`,
//! `views`), never the SQLite modules' functions.

pub mod conn;
pub mod copy;
mod queries;
pub mod schema;
pub mod watch;
mod write;

use self::conn::{Db, Manager, PgConn};
use super::error::{StoreError, StoreResult};
use super::queries::OwnerRow;
use super::seam::{storage_writes, Commands, Storage};
use super::views::{AttemptRow, RunChange, RunFilter, RunRow, StepRow};
use super::views::{
    EngineInfo, EventInfo, QueueInfo, RunQuery, RunTotals, ScheduleInfo, StepDurations,
};
use super::watch::ChangeWatch;
use super::write::{Awaited, Done, Fence, Op, ScheduleRow};
use super::{ChildStart, Sent, Started};
use crate::clock::Clock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Does `db` name a PostgreSQL database (`postgres://` or `postgresql://`)?
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// How many times a transaction that failed by serialization or deadlock is tried.
const TRIES_MAX: u32 = 8;

/// A store on a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    name: Arc<str>,
    url: Arc<str>,
    pool: r2d2::Pool<Manager>,
    clock: Arc<dyn Clock>,
    stats: Arc<(AtomicU64, AtomicU64)>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("db", &self.name).finish()
    }
}

impl PgStore {
    /// Connect to `url`, create the schema when the database has none, refuse a newer one.
    /// `connections_max` bounds the pool.
    pub fn open(url: &str, connections_max: u32, clock: Arc<dyn Clock>) -> StoreResult<PgStore> {
        let name: Arc<str> = redact(url).into();
        let config: postgres::Config =
            url.parse()
                .map_err(|e: postgres::Error| StoreError::Postgres {
                    context: "parsing the database URL",
                    code: None,
                    detail: format!("{name}: {e}"),
                })?;
        let mut config = config;
        // Our sessions are told apart by this name (the change log's horizon counts only
        // them: pg/queries/people.rs).
        let app = match config.get_application_name() {
            None => "waymark".to_string(),
            Some(n) if n.starts_with("waymark") => n.to_string(),
            Some(n) => format!("waymark:{n}"),
        };
        config.application_name(&app);
        config.connect_timeout(Duration::from_secs(10));
        // No test query at each checkout (a round trip per command): a connection that
        // broke fails its next statement, is marked broken and replaced, and the failure
        // takes the engine's storage-failure path like any other.
        let pool = r2d2::Pool::builder()
            .max_size(connections_max.max(2))
            .min_idle(Some(1))
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(30))
            .build(Manager { config })
            .map_err(|e| StoreError::Postgres {
                context: "connecting",
                code: None,
                detail: format!("{name}: {e}"),
            })?;
        let store = PgStore {
            name,
            url: url.into(),
            pool,
            clock,
            stats: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
        };
        store.with_conn(|db| schema::migrate(db, &store.name.clone()))?;
        Ok(store)
    }

    /// The database's name for people (its URL without the password).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Db<'_>) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn: r2d2::PooledConnection<Manager> =
            self.pool.get().map_err(|e| StoreError::Postgres {
                context: "getting a connection",
                code: None,
                detail: e.to_string(),
            })?;
        let conn: &mut PgConn = &mut conn;
        f(&mut Db::new(conn))
    }

    /// Apply a write command in its own transaction and answer after its commit.
    pub fn call(&self, op: Op) -> StoreResult<Done> {
        let mut op = Some(op);
        let mut tries = 0;
        loop {
            tries += 1;
            let now = self.clock.now_ms();
            // A retried transaction needs the command again (the clone is cheap next to a
            // round trip to the server).
            let Some(this) = op.take() else {
                return Err(StoreError::Internal(
                    "a command was lost between tries".into(),
                ));
            };
            let again = this.clone();
            let result = self.with_conn(|db| {
                db.transaction("applying a command", |db| {
                    let done = write::apply(db, this, now)?;
                    crate::fault::point(crate::fault::Point::BeforeCommit);
                    Ok(done)
                })
            });
            if result.is_ok() {
                crate::fault::point(crate::fault::Point::AfterCommit);
            }
            match result {
                Err(e) if conn::retryable(&e) && tries < TRIES_MAX => {
                    log::debug!("{}: retrying a transaction: {e}", self.name);
                    std::thread::sleep(Duration::from_millis(1 << tries.min(6)));
                    op = Some(again);
                }
                // The COMMIT's answer was lost: applying a start again is harmless when every
                // run has an idempotency key (the key finds the run if the first commit
                // happened). Anything else answers the unknown outcome to its caller.
                Err(e @ StoreError::OutcomeUnknown { .. })
                    if keyed_start(&again) && tries < TRIES_MAX =>
                {
                    log::warn!("{}: {e}; starting again by idempotency key", self.name);
                    op = Some(again);
                }
                other => {
                    if other.is_ok() {
                        self.stats.0.fetch_add(1, Ordering::Relaxed);
                        self.stats.1.fetch_add(1, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
    }

    /// Run read-only `f` on a pooled connection (no transaction: each statement sees the
    /// latest commits).
    pub fn read<T>(&self, f: impl FnOnce(&mut Db<'_>) -> StoreResult<T>) -> StoreResult<T> {
        self.with_conn(f)
    }
}

/// A start whose every run has an idempotency key: applying it twice starts each run once.
fn keyed_start(op: &Op) -> bool {
    match op {
        Op::Enqueue(run) => run.idempotency_key.is_some(),
        Op::EnqueueMany(runs) => runs.iter().all(|r| r.idempotency_key.is_some()),
        Op::Start(runs) => runs.iter().all(|(r, _)| r.idempotency_key.is_some()),
        _ => false,
    }
}

impl Commands for PgStore {
    fn call(&self, op: Op) -> StoreResult<Done> {
        PgStore::call(self, op)
    }
}

// The store's plain types used by the shared write methods.
use super::write::{ClaimNext, Claimed, Ending, EngineRow, Entry, NewRun, OnKeyConflict};

impl Storage for PgStore {
    storage_writes!();

    fn run(&self, run_id: i64) -> StoreResult<Option<RunRow>> {
        self.read(|c| queries::run(c, run_id))
    }
    fn runs_page(&self, status: Option<&str>, after: i64, limit: i64) -> StoreResult<Vec<RunRow>> {
        self.read(|c| queries::runs_page(c, status, after, limit))
    }
    fn list(&self, filter: &RunFilter) -> StoreResult<Vec<RunRow>> {
        self.read(|c| queries::list(c, filter))
    }
    fn run_exists(&self, run_id: i64) -> StoreResult<bool> {
        self.read(|c| queries::run_exists(c, run_id))
    }
    fn run_input(&self, run_id: i64) -> StoreResult<Option<Vec<u8>>> {
        self.read(|c| queries::run_input(c, run_id))
    }
    fn changes(&self, after: i64, limit: i64) -> StoreResult<Vec<RunChange>> {
        self.read(|c| queries::changes(c, after, limit))
    }
    fn last_change(&self) -> StoreResult<i64> {
        self.read(queries::last_change)
    }
    fn watch(&self) -> StoreResult<Box<dyn ChangeWatch>> {
        Ok(Box::new(watch::PgWatch::new(&self.url, &self.name)?))
    }
    fn next_event(&self, run_id: i64, name: &str) -> StoreResult<Option<(i64, Vec<u8>)>> {
        self.read(|c| queries::next_event(c, run_id, name))
    }
    fn journal(&self, run_id: i64) -> StoreResult<Vec<StepRow>> {
        self.read(|c| queries::journal(c, run_id))
    }
    fn attempts(&self, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
        self.read(|c| queries::attempts(c, run_id))
    }
    fn open_attempts(&self, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
        self.read(|c| queries::open_attempts(c, run_id))
    }
    fn stats(&self) -> StoreResult<Vec<(String, i64)>> {
        self.read(queries::stats)
    }
    fn owners(&self) -> StoreResult<Vec<OwnerRow>> {
        self.read(queries::owners)
    }
    fn idle_engines(&self) -> StoreResult<Vec<OwnerRow>> {
        self.read(queries::idle_engines)
    }
    fn runs_of_owner(&self, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
        self.read(|c| queries::runs_of_owner(c, owner))
    }
    fn engine_host(&self, id: &str) -> StoreResult<Option<String>> {
        self.read(|c| queries::engine_host(c, id))
    }
    fn fence_holds(&self, fence: &Fence) -> StoreResult<bool> {
        self.read(|c| queries::fence_holds(c, fence))
    }
    fn claimable(&self, now: i64, workflows_json: &str) -> StoreResult<bool> {
        self.read(|c| queries::claimable(c, now, workflows_json))
    }
    fn cancel_requested(&self, run_id: i64) -> StoreResult<bool> {
        self.read(|c| queries::cancel_requested(c, run_id))
    }
    fn parked_cancel_requests(&self, limit: i64) -> StoreResult<Vec<i64>> {
        self.read(|c| queries::parked_cancel_requests(c, limit))
    }
    fn running_cancel_requests(&self, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
        self.read(|c| queries::running_cancel_requests(c, owner))
    }
    fn pending_unknown_versions(
        &self,
        now: i64,
        names_json: &str,
        workflows_json: &str,
    ) -> StoreResult<bool> {
        self.read(|c| queries::pending_unknown_versions(c, now, names_json, workflows_json))
    }
    fn deadlines_passed(&self, now: i64) -> StoreResult<bool> {
        self.read(|c| queries::deadlines_passed(c, now))
    }
    fn due_schedules(&self, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRow>> {
        self.read(|c| queries::due_schedules(c, now, limit))
    }
    fn finished_between(&self, from: i64, before: i64) -> StoreResult<u64> {
        self.read(|c| queries::finished_between(c, from, before))
    }
    fn write_stats(&self) -> (u64, u64) {
        (
            self.stats.0.load(Ordering::Relaxed),
            self.stats.1.load(Ordering::Relaxed),
        )
    }
    fn spans_hosts(&self) -> bool {
        true
    }
    fn runs_filtered(
        &self,
        filter: &RunQuery,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<RunRow>> {
        self.read(|c| queries::runs_filtered(c, filter, before, limit))
    }
    fn engines(&self) -> StoreResult<Vec<EngineInfo>> {
        self.read(queries::engines)
    }
    fn queues(&self) -> StoreResult<Vec<QueueInfo>> {
        self.read(queries::queues)
    }
    fn schedules(&self) -> StoreResult<Vec<ScheduleInfo>> {
        self.read(queries::schedules)
    }
    fn events_of(&self, run_id: i64) -> StoreResult<Vec<EventInfo>> {
        self.read(|c| queries::events_of(c, run_id))
    }
    fn step_durations(&self) -> StoreResult<Vec<StepDurations>> {
        self.read(queries::step_durations)
    }
    fn run_totals(&self, now: i64, live_ms: i64) -> StoreResult<RunTotals> {
        self.read(|c| queries::run_totals(c, now, live_ms))
    }
}
