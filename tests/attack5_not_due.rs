//! Attack (SQLite's limited-queue claim no longer compares `ready_at` with the clock; the
//! plain claims never did): every way a run waits for a time must leave it `suspended`,
//! never `pending` with a future `ready_at`, or a claim takes it before it is due.
//! Must hold, on both stores, in a queue with a concurrency limit and in one without: a
//! start with a delay, a durable sleep, a step's retry backoff (a fenced suspend) and a
//! wait for an event are not claimed before their time; all are claimed once it passed.

mod support;
use std::sync::Arc;
use support::*;
use waymark::internal::clock::{Clock, ManualClock};
use waymark::internal::store::write::{Fence, NewRun};
use waymark::internal::store::{open_storage, Awaited, StoreOptions};

const HOUR: i64 = 3_600_000;

on_both_stores!(runs_waiting_for_a_time_are_not_claimed_before_it);
fn runs_waiting_for_a_time_are_not_claimed_before_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "due.db");
    let clock = ManualClock::new();
    let s = open_storage(&db, &StoreOptions::default(), clock.clone(), 4)
        .unwrap()
        .api;
    s.set_queue_limit("limited".into(), Some(10)).unwrap();
    let wfs: Arc<str> = r#"["wf@1"]"#.into();
    let owner: Arc<str> = "attack5".into();
    let new_run = |queue: &str, ready_at: Option<i64>| NewRun {
        workflow: "wf".into(),
        version: 1,
        input: vec![0],
        idempotency_key: None,
        queue: queue.into(),
        priority: 0,
        ready_at,
        parent_id: None,
        deadline_at: None,
    };
    let mut waiting = Vec::new();
    for queue in ["limited", "default"] {
        // A start with a delay.
        let later = clock.now_ms() + HOUR;
        waiting.push(s.enqueue(new_run(queue, Some(later))).unwrap().id);
        // The other three are claimed, then wait for a time.
        for how in ["sleep", "backoff", "event"] {
            let id = s.enqueue(new_run(queue, None)).unwrap().id;
            let claimed = s.claim(&owner, 1, &wfs, 60_000).unwrap();
            assert_eq!(
                claimed.iter().map(|c| c.run_id).collect::<Vec<_>>(),
                vec![id],
                "{queue}/{how}: only the run just started is due"
            );
            let fence = Fence {
                run_id: id,
                owner: owner.clone(),
                epoch: claimed[0].epoch,
            };
            let later = clock.now_ms() + HOUR;
            match how {
                "sleep" => assert!(s.timer(&fence, 0, "nap".into(), later, true).unwrap()),
                "backoff" => s.suspend(&fence, later, "retrying step 0".into()).unwrap(),
                _ => {
                    let answer = s.await_event(&fence, 0, "go".into(), later, None).unwrap();
                    assert!(matches!(answer, Awaited::Waiting), "{answer:?}");
                }
            }
            waiting.push(id);
        }
        let early = s.claim(&owner, 100, &wfs, 60_000).unwrap();
        assert!(
            early.is_empty(),
            "{queue}: runs claimed before they were due: {:?}",
            early.iter().map(|c| c.run_id).collect::<Vec<_>>()
        );
    }
    clock.jump(HOUR + 1_000);
    let mut due: Vec<i64> = s
        .claim(&owner, 100, &wfs, 60_000)
        .unwrap()
        .iter()
        .map(|c| c.run_id)
        .collect();
    due.sort_unstable();
    waiting.sort_unstable();
    assert_eq!(due, waiting, "every waiting run is claimed once it is due");
}
