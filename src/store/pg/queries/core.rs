//! Read-only queries on PostgreSQL, what the engine reads to run, replay and recover runs:
//! the same answers as SQLite's `store/queries.rs`.
//!
//! Invariants: nothing here writes; each query is one statement (or a few, each seeing the
//! latest commits); a value that cannot be read names its own run
//! ([`StoreError::Undecodable`]), never failing a statement for every run; a liveness row
//! that cannot be read is read as unknown (the reaper judges by what it can read).

use crate::store::error::{StoreError, StoreResult};
use crate::store::pg::conn::{col, get, Db};
use crate::store::queries::OwnerRow;
use crate::store::views::{AttemptRow, RunRow, StepRow};
use crate::store::write::Fence;
use postgres::Row;

/// The columns [`run_row`] reads, for `SELECT {RUN_COLS} FROM runs ...` (queries of runs
/// for people use it too, as `concat!("SELECT ", run_cols!(), ...)`).
macro_rules! run_cols {
    () => {
        "id, workflow, version, status, idempotency_key, queue, priority,
         (SELECT count(*) FROM steps s WHERE s.run_id = runs.id AND s.status = 'completed'),
         created_at, updated_at, finished_at, ready_at, owner, epoch, interruptions,
         last_interruption, error, note, parent_id, output, retry_of,
         (SELECT max(r.id) FROM runs r WHERE r.retry_of = runs.id)"
    };
}
pub(crate) use run_cols;

/// A run row from `SELECT run_cols!()`; a column that does not read is
/// [`StoreError::Undecodable`] naming the run.
pub(crate) fn run_row(r: &Row) -> StoreResult<RunRow> {
    let id: i64 = get(r, 0, "reading a run")?;
    let status: String = col(r, 3, id, "runs.status")?;
    let status = status.parse().map_err(|e| StoreError::Undecodable {
        run_id: id,
        detail: format!("runs.status: {e}"),
    })?;
    Ok(RunRow {
        id,
        workflow: col(r, 1, id, "runs.workflow")?,
        version: col(r, 2, id, "runs.version")?,
        status,
        idempotency_key: col(r, 4, id, "runs.idempotency_key")?,
        queue: col(r, 5, id, "runs.queue")?,
        priority: col(r, 6, id, "runs.priority")?,
        steps_completed: col(r, 7, id, "steps completed")?,
        created_at: col(r, 8, id, "runs.created_at")?,
        updated_at: col(r, 9, id, "runs.updated_at")?,
        finished_at: col(r, 10, id, "runs.finished_at")?,
        ready_at: col(r, 11, id, "runs.ready_at")?,
        owner: col(r, 12, id, "runs.owner")?,
        epoch: col(r, 13, id, "runs.epoch")?,
        interruptions: col(r, 14, id, "runs.interruptions")?,
        last_interruption: col(r, 15, id, "runs.last_interruption")?,
        error: col(r, 16, id, "runs.error")?,
        note: col(r, 17, id, "runs.note")?,
        parent_id: col(r, 18, id, "runs.parent_id")?,
        output: col(r, 19, id, "runs.output")?,
        retry_of: col(r, 20, id, "runs.retry_of")?,
        retried_as: col(r, 21, id, "retried as")?,
    })
}

/// The run with this id.
pub fn run(db: &mut Db<'_>, run_id: i64) -> StoreResult<Option<RunRow>> {
    db.query_opt(
        "reading a run",
        concat!("SELECT ", run_cols!(), " FROM runs WHERE id = $1"),
        &[&run_id],
    )?
    .as_ref()
    .map(run_row)
    .transpose()
}

/// Whether a run with this id exists.
pub fn run_exists(db: &mut Db<'_>, run_id: i64) -> StoreResult<bool> {
    Ok(db
        .query_opt(
            "reading a run",
            "SELECT 1 FROM runs WHERE id = $1",
            &[&run_id],
        )?
        .is_some())
}

/// The stored input of a run (`None`: no such run).
pub fn run_input(db: &mut Db<'_>, run_id: i64) -> StoreResult<Option<Vec<u8>>> {
    db.query_opt(
        "reading a run's input",
        "SELECT input FROM runs WHERE id = $1",
        &[&run_id],
    )?
    .map(|r| col(&r, 0, run_id, "runs.input"))
    .transpose()
}

/// A run's journal in sequence order. A row that does not read is
/// [`StoreError::Undecodable`] naming the entry (the caller parks the run).
pub fn journal(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<StepRow>> {
    let rows = db.query(
        "reading a journal",
        "SELECT seq, name, kind, status, attempts, error, recorded_at, output, copied_from
         FROM steps WHERE run_id = $1 ORDER BY seq",
        &[&run_id],
    )?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |e: StoreError| match e {
                StoreError::Undecodable { run_id, detail } => StoreError::Undecodable {
                    run_id,
                    detail: format!("journal entry #{i}: {detail}"),
                },
                other => other,
            };
            (|| {
                Ok(StepRow {
                    seq: col(r, 0, run_id, "steps.seq")?,
                    name: col(r, 1, run_id, "steps.name")?,
                    kind: col(r, 2, run_id, "steps.kind")?,
                    status: col(r, 3, run_id, "steps.status")?,
                    attempts: col(r, 4, run_id, "steps.attempts")?,
                    error: col(r, 5, run_id, "steps.error")?,
                    recorded_at: col(r, 6, run_id, "steps.recorded_at")?,
                    output: col(r, 7, run_id, "steps.output")?,
                    copied_from: col(r, 8, run_id, "steps.copied_from")?,
                })
            })()
            .map_err(at)
        })
        .collect()
}

/// Every recorded attempt of a run's steps, in order. Like [`journal`], a row that does
/// not read is [`StoreError::Undecodable`].
pub fn attempts(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
    let rows = db.query(
        "reading attempts",
        "SELECT seq, attempt, name, owner, epoch, pid, pid_start, started_at, ended_at, outcome,
                reason, logs, memory_cap
         FROM attempts WHERE run_id = $1 ORDER BY seq, attempt",
        &[&run_id],
    )?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |e: StoreError| match e {
                StoreError::Undecodable { run_id, detail } => StoreError::Undecodable {
                    run_id,
                    detail: format!("attempt row #{i}: {detail}"),
                },
                other => other,
            };
            (|| {
                Ok(AttemptRow {
                    seq: col(r, 0, run_id, "attempts.seq")?,
                    attempt: col(r, 1, run_id, "attempts.attempt")?,
                    name: col(r, 2, run_id, "attempts.name")?,
                    owner: col(r, 3, run_id, "attempts.owner")?,
                    epoch: col(r, 4, run_id, "attempts.epoch")?,
                    pid: col(r, 5, run_id, "attempts.pid")?,
                    pid_start: col(r, 6, run_id, "attempts.pid_start")?,
                    started_at: col(r, 7, run_id, "attempts.started_at")?,
                    ended_at: col(r, 8, run_id, "attempts.ended_at")?,
                    outcome: col(r, 9, run_id, "attempts.outcome")?,
                    reason: col(r, 10, run_id, "attempts.reason")?,
                    logs: col(r, 11, run_id, "attempts.logs")?,
                    memory_cap: col(r, 12, run_id, "attempts.memory_cap")?,
                })
            })()
            .map_err(at)
        })
        .collect()
}

/// Attempts of `run_id` that were started but never ended (their process may still live).
pub fn open_attempts(db: &mut Db<'_>, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
    Ok(attempts(db, run_id)?
        .into_iter()
        .filter(|a| a.outcome.is_none() && a.pid.is_some())
        .collect())
}

/// Counts of runs by status.
pub fn stats(db: &mut Db<'_>) -> StoreResult<Vec<(String, i64)>> {
    db.query(
        "counting runs",
        "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status",
        &[],
    )?
    .iter()
    .map(|r| Ok((get(r, 0, "counting runs")?, get(r, 1, "counting runs")?)))
    .collect()
}

/// A column of a liveness row that does not read is unknown (`None`), logged.
fn lenient<'r, T: postgres::types::FromSql<'r>>(r: &'r Row, idx: usize, what: &str) -> Option<T> {
    r.try_get::<_, Option<T>>(idx).unwrap_or_else(|e| {
        log::warn!("{what}: {e}: read as unknown");
        None
    })
}

/// `id, pid, pid_start, boot_id, beat, stopped [, lease]`.
fn owner_row(r: &Row, lease: Option<usize>) -> OwnerRow {
    OwnerRow {
        id: lenient(r, 0, "runs.owner").unwrap_or_default(),
        pid: lenient(r, 1, "engines.pid"),
        pid_start: lenient(r, 2, "engines.pid_start"),
        boot_id: lenient(r, 3, "engines.boot_id"),
        beat: lenient(r, 4, "engines.beat"),
        stopped: lenient::<bool>(r, 5, "engines.stopped_at").unwrap_or(false),
        lease_expires_at: lease.and_then(|i| lenient(r, i, "runs.lease_expires_at")),
    }
}

/// Every owner of a running run (with its engine row, if any).
pub fn owners(db: &mut Db<'_>) -> StoreResult<Vec<OwnerRow>> {
    Ok(db
        .query(
            "reading lease owners",
            "SELECT o.owner, e.pid, e.pid_start, e.boot_id, e.beat, e.stopped_at IS NOT NULL, o.lease
             FROM (SELECT owner, max(lease_expires_at) AS lease FROM runs
                   WHERE status = 'running' GROUP BY owner) o
             LEFT JOIN engines e ON e.id = o.owner",
            &[],
        )?
        .iter()
        .map(|r| owner_row(r, Some(6)))
        .collect())
}

/// Engine rows that hold no running run (candidates to forget once dead).
pub fn idle_engines(db: &mut Db<'_>) -> StoreResult<Vec<OwnerRow>> {
    Ok(db
        .query(
            "reading engines",
            "SELECT id, pid, pid_start, boot_id, beat, stopped_at IS NOT NULL FROM engines e
             WHERE NOT EXISTS (SELECT 1 FROM runs WHERE owner = e.id AND status = 'running')
             LIMIT 256",
            &[],
        )?
        .iter()
        .map(|r| owner_row(r, None))
        .collect())
}

/// `(run_id, epoch)` of every running run held by `owner`.
pub fn runs_of_owner(db: &mut Db<'_>, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
    db.query(
        "reading an owner's runs",
        "SELECT id, epoch FROM runs WHERE owner = $1 AND status = 'running'",
        &[&owner],
    )?
    .iter()
    .map(|r| {
        let what = "reading an owner's runs";
        Ok((get(r, 0, what)?, get(r, 1, what)?))
    })
    .collect()
}

/// The stored host id (boot id and PID namespace) of engine incarnation `id`, if its row
/// still exists.
pub fn engine_host(db: &mut Db<'_>, id: &str) -> StoreResult<Option<String>> {
    db.query_opt(
        "reading an engine's host",
        "SELECT boot_id FROM engines WHERE id = $1",
        &[&id],
    )?
    .map(|r| get(&r, 0, "reading an engine's host"))
    .transpose()
}

/// Does `fence` still hold: is the run `running` under that owner and epoch?
pub fn fence_holds(db: &mut Db<'_>, fence: &Fence) -> StoreResult<bool> {
    Ok(db
        .query_opt(
            "reading a run's fence",
            "SELECT 1 FROM runs WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'",
            &[&fence.run_id, &&*fence.owner, &fence.epoch],
        )?
        .is_some())
}

/// Is there work for `Op::Claim` now, for an engine running `workflows_json`: a pending run
/// (always due), a due suspended run, or a `blocked_version` run this engine can unpark?
pub fn claimable(db: &mut Db<'_>, now: i64, workflows_json: &str) -> StoreResult<bool> {
    db.query_one(
        "checking for claimable runs",
        // Pending runs: one seek per `workflow@version` this engine runs (see the
        // schema's waymark_pending_known).
        "SELECT waymark_pending_known($2::text::jsonb)
                 OR EXISTS (SELECT 1 FROM runs WHERE status = 'suspended' AND ready_at <= $1)
                 OR EXISTS (SELECT 1 FROM runs
                            WHERE status = 'blocked_version'
                              AND (workflow || '@' || version::text)
                                  = ANY(ARRAY(SELECT jsonb_array_elements_text($2::text::jsonb))))",
        &[&now, &workflows_json],
    )?
    .try_get(0)
    .map_err(|e| StoreError::Internal(format!("checking for claimable runs: {e}")))
}

/// Whether a cancel was requested for the run (`false` for a run that does not exist).
pub fn cancel_requested(db: &mut Db<'_>, run_id: i64) -> StoreResult<bool> {
    Ok(db
        .query_opt(
            "reading cancel_requested",
            "SELECT cancel_requested FROM runs WHERE id = $1",
            &[&run_id],
        )?
        .map(|r| get::<i64>(&r, 0, "reading cancel_requested"))
        .transpose()?
        == Some(1))
}

/// Runs that finished at or after `from` and before `before` (ms since the epoch).
pub fn finished_between(db: &mut Db<'_>, from: i64, before: i64) -> StoreResult<u64> {
    let n: i64 = db
        .query_one(
            "counting finished runs",
            "SELECT count(*) FROM runs
             WHERE finished_at IS NOT NULL AND finished_at >= $1 AND finished_at < $2",
            &[&from, &before],
        )?
        .try_get(0)
        .map_err(|e| StoreError::Internal(format!("counting finished runs: {e}")))?;
    Ok(n.max(0) as u64)
}
