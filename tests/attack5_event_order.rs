//! Attack (AwaitEvent's `upto` guard, beside its look-again path): on PostgreSQL event ids
//! come from a sequence taken at INSERT, so two senders can commit their events out of id
//! order. The workflow checks the first event it sees (its payload decodes as the wait's
//! type) and passes that event's id as `upto`; an event with a smaller id committed after
//! that look was never checked.
//! Must hold: AwaitEvent delivers only the event the caller checked; an earlier event that
//! appeared since makes the run look again (pending, `Waiting`), never a delivery of
//! bytes nobody checked (a payload of the wrong type would then fail the run instead of
//! setting the event aside and parking the run).

mod support;
use std::sync::Arc;
use support::*;
use waymark::internal::store::write::{Fence, NewRun};
use waymark::internal::store::Awaited;

#[test]
fn an_event_committed_out_of_id_order_is_looked_at_before_it_is_delivered() {
    let url = pg::fresh_pg_db();
    let db = std::path::PathBuf::from(&url);
    let s = storage(&db);
    let run = s.enqueue(NewRun::new("wf", 1, vec![0])).unwrap().id;
    let wfs: Arc<str> = r#"["wf@1"]"#.into();
    let owner: Arc<str> = "attack5".into();
    let claimed = s.claim(&owner, 1, &wfs, 60_000).unwrap();
    assert_eq!(claimed.len(), 1);
    let fence = Fence {
        run_id: run,
        owner,
        epoch: claimed[0].epoch,
    };
    // Sender 1 takes the first event id and commits late.
    let mut slow = pg_cluster_client(&url);
    let mut tx = slow.transaction().unwrap();
    let early: i64 = tx
        .query_one(
            "INSERT INTO events(run_id, name, payload, sent_at) VALUES ($1, 'go', $2, 0) RETURNING id",
            &[&run, &b"unchecked".to_vec()],
        )
        .unwrap()
        .get(0);
    // Sender 2 takes the next id and commits first; the workflow sees and checks it.
    let checked = s.send_event(run, "go".into(), b"checked".to_vec()).unwrap();
    let seen = s
        .next_event(run, "go")
        .unwrap()
        .expect("the committed event");
    assert_eq!(seen.0, checked.event_id);
    assert!(early < seen.0, "ids {early} and {}", seen.0);
    tx.commit().unwrap();
    // The workflow consumes "the event it checked".
    let answer = s
        .await_event(&fence, 0, "go".into(), i64::MAX / 2, Some(seen.0))
        .unwrap();
    match answer {
        Awaited::Waiting => {}
        Awaited::Delivered(bytes) => panic!(
            "delivered {:?}, which the caller never checked (it checked event {})",
            String::from_utf8_lossy(&bytes),
            seen.0
        ),
        other => panic!("unexpected answer {other:?}"),
    }
    assert_eq!(
        query_text(&db, &format!("SELECT status FROM runs WHERE id = {run}")),
        "pending",
        "the run looks again at its events"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM events WHERE consumed_seq IS NOT NULL"
        ),
        0,
        "no event consumed"
    );
}
