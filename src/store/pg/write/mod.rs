//! Every change to run state on PostgreSQL: the same commands ([`Op`]) and answers
//! ([`Done`]) as SQLite's `store/write/`, the same guards, one family per file
//! (`leases`, `runs`, `waits`, `cancel`, `admin`), each statement written for PostgreSQL.
//!
//! Invariants (those of `store/write/mod.rs`, kept here statement for statement):
//! - Every write made on behalf of a claimed run is guarded by `(id, owner, epoch,
//!   status='running')`; a guard that matches no row is [`StoreError::LeaseLost`].
//! - Every claim and every reclaim bumps `epoch`.
//! - A reclaim is guarded by the `(status, epoch)` the reaper read.
//! - Journal entries are write-once: a plain INSERT keyed by `(run_id, seq)`; a second
//!   write is [`StoreError::JournalConflict`].
//! - Each command runs inside the caller's transaction ([`super::PgStore::call`]); an error
//!   rolls back the whole command.

mod admin;
mod cancel;
mod leases;
mod runs;
mod waits;

// Shared between families (each family reaches them through `use super::*`).
use runs::{enqueue, suspend};

use super::conn::{get, sqlstate, Db};
use crate::store::error::{StoreError, StoreResult};
use crate::store::write::{ClaimNext, Done, Family, Fence, Op};

// The fence of a claimed run's write is spelled out in each statement
// (`id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'`), as are the final
// statuses (`('completed', 'failed', 'cancelled')`): statements are `&'static str` for the
// statement cache, and `concat!` takes literals only, not constants.

/// `Ok` when exactly one row matched the fence, else `LeaseLost`.
pub(crate) fn fenced(changed: u64, fence: &Fence) -> StoreResult<Done> {
    if changed == 1 {
        Ok(Done::Unit)
    } else {
        Err(StoreError::LeaseLost {
            run_id: fence.run_id,
            epoch: fence.epoch,
        })
    }
}

/// Check the fence and lock the run's row for this transaction; answers whether a cancel
/// was requested for the run.
pub(crate) fn check_fence(db: &mut Db<'_>, fence: &Fence) -> StoreResult<bool> {
    let row = db.query_opt(
        "checking a fence",
        "SELECT cancel_requested FROM runs
         WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running' FOR UPDATE",
        &[&fence.run_id, &&*fence.owner, &fence.epoch],
    )?;
    match row {
        Some(r) => Ok(get::<i64>(&r, 0, "checking a fence")? != 0),
        None => fenced(0, fence).map(|_| false),
    }
}

/// A journal entry to insert.
pub(crate) struct NewEntry<'a> {
    pub seq: i64,
    pub name: &'a str,
    pub kind: &'static str,
    pub completed: bool,
    pub output: Option<&'a [u8]>,
    pub error: Option<&'a str>,
}

/// Insert a journal entry (write-once). The caller checked the fence in this transaction.
pub(crate) fn insert_entry(
    db: &mut Db<'_>,
    run_id: i64,
    e: NewEntry<'_>,
    now: i64,
) -> StoreResult<()> {
    let status = if e.completed { "completed" } else { "failed" };
    let result = db.exec(
        "recording a journal entry",
        "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error, recorded_at)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)",
        &[
            &run_id, &e.seq, &e.name, &e.kind, &status, &e.output, &e.error, &now,
        ],
    );
    match result {
        Err(err) if sqlstate(&err) == Some("23505") => {
            Err(StoreError::JournalConflict { run_id, seq: e.seq })
        }
        other => other.map(|_| ()),
    }
}

/// Apply one command inside the caller's open transaction. `now` is our wall time (ms).
/// Routed as SQLite's ([`Op::family`]).
pub fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    match op.family() {
        Family::Batch => match op {
            Op::Batch { ops, next } => batch(db, ops, next, now),
            _ => Err(StoreError::Internal("a batch that is not Op::Batch".into())),
        },
        Family::Leases => leases::apply(db, op, now),
        Family::Runs => runs::apply(db, op, now),
        Family::Waits => waits::apply(db, op, now),
        Family::Cancel => cancel::apply(db, op, now),
        Family::Admin => admin::apply(db, op, now),
    }
}

/// `Op::Batch`: apply `ops` in order (the first error is the answer), then claim `next` in
/// a savepoint: a failing claim claims nothing and undoes nothing of `ops`.
fn batch(db: &mut Db<'_>, ops: Vec<Op>, next: Option<ClaimNext>, now: i64) -> StoreResult<Done> {
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        answers.push(apply(db, op, now)?);
    }
    let Some(next) = next else {
        return Ok(Done::Batch {
            answers,
            claimed: Vec::new(),
        });
    };
    let started: Vec<i64> = if next.only_started {
        answers
            .iter()
            .flat_map(|a| match a {
                Done::Runs(v) => v
                    .iter()
                    .filter(|(_, created)| *created)
                    .map(|(id, _)| *id)
                    .collect(),
                _ => Vec::new(),
            })
            .take(next.limit.max(0) as usize)
            .collect()
    } else {
        Vec::new()
    };
    let claimed = db.savepoint(|db| {
        if next.only_started {
            leases::claim_runs(
                db,
                &next.owner,
                &started,
                &next.workflows_json,
                next.lease_ms,
                now,
            )
        } else if next.sweep {
            match apply(
                db,
                Op::Claim {
                    owner: next.owner.clone(),
                    limit: next.limit,
                    workflows_json: next.workflows_json.clone(),
                    lease_ms: next.lease_ms,
                },
                now,
            )? {
                Done::Claimed(v) => Ok(v),
                other => Err(StoreError::Internal(format!("claim answered {other:?}"))),
            }
        } else {
            leases::claim_ready(
                db,
                &next.owner,
                next.limit,
                &next.workflows_json,
                next.lease_ms,
                now,
            )
        }
    });
    let claimed = match claimed {
        Ok(claimed) => claimed,
        Err(e) => {
            log::warn!("claiming the next run with an ending failed: {e}");
            Vec::new()
        }
    };
    Ok(Done::Batch { answers, claimed })
}
