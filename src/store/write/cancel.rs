//! Cancellation, deadlines and runs of unknown versions.
//!
//! Applied only through [`super::apply`], on the writer thread, inside the batch's
//! transaction (a savepoint per command). The invariants are those of [`super`].

use super::*;
use crate::store::error::{StoreError, StoreResult};
#[allow(unused_imports)]
use rusqlite::{params, Connection, OptionalExtension};

/// Apply one command of this family.
pub(super) fn apply(conn: &Connection, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::Cancel { run_id } => {
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![run_id], |r| r.get(0)).optional())
                .map_err(sql("reading a run's status"))?;
            if status.is_none() {
                return Err(StoreError::NotFound { run_id });
            }
            cancel_tree(conn, run_id, now)?;
            let status: String = conn
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![run_id], |r| r.get(0)))
                .map_err(sql("reading a run's status"))?;
            Ok(Done::Cancel { status })
        }
        Op::FinishCancelled { fence, reason } => {
            finish_cancelled(conn, &fence, &reason, now)?;
            Ok(Done::Unit)
        }
        Op::ExpireDeadlines { limit } => {
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET status = 'failed', note = NULL, finished_at = ?1, updated_at = ?1,
                            error = 'deadline passed (deadline_at ' || deadline_at || ' ms) before the run finished'
                     WHERE id IN (SELECT id FROM runs WHERE deadline_at <= ?1 AND finished_at IS NULL
                                    AND status IN ('pending', 'suspended') LIMIT +?2)",
                )
                .and_then(|mut s| s.execute(params![now, limit]))
                .map_err(sql("expiring deadlines"))?;
            Ok(Done::Count(n))
        }
        Op::ParkUnknownVersions {
            names_json,
            workflows_json,
            limit,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET status = 'blocked_version', updated_at = ?3,
                            note = 'workflow ''' || workflow || ''' version ' || version
                                   || ' is not registered in this build (it has other versions of '
                                   || workflow || '); a build that registers version ' || version
                                   || ' will claim it'
                     WHERE id IN (SELECT id FROM runs
                                  WHERE status = 'pending' AND ready_at <= ?3
                                    AND workflow IN (SELECT value FROM json_each(?1))
                                    AND (workflow || '@' || version) NOT IN (SELECT value FROM json_each(?2))
                                  LIMIT +?4)",
                )
                .and_then(|mut s| s.execute(params![&*names_json, &*workflows_json, now, limit]))
                .map_err(sql("parking runs of unknown versions"))?;
            Ok(Done::Count(n))
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::write::cancel"
        ))),
    }
}

/// Descendants of `?1` (and `?1` itself). `UNION`, not `UNION ALL`: a run already in the
/// tree is not walked again, so the walk ends even if `parent_id` forms a cycle (bad data),
/// after at most one row per run.
pub(super) const TREE: &str = "WITH RECURSIVE tree(id) AS (
        SELECT ?1 UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id)";

/// Request cancellation of `run_id` and its descendants: mark every unfinished one
/// `cancel_requested`, and end `cancelled` at once those not running (a running one ends at
/// its next boundary: its engine's poller sets its stop flag, and every transition that
/// would suspend it ends it instead).
pub(crate) fn cancel_tree(conn: &Connection, run_id: i64, now: i64) -> StoreResult<()> {
    conn.prepare_cached(&format!(
        "{TREE} UPDATE runs SET cancel_requested = 1, updated_at = ?2
         WHERE id IN (SELECT id FROM tree) AND status NOT IN {FINAL}"
    ))
    .and_then(|mut s| s.execute(params![run_id, now]))
    .map_err(sql("requesting cancellation"))?;
    conn.prepare_cached(&format!(
        "{TREE} UPDATE runs SET status = 'cancelled', error = 'cancelled', note = NULL,
                owner = NULL, lease_expires_at = NULL, finished_at = ?2, updated_at = ?2
         WHERE id IN (SELECT id FROM tree)
           AND status IN ('pending', 'suspended', 'blocked', 'blocked_version')"
    ))
    .and_then(|mut s| s.execute(params![run_id, now]))
    .map_err(sql("cancelling runs"))?;
    Ok(())
}

/// End a claimed run `cancelled` (fenced) and cancel its descendants, in this command.
pub(crate) fn finish_cancelled(
    conn: &Connection,
    fence: &Fence,
    reason: &str,
    now: i64,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached(&format!(
            "UPDATE runs SET status = 'cancelled', error = ?4, note = NULL, owner = NULL,
                    lease_expires_at = NULL, finished_at = ?5, updated_at = ?5 WHERE {FENCE}"
        ))
        .and_then(|mut s| {
            s.execute(params![
                fence.run_id,
                &*fence.owner,
                fence.epoch,
                reason,
                now
            ])
        })
        .map_err(sql("cancelling a run"))?;
    fenced(n, fence)?;
    cancel_tree(conn, fence.run_id, now)
}
