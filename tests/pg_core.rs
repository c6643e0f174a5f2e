//! Scenario: the core transitions (leases, runs) and the engine's queries on PostgreSQL,
//! driven through the `Storage` seam and by real `waymark serve --db URL` processes.
//! Must hold: a stale fence writes nothing (LeaseLost); the journal is write-once
//! (JournalConflict); a key starts one run; two engines never claim one run at once; a
//! SIGKILLed owner's run is reclaimed by another engine and completes with each step
//! journaled once; a queue's limit holds across stores.

mod support;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::pg::PgStore;
use waymark::internal::store::write::{EngineRow, Entry, Fence, NewRun, OnKeyConflict};
use waymark::internal::store::{Storage, StoreError};

const WF: &str = "pg.core";

fn store(url: &str) -> PgStore {
    PgStore::open(url, 4, Arc::new(SystemClock::from_env())).expect("open the PostgreSQL store")
}

fn new_run(key: Option<&str>, input: &[u8]) -> NewRun {
    NewRun {
        workflow: WF.into(),
        version: 1,
        input: input.to_vec(),
        idempotency_key: key.map(str::to_string),
        queue: "default".into(),
        priority: 0,
        ready_at: None,
        parent_id: None,
        deadline_at: None,
    }
}

fn engine(s: &PgStore, id: &str) -> Arc<str> {
    let id: Arc<str> = id.into();
    s.register_engine(EngineRow {
        id: id.clone(),
        pid: std::process::id(),
        pid_start: 1,
        boot_id: "test-host".into(),
    })
    .unwrap();
    id
}

fn workflows() -> Arc<str> {
    format!("[\"{WF}@1\"]").into()
}

fn entry(seq: i64, output: &[u8]) -> Entry {
    Entry {
        seq,
        name: format!("step{seq}"),
        kind: "step",
        completed: true,
        attempts: 1,
        output: Some(output.to_vec()),
        error: None,
    }
}

fn count(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn lease_lost(r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match r {
        Err(StoreError::LeaseLost { .. }) => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

#[test]
fn a_stale_fence_gets_lease_lost_and_writes_nothing() {
    let url = fresh_pg_db();
    let s = store(&url);
    let a = engine(&s, "engine-a");
    let b = engine(&s, "engine-b");
    let id = s.enqueue(new_run(None, b"in")).unwrap().id;
    let claimed = s.claim(&a, 10, &workflows(), 60_000).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].run_id, claimed[0].epoch), (id, 1));
    let old = Fence {
        run_id: id,
        owner: a.clone(),
        epoch: 1,
    };
    s.checkpoint(&old, entry(0, b"zero")).unwrap();
    // The reaper judged A dead at its current heartbeat: fence the incarnation, reclaim.
    let beat = s
        .owners()
        .unwrap()
        .into_iter()
        .find(|o| &*o.id == "engine-a")
        .and_then(|o| o.beat)
        .expect("engine-a owns the run");
    let taken = s
        .reclaim_many(&a, Some(beat), vec![(id, 1)], "test: owner dead".into(), 10)
        .unwrap();
    assert_eq!(taken, vec![(id, true)]);
    // A fenced incarnation's heartbeat fails from then on.
    lease_lost(
        s.heartbeat(&a, 60_000),
        "heartbeat of the fenced incarnation",
    );
    let reclaimed = s.claim(&b, 10, &workflows(), 60_000).unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].epoch, 3, "claim, reclaim, claim: three bumps");
    assert_eq!(reclaimed[0].interruptions, 1);

    let mut c = pg_cluster_client(&url);
    let before: (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM attempts)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // Every write of the old owner: LeaseLost, nothing written.
    lease_lost(s.checkpoint(&old, entry(1, b"one")), "stale checkpoint");
    lease_lost(
        s.attempt_start(&old, 1, 1, "step1".into(), Some(1), Some(1)),
        "stale attempt start",
    );
    lease_lost(
        s.attempt_end(&old, 1, 1, "failed", "x".into()),
        "stale attempt end",
    );
    lease_lost(s.complete(&old, b"out".to_vec()), "stale complete");
    lease_lost(s.fail(&old, "no".into()), "stale fail");
    lease_lost(s.suspend(&old, 0, "note".into()), "stale suspend");
    lease_lost(s.release(&old), "stale release");
    lease_lost(s.block(&old, "blocked", "n".into()), "stale block");
    assert!(!s.fence_holds(&old).unwrap());
    let after: (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM attempts)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(before, after, "a stale fence wrote a row");
    let row = s.run(id).unwrap().unwrap();
    assert_eq!(row.status, "running");
    assert_eq!(row.owner.as_deref(), Some("engine-b"));
    assert_eq!(row.epoch, 3);
    assert_eq!(row.steps_completed, 1);
    // A reclaim judged on an old epoch changes nothing.
    assert!(!s.reclaim(id, 1, "late".into(), 10).unwrap());

    // The new owner replays the old entry and goes on.
    let new = Fence {
        run_id: id,
        owner: b.clone(),
        epoch: 3,
    };
    assert!(s.fence_holds(&new).unwrap());
    let journal = s.journal(id).unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].output.as_deref(), Some(&b"zero"[..]));
    s.checkpoint(&new, entry(1, b"one")).unwrap();
    s.complete(&new, b"out".to_vec()).unwrap();
    let row = s.run(id).unwrap().unwrap();
    assert_eq!(row.status, "completed");
    assert_eq!(row.output.as_deref(), Some(&b"out"[..]));
    assert_eq!(row.owner, None);
    assert!(row.finished_at.is_some());
    assert_eq!(s.finished_between(0, i64::MAX).unwrap(), 1);
    lease_lost(s.complete(&new, b"again".to_vec()), "completing twice");
}

#[test]
fn a_second_journal_entry_at_one_seq_is_journal_conflict() {
    let url = fresh_pg_db();
    let s = store(&url);
    let a = engine(&s, "engine-a");
    let id = s.enqueue(new_run(None, b"in")).unwrap().id;
    let c = s.claim(&a, 1, &workflows(), 60_000).unwrap();
    assert_eq!(c.len(), 1);
    let f = Fence {
        run_id: id,
        owner: a,
        epoch: c[0].epoch,
    };
    s.checkpoint(&f, entry(0, b"first")).unwrap();
    match s.checkpoint(&f, entry(0, b"second")) {
        Err(StoreError::JournalConflict { run_id, seq }) => assert_eq!((run_id, seq), (id, 0)),
        other => panic!("expected JournalConflict, got {other:?}"),
    }
    let j = s.journal(id).unwrap();
    assert_eq!(j.len(), 1);
    assert_eq!(
        j[0].output.as_deref(),
        Some(&b"first"[..]),
        "the first write stands"
    );
    // The failed command rolled back alone: the run is still ours.
    assert!(s.fence_holds(&f).unwrap());
    s.checkpoint(&f, entry(1, b"next")).unwrap();
    assert_eq!(s.journal(id).unwrap().len(), 2);
}

#[test]
fn idempotent_start_returns_the_same_id() {
    let url = fresh_pg_db();
    let s = store(&url);
    let first = s
        .start_runs(vec![(new_run(Some("k1"), b"same"), OnKeyConflict::Error)])
        .unwrap();
    assert!(first[0].created);
    let again = s
        .start_runs(vec![(new_run(Some("k1"), b"same"), OnKeyConflict::Error)])
        .unwrap();
    assert_eq!(again[0].id, first[0].id);
    assert!(!again[0].created);
    match s.start_runs(vec![(new_run(Some("k1"), b"other"), OnKeyConflict::Error)]) {
        Err(StoreError::KeyConflict { key, existing_run }) => {
            assert_eq!((key.as_str(), existing_run), ("k1", first[0].id))
        }
        other => panic!("expected KeyConflict, got {other:?}"),
    }
    let existing = s
        .start_runs(vec![(
            new_run(Some("k1"), b"other"),
            OnKeyConflict::ReturnExisting,
        )])
        .unwrap();
    assert_eq!(existing[0].id, first[0].id);
    assert_eq!(
        s.enqueue(new_run(Some("k1"), b"x")).unwrap().id,
        first[0].id
    );
    assert_eq!(
        s.run_input(first[0].id).unwrap().as_deref(),
        Some(&b"same"[..])
    );

    // Concurrent starts under one key, from several stores (as several hosts would): one run.
    let ids: Vec<i64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    let s = store(&url);
                    s.start_runs(vec![(new_run(Some("k2"), b"race"), OnKeyConflict::Error)])
                        .unwrap()[0]
                        .id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        ids.iter().all(|&i| i == ids[0]),
        "one key, one run: {ids:?}"
    );
    let mut c = pg_cluster_client(&url);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM runs WHERE idempotency_key = 'k2'"
        ),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM runs"),
        2,
        "nothing else was started"
    );
}

#[test]
fn claims_from_many_stores_never_take_one_run_twice_and_keep_queue_limits() {
    let url = fresh_pg_db();
    let s = store(&url);
    let runs: Vec<NewRun> = (0..200)
        .map(|i| {
            let mut r = new_run(None, format!("{i}").as_bytes());
            if i % 4 == 0 {
                r.queue = "narrow".into();
            }
            r
        })
        .collect();
    s.enqueue_many(runs).unwrap();
    let mut c = pg_cluster_client(&url);
    // The admin family sets limits; here the row is written directly.
    c.batch_execute("INSERT INTO queues(name, concurrency) VALUES ('narrow', 2)")
        .unwrap();
    // Six stores claim concurrently, each ending what it claimed; a claimer samples the
    // running count of the narrow queue after every claim.
    let claimed: Vec<(i64, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|n| {
                let url = url.clone();
                scope.spawn(move || {
                    let s = store(&url);
                    let me = engine(&s, &format!("claimer-{n}"));
                    let mut c = pg_cluster_client(&url);
                    let mut mine = Vec::new();
                    let mut idle = 0;
                    while idle < 20 {
                        let got = s.claim(&me, 3, &workflows(), 60_000).unwrap();
                        let narrow = count(
                            &mut c,
                            "SELECT count(*) FROM runs WHERE queue = 'narrow' AND status = 'running'",
                        );
                        assert!(narrow <= 2, "the queue limit 2 was exceeded: {narrow}");
                        if got.is_empty() {
                            idle += 1;
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        idle = 0;
                        for r in got {
                            let f = Fence {
                                run_id: r.run_id,
                                owner: me.clone(),
                                epoch: r.epoch,
                            };
                            s.checkpoint(&f, entry(0, b"done")).unwrap();
                            s.complete(&f, b"out".to_vec()).unwrap();
                            mine.push((r.run_id, me.to_string()));
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut seen = HashSet::new();
    for (id, _) in &claimed {
        assert!(seen.insert(*id), "run {id} was claimed twice: {claimed:?}");
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM runs WHERE status = 'completed' AND epoch = 1"
        ),
        200,
        "each run claimed once"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM steps"), 200);
    let owners: HashSet<&str> = claimed.iter().map(|(_, o)| o.as_str()).collect();
    assert!(owners.len() > 1, "one claimer took everything: {owners:?}");
}

/// Journal of `run` as `(seq, name)`.
fn journal_rows(c: &mut postgres::Client, run: i64) -> Vec<(i64, String)> {
    c.query(
        "SELECT seq, name FROM steps WHERE run_id = $1 ORDER BY seq",
        &[&run],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn a_sigkilled_owners_run_is_reclaimed_by_another_engine_and_completes() {
    let url = fresh_pg_db();
    let dir = tempdir();
    let db = Path::new(&url);
    let mut a = serve(dir.path(), "a", db, 2, 2000, &[]);
    let ids = start(db, "fixture.slow", r#"{"steps":6,"ms":300}"#, 1);
    let id = ids[0];
    let mut c = pg_cluster_client(&url);
    wait_until(
        "engine a to journal two steps",
        Duration::from_secs(60),
        || journal_rows(&mut c, id).len() >= 2,
    );
    a.kill();
    let journaled_by_a: Vec<i64> = journal_rows(&mut c, id).iter().map(|r| r.0).collect();
    let a_pid = a.pid() as u32;
    let _b = serve(dir.path(), "b", db, 2, 2000, &[]);
    wait_until("the run to complete", Duration::from_secs(90), || {
        let s: String = c
            .query_one("SELECT status FROM runs WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        s == "completed"
    });
    let row = c
        .query_one(
            "SELECT interruptions, epoch, owner FROM runs WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let (interruptions, epoch, owner): (i64, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(interruptions, 1, "one reclaim");
    assert_eq!(epoch, 3, "claim by a, reclaim, claim by b");
    assert_eq!(owner, None);
    let journal = journal_rows(&mut c, id);
    assert_eq!(
        journal.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..6).collect::<Vec<i64>>(),
        "each step journaled once, in order"
    );
    // Executions: a step journaled before the kill never ran again; at most the step in
    // flight at the kill ran twice (once per owner); no two executions overlapped.
    let effects = effects_in(dir.path());
    let mut runs_of: HashMap<i64, Vec<u32>> = HashMap::new();
    for (run, seq, step, pid) in &effects {
        assert_ne!(
            step, "overlap",
            "two executions of one step at once: {effects:?}"
        );
        if *run == id && step == "sleep" {
            runs_of.entry(*seq).or_default().push(*pid);
        }
    }
    for seq in 0..6 {
        let pids = runs_of.get(&seq).cloned().unwrap_or_default();
        if journaled_by_a.contains(&seq) {
            assert_eq!(
                pids,
                vec![a_pid],
                "seq {seq} was journaled by a and ran again"
            );
        } else {
            assert!(
                !pids.is_empty() && pids.len() <= 2,
                "seq {seq} ran {pids:?} times"
            );
            assert!(
                pids.len() == 1 || pids[0] == a_pid,
                "seq {seq} ran twice without a reclaim between: {pids:?}"
            );
        }
    }
}

#[test]
fn two_engine_processes_never_run_one_step_twice() {
    let url = fresh_pg_db();
    let dir = tempdir();
    let db = Path::new(&url);
    let _a = serve(dir.path(), "a", db, 4, 5000, &[]);
    let _b = serve(dir.path(), "b", db, 4, 5000, &[]);
    let ids = start(db, "fixture.slow", r#"{"steps":3,"ms":10}"#, 80);
    let mut c = pg_cluster_client(&url);
    wait_until("every run to complete", Duration::from_secs(120), || {
        count(
            &mut c,
            "SELECT count(*) FROM runs WHERE status = 'completed'",
        ) == 80
    });
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM runs WHERE epoch <> 1 OR interruptions <> 0"
        ),
        0,
        "no run was claimed twice or reclaimed"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM steps"), 240);
    let effects = effects_in(dir.path());
    let mut by_step: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
    let mut pids = HashSet::new();
    for (run, seq, step, pid) in &effects {
        assert_ne!(step, "overlap", "two executions of one step at once");
        if step == "sleep" && ids.contains(run) {
            by_step.entry((*run, *seq)).or_default().push(*pid);
            pids.insert(*pid);
        }
    }
    assert_eq!(by_step.len(), 240, "every step ran");
    for (k, v) in &by_step {
        assert_eq!(v.len(), 1, "step {k:?} ran more than once: {v:?}");
    }
    assert_eq!(pids.len(), 2, "both engines ran steps");
}
