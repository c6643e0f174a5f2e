//! Attack (schema 8): the dispatcher's poll (`claimable`) finds pending runs by splitting
//! each registered `workflow@version` at its last `@`, while the claim compares the whole
//! `workflow || '@' || version`. A poll that answers "nothing" while the claim would take
//! a run stalls that run for as long as the engine is idle (the dispatcher claims only
//! after a poll said yes).
//! Must hold, on both stores, for odd workflow names (with `@`, digits at the end, empty,
//! unicode, a NUL on SQLite) and versions 0 and u32::MAX: the poll says yes exactly when
//! the claim takes the run, and no once it is taken.

mod support;
use std::sync::Arc;
use support::*;
use waymark::internal::store::write::{EngineRow, NewRun};

fn names(backend: Backend) -> Vec<String> {
    let mut v: Vec<String> = [
        "plain",
        "a@b",
        "a@1",
        "wf1",
        "wf@",
        "@",
        "",
        "123",
        "1@2@3",
        "日本語@ü",
        "é",
        " ",
        "x@0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if backend == Backend::Sqlite {
        // PostgreSQL's TEXT cannot hold a NUL; SQLite's can.
        v.push("nul\0inside".into());
    }
    v
}

on_both_stores!(the_poll_sees_every_run_the_claim_takes);
fn the_poll_sees_every_run_the_claim_takes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "poll.db");
    let s = storage(&db);
    let owner: Arc<str> = "attack5-engine".into();
    s.register_engine(EngineRow {
        id: owner.clone(),
        pid: std::process::id(),
        pid_start: 1,
        boot_id: "attack5".into(),
    })
    .unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let mut stalled = Vec::new();
    for name in names(backend) {
        for version in [0u32, 1, 10, u32::MAX] {
            let key = format!("{name}@{version}");
            let known: Arc<str> = serde_json::to_string(&vec![key.clone()]).unwrap().into();
            let started = s
                .enqueue(NewRun::new(&name, i64::from(version), vec![1]))
                .unwrap_or_else(|e| panic!("enqueue {key:?}: {e}"));
            let polled = s.claimable(now(), &known).unwrap();
            let claimed = s.claim(&owner, 10, &known, 60_000).unwrap();
            assert!(
                claimed.len() <= 1,
                "{key:?}: the claim took runs of other workflows: {claimed:?}"
            );
            if !claimed.is_empty() {
                assert_eq!(claimed[0].run_id, started.id, "{key:?}");
            }
            if polled == claimed.is_empty() {
                stalled.push(format!(
                    "{key:?}: poll said {polled}, claim took {}",
                    claimed.len()
                ));
            }
            // Taken: nothing of this key is pending any more.
            assert!(
                !s.claimable(now(), &known).unwrap(),
                "{key:?}: the poll still sees a run after the claim took it"
            );
        }
    }
    assert!(
        stalled.is_empty(),
        "the poll and the claim disagree: {stalled:#?}"
    );
}
