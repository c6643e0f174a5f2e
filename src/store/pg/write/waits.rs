//! PostgreSQL: durable waits: timers, events, child runs (SQLite's `store/write/waits.rs`,
//! statement for statement).
//!
//! Invariants (beyond those of [`super`]), kept under READ COMMITTED by row locks:
//! - A run that parks itself (event, child) is suspended in the same command that found
//!   nothing to deliver, while it holds its own row (`check_fence` locks it).
//! - `SendEvent` locks the receiving run's row before it reads its status and keeps the
//!   event: it waits for a command parking that run, so it either sees the run suspended
//!   (and wakes it) or commits its event before that command looks for one.
//! - `AwaitChild` reads the child's row `FOR SHARE`: it waits for a transaction ending the
//!   child, so it either sees the end or holds the child until it has suspended its parent
//!   (the `runs_wake_parent` trigger of the child's end then sees the parent suspended).

use super::*;
use crate::store::pg::conn::col;
use crate::store::write::{child_note, event_note, Awaited, Fence};

/// Apply one command of this family.
pub(super) fn apply(db: &mut Db<'_>, op: Op, now: i64) -> StoreResult<Done> {
    match op {
        Op::Timer {
            fence,
            seq,
            name,
            wake,
            suspend: then_suspend,
        } => {
            if check_fence(db, &fence)? {
                return ended_cancelled(db, &fence, now);
            }
            let bytes = crate::codec::encode_i64(wake);
            insert_entry(
                db,
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
                    db,
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
            if check_fence(db, &fence)? {
                return ended_cancelled(db, &fence, now);
            }
            let event = db.query_opt(
                "looking for an event",
                "SELECT id, payload FROM events WHERE run_id = $1 AND name = $2
                   AND consumed_seq IS NULL ORDER BY id LIMIT 1",
                &[&fence.run_id, &name],
            )?;
            let event: Option<(i64, Vec<u8>)> = match event {
                None => None,
                Some(r) => Some((
                    col(&r, 0, fence.run_id, "an event's id")?,
                    col(&r, 1, fence.run_id, "an event's payload")?,
                )),
            };
            if let Some((id, _)) = &event {
                if upto != Some(*id) {
                    // An event the caller has not checked yet: look again at once. Not only
                    // a later one: PostgreSQL takes an event's id at INSERT, so an event
                    // with a smaller id can commit after the caller looked.
                    return look_again(db, &fence, now).and_then(|_| parked(false));
                }
            }
            if let Some((id, payload)) = event {
                db.exec(
                    "consuming an event",
                    "UPDATE events SET consumed_seq = $2 WHERE id = $1 AND consumed_seq IS NULL",
                    &[&id, &seq],
                )?;
                insert_entry(
                    db,
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
                    db,
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
            parked(suspend(db, &fence, deadline, &event_note(&name), now)?)
        }
        Op::RejectEvent {
            fence,
            event_id,
            note,
        } => {
            if check_fence(db, &fence)? {
                return ended_cancelled(db, &fence, now);
            }
            db.exec(
                "setting an event aside",
                "UPDATE events SET consumed_seq = 0
                 WHERE id = $1 AND run_id = $2 AND consumed_seq IS NULL",
                &[&event_id, &fence.run_id],
            )?;
            let n = db.exec(
                "blocking a run on a bad event",
                "UPDATE runs SET status = 'blocked', note = $4, owner = NULL,
                        lease_expires_at = NULL, updated_at = $5
                 WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'",
                &[&fence.run_id, &&*fence.owner, &fence.epoch, &note, &now],
            )?;
            fenced(n, &fence)
        }
        Op::SendEvent {
            run_id,
            name,
            payload,
        } => {
            // Locked: a command parking this run right now commits first (see the module).
            let status = db.query_opt(
                "reading a run's status",
                "SELECT status FROM runs WHERE id = $1 FOR UPDATE",
                &[&run_id],
            )?;
            let status: String = match status {
                None => return Err(StoreError::NotFound { run_id }),
                Some(r) => col(&r, 0, run_id, "its status")?,
            };
            if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                return Err(StoreError::RunFinished { run_id, status });
            }
            let event_id: i64 = db
                .query_one(
                    "keeping an event",
                    "INSERT INTO events(run_id, name, payload, sent_at) VALUES ($1, $2, $3, $4)
                     RETURNING id",
                    &[&run_id, &name, &payload, &now],
                )?
                .try_get(0)
                .map_err(|e| StoreError::Internal(format!("keeping an event: {e}")))?;
            let woke = db.exec(
                "waking a run for an event",
                // Straight to pending: a pending run is claimable whatever its ready_at, so
                // a sender whose clock is ahead of the engines' delays nothing (a wake-up
                // time from the sender's clock would).
                "UPDATE runs SET status = 'pending', note = NULL,
                        ready_at = LEAST(ready_at, $2), updated_at = $2
                 WHERE id = $1 AND status = 'suspended' AND note = $3",
                &[&run_id, &now, &event_note(&name)],
            )?;
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
            let cancel_requested = check_fence(db, &fence)?;
            let (id, _) = enqueue(db, &run, now)?;
            let bytes = crate::codec::encode_i64(id);
            insert_entry(
                db,
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
                return ended_cancelled(db, &fence, now);
            }
            Ok(Done::Run { id, created: true })
        }
        Op::AwaitChild {
            fence,
            seq,
            name,
            child_id,
        } => {
            if check_fence(db, &fence)? {
                return ended_cancelled(db, &fence, now);
            }
            // FOR SHARE: wait for a transaction ending the child (see the module).
            let child = db.query_opt(
                "reading a child run",
                "SELECT status, output, error FROM runs WHERE id = $1 AND parent_id = $2
                 FOR SHARE",
                &[&child_id, &fence.run_id],
            )?;
            let child: Option<(String, Option<Vec<u8>>, Option<String>)> = match child {
                None => None,
                Some(r) => Some((
                    col(&r, 0, child_id, "its status")?,
                    col(&r, 1, child_id, "its output")?,
                    col(&r, 2, child_id, "its error")?,
                )),
            };
            let failed = |db: &mut Db<'_>, reason: String| -> StoreResult<Done> {
                insert_entry(
                    db,
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
                None => failed(db, format!("child run {child_id} does not exist")),
                Some((status, output, _)) if status == "completed" => {
                    let output = output.unwrap_or_default();
                    insert_entry(
                        db,
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
                Some((status, _, error)) if status == "failed" || status == "cancelled" => failed(
                    db,
                    format!(
                        "child run {child_id} {status}: {}",
                        error.unwrap_or_default()
                    ),
                ),
                Some(_) => parked(suspend(db, &fence, i64::MAX, &child_note(child_id), now)?),
            }
        }
        other => Err(StoreError::Internal(format!(
            "{other:?} is not a command of store::pg::write::waits"
        ))),
    }
}

/// running -> pending at once, fenced (as a release): the run looks again at its events.
/// Not `suspended` until `now`: only a sweep on a clock that has reached our `now` would
/// wake it, and another host's clock may be behind ours. The caller checked the fence in
/// this transaction (the row is locked) and saw no cancel request.
fn look_again(db: &mut Db<'_>, fence: &Fence, now: i64) -> StoreResult<Done> {
    let n = db.exec(
        "looking again at a run's events",
        "UPDATE runs SET status = 'pending', note = NULL, owner = NULL,
                lease_expires_at = NULL, ready_at = $4, updated_at = $4
         WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = 'running'",
        &[&fence.run_id, &&*fence.owner, &fence.epoch, &now],
    )?;
    fenced(n, fence)
}

/// The answer of a command that parked the run: suspended, or ended `cancelled` by
/// `suspend`.
fn parked(cancelled: bool) -> StoreResult<Done> {
    Ok(Done::Awaited(if cancelled {
        Awaited::Cancelled
    } else {
        Awaited::Waiting
    }))
}

/// The answer of a feature command that found a cancel requested: the run ended instead.
fn ended_cancelled(db: &mut Db<'_>, fence: &Fence, now: i64) -> StoreResult<Done> {
    super::cancel::finish_cancelled(db, fence, "cancelled", now)?;
    Ok(Done::Awaited(Awaited::Cancelled))
}
