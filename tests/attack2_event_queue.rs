//! Adversarial review 2: typed events queued around a wrongly-typed one. On both stores
//! (SQLite and PostgreSQL).
//!
//! Scenario: a `waymark serve` engine runs `fixture.approve` (one step, a wait for the typed
//! event `approve: bool`, one step). The test process, a `waymark::Client` without a
//! registry (it cannot check types), sends three events as fast as it can right after the
//! start: `"yes"` (wrong type), `false`, `true`; whenever the run reaches its wait, the
//! oldest unconsumed event is the wrong one. A second run gets `true` first, then `"no"`.
//! Must hold: the wrong event is set aside (`consumed_seq = 0`) and parks the run
//! `blocked`, never delivered; after `resume` the OLDEST good event (`false`) is delivered
//! into exactly one journal entry and the newer one stays unconsumed for a later wait
//! (`AwaitEvent { upto }` delivers only the event the run checked); a good event first is
//! delivered and the wrong one after it is never looked at. Each event is consumed at most
//! once.

mod support;
use std::time::Duration;
use support::*;
use waymark::{RunStatus, StartOptions, Workflow};

const LONG: Duration = Duration::from_secs(60);
const APPROVE_WF: Workflow<(), String> = Workflow::new("fixture.approve");

/// `(event id, consumed_seq)` of the run's events, oldest first.
fn events(served: &Served, run: i64) -> Vec<(String, Option<i64>)> {
    rows(
        &served.db,
        &format!("SELECT id, consumed_seq FROM events WHERE run_id = {run} ORDER BY id"),
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().ok()))
    .collect()
}

on_both_stores!(
    attack2_wrong_event_queued_before_good_ones_is_set_aside_and_the_oldest_good_one_delivered
);
fn attack2_wrong_event_queued_before_good_ones_is_set_aside_and_the_oldest_good_one_delivered(
    backend: Backend,
) {
    let (served, client) = serve_with_client_on(backend, "events.db");
    let id = client
        .start_run(APPROVE_WF, &(), StartOptions::default())
        .unwrap();
    client.send_event_json(id, "approve", "\"yes\"").unwrap();
    client.send_event_json(id, "approve", "false").unwrap();
    client.send_event_json(id, "approve", "true").unwrap();
    let row = client.wait(id, LONG).unwrap();
    assert_eq!(row.status, RunStatus::Blocked, "{row:?}");
    assert!(
        row.note.as_deref().unwrap_or_default().contains("\"yes\""),
        "{row:?}"
    );
    let ev = events(&served, id);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[0].1, Some(0), "the wrong event is set aside: {ev:?}");
    assert_eq!(ev[1].1, None, "nothing delivered while blocked: {ev:?}");
    assert_eq!(ev[2].1, None, "nothing delivered while blocked: {ev:?}");

    client.resume(id).unwrap();
    assert_eq!(
        client.wait_output(APPROVE_WF, id, LONG).unwrap(),
        "approved=Some(false)",
        "the oldest good event is delivered"
    );
    let ev = events(&served, id);
    let wait_seq = client
        .journal(id)
        .unwrap()
        .iter()
        .find(|s| s.name == "approve")
        .map(|s| s.seq)
        .expect("a journaled wait");
    assert_eq!(ev[0].1, Some(0), "{ev:?}");
    assert_eq!(
        ev[1].1,
        Some(wait_seq),
        "delivered into the wait's entry: {ev:?}"
    );
    assert_eq!(
        ev[2].1, None,
        "the newer good event stays for a later wait: {ev:?}"
    );
    assert_eq!(
        query_i64(
            &served.db,
            &format!("SELECT count(*) FROM steps WHERE run_id = {id} AND kind = 'event'")
        ),
        1,
        "one delivery"
    );
}

on_both_stores!(
    attack2_good_event_before_a_wrong_one_is_delivered_and_the_wrong_one_never_looked_at
);
fn attack2_good_event_before_a_wrong_one_is_delivered_and_the_wrong_one_never_looked_at(
    backend: Backend,
) {
    let (served, client) = serve_with_client_on(backend, "events.db");
    let id = client
        .start_run(APPROVE_WF, &(), StartOptions::default())
        .unwrap();
    client.send_event_json(id, "approve", "true").unwrap();
    client.send_event_json(id, "approve", "\"no\"").unwrap();
    assert_eq!(
        client.wait_output(APPROVE_WF, id, LONG).unwrap(),
        "approved=Some(true)"
    );
    let ev = events(&served, id);
    assert_eq!(ev.len(), 2);
    assert!(ev[0].1.is_some_and(|s| s > 0), "{ev:?}");
    assert_eq!(
        ev[1].1, None,
        "the wrong event after it is untouched: {ev:?}"
    );
}
