//! PostgreSQL: administration: retention, queue limits, schedules (SQLite's
//! `store/write/admin.rs`, statement for statement).
//!
//! Invariants (beyond those of [`super`]):
//! - A schedule fires once per due time across every engine on every host: the firing
//!   command locks the schedule's row and moves `next_due` only if it is still the due time
//!   the engine read; a second engine's command waits for the first and then finds it moved.
//! - A purge takes only finished runs no other transaction holds (`SKIP LOCKED`).

use super::*;

/// Apply one command of this family.
pub(super) fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::Purge { before, limit } => {
            let ids: Vec<i64> = db
                .query(
                    "choosing runs to purge",
                    "SELECT id FROM runs r WHERE finished_at <= $1
                       AND status IN ('completed', 'failed', 'cancelled')
                       AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_id
                                         AND p.status NOT IN ('completed', 'failed', 'cancelled'))
                     ORDER BY finished_at LIMIT $2 FOR UPDATE OF r SKIP LOCKED",
                    &[&before, &limit],
                )?
                .iter()
                .map(|r| {
                    r.try_get(0)
                        .map_err(|e| StoreError::Internal(format!("choosing runs to purge: {e}")))
                })
                .collect::<StoreResult<_>>()?;
            if !ids.is_empty() {
                db.exec(
                    "purging journals",
                    "DELETE FROM steps WHERE run_id = ANY($1)",
                    &[&ids],
                )?;
                db.exec(
                    "purging attempts",
                    "DELETE FROM attempts WHERE run_id = ANY($1)",
                    &[&ids],
                )?;
                db.exec(
                    "purging events",
                    "DELETE FROM events WHERE run_id = ANY($1)",
                    &[&ids],
                )?;
                db.exec(
                    "purging runs",
                    "DELETE FROM runs WHERE id = ANY($1)",
                    &[&ids],
                )?;
            }
            // The change log's entries as old as the horizon serve no watcher any more (one
            // that fell that far behind re-reads what it watches): retention covers them too.
            db.exec(
                "purging the change log",
                "DELETE FROM run_changes WHERE at <= $1",
                &[&before],
            )?;
            Ok(Done::Count(ids.len()))
        }
        Op::IncrementalVacuum { .. } => {
            // Nothing to give back: PostgreSQL reclaims the space of deleted rows itself
            // (autovacuum marks it free for reuse inside the table's files; only VACUUM FULL,
            // which locks the tables, would shrink them, and that is the operator's call).
            // The answer is SQLite's "free pages left": none that this command could return.
            Ok(Done::Count(0))
        }
        Op::SetQueueLimit { queue, concurrency } => {
            match concurrency {
                Some(n) => db.exec(
                    "setting a queue limit",
                    "INSERT INTO queues(name, concurrency) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency",
                    &[&queue, &n.max(0)],
                ),
                None => db.exec(
                    "setting a queue limit",
                    "DELETE FROM queues WHERE name = $1",
                    &[&queue],
                ),
            }?;
            Ok(Done::Unit)
        }
        Op::PutSchedule(row) => {
            db.exec(
                "saving a schedule",
                "INSERT INTO schedules(name, cron, workflow, version, input, queue, catch_up,
                                       next_due, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                 ON CONFLICT (name) DO UPDATE SET cron = excluded.cron,
                     workflow = excluded.workflow, version = excluded.version,
                     input = excluded.input, queue = excluded.queue,
                     catch_up = excluded.catch_up, updated_at = excluded.updated_at,
                     next_due = CASE WHEN schedules.cron = excluded.cron THEN schedules.next_due
                                     ELSE excluded.next_due END",
                &[
                    &row.name,
                    &row.cron,
                    &row.workflow,
                    &row.version,
                    &row.input,
                    &row.queue,
                    &i64::from(row.catch_up),
                    &row.next_due,
                    &now,
                ],
            )?;
            Ok(Done::Unit)
        }
        Op::FireSchedule {
            name,
            due,
            next,
            run,
        } => {
            // The guarded UPDATE locks the schedule's row; a concurrent firing waits for this
            // transaction, re-checks `next_due = due` on the moved row and changes nothing.
            let n = db.exec(
                "advancing a schedule",
                "UPDATE schedules SET next_due = $3, updated_at = $4
                 WHERE name = $1 AND next_due = $2",
                &[&name, &due, &next, &now],
            )?;
            if n == 0 {
                // Another engine fired this due time first (or the schedule changed).
                return Ok(Done::Count(0));
            }
            let (id, created) = enqueue(db, &run, now)?;
            Ok(Done::Run { id, created })
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::pg::write::admin"
        ))),
    }
}
