//! The PostgreSQL store's durable-feature transitions on the store itself: each command
//! as the engine sends it (`PgStore::call`), on runs set up by plain SQL, with the guards
//! and answers of SQLite's `store/write/{waits,cancel,admin}.rs` (a stale fence is
//! LeaseLost and writes nothing, a second entry at one seq is JournalConflict, ...), and
//! the races READ COMMITTED opens, forced with a transaction held open by the test.
//! The same features end to end (real engines, kill and restart): tests/pg_waits.rs.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::*;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::pg::PgStore;
use waymark::internal::store::write::{Done, Fence, NewRun, Op};
use waymark::internal::store::{Awaited, ScheduleRow, Storage, StoreError};

fn store(url: &str) -> PgStore {
    PgStore::open(url, 4, Arc::new(SystemClock::default())).unwrap()
}

/// A run inserted `running` under owner "t" at `epoch` (as a claim leaves it): its fence.
fn running(c: &mut postgres::Client, workflow: &str, parent: Option<i64>) -> Fence {
    let id: i64 = c
        .query_one(
            "INSERT INTO runs(workflow, input, status, owner, epoch, ready_at, parent_id,
                              created_at, updated_at)
             VALUES ($1, '\\x00', 'running', 't', 1, 0, $2, 0, 0) RETURNING id",
            &[&workflow, &parent],
        )
        .unwrap()
        .get(0);
    Fence {
        run_id: id,
        owner: "t".into(),
        epoch: 1,
    }
}

/// Claim `fence`'s run again (a new epoch), as the engine does when a parked run is due.
fn reclaim(c: &mut postgres::Client, fence: &Fence) -> Fence {
    c.execute(
        "UPDATE runs SET status = 'running', owner = 't', epoch = epoch + 1 WHERE id = $1",
        &[&fence.run_id],
    )
    .unwrap();
    Fence {
        run_id: fence.run_id,
        owner: "t".into(),
        epoch: fence.epoch + 1,
    }
}

fn row(c: &mut postgres::Client, id: i64) -> (String, Option<String>, i64, i64) {
    let r = c
        .query_one(
            "SELECT status, note, ready_at, cancel_requested FROM runs WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn new_run(workflow: &str, key: Option<&str>, parent: Option<i64>) -> NewRun {
    NewRun {
        workflow: workflow.into(),
        version: 1,
        input: vec![0],
        idempotency_key: key.map(Into::into),
        queue: "default".into(),
        priority: 0,
        ready_at: None,
        parent_id: parent,
        deadline_at: None,
    }
}

fn awaited(d: Done) -> Awaited {
    match d {
        Done::Awaited(a) => a,
        other => panic!("answered {other:?}"),
    }
}

// Timer: a stale fence is LeaseLost and writes nothing; a timer journals its wake-up
// time and suspends the run until then with its note; a second entry at the same seq
// is JournalConflict.
#[test]
fn pg_timer_is_fenced_journaled_once_and_suspends() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    let f = running(&mut c, "w", None);
    let wake = now_ms() + 60_000;
    let stale = Fence {
        epoch: 0,
        ..f.clone()
    };
    let timer = |fence: &Fence, seq: i64| Op::Timer {
        fence: fence.clone(),
        seq,
        name: "sleep".into(),
        wake,
        suspend: true,
    };
    assert!(matches!(
        s.call(timer(&stale, 0)),
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM steps"), 0);
    assert_eq!(awaited(s.call(timer(&f, 0)).unwrap()), Awaited::Waiting);
    let (status, note, ready_at, _) = row(&mut c, f.run_id);
    assert_eq!(
        (status.as_str(), note.as_deref(), ready_at),
        ("suspended", Some(&*format!("sleeping until {wake}")), wake)
    );
    let f2 = reclaim(&mut c, &f);
    assert!(matches!(
        s.call(timer(&f2, 0)),
        Err(StoreError::JournalConflict { seq: 0, .. })
    ));
    assert_eq!(pg_status(&url, f.run_id), "running", "rolled back");
}

// Events: a wait with nothing sent suspends until the deadline; SendEvent wakes it;
// an event the caller has not checked (`upto`) makes it look again instead of being
// delivered; with `upto` it is delivered into the entry (consumed once); a passed
// deadline journals a failed wait; RejectEvent sets the event aside and blocks the
// run; sending to an unknown or finished run is refused.
#[test]
fn pg_events_wait_wake_deliver_once_time_out_and_set_aside() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    let f = running(&mut c, "w", None);
    let deadline = now_ms() + 600_000;
    let wait = |fence: &Fence, seq: i64, deadline: i64, upto: Option<i64>| Op::AwaitEvent {
        fence: fence.clone(),
        seq,
        name: "go".into(),
        deadline,
        upto,
    };
    assert_eq!(
        awaited(s.call(wait(&f, 0, deadline, None)).unwrap()),
        Awaited::Waiting
    );
    let (status, note, ready_at, _) = row(&mut c, f.run_id);
    assert_eq!(
        (status.as_str(), note.as_deref(), ready_at),
        ("suspended", Some("waiting for event 'go'"), deadline)
    );
    let sent = s.send_event(f.run_id, "go".into(), b"1".to_vec()).unwrap();
    assert!(sent.woke, "the suspended waiter is woken");
    let (status, note, ready_at, _) = row(&mut c, f.run_id);
    assert_eq!(
        (status.as_str(), note),
        ("pending", None),
        "woken straight to pending"
    );
    assert!(ready_at <= now_ms());
    assert_eq!(
        s.next_event(f.run_id, "go").unwrap(),
        Some((sent.event_id, b"1".to_vec()))
    );
    let f = reclaim(&mut c, &f);
    assert_eq!(
        awaited(s.call(wait(&f, 0, deadline, None)).unwrap()),
        Awaited::Waiting,
        "an unchecked event: look again"
    );
    assert!(row(&mut c, f.run_id).2 <= now_ms(), "due at once");
    assert_eq!(pg_events(&url, f.run_id), vec![(sent.event_id, None)]);
    let f = reclaim(&mut c, &f);
    assert_eq!(
        awaited(s.call(wait(&f, 0, deadline, Some(sent.event_id))).unwrap()),
        Awaited::Delivered(b"1".to_vec())
    );
    assert_eq!(pg_events(&url, f.run_id), vec![(sent.event_id, Some(0))]);
    assert_eq!(s.next_event(f.run_id, "go").unwrap(), None);
    match s.call(wait(&f, 1, now_ms() - 1, None)).unwrap() {
        Done::Awaited(Awaited::Failed(reason)) => {
            assert_eq!(reason, "timed out waiting for event 'go'")
        }
        other => panic!("{other:?}"),
    }
    let j = pg_journal(&url, f.run_id);
    assert_eq!(
        j.iter()
            .map(|e| (e.2.as_str(), e.3.as_str()))
            .collect::<Vec<_>>(),
        vec![("event", "completed"), ("event", "failed")]
    );
    assert_eq!(
        pg_status(&url, f.run_id),
        "running",
        "delivered and timed out without parking"
    );

    let bad = s.send_event(f.run_id, "go".into(), b"x".to_vec()).unwrap();
    assert!(!bad.woke, "a running run is not woken");
    s.call(Op::RejectEvent {
        fence: f.clone(),
        event_id: bad.event_id,
        note: "bad".into(),
    })
    .unwrap();
    let (status, note, _, _) = row(&mut c, f.run_id);
    assert_eq!((status.as_str(), note.as_deref()), ("blocked", Some("bad")));
    assert_eq!(pg_events(&url, f.run_id)[1], (bad.event_id, Some(0)));
    assert!(matches!(
        s.call(Op::RejectEvent {
            fence: f.clone(),
            event_id: bad.event_id,
            note: "bad".into(),
        }),
        Err(StoreError::LeaseLost { .. })
    ));

    assert!(matches!(
        s.send_event(999_999, "go".into(), vec![]),
        Err(StoreError::NotFound { run_id: 999_999 })
    ));
    c.execute(
        "UPDATE runs SET status = 'completed' WHERE id = $1",
        &[&f.run_id],
    )
    .unwrap();
    assert!(matches!(
        s.send_event(f.run_id, "go".into(), vec![]),
        Err(StoreError::RunFinished { .. })
    ));
}

// Children: StartChild is idempotent by key (replay returns the same run); a join of a
// running child suspends the parent, the child's end wakes it (trigger), the next join
// delivers the child's output; a failed or missing child is a failed join.
#[test]
fn pg_children_start_once_park_their_parent_and_wake_it() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    let p = running(&mut c, "parent", None);
    let start = |fence: &Fence, seq: i64, key: &str| Op::StartChild {
        fence: fence.clone(),
        seq,
        name: "child".into(),
        run: new_run("child", Some(key), Some(fence.run_id)),
    };
    let child = match s.call(start(&p, 0, "k0")).unwrap() {
        Done::Run { id, created: true } => id,
        other => panic!("{other:?}"),
    };
    // A replay after a crash journals at a later seq here only to show the key holds.
    match s.call(start(&p, 1, "k0")).unwrap() {
        Done::Run { id, .. } => assert_eq!(id, child, "idempotent by key"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pg_children(&url, p.run_id), vec![child]);
    assert_eq!(pg_status(&url, child), "pending");
    let join = |fence: &Fence, seq: i64, child_id: i64| Op::AwaitChild {
        fence: fence.clone(),
        seq,
        name: "join".into(),
        child_id,
    };
    assert_eq!(
        awaited(s.call(join(&p, 2, child)).unwrap()),
        Awaited::Waiting
    );
    let (status, note, ready_at, _) = row(&mut c, p.run_id);
    assert_eq!(
        (status.as_str(), note.as_deref(), ready_at),
        (
            "suspended",
            Some(&*format!("waiting for child {child}")),
            i64::MAX
        )
    );
    let t = now_ms();
    c.execute(
        "UPDATE runs SET status = 'completed', output = '\\x2a', updated_at = $2
         WHERE id = $1",
        &[&child, &t],
    )
    .unwrap();
    let (status, note, ready_at, _) = row(&mut c, p.run_id);
    assert_eq!(
        (status.as_str(), note, ready_at),
        ("pending", None, t),
        "the child's end woke the parent"
    );
    let p = reclaim(&mut c, &p);
    assert_eq!(
        awaited(s.call(join(&p, 2, child)).unwrap()),
        Awaited::Delivered(vec![42])
    );
    match s.call(join(&p, 3, 999_999)).unwrap() {
        Done::Awaited(Awaited::Failed(r)) => {
            assert_eq!(r, "child run 999999 does not exist")
        }
        other => panic!("{other:?}"),
    }
    let kinds: Vec<_> = pg_journal(&url, p.run_id)
        .into_iter()
        .map(|e| (e.2, e.3))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("child".to_string(), "completed".to_string()),
            ("child".into(), "completed".into()),
            ("join".into(), "completed".into()),
            ("join".into(), "failed".into()),
        ]
    );
}

// The race SendEvent's row lock closes: a command parking the run for event "go" holds
// the run's row (as `check_fence` leaves it), found no event and has written the
// suspension, not yet committed, when the event is sent. The send must wait for that
// commit and wake the run; answering before it (its wake-up matching the old `running`
// row, nothing) would leave the run suspended until its deadline with the event unread.
#[test]
fn pg_an_event_sent_while_its_run_parks_always_wakes_it() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    let f = running(&mut c, "w", None);
    let deadline = now_ms() + 600_000;
    let mut tx = c.transaction().unwrap();
    tx.query(
        "SELECT cancel_requested FROM runs WHERE id = $1 FOR UPDATE",
        &[&f.run_id],
    )
    .unwrap();
    let seen = tx
        .query(
            "SELECT id FROM events WHERE run_id = $1 AND consumed_seq IS NULL",
            &[&f.run_id],
        )
        .unwrap();
    assert!(seen.is_empty());
    tx.execute(
        "UPDATE runs SET status = 'suspended', ready_at = $2, note = 'waiting for event ''go''',
                owner = NULL WHERE id = $1",
        &[&f.run_id, &deadline],
    )
    .unwrap();
    let send = {
        let s = s.clone();
        let id = f.run_id;
        std::thread::spawn(move || s.send_event(id, "go".into(), b"1".to_vec()))
    };
    std::thread::sleep(Duration::from_millis(300));
    tx.commit().unwrap();
    let sent = send.join().unwrap().unwrap();
    let (status, _, ready_at, _) = row(&mut c, f.run_id);
    assert!(
        sent.woke && status == "pending" && ready_at < deadline,
        "lost wake-up: the send answered {sent:?}, the run is {status} until {ready_at}"
    );
}

// The race AwaitChild's FOR SHARE closes: the child's end is written (its trigger finds
// the parent still running: no wake) but not yet committed when the parent's join
// looks. The join must wait for that commit and deliver, never park the parent for
// good (a lost wake-up: suspended until i64::MAX with its child completed).
#[test]
fn pg_a_join_racing_the_childs_end_never_loses_the_wake_up() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    let p = running(&mut c, "parent", None);
    let child = running(&mut c, "child", Some(p.run_id)).run_id;
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "UPDATE runs SET status = 'completed', output = '\\x07', updated_at = 1
         WHERE id = $1",
        &[&child],
    )
    .unwrap();
    let join = {
        let s = s.clone();
        let p = p.clone();
        std::thread::spawn(move || {
            s.call(Op::AwaitChild {
                fence: p,
                seq: 0,
                name: "join".into(),
                child_id: child,
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    tx.commit().unwrap();
    let answer = join.join().unwrap().unwrap();
    let (status, _, ready_at, _) = row(&mut c, p.run_id);
    assert!(
        matches!(answer, Done::Awaited(Awaited::Delivered(ref v)) if v == &vec![7])
            || (status == "pending" && ready_at < i64::MAX),
        "lost wake-up: join answered {answer:?}, parent {status} until {ready_at}"
    );
}

// Cancel: a running run is flagged (its pending child ends at once), answered
// "running"; its next wait ends it cancelled instead; a child started after the request
// is created and ends cancelled with its parent; FinishCancelled is fenced; an unknown
// run is NotFound.
#[test]
fn pg_cancel_flags_running_ends_parked_and_cancels_descendants() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    let p = running(&mut c, "parent", None);
    let kid = match s
        .call(Op::StartChild {
            fence: p.clone(),
            seq: 0,
            name: "kid".into(),
            run: new_run("child", Some("kid"), Some(p.run_id)),
        })
        .unwrap()
    {
        Done::Run { id, .. } => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.cancel(p.run_id).unwrap(), "running");
    assert_eq!(row(&mut c, p.run_id).3, 1, "flagged");
    assert_eq!(
        pg_status(&url, kid),
        "cancelled",
        "a pending child ends at once"
    );
    assert_eq!(s.running_cancel_requests("t").unwrap(), vec![(p.run_id, 1)]);
    let late = match s
        .call(Op::StartChild {
            fence: p.clone(),
            seq: 1,
            name: "late".into(),
            run: new_run("child", Some("late"), Some(p.run_id)),
        })
        .unwrap()
    {
        Done::Awaited(Awaited::Cancelled) => pg_children(&url, p.run_id)[1],
        other => panic!("{other:?}"),
    };
    assert_eq!(pg_status(&url, late), "cancelled");
    assert_eq!(pg_status(&url, p.run_id), "cancelled");
    assert_eq!(
        pg_journal(&url, p.run_id).len(),
        2,
        "both children journaled"
    );
    assert!(matches!(
        s.call(Op::FinishCancelled {
            fence: p.clone(),
            reason: "x".into()
        }),
        Err(StoreError::LeaseLost { .. })
    ));

    // A running run whose cancel was requested ends at its next wait (Timer).
    let r = running(&mut c, "w", None);
    let grandchild_parent = running(&mut c, "child", Some(r.run_id));
    assert_eq!(s.cancel(r.run_id).unwrap(), "running");
    assert_eq!(
        row(&mut c, grandchild_parent.run_id).3,
        1,
        "descendant flagged"
    );
    assert_eq!(
        awaited(
            s.call(Op::Timer {
                fence: r.clone(),
                seq: 0,
                name: "sleep".into(),
                wake: now_ms() + 60_000,
                suspend: true,
            })
            .unwrap()
        ),
        Awaited::Cancelled
    );
    assert_eq!(pg_status(&url, r.run_id), "cancelled");
    assert!(pg_journal(&url, r.run_id).is_empty(), "nothing journaled");
    s.call(Op::FinishCancelled {
        fence: grandchild_parent.clone(),
        reason: "cancelled".into(),
    })
    .unwrap();
    assert_eq!(pg_status(&url, grandchild_parent.run_id), "cancelled");
    assert_eq!(s.cancel(r.run_id).unwrap(), "cancelled", "idempotent");
    assert!(matches!(
        s.cancel(999_999),
        Err(StoreError::NotFound { run_id: 999_999 })
    ));

    // A suspended run with the flag set (left by a crash) is found by the sweep.
    let z = running(&mut c, "w", None);
    c.execute(
        "UPDATE runs SET status = 'suspended', cancel_requested = 1 WHERE id = $1",
        &[&z.run_id],
    )
    .unwrap();
    assert_eq!(s.parked_cancel_requests(10).unwrap(), vec![z.run_id]);
}

// Deadlines and versions: ExpireDeadlines fails pending and suspended runs past their
// deadline (not running ones, not future ones) with the deadline in the reason;
// ParkUnknownVersions parks due pending runs of a known workflow at an unknown version.
#[test]
fn pg_deadlines_expire_and_unknown_versions_park() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    let now = now_ms();
    let mut insert = |status: &str, deadline: Option<i64>, version: i64| -> i64 {
        c.query_one(
            "INSERT INTO runs(workflow, version, input, status, ready_at, deadline_at,
                              created_at, updated_at)
             VALUES ('w', $1, '\\x00', $2, 0, $3, 0, 0) RETURNING id",
            &[&version, &status, &deadline],
        )
        .unwrap()
        .get(0)
    };
    let pending = insert("pending", Some(now - 10), 1);
    let suspended = insert("suspended", Some(now - 10), 1);
    let busy = insert("running", Some(now - 10), 1);
    let future = insert("pending", Some(now + 600_000), 1);
    let v2 = insert("pending", None, 2);
    assert!(s.deadlines_passed(now).unwrap());
    match s.call(Op::ExpireDeadlines { limit: 100 }).unwrap() {
        Done::Count(n) => assert_eq!(n, 2),
        other => panic!("{other:?}"),
    }
    assert!(!s.deadlines_passed(now_ms()).unwrap());
    for id in [pending, suspended] {
        assert_eq!(pg_status(&url, id), "failed");
    }
    let err: String = c
        .query_one("SELECT error FROM runs WHERE id = $1", &[&pending])
        .unwrap()
        .get(0);
    assert_eq!(
        err,
        format!(
            "deadline passed (deadline_at {} ms) before the run finished",
            now - 10
        )
    );
    assert_eq!(pg_status(&url, busy), "running");
    assert_eq!(pg_status(&url, future), "pending");

    let names = r#"["w"]"#;
    let known = r#"["w@1"]"#;
    assert!(s.pending_unknown_versions(now_ms(), names, known).unwrap());
    assert!(!s
        .pending_unknown_versions(now_ms(), names, r#"["w@1","w@2"]"#)
        .unwrap());
    assert!(!s
        .pending_unknown_versions(now_ms(), r#"["x"]"#, known)
        .unwrap());
    match s
        .call(Op::ParkUnknownVersions {
            names_json: names.into(),
            workflows_json: known.into(),
            limit: 100,
        })
        .unwrap()
    {
        Done::Count(n) => assert_eq!(n, 1),
        other => panic!("{other:?}"),
    }
    let (status, note, _, _) = row(&mut c, v2);
    assert_eq!(status, "blocked_version");
    assert_eq!(
        note.unwrap(),
        "workflow 'w' version 2 is not registered in this build (it has other versions of w); a build that registers version 2 will claim it"
    );
    assert_eq!(pg_status(&url, future), "pending", "a known version stays");
}

// Admin: queue limits set and removed; a schedule saved (a new cron resets next_due,
// the same cron keeps it), read when due, fired once per due time even by two
// firings at once (the second waits for the first and changes nothing); vacuum has
// nothing to give back; purge is bounded and keeps children of unfinished runs.
#[test]
fn pg_admin_queues_schedules_fire_once_purge_and_vacuum() {
    let url = fresh_pg_db();
    let s = store(&url);
    let mut c = pg_cluster_client(&url);
    s.call(Op::SetQueueLimit {
        queue: "q".into(),
        concurrency: Some(3),
    })
    .unwrap();
    s.call(Op::SetQueueLimit {
        queue: "q".into(),
        concurrency: Some(-1),
    })
    .unwrap();
    assert_eq!(pg_i64(&url, "SELECT concurrency FROM queues"), 0, "floor 0");
    s.call(Op::SetQueueLimit {
        queue: "q".into(),
        concurrency: None,
    })
    .unwrap();
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM queues"), 0);

    let now = now_ms();
    let sched = |cron: &str, next_due: i64| {
        Op::PutSchedule(ScheduleRow {
            name: "tick".into(),
            cron: cron.into(),
            workflow: "w".into(),
            version: 1,
            input: vec![1],
            queue: "default".into(),
            catch_up: true,
            next_due,
        })
    };
    s.call(sched("* * * * * *", now - 1000)).unwrap();
    s.call(sched("* * * * * *", now + 5000)).unwrap();
    let due = s.due_schedules(now, 10).unwrap();
    assert_eq!(due.len(), 1, "same cron: next_due kept");
    assert_eq!((due[0].next_due, due[0].catch_up), (now - 1000, true));
    s.call(sched("*/2 * * * * *", now - 2000)).unwrap();
    let due = s.due_schedules(now, 10).unwrap();
    assert_eq!(
        (due[0].cron.as_str(), due[0].next_due),
        ("*/2 * * * * *", now - 2000),
        "a new cron: next_due replaced"
    );
    let fire = |due: i64| Op::FireSchedule {
        name: "tick".into(),
        due,
        next: due + 2000,
        run: new_run("w", Some(&format!("sched:tick:{due}")), None),
    };
    // Another engine is firing the same due time right now (its transaction open).
    let mut tx = c.transaction().unwrap();
    assert_eq!(
        tx.execute(
            "UPDATE schedules SET next_due = $2 WHERE name = 'tick' AND next_due = $1",
            &[&(now - 2000), &now],
        )
        .unwrap(),
        1
    );
    let second = {
        let s = s.clone();
        let op = fire(now - 2000);
        std::thread::spawn(move || s.call(op))
    };
    std::thread::sleep(Duration::from_millis(300));
    tx.commit().unwrap();
    assert!(
        matches!(second.join().unwrap().unwrap(), Done::Count(0)),
        "the second firing of a due time changes nothing"
    );
    match s.call(fire(now)).unwrap() {
        Done::Run { created: true, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.call(fire(now)).unwrap(), Done::Count(0)));
    assert_eq!(
        pg_i64(
            &url,
            "SELECT count(*) FROM runs WHERE idempotency_key LIKE 'sched:tick:%'"
        ),
        1
    );
    assert!(s.due_schedules(now, 10).unwrap().is_empty());

    // Purge: 5 finished runs (one with a step, an event and an attempt), a finished
    // child of a suspended parent; limit 3, then the rest.
    let mut ins = |status: &str, parent: Option<i64>, finished: Option<i64>| -> i64 {
        c.query_one(
            "INSERT INTO runs(workflow, input, status, ready_at, parent_id, created_at,
                              updated_at, finished_at)
             VALUES ('w', '\\x00', $1, 0, $2, 0, 0, $3) RETURNING id",
            &[&status, &parent, &finished],
        )
        .unwrap()
        .get(0)
    };
    let old = now - 100_000;
    let done: Vec<i64> = (0..5).map(|_| ins("completed", None, Some(old))).collect();
    let parent = ins("suspended", None, None);
    let kept = ins("failed", Some(parent), Some(old));
    let young = ins("completed", None, Some(now + 100_000));
    c.batch_execute(&format!(
        "INSERT INTO steps(run_id, seq, name, kind, status, attempts, recorded_at)
           VALUES ({0}, 0, 's', 'step', 'completed', 1, 0);
         INSERT INTO events(run_id, name, payload, sent_at) VALUES ({0}, 'e', '\\x00', 0);
         INSERT INTO attempts(run_id, seq, attempt, name, owner, epoch, started_at)
           VALUES ({0}, 0, 1, 's', 'o', 1, 0);
         INSERT INTO run_changes(run_id, status, at) VALUES ({0}, 'completed', {1});",
        done[0], old
    ))
    .unwrap();
    let purge = |limit: i64| match s.call(Op::Purge { before: now, limit }).unwrap() {
        Done::Count(n) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(purge(3), 3);
    assert_eq!(purge(100), 2);
    assert_eq!(purge(100), 0);
    let left: Vec<i64> = c
        .query(
            "SELECT id FROM runs WHERE status <> 'pending' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![parent, kept, young]);
    assert_eq!(
        pg_i64(
            &url,
            "SELECT (SELECT count(*) FROM steps) + (SELECT count(*) FROM events)
                  + (SELECT count(*) FROM attempts)"
        ),
        0
    );
    assert_eq!(
        pg_i64(
            &url,
            &format!("SELECT count(*) FROM run_changes WHERE at <= {now}")
        ),
        0
    );
    assert!(matches!(
        s.call(Op::IncrementalVacuum { pages: 2048 }).unwrap(),
        Done::Count(0)
    ));
}
