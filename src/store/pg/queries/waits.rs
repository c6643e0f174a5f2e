//! Read-only queries on PostgreSQL, what the durable waits, cancellation, versioning and schedules read: the same answers as SQLite's
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

pub fn next_event(db: &mut Db<'_>, run_id: i64, name: &str) -> StoreResult<Option<(i64, Vec<u8>)>> {
    not_yet("next_event")
}

pub fn parked_cancel_requests(db: &mut Db<'_>, limit: i64) -> StoreResult<Vec<i64>> {
    not_yet("parked_cancel_requests")
}

pub fn running_cancel_requests(db: &mut Db<'_>, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
    not_yet("running_cancel_requests")
}

pub fn pending_unknown_versions(
    db: &mut Db<'_>,
    now: i64,
    names_json: &str,
    workflows_json: &str,
) -> StoreResult<bool> {
    not_yet("pending_unknown_versions")
}

pub fn deadlines_passed(db: &mut Db<'_>, now: i64) -> StoreResult<bool> {
    not_yet("deadlines_passed")
}

pub fn due_schedules(db: &mut Db<'_>, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRow>> {
    not_yet("due_schedules")
}
