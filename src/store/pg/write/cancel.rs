//! PostgreSQL: cancellation, deadlines and runs of unknown versions (SQLite's
//! `store/write/cancel.rs`, statement for statement).
//!
//! Invariants (beyond those of [`super`]):
//! - A cancel locks the unfinished runs of the tree it walks in id order before changing
//!   them (one lock order for every command that locks several runs). Under READ COMMITTED
//!   each UPDATE re-checks its status guard on the latest row version, so a run claimed or
//!   suspended concurrently is flagged, and ended if it is parked by then.
//! - Sweeps (`ExpireDeadlines`, `ParkUnknownVersions`) skip rows another transaction holds
//!   (`SKIP LOCKED`): a run being claimed right now is that claim's, and the next sweep sees
//!   it again if it still qualifies.

use super::*;
use crate::store::write::Fence;

// ---- shared with the `runs` family (written by the core port; keep at the top) ----

/// Descendants of `$1` (and `$1` itself). `UNION`, not `UNION ALL`: a run already in the
/// tree is not walked again, so the walk ends even if `parent_id` forms a cycle (bad data).
macro_rules! tree {
    () => {
        "WITH RECURSIVE tree(id) AS (
            SELECT $1::bigint UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id) "
    };
}

/// Request cancellation of `run_id` and its descendants: mark every unfinished one
/// `cancel_requested`, and end `cancelled` at once those not running (a running one ends at
/// its next boundary). Rows are updated in id order (no deadlock with another command
/// locking several runs).
pub(crate) fn cancel_tree(db: &mut Db<'_>, run_id: i64, now: i64) -> StoreResult<()> {
    db.exec(
        "requesting cancellation",
        concat!(
            tree!(),
            "UPDATE runs SET cancel_requested = 1, updated_at = $2
             WHERE id IN (SELECT r.id FROM runs r JOIN tree t ON r.id = t.id
                          WHERE r.status NOT IN ('completed', 'failed', 'cancelled')
                          ORDER BY r.id FOR UPDATE OF r)"
        ),
        &[&run_id, &now],
    )?;
    db.exec(
        "cancelling runs",
        concat!(
            tree!(),
            "UPDATE runs SET status = 'cancelled', error = 'cancelled', note = NULL,
                    owner = NULL, lease_expires_at = NULL, finished_at = $2, updated_at = $2
             WHERE id IN (SELECT id FROM tree)
               AND status IN ('pending', 'suspended', 'blocked', 'blocked_version')"
        ),
        &[&run_id, &now],
    )?;
    Ok(())
}

/// End a claimed run `cancelled` (fenced) and cancel its descendants, in this command.
pub(crate) fn finish_cancelled(
    db: &mut Db<'_>,
    fence: &Fence,
    reason: &str,
    now: i64,
) -> StoreResult<()> {
    let n = db.exec(
        "cancelling a run",
        "UPDATE runs SET status = 'cancelled', error = $4, note = NULL, owner = NULL,
                lease_expires_at = NULL, finished_at = $5, updated_at = $5
         WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'",
        &[&fence.run_id, &&*fence.owner, &fence.epoch, &reason, &now],
    )?;
    fenced(n, fence)?;
    cancel_tree(db, fence.run_id, now)
}

// ---- end of the shared part ----

/// Apply one command of this family.
pub(super) fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::Cancel { run_id } => {
            let found = db.query_opt(
                "reading a run's status",
                "SELECT status FROM runs WHERE id = $1",
                &[&run_id],
            )?;
            if found.is_none() {
                return Err(StoreError::NotFound { run_id });
            }
            cancel_tree(db, run_id, now)?;
            let status: String = db
                .query_one(
                    "reading a run's status",
                    "SELECT status FROM runs WHERE id = $1",
                    &[&run_id],
                )?
                .try_get(0)
                .map_err(|e| StoreError::Undecodable {
                    run_id,
                    detail: format!("its status: {e}"),
                })?;
            Ok(Done::Cancel { status })
        }
        Op::FinishCancelled { fence, reason } => {
            finish_cancelled(db, &fence, &reason, now)?;
            Ok(Done::Unit)
        }
        Op::ExpireDeadlines { limit } => {
            let n = db.exec(
                "expiring deadlines",
                "UPDATE runs SET status = 'failed', note = NULL, finished_at = $1, updated_at = $1,
                        error = 'deadline passed (deadline_at ' || deadline_at::text
                                || ' ms) before the run finished'
                 WHERE id IN (SELECT id FROM runs WHERE deadline_at <= $1 AND finished_at IS NULL
                                AND status IN ('pending', 'suspended')
                              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&now, &limit],
            )?;
            Ok(Done::Count(n as usize))
        }
        Op::ParkUnknownVersions {
            names_json,
            workflows_json,
            limit,
        } => {
            let n = db.exec(
                "parking runs of unknown versions",
                "UPDATE runs SET status = 'blocked_version', updated_at = $3,
                        note = 'workflow ''' || workflow || ''' version ' || version::text
                               || ' is not registered in this build (it has other versions of '
                               || workflow || '); a build that registers version '
                               || version::text || ' will claim it'
                 WHERE id IN (SELECT id FROM runs
                              WHERE status = 'pending' AND ready_at <= $3
                                AND workflow = ANY(ARRAY(SELECT jsonb_array_elements_text($1::text::jsonb)))
                                AND NOT (workflow || '@' || version::text)
                                        = ANY(ARRAY(SELECT jsonb_array_elements_text($2::text::jsonb)))
                              ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)",
                &[&&*names_json, &&*workflows_json, &now, &limit],
            )?;
            Ok(Done::Count(n as usize))
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::pg::write::cancel"
        ))),
    }
}
