//! Read-only queries on PostgreSQL, what clients, the CLI and the console read: the same answers as SQLite's
//! `store/queries.rs`.
//!
//! Invariants: nothing here writes; each query is one statement (or a few, each seeing the
//! latest commits); a value that cannot be read parks or names its own run, never failing
//! a statement for every run.

#![allow(unused_variables, unused_imports, dead_code)]

use crate::store::error::{StoreError, StoreResult};
use crate::store::pg::conn::Db;
use crate::store::queries::OwnerRow;
use crate::store::views::{AttemptRow, RunChange, RunFilter, RunRow, StepRow};
use crate::store::views::{
    EngineInfo, EventInfo, QueueInfo, RunQuery, RunTotals, ScheduleInfo, StepDurations,
};
use crate::store::write::{Fence, ScheduleRow};

fn not_yet<T>(what: &str) -> StoreResult<T> {
    Err(StoreError::Internal(format!(
        "{what}: not implemented on PostgreSQL yet"
    )))
}

pub fn runs_page(
    db: &mut Db<'_>,
    status: Option<&str>,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<RunRow>> {
    not_yet("runs_page")
}

pub fn list(db: &mut Db<'_>, filter: &RunFilter) -> StoreResult<Vec<RunRow>> {
    not_yet("list")
}

pub fn changes(db: &mut Db<'_>, after: i64, limit: i64) -> StoreResult<Vec<RunChange>> {
    not_yet("changes")
}

pub fn last_change(db: &mut Db<'_>) -> StoreResult<i64> {
    not_yet("last_change")
}

pub fn runs_filtered(
    db: &mut Db<'_>,
    filter: &RunQuery,
    before: Option<i64>,
    limit: i64,
) -> StoreResult<Vec<RunRow>> {
    not_yet("runs_filtered")
}

pub fn engines(db: &mut Db<'_>) -> StoreResult<Vec<EngineInfo>> {
    not_yet("engines")
}

pub fn queues(db: &mut Db<'_>) -> StoreResult<Vec<QueueInfo>> {
    not_yet("queues")
}

pub fn schedules(db: &mut Db<'_>) -> StoreResult<Vec<ScheduleInfo>> {
    not_yet("schedules")
}

pub fn events_of(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<EventInfo>> {
    not_yet("events_of")
}

pub fn step_durations(db: &mut Db<'_>) -> StoreResult<Vec<StepDurations>> {
    not_yet("step_durations")
}

pub fn run_totals(db: &mut Db<'_>, now: i64, live_ms: i64) -> StoreResult<RunTotals> {
    not_yet("run_totals")
}
