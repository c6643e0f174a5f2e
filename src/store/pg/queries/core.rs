//! Read-only queries on PostgreSQL, what the engine reads to run, replay and recover runs: the same answers as SQLite's
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

pub fn run(db: &mut Db<'_>, run_id: i64) -> StoreResult<Option<RunRow>> {
    not_yet("run")
}

pub fn run_exists(db: &mut Db<'_>, run_id: i64) -> StoreResult<bool> {
    not_yet("run_exists")
}

pub fn run_input(db: &mut Db<'_>, run_id: i64) -> StoreResult<Option<Vec<u8>>> {
    not_yet("run_input")
}

pub fn journal(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<StepRow>> {
    not_yet("journal")
}

pub fn attempts(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
    not_yet("attempts")
}

pub fn open_attempts(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
    not_yet("open_attempts")
}

pub fn stats(db: &mut Db<'_>) -> StoreResult<Vec<(String, i64)>> {
    not_yet("stats")
}

pub fn owners(db: &mut Db<'_>) -> StoreResult<Vec<OwnerRow>> {
    not_yet("owners")
}

pub fn idle_engines(db: &mut Db<'_>) -> StoreResult<Vec<OwnerRow>> {
    not_yet("idle_engines")
}

pub fn runs_of_owner(db: &mut Db<'_>, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
    not_yet("runs_of_owner")
}

pub fn engine_host(db: &mut Db<'_>, id: &str) -> StoreResult<Option<String>> {
    not_yet("engine_host")
}

pub fn fence_holds(db: &mut Db<'_>, fence: &Fence) -> StoreResult<bool> {
    not_yet("fence_holds")
}

pub fn claimable(db: &mut Db<'_>, now: i64, workflows_json: &str) -> StoreResult<bool> {
    not_yet("claimable")
}

pub fn cancel_requested(db: &mut Db<'_>, run_id: i64) -> StoreResult<bool> {
    not_yet("cancel_requested")
}

pub fn finished_between(db: &mut Db<'_>, from: i64, before: i64) -> StoreResult<u64> {
    not_yet("finished_between")
}
