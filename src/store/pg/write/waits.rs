//! PostgreSQL: the `waits` family of transitions (SQLite's `store/write/waits.rs`).

#![allow(unused_imports, unused_variables)]

use super::*;
use crate::store::write::Claimed;
use std::sync::Arc;

/// Apply one command of this family.
pub(super) fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    Err(StoreError::Internal(format!(
        "{op:?} is not implemented on PostgreSQL yet (store::pg::write::waits)"
    )))
}
