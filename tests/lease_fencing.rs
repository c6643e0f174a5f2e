//! Scenario: an engine is paused (SIGSTOP) in the middle of a step for several lease TTLs;
//! a second engine reclaims the run and finishes it; then the first engine resumes.
//! Must hold: the run completes once with the second owner's results; the resumed engine's
//! late work is rejected (it logs the lost lease) and the journal does not change after it
//! resumes. A store-level test shows the fence itself: a write with a stale epoch is a
//! typed LeaseLost error and changes nothing.

mod support;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{Done, Entry, Fence, NewRun, Op, Store, StoreError, StoreOptions};

#[test]
fn paused_owner_is_fenced_and_the_journal_stays_the_new_owners() {
    let dir = tempdir();
    let db = dir.path().join("lease.db");
    let dbs = db.to_str().unwrap();
    let fx = dir.path().join("effects");
    let envs = [("WAYMARK_DEMO_EFFECTS", fx.to_str().unwrap())];
    let ids = start_runs(&db, "fixture.slow", r#"{"steps":3,"ms":1500}"#, None, 1);
    let run = ids[0];
    let a_log = dir.path().join("a.log");
    let mut a = spawn(
        &[
            "serve",
            "--db",
            dbs,
            "--workers",
            "1",
            "--lease-ttl-ms",
            "1000",
        ],
        &envs,
        &a_log,
    );
    // Wait until A is inside the first step, then freeze it.
    wait_for("engine A to start a step", Duration::from_secs(30), || {
        (!effects(&fx).is_empty()).then_some(())
    });
    signal(&a, libc::SIGSTOP);

    let mut b = spawn(
        &[
            "serve",
            "--db",
            dbs,
            "--workers",
            "1",
            "--lease-ttl-ms",
            "1000",
        ],
        &envs,
        &dir.path().join("b.log"),
    );
    wait_for(
        "engine B to complete the run",
        Duration::from_secs(60),
        || (try_status(&db, run).as_deref() == Some("completed")).then_some(()),
    );
    let journal_before: Vec<(i64, String, i64)> = {
        let c = peek(&db);
        let mut s = c
            .prepare("SELECT seq, name, recorded_at FROM steps WHERE run_id = ?1 ORDER BY seq")
            .unwrap();
        s.query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(journal_before.len(), 3);

    signal(&a, libc::SIGCONT);
    wait_for(
        "engine A to notice its lost lease",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&a_log)
                .ok()
                .filter(|l| l.contains("lease lost"))
                .map(|_| ())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let journal_after: Vec<(i64, String, i64)> = {
        let c = peek(&db);
        let mut s = c
            .prepare("SELECT seq, name, recorded_at FROM steps WHERE run_id = ?1 ORDER BY seq")
            .unwrap();
        s.query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        journal_before, journal_after,
        "the stale owner changed nothing"
    );
    assert_eq!(try_status(&db, run).as_deref(), Some("completed"));
    let c = peek(&db);
    let (epoch, interruptions): (i64, i64) = c
        .query_row(
            "SELECT epoch, interruptions FROM runs WHERE id = ?1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        epoch >= 3,
        "claim, reclaim and re-claim each bumped the epoch (got {epoch})"
    );
    assert_eq!(interruptions, 1);
    kill9(&mut a);
    kill9(&mut b);
}

#[test]
fn a_write_with_a_stale_epoch_is_lease_lost_and_changes_nothing() {
    let dir = tempdir();
    let db = dir.path().join("fence.db");
    let store = Store::open(
        &db,
        &StoreOptions::default(),
        Arc::new(SystemClock::from_env()),
    )
    .unwrap();
    let Done::Run { id, .. } = store
        .call(Op::Enqueue(NewRun {
            workflow: "w".into(),
            version: 1,
            input: vec![],
            idempotency_key: None,
            queue: "default".into(),
            priority: 0,
            ready_at: None,
            parent_id: None,
            deadline_at: None,
        }))
        .unwrap()
    else {
        panic!("enqueue")
    };
    let claim = |owner: &str| match store
        .call(Op::Claim {
            owner: owner.into(),
            limit: 1,
            workflows_json: r#"["w@1"]"#.into(),
            lease_ms: 10,
        })
        .unwrap()
    {
        Done::Claimed(c) => c,
        other => panic!("{other:?}"),
    };
    let first = claim("old-owner").pop().unwrap();
    let old = Fence {
        run_id: id,
        owner: "old-owner".into(),
        epoch: first.epoch,
    };
    // The reaper takes the run away (guarded by the epoch it read) and another owner claims it.
    assert!(matches!(
        store
            .call(Op::Reclaim {
                run_id: id,
                epoch: first.epoch,
                reason: "test".into(),
                poison_limit: 5
            })
            .unwrap(),
        Done::Reclaimed(true)
    ));
    // A second reclaim with the same stale epoch is a no-op.
    assert!(matches!(
        store
            .call(Op::Reclaim {
                run_id: id,
                epoch: first.epoch,
                reason: "test".into(),
                poison_limit: 5
            })
            .unwrap(),
        Done::Reclaimed(false)
    ));
    let second = claim("new-owner").pop().unwrap();
    assert!(second.epoch > first.epoch);
    let entry = Entry {
        seq: 0,
        name: "s".into(),
        kind: "step",
        completed: true,
        attempts: 1,
        output: Some(vec![1]),
        error: None,
    };
    let stale = store.call(Op::Checkpoint {
        fence: old.clone(),
        entry: entry.clone(),
    });
    assert!(
        matches!(stale, Err(StoreError::LeaseLost { .. })),
        "{stale:?}"
    );
    assert!(matches!(
        store.call(Op::Complete {
            fence: old,
            output: vec![]
        }),
        Err(StoreError::LeaseLost { .. })
    ));
    let new = Fence {
        run_id: id,
        owner: "new-owner".into(),
        epoch: second.epoch,
    };
    store
        .call(Op::Checkpoint {
            fence: new.clone(),
            entry: entry.clone(),
        })
        .unwrap();
    // Journal entries are write-once.
    assert!(matches!(
        store.call(Op::Checkpoint { fence: new, entry }),
        Err(StoreError::JournalConflict { .. })
    ));
    let c = peek(&db);
    let (n, owner): (i64, String) = c
        .query_row(
            "SELECT (SELECT count(*) FROM steps), owner FROM runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, owner.as_str()), (1, "new-owner"));
}
