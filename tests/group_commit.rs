//! Group commit: a lone caller's commands are never held back to fill a batch (each commit
//! holds exactly its one command), and concurrent callers share transactions.

use std::sync::Arc;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{Done, NewRun, Op, Store, StoreOptions};

fn run(i: u64) -> NewRun {
    NewRun {
        workflow: "w".into(),
        version: 1,
        input: vec![0; 16],
        idempotency_key: Some(format!("k{i}")),
        queue: "default".into(),
        priority: 0,
        ready_at: None,
        parent_id: None,
        deadline_at: None,
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(
        &dir.path().join("group.db"),
        &StoreOptions::default(),
        Arc::new(SystemClock::from_env()),
    )
    .expect("open")
}

#[test]
fn a_lone_caller_gets_one_command_per_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let before = store.writer_stats();
    for i in 0..50 {
        match store.call(Op::Enqueue(run(i))).expect("enqueue") {
            Done::Run { created, .. } => assert!(created),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let after = store.writer_stats();
    assert_eq!(after.0 - before.0, 50, "one transaction per call");
    assert_eq!(after.1 - before.1, 50);
}

#[test]
fn concurrent_callers_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let before = store.writer_stats();
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    store.call(Op::Enqueue(run(t * 1000 + i))).expect("enqueue");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("caller thread");
    }
    let (batches, commands) = store.writer_stats();
    let (batches, commands) = (batches - before.0, commands - before.1);
    assert_eq!(commands, 16 * 40);
    assert!(
        batches < commands,
        "16 concurrent callers never shared a commit ({batches} commits for {commands} commands)"
    );
    let total: i64 = store
        .read(|c| {
            c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
                .map_err(|e| waymark::StoreError::sqlite("count", e))
        })
        .expect("count");
    assert_eq!(total, 16 * 40);
}
