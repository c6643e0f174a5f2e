//! PostgreSQL: the `leases` family of transitions (SQLite's `store/write/leases.rs`).

#![allow(unused_imports, unused_variables)]

use super::*;
use crate::store::write::Claimed;
use std::sync::Arc;

/// Apply one command of this family.
pub(super) fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    Err(StoreError::Internal(format!(
        "{op:?} is not implemented on PostgreSQL yet (store::pg::write::leases)"
    )))
}

/// Claim these runs by id (see SQLite's `claim_runs`).
pub(crate) fn claim_runs(
    db: &mut Db<'_>,
    owner: &Arc<str>,
    ids: &[i64],
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    Err(StoreError::Internal(
        "claim_runs: not implemented on PostgreSQL yet".into(),
    ))
}

/// Claim up to `limit` ready runs (see SQLite's `claim_ready`).
pub(crate) fn claim_ready(
    db: &mut Db<'_>,
    owner: &Arc<str>,
    limit: i64,
    workflows_json: &str,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<Claimed>> {
    Err(StoreError::Internal(
        "claim_ready: not implemented on PostgreSQL yet".into(),
    ))
}
