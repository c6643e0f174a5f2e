//! Read-only queries on PostgreSQL, what the durable waits, cancellation, versioning and
//! schedules read: the same answers as SQLite's `store/queries.rs`.
//!
//! Invariants: nothing here writes; each query is one statement (or a few, each seeing the
//! latest commits); a value that cannot be read parks or names its own run, never failing
//! a statement for every run.

use crate::store::error::{StoreError, StoreResult};
use crate::store::pg::conn::{col, Db};
use crate::store::write::ScheduleRow;
use postgres::Row;

/// Column `idx` of a row that names no single run: a type mismatch is the schema's fault
/// (the columns are typed), answered as an error, never a panic.
fn get<'r, T: postgres::types::FromSql<'r>>(
    row: &'r Row,
    idx: usize,
    what: &'static str,
) -> StoreResult<T> {
    row.try_get(idx)
        .map_err(|e| StoreError::Internal(format!("{what}: column {idx}: {e}")))
}

/// The oldest unconsumed event `name` of run `run_id`: its id and payload.
pub fn next_event(db: &mut Db<'_>, run_id: i64, name: &str) -> StoreResult<Option<(i64, Vec<u8>)>> {
    let row = db.query_opt(
        "looking for an event",
        "SELECT id, payload FROM events WHERE run_id = $1 AND name = $2
           AND consumed_seq IS NULL ORDER BY id LIMIT 1",
        &[&run_id, &name],
    )?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some((
            col(&r, 0, run_id, "an event's id")?,
            col(&r, 1, run_id, "an event's payload")?,
        ))),
    }
}

/// Up to `limit` parked runs (`suspended`, `blocked`, `blocked_version`) with a cancel
/// requested: the backstop sweep's work.
pub fn parked_cancel_requests(db: &mut Db<'_>, limit: i64) -> StoreResult<Vec<i64>> {
    db.query(
        "looking for unfinished cancellations",
        "SELECT id FROM runs WHERE status IN ('suspended', 'blocked', 'blocked_version')
           AND cancel_requested = 1 LIMIT $1",
        &[&limit],
    )?
    .iter()
    .map(|r| get(r, 0, "a run id"))
    .collect()
}

/// `(id, epoch)` of the runs `owner` holds that have a cancel requested.
pub fn running_cancel_requests(db: &mut Db<'_>, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
    db.query(
        "reading cancellation requests",
        "SELECT id, epoch FROM runs
         WHERE owner = $1 AND status = 'running' AND cancel_requested = 1",
        &[&owner],
    )?
    .iter()
    .map(|r| Ok((get(r, 0, "a run id")?, get(r, 1, "a run's epoch")?)))
    .collect()
}

/// Is a due pending run of a workflow this engine knows (`names_json`) at a version it does
/// not (`workflows_json` holds `name@version`) waiting?
pub fn pending_unknown_versions(
    db: &mut Db<'_>,
    now: i64,
    names_json: &str,
    workflows_json: &str,
) -> StoreResult<bool> {
    db.query_one(
        "looking for unknown versions",
        "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'pending' AND ready_at <= $1
               AND workflow = ANY(ARRAY(SELECT jsonb_array_elements_text($2::text::jsonb)))
               AND NOT (workflow || '@' || version::text)
                       = ANY(ARRAY(SELECT jsonb_array_elements_text($3::text::jsonb))))",
        &[&now, &names_json, &workflows_json],
    )?
    .try_get(0)
    .map_err(|e| StoreError::Internal(format!("looking for unknown versions: {e}")))
}

/// Has a pending or suspended run passed its deadline?
pub fn deadlines_passed(db: &mut Db<'_>, now: i64) -> StoreResult<bool> {
    db.query_one(
        "looking for expired deadlines",
        "SELECT EXISTS (SELECT 1 FROM runs WHERE deadline_at <= $1 AND finished_at IS NULL
               AND status IN ('pending', 'suspended'))",
        &[&now],
    )?
    .try_get(0)
    .map_err(|e| StoreError::Internal(format!("looking for expired deadlines: {e}")))
}

/// Schedules due at `now` (read-only; firing is `Op::FireSchedule`).
pub fn due_schedules(db: &mut Db<'_>, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRow>> {
    const W: &str = "a due schedule";
    db.query(
        "reading due schedules",
        "SELECT name, cron, workflow, version, input, queue, catch_up, next_due
         FROM schedules WHERE next_due <= $1 ORDER BY next_due LIMIT $2",
        &[&now, &limit],
    )?
    .iter()
    .map(|r| {
        Ok(ScheduleRow {
            name: get(r, 0, W)?,
            cron: get(r, 1, W)?,
            workflow: get(r, 2, W)?,
            version: get(r, 3, W)?,
            input: get(r, 4, W)?,
            queue: get(r, 5, W)?,
            catch_up: get::<i64>(r, 6, W)? != 0,
            next_due: get(r, 7, W)?,
        })
    })
    .collect()
}
