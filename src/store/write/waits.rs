//! Durable waits: timers, events, child runs.
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
        Op::Timer {
            fence,
            seq,
            name,
            wake,
            suspend: then_suspend,
        } => {
            if check_fence(conn, &fence)? {
                return ended_cancelled(conn, &fence, now);
            }
            let bytes = crate::codec::encode_i64(wake);
            insert_entry(
                conn,
                fence.run_id,
                NewEntry {
                    seq,
                    name: &name,
                    kind: "sleep",
                    completed: true,
                    output: Some(&bytes),
                    error: None,
                },
                now,
            )?;
            if then_suspend && wake > now {
                return parked(suspend(
                    conn,
                    &fence,
                    wake,
                    &format!("sleeping until {wake}"),
                    now,
                )?);
            }
            Ok(Done::Unit)
        }
        Op::AwaitEvent {
            fence,
            seq,
            name,
            deadline,
            upto,
        } => {
            if check_fence(conn, &fence)? {
                return ended_cancelled(conn, &fence, now);
            }
            let event: Option<(i64, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT id, payload FROM events WHERE run_id = ?1 AND name = ?2
                       AND consumed_seq IS NULL ORDER BY id LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(params![fence.run_id, name], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql("looking for an event"))?;
            if let Some((id, _)) = &event {
                if upto != Some(*id) {
                    // An event the caller has not checked yet: look again at once. Not only
                    // a later one: PostgreSQL takes an event's id at INSERT, so an event
                    // with a smaller id can commit after the caller looked.
                    return look_again(conn, &fence, now).and_then(|_| parked(false));
                }
            }
            if let Some((id, payload)) = event {
                conn.prepare_cached(
                    "UPDATE events SET consumed_seq = ?2 WHERE id = ?1 AND consumed_seq IS NULL",
                )
                .and_then(|mut s| s.execute(params![id, seq]))
                .map_err(sql("consuming an event"))?;
                insert_entry(
                    conn,
                    fence.run_id,
                    NewEntry {
                        seq,
                        name: &name,
                        kind: "event",
                        completed: true,
                        output: Some(&payload),
                        error: None,
                    },
                    now,
                )?;
                return Ok(Done::Awaited(Awaited::Delivered(payload)));
            }
            if now >= deadline {
                let reason = format!("timed out waiting for event '{name}'");
                insert_entry(
                    conn,
                    fence.run_id,
                    NewEntry {
                        seq,
                        name: &name,
                        kind: "event",
                        completed: false,
                        output: None,
                        error: Some(&reason),
                    },
                    now,
                )?;
                return Ok(Done::Awaited(Awaited::Failed(reason)));
            }
            parked(suspend(conn, &fence, deadline, &event_note(&name), now)?)
        }
        Op::RejectEvent {
            fence,
            event_id,
            note,
        } => {
            if check_fence(conn, &fence)? {
                return ended_cancelled(conn, &fence, now);
            }
            conn.prepare_cached(
                "UPDATE events SET consumed_seq = 0
                 WHERE id = ?1 AND run_id = ?2 AND consumed_seq IS NULL",
            )
            .and_then(|mut s| s.execute(params![event_id, fence.run_id]))
            .map_err(sql("setting an event aside"))?;
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE runs SET status = 'blocked', note = ?4, owner = NULL,
                            lease_expires_at = NULL, updated_at = ?5 WHERE {FENCE}"
                ))
                .and_then(|mut s| {
                    s.execute(params![fence.run_id, &*fence.owner, fence.epoch, note, now])
                })
                .map_err(sql("blocking a run on a bad event"))?;
            fenced(n, &fence)
        }
        Op::SendEvent {
            run_id,
            name,
            payload,
        } => {
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![run_id], |r| r.get(0)).optional())
                .map_err(sql("reading a run's status"))?;
            match status.as_deref() {
                None => return Err(StoreError::NotFound { run_id }),
                Some(s @ ("completed" | "failed" | "cancelled")) => {
                    return Err(StoreError::RunFinished {
                        run_id,
                        status: s.to_string(),
                    })
                }
                Some(_) => {}
            }
            conn.prepare_cached(
                "INSERT INTO events(run_id, name, payload, sent_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![run_id, name, payload, now]))
            .map_err(sql("keeping an event"))?;
            let event_id = conn.last_insert_rowid();
            let woke = conn
                .prepare_cached(
                    "UPDATE runs SET ready_at = ?2, updated_at = ?2
                     WHERE id = ?1 AND status = 'suspended' AND note = ?3 AND ready_at > ?2",
                )
                .and_then(|mut s| s.execute(params![run_id, now, event_note(&name)]))
                .map_err(sql("waking a run for an event"))?;
            Ok(Done::Sent {
                event_id,
                woke: woke > 0,
            })
        }
        Op::StartChild {
            fence,
            seq,
            name,
            run,
        } => {
            let cancel_requested = check_fence(conn, &fence)?;
            let (id, _) = enqueue(conn, &run, now)?;
            let bytes = crate::codec::encode_i64(id);
            insert_entry(
                conn,
                fence.run_id,
                NewEntry {
                    seq,
                    name: &name,
                    kind: "child",
                    completed: true,
                    output: Some(&bytes),
                    error: None,
                },
                now,
            )?;
            if cancel_requested {
                // The child is created and journaled (replay agrees), then ends `cancelled`
                // with its parent, as a descendant: nothing of it runs.
                return ended_cancelled(conn, &fence, now);
            }
            Ok(Done::Run { id, created: true })
        }
        Op::AwaitChild {
            fence,
            seq,
            name,
            child_id,
        } => {
            if check_fence(conn, &fence)? {
                return ended_cancelled(conn, &fence, now);
            }
            let child: Option<(String, Option<Vec<u8>>, Option<String>)> = conn
                .prepare_cached(
                    "SELECT status, output, error FROM runs WHERE id = ?1 AND parent_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![child_id, fence.run_id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .map_err(sql("reading a child run"))?;
            let failed = |reason: String| -> StoreResult<Done> {
                insert_entry(
                    conn,
                    fence.run_id,
                    NewEntry {
                        seq,
                        name: &name,
                        kind: "join",
                        completed: false,
                        output: None,
                        error: Some(&reason),
                    },
                    now,
                )?;
                Ok(Done::Awaited(Awaited::Failed(reason)))
            };
            match child {
                None => failed(format!("child run {child_id} does not exist")),
                Some((status, output, _)) if status == "completed" => {
                    let output = output.unwrap_or_default();
                    insert_entry(
                        conn,
                        fence.run_id,
                        NewEntry {
                            seq,
                            name: &name,
                            kind: "join",
                            completed: true,
                            output: Some(&output),
                            error: None,
                        },
                        now,
                    )?;
                    Ok(Done::Awaited(Awaited::Delivered(output)))
                }
                Some((status, _, error)) if status == "failed" || status == "cancelled" => {
                    failed(format!(
                        "child run {child_id} {status}: {}",
                        error.unwrap_or_default()
                    ))
                }
                Some(_) => parked(suspend(conn, &fence, i64::MAX, &child_note(child_id), now)?),
            }
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::write::waits"
        ))),
    }
}

/// The note of a run suspended waiting for event `name` (wake-ups match on it).
pub fn event_note(name: &str) -> String {
    format!("waiting for event '{name}'")
}

/// The note of a run suspended waiting for child `child_id`. Migration 2's trigger
/// `runs_wake_parent` builds the same text.
pub fn child_note(child_id: i64) -> String {
    format!("waiting for child {child_id}")
}

/// running -> pending at once, fenced (as a release): the run looks again at its events.
/// Not `suspended` until `now`: only a sweep on a clock that has reached our `now` would
/// wake it, and another engine's clock (or ours, after a jump back) may be behind. The
/// caller checked the fence in this transaction and saw no cancel request.
fn look_again(conn: &Connection, fence: &Fence, now: i64) -> StoreResult<Done> {
    let n = conn
        .prepare_cached(&format!(
            "UPDATE runs SET status = 'pending', note = NULL, owner = NULL,
                    lease_expires_at = NULL, ready_at = ?4, updated_at = ?4 WHERE {FENCE}"
        ))
        .and_then(|mut s| s.execute(params![fence.run_id, &*fence.owner, fence.epoch, now]))
        .map_err(sql("looking again at a run's events"))?;
    fenced(n, fence)
}

/// The answer of a command that parked the run: suspended, or ended `cancelled` by
/// `suspend` (the answer of `write::suspend`).
pub(super) fn parked(cancelled: bool) -> StoreResult<Done> {
    Ok(Done::Awaited(if cancelled {
        Awaited::Cancelled
    } else {
        Awaited::Waiting
    }))
}

/// The answer of a feature command that found a cancel requested: the run ended instead.
pub(super) fn ended_cancelled(conn: &Connection, fence: &Fence, now: i64) -> StoreResult<Done> {
    finish_cancelled(conn, fence, "cancelled", now)?;
    Ok(Done::Awaited(Awaited::Cancelled))
}
