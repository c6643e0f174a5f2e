//! Administration: retention, queue limits, schedules.
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
        Op::Purge { before, limit } => {
            let ids: Vec<i64> = conn
                .prepare_cached(&format!(
                    "SELECT id FROM runs r WHERE finished_at <= ?1 AND status IN {FINAL}
                       AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_id
                                         AND p.status NOT IN {FINAL})
                     ORDER BY finished_at LIMIT +?2"
                ))
                .and_then(|mut s| {
                    s.query_map(params![before, limit], |r| r.get(0))?
                        .collect::<Result<_, _>>()
                })
                .map_err(sql("choosing runs to purge"))?;
            for table in [
                "DELETE FROM steps WHERE run_id = ?1",
                "DELETE FROM attempts WHERE run_id = ?1",
                "DELETE FROM events WHERE run_id = ?1",
                "DELETE FROM runs WHERE id = ?1",
            ] {
                let mut stmt = conn
                    .prepare_cached(table)
                    .map_err(sql("preparing a purge"))?;
                for id in &ids {
                    stmt.execute(params![id]).map_err(sql("purging a run"))?;
                }
            }
            // The change log's entries as old as the horizon serve no watcher any more (one
            // that fell that far behind re-reads what it watches): retention covers them too.
            conn.prepare_cached("DELETE FROM run_changes WHERE at <= ?1")
                .and_then(|mut s| s.execute(params![before]))
                .map_err(sql("purging the change log"))?;
            Ok(Done::Count(ids.len()))
        }
        Op::IncrementalVacuum { pages } => {
            // The pragma returns no rows; step it to completion, then report what is left.
            let mut stmt = conn
                .prepare(&format!("PRAGMA incremental_vacuum({})", pages.max(1)))
                .map_err(sql("vacuuming"))?;
            let mut rows = stmt.query([]).map_err(sql("vacuuming"))?;
            while rows.next().map_err(sql("vacuuming"))?.is_some() {}
            let free: i64 = conn
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                .map_err(sql("reading the free-page count"))?;
            Ok(Done::Count(free as usize))
        }
        Op::SetQueueLimit { queue, concurrency } => {
            match concurrency {
                Some(n) => conn
                    .prepare_cached(
                        "INSERT INTO queues(name, concurrency) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET concurrency = excluded.concurrency",
                    )
                    .and_then(|mut s| s.execute(params![queue, n.max(0)])),
                None => conn
                    .prepare_cached("DELETE FROM queues WHERE name = ?1")
                    .and_then(|mut s| s.execute(params![queue])),
            }
            .map_err(sql("setting a queue limit"))?;
            Ok(Done::Unit)
        }
        Op::PutSchedule(row) => {
            conn.prepare_cached(
                "INSERT INTO schedules(name, cron, workflow, version, input, queue, catch_up, next_due, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
                 ON CONFLICT(name) DO UPDATE SET cron = excluded.cron, workflow = excluded.workflow,
                     version = excluded.version, input = excluded.input, queue = excluded.queue,
                     catch_up = excluded.catch_up, updated_at = excluded.updated_at,
                     next_due = CASE WHEN schedules.cron = excluded.cron THEN schedules.next_due
                                     ELSE excluded.next_due END",
            )
            .and_then(|mut s| {
                s.execute(params![
                    row.name,
                    row.cron,
                    row.workflow,
                    row.version,
                    row.input,
                    row.queue,
                    row.catch_up,
                    row.next_due,
                    now
                ])
            })
            .map_err(sql("saving a schedule"))?;
            Ok(Done::Unit)
        }
        Op::FireSchedule {
            name,
            due,
            next,
            run,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE schedules SET next_due = ?3, updated_at = ?4 WHERE name = ?1 AND next_due = ?2",
                )
                .and_then(|mut s| s.execute(params![name, due, next, now]))
                .map_err(sql("advancing a schedule"))?;
            if n == 0 {
                // Another engine fired this due time first (or the schedule changed).
                return Ok(Done::Count(0));
            }
            let (id, created) = enqueue(conn, &run, now)?;
            Ok(Done::Run { id, created })
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::write::admin"
        ))),
    }
}
