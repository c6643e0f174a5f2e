//! On both stores (SQLite and PostgreSQL).
//! Scenario: an engine is paused (SIGSTOP) in the middle of a step for several lease TTLs;
//! a second engine reclaims the run and finishes it; then the first engine resumes.
//! Must hold: the run completes once with the second owner's results; the resumed engine's
//! late work is rejected (it logs the lost lease) and the journal does not change after it
//! resumes. A store-level test shows the fence itself: a write with a stale epoch is a
//! typed LeaseLost error and changes nothing.

mod support;
use std::time::Duration;
use support::*;
use waymark::internal::store::{Ending, Entry, Fence, NewRun, StoreError};

on_both_stores!(paused_owner_is_fenced_and_the_journal_stays_the_new_owners);
fn paused_owner_is_fenced_and_the_journal_stays_the_new_owners(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "lease.db");
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
    let journal_before = rows(
        &db,
        &format!("SELECT seq, name, recorded_at FROM steps WHERE run_id = {run} ORDER BY seq"),
    );
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
    let journal_after = rows(
        &db,
        &format!("SELECT seq, name, recorded_at FROM steps WHERE run_id = {run} ORDER BY seq"),
    );
    assert_eq!(
        journal_before, journal_after,
        "the stale owner changed nothing"
    );
    assert_eq!(try_status(&db, run).as_deref(), Some("completed"));
    let epoch = query_i64(&db, &format!("SELECT epoch FROM runs WHERE id = {run}"));
    let interruptions = query_i64(
        &db,
        &format!("SELECT interruptions FROM runs WHERE id = {run}"),
    );
    assert!(
        epoch >= 3,
        "claim, reclaim and re-claim each bumped the epoch (got {epoch})"
    );
    assert_eq!(interruptions, 1);
    kill9(&mut a);
    kill9(&mut b);
}

on_both_stores!(a_write_with_a_stale_epoch_is_lease_lost_and_changes_nothing);
fn a_write_with_a_stale_epoch_is_lease_lost_and_changes_nothing(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "fence.db");
    let store = storage(&db);
    let id = store.enqueue(NewRun::new("w", 1, vec![])).unwrap().id;
    let claim = |owner: &str| {
        store
            .claim(&owner.into(), 1, &r#"["w@1"]"#.into(), 10)
            .unwrap()
    };
    let first = claim("old-owner").pop().unwrap();
    let old = Fence {
        run_id: id,
        owner: "old-owner".into(),
        epoch: first.epoch,
    };
    // The reaper takes the run away (guarded by the epoch it read) and another owner claims it.
    assert!(store.reclaim(id, first.epoch, "test".into(), 5).unwrap());
    // A second reclaim with the same stale epoch is a no-op.
    assert!(!store.reclaim(id, first.epoch, "test".into(), 5).unwrap());
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
    let stale = store.checkpoint(&old, entry.clone());
    assert!(
        matches!(stale, Err(StoreError::LeaseLost { .. })),
        "{stale:?}"
    );
    assert!(matches!(
        store.complete(&old, vec![]),
        Err(StoreError::LeaseLost { .. })
    ));
    // A stale ending with deferred results writes none of them either.
    let ended = store.finish(&old, vec![entry.clone()], Ending::Complete(vec![]), None);
    assert!(
        matches!(ended, Err(StoreError::LeaseLost { .. })),
        "{ended:?}"
    );
    let new = Fence {
        run_id: id,
        owner: "new-owner".into(),
        epoch: second.epoch,
    };
    store.checkpoint(&new, entry.clone()).unwrap();
    // Journal entries are write-once.
    assert!(matches!(
        store.checkpoint(&new, entry),
        Err(StoreError::JournalConflict { .. })
    ));
    assert_eq!(query_i64(&db, "SELECT count(*) FROM steps"), 1);
    assert_eq!(
        query_text(&db, &format!("SELECT owner FROM runs WHERE id = {id}")),
        "new-owner"
    );
}
