//! PostgreSQL: the `cancel` family of transitions (SQLite's `store/write/cancel.rs`).

#![allow(unused_imports, unused_variables)]

use super::*;
use crate::store::write::Claimed;
use std::sync::Arc;

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
#[allow(dead_code)] // used by the cancel family's `FinishCancelled` and the waits
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
    Err(StoreError::Internal(format!(
        "{op:?} is not implemented on PostgreSQL yet (store::pg::write::cancel)"
    )))
}
