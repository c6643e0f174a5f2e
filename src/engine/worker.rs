//! Executing one claimed run: replay its workflow function and record how it ended.
//!
//! Invariant: no transaction is open while user code runs; every write goes through the
//! writer, fenced by the claim's `(owner, epoch)`. A `LeaseLost` answer means: stop, write
//! nothing more for this run.

use crate::engine::{Inner, Work};
use crate::exec::panic_message;
pub(crate) use crate::store::Ending;
use crate::store::{Claimed, Entry, Fence, StoreError};
use crate::workflow::ctx::{Ctx, Interrupt};
use crate::workflow::registry::WorkflowFailure;
use std::collections::HashMap;

/// Run `claimed` to its next stop (completion, failure, suspension, or loss of lease).
/// `owner` is the incarnation that claimed it: every write is fenced by it. Returns the run
/// this worker claimed for itself in the same commit as this one's ending, if any.
pub fn execute_run(inner: &Inner, owner: std::sync::Arc<str>, claimed: Claimed) -> Option<Work> {
    let run_id = claimed.run_id;
    let fence = Fence {
        run_id,
        owner,
        epoch: claimed.epoch,
    };
    let Some(wf) = inner
        .registry
        .get_workflow(&claimed.workflow, claimed.version as u32)
    else {
        // The claim filters on registered workflows, so this is a registry/claim mismatch.
        let note = format!(
            "workflow '{}' version {} is not registered in this engine",
            claimed.workflow, claimed.version
        );
        return finish(
            inner,
            &fence,
            Vec::new(),
            Ending::Block {
                status: "blocked_version",
                note,
            },
        );
    };
    let guard = inner.control.admit(inner, &claimed, &fence)?;
    // The run is ours (claimed): only we change its journal and attempts meanwhile.
    let loaded = (|| -> Result<_, StoreError> {
        let journal = inner.store.journal(run_id)?;
        // Per seq: the last attempt number, and how many attempts failed on their own (an
        // attempt cut by a crash or a shutdown did not fail: it spends no retry).
        let attempts: HashMap<i64, (i64, i64)> =
            inner
                .store
                .attempts(run_id)?
                .into_iter()
                .fold(HashMap::new(), |mut m, a| {
                    let e = m.entry(a.seq).or_insert((0, 0));
                    e.0 = e.0.max(a.attempt);
                    if crate::workflow::ctx::counts_as_failure(a.outcome.as_deref()) {
                        e.1 += 1;
                    }
                    m
                });
        Ok((journal, attempts))
    })();
    let (journal, last_attempts) = match loaded {
        Ok(x) => x,
        // Bad data, not bad storage: park the run once (releasing it would claim it again
        // in a loop); the note names the entry and column.
        Err(e @ StoreError::Undecodable { .. }) => {
            let note = format!("{e}; fix the row, then `waymark resume {run_id}`");
            log::error!("{note}");
            return block(inner, fence, note);
        }
        Err(e) => {
            log::error!("run {run_id}: cannot read its journal ({e}); releasing it");
            inner.note_store_error(&e);
            return finish(inner, &fence, Vec::new(), Ending::Release);
        }
    };
    if let Some((i, e)) = journal.iter().enumerate().find(|(i, e)| e.seq != *i as i64) {
        let note = format!(
            "run {run_id}: journal has seq {} where {i} was expected",
            e.seq
        );
        return block(inner, fence, note);
    }
    let mut ctx = Ctx {
        env: inner,
        fence: fence.clone(),
        workflow: claimed.workflow.clone(),
        journal,
        last_attempts,
        next_seq: 0,
        interrupt: None,
        cancel: guard.cancel(),
        pending: Vec::new(),
    };
    let run = wf.run.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&mut ctx, &claimed.input)
    }));
    let interrupt = ctx.interrupt.take();
    let pending = std::mem::take(&mut ctx.pending);
    let ending = match (interrupt, result) {
        (Some(Interrupt::LeaseLost), _) => {
            log::warn!(
                "run {run_id}: lease lost (epoch {}); abandoning it",
                fence.epoch
            );
            None
        }
        // The lease guard ran out while the run may still be ours: if nobody reclaimed it,
        // a fenced release hands it back at once. Without it the run would stay `running`
        // under this live, heartbeating engine, and no reaper would ever reclaim it.
        (Some(Interrupt::LeaseExpired), _) => {
            log::warn!(
                "run {run_id}: lease guard expired (epoch {}); abandoning it and releasing it if still ours",
                fence.epoch
            );
            Some(Ending::Release)
        }
        // Same for a storage failure: try to hand the run back (fenced); if that write fails
        // too, this engine stops renewing leases, so other engines reclaim it after one TTL.
        (Some(Interrupt::Storage(e)), _) => {
            log::error!("run {run_id}: storage failed ({e}); abandoning it to recovery");
            inner.note_store_error(&e);
            Some(Ending::Release)
        }
        (Some(Interrupt::Shutdown), _) => Some(Ending::Release),
        (Some(Interrupt::Cancelled), _) => Some(inner.control.stopped(&guard, &fence)),
        (Some(Interrupt::Parked), _) => {
            inner.notify_finished();
            None
        }
        (Some(Interrupt::Suspend { until, note }), _) => Some(Ending::Suspend { until, note }),
        (Some(Interrupt::NonDeterminism(m)), _) | (Some(Interrupt::Fail(m)), _) => {
            log::error!("{m}");
            Some(Ending::Fail(m))
        }
        (Some(Interrupt::Blocked(note)), _) => {
            log::error!("{note}");
            Some(Ending::Block {
                status: "blocked",
                note,
            })
        }
        (None, Ok(Ok(output))) => Some(Ending::Complete(output)),
        (None, Ok(Err(WorkflowFailure::Input(e)))) => Some(Ending::Block {
            status: "blocked",
            note: format!(
                "cannot decode the input of run {run_id} (workflow '{}'): {e}",
                claimed.workflow
            ),
        }),
        (None, Ok(Err(WorkflowFailure::Output(e)))) => {
            Some(Ending::Fail(format!("output of run {run_id}: {e}")))
        }
        (None, Ok(Err(WorkflowFailure::Workflow(e)))) => Some(Ending::Fail(e.to_string())),
        (None, Err(payload)) => Some(Ending::Fail(format!(
            "workflow '{}' panicked: {}",
            claimed.workflow,
            panic_message(&*payload)
        ))),
    };
    match ending {
        Some(ending) => finish(inner, &fence, pending, ending),
        None => None,
    }
}

/// Park the run as `blocked` (bad data: an operator fixes it and resumes it).
fn block(inner: &Inner, fence: Fence, note: String) -> Option<Work> {
    finish(
        inner,
        &fence,
        Vec::new(),
        Ending::Block {
            status: "blocked",
            note,
        },
    )
}

/// Record how the run ended, with its step results not committed yet, in one commit; in
/// the same commit claim this worker's next run unless the engine is stopping or unable to.
fn finish(inner: &Inner, fence: &Fence, entries: Vec<Entry>, ending: Ending) -> Option<Work> {
    let run_id = fence.run_id;
    let next = inner.claim_next();
    let owner = next.as_ref().map(|n| n.owner.clone());
    let n = entries.len();
    let work = match inner.store.finish(fence, entries, ending, next) {
        Ok(mut claimed) => {
            for _ in 0..n {
                crate::fault::point(crate::fault::Point::AfterCheckpoint);
            }
            match (owner, claimed.pop()) {
                (Some(owner), Some(c)) => Some((owner, c)),
                _ => None,
            }
        }
        Err(StoreError::LeaseLost { .. }) => {
            log::warn!("run {run_id}: lease lost before its outcome was recorded");
            None
        }
        Err(e) => {
            log::error!("run {run_id}: recording its outcome failed: {e}");
            inner.note_store_error(&e);
            None
        }
    };
    inner.notify_finished();
    work
}
