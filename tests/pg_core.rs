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
use waymark::internal::store::write::{
    ClaimNext, Ending, EngineRow, Entry, Fence, NewRun, OnKeyConflict,
};
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
    let b = serve(dir.path(), "b", db, 2, 2000, &[]);
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
    // Executions (the effects file: one line per execution of a step, in its own child
    // process; the attempts table: which owner and epoch ran it): a step journaled before
    // the kill never ran again; only a step in flight at the kill ran twice, once per
    // owner (epoch 1 on a, epoch 3 on b); no two executions of one step overlapped.
    let effects = effects_in(dir.path());
    let mut ran: HashMap<i64, usize> = HashMap::new();
    for (run, seq, step, _) in &effects {
        assert_ne!(
            step, "overlap",
            "two executions of one step at once: {effects:?}"
        );
        if *run == id && step == "sleep" {
            *ran.entry(*seq).or_default() += 1;
        }
    }
    let attempts = attempt_rows(&mut c, id);
    for seq in 0..6 {
        let n = ran.get(&seq).copied().unwrap_or(0);
        let epochs: Vec<i64> = attempts
            .iter()
            .filter(|a| a.0 == seq)
            .map(|a| a.2)
            .collect();
        if journaled_by_a.contains(&seq) {
            assert_eq!(n, 1, "seq {seq} was journaled by a and ran {n} times");
            assert_eq!(epochs, vec![1], "seq {seq}: attempts {attempts:?}");
        } else if n == 2 {
            assert_eq!(
                epochs,
                vec![1, 3],
                "seq {seq} ran twice: attempts {attempts:?}"
            );
        } else {
            assert_eq!(n, 1, "seq {seq} ran {n} times");
        }
    }
    drop(b);
}

/// Attempts of `run` as `(seq, owner, epoch)`, in order.
fn attempt_rows(c: &mut postgres::Client, run: i64) -> Vec<(i64, String, i64)> {
    c.query(
        "SELECT seq, owner, epoch FROM attempts WHERE run_id = $1 ORDER BY seq, attempt",
        &[&run],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
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
    let mut by_step: HashMap<(i64, i64), usize> = HashMap::new();
    for (run, seq, step, _) in &effects {
        assert_ne!(step, "overlap", "two executions of one step at once");
        if step == "sleep" && ids.contains(run) {
            *by_step.entry((*run, *seq)).or_default() += 1;
        }
    }
    assert_eq!(by_step.len(), 240, "every step ran");
    for (k, n) in &by_step {
        assert_eq!(*n, 1, "step {k:?} ran {n} times");
    }
    // Each step had one attempt, by the run's one owner at epoch 1; both engines worked.
    let rows = c
        .query(
            "SELECT run_id, seq, count(*), min(owner), max(owner), max(epoch) FROM attempts
             GROUP BY run_id, seq",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 240);
    let mut owners = HashSet::new();
    for r in &rows {
        let (n, lo, hi, epoch): (i64, String, String, i64) =
            (r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(
            (n, epoch),
            (1, 1),
            "attempts of {:?}",
            (r.get::<_, i64>(0), r.get::<_, i64>(1))
        );
        assert_eq!(lo, hi);
        owners.insert(lo);
    }
    let run_owners = count(
        &mut c,
        "SELECT count(*) FROM (SELECT run_id FROM attempts GROUP BY run_id
                                HAVING count(DISTINCT owner) > 1) x",
    );
    assert_eq!(run_owners, 0, "a run's steps ran under two owners");
    assert_eq!(owners.len(), 2, "both engines ran steps: {owners:?}");
}

// ---- the same scenario on SQLite and on PostgreSQL: the same answers ----

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An answer without its times (the two stores run at different moments).
fn answer<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(
            e @ (StoreError::LeaseLost { .. }
            | StoreError::NotFound { .. }
            | StoreError::KeyConflict { .. }
            | StoreError::JournalConflict { .. }
            | StoreError::RunNotFinished { .. }),
        ) => format!("err {e:?}"),
        Err(e) => format!("unexpected error: {e}"),
    }
}

fn run_line(s: &dyn Storage, id: i64) -> String {
    match s.run(id) {
        Ok(Some(r)) => format!(
            "run {} {}@{} {} key={:?} q={} prio={} steps={} finished={} owner={:?} epoch={} \
             interruptions={} last={:?} error={:?} note={:?} parent={:?} output={:?} \
             retry_of={:?} retried_as={:?}",
            r.id,
            r.workflow,
            r.version,
            r.status,
            r.idempotency_key,
            r.queue,
            r.priority,
            r.steps_completed,
            r.finished_at.is_some(),
            r.owner,
            r.epoch,
            r.interruptions,
            r.last_interruption,
            r.error,
            r.note,
            r.parent_id,
            r.output,
            r.retry_of,
            r.retried_as
        ),
        other => format!("run {id}: {other:?}"),
    }
}

fn journal_line(s: &dyn Storage, id: i64) -> String {
    match s.journal(id) {
        Ok(rows) => rows
            .iter()
            .map(|e| {
                format!(
                    "[{} {} {} {} {} {:?} {:?} {:?}]",
                    e.seq, e.name, e.kind, e.status, e.attempts, e.error, e.output, e.copied_from
                )
            })
            .collect(),
        Err(e) => format!("journal {id}: {e}"),
    }
}

fn attempts_line(rows: Result<Vec<waymark::internal::store::AttemptRow>, StoreError>) -> String {
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|a| {
                format!(
                    "[{} {} {} {} {} {:?} {:?} ended={} {:?} {:?} {:?} {:?}]",
                    a.seq,
                    a.attempt,
                    a.name,
                    a.owner,
                    a.epoch,
                    a.pid,
                    a.pid_start,
                    a.ended_at.is_some(),
                    a.outcome,
                    a.reason,
                    a.logs,
                    a.memory_cap
                )
            })
            .collect(),
        Err(e) => format!("attempts: {e}"),
    }
}

fn ids_of(c: &[waymark::internal::store::write::Claimed]) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = c.iter().map(|c| (c.run_id, c.epoch)).collect();
    v.sort();
    v
}

fn claimed_line(r: Result<Vec<waymark::internal::store::write::Claimed>, StoreError>) -> String {
    match r {
        Ok(mut v) => {
            v.sort_by_key(|c| c.run_id);
            format!("claimed {v:?}")
        }
        Err(e) => answer::<()>(Err(e)),
    }
}

/// Every core transition and query once, as a transcript.
fn scenario(s: &dyn Storage) -> Vec<String> {
    let mut t = Vec::new();
    let wf = workflows();
    let reg = |id: &str| {
        let id: Arc<str> = id.into();
        s.register_engine(EngineRow {
            id: id.clone(),
            pid: 4242,
            pid_start: 7,
            boot_id: "host-1".into(),
        })
        .unwrap();
        id
    };
    let e1 = reg("e1");
    let e2 = reg("e2");
    let now = now_ms();
    let mut later = new_run(None, b"later");
    later.ready_at = Some(now + 3_600_000);
    let mut other = new_run(None, b"other");
    other.workflow = "other".into();
    let mut v2 = new_run(None, b"v2");
    v2.version = 2;
    let mut urgent = new_run(None, b"urgent");
    urgent.priority = 5;
    t.push(answer(s.enqueue(new_run(Some("a"), b"one"))));
    t.push(answer(s.enqueue_many(vec![
        new_run(None, b"two"),
        later,
        other,
        v2,
    ])));
    t.push(answer(s.enqueue(new_run(Some("a"), b"ignored"))));
    t.push(answer(s.claimable(now_ms(), &wf)));
    t.push(answer(s.claimable(now_ms(), "[\"nothing@1\"]")));
    t.push(claimed_line(s.claim(&e1, 2, &wf, 60_000)));
    t.push(answer(s.enqueue(urgent)));
    t.push(answer(
        s.note_unrunnable(&wf, "no engine here runs ".into()),
    ));
    t.push(answer(s.heartbeat(&e1, 60_000)));
    t.push(answer(s.probe(&e1)));
    let f1 = Fence {
        run_id: 1,
        owner: e1.clone(),
        epoch: 1,
    };
    let f2 = Fence {
        run_id: 2,
        owner: e1.clone(),
        epoch: 1,
    };
    t.push(answer(s.checkpoint(&f1, entry(0, b"zero"))));
    t.push(answer(s.attempt_start(
        &f1,
        1,
        1,
        "flaky".into(),
        Some(99),
        Some(5),
    )));
    t.push(answer(s.attempt_start(
        &f1,
        1,
        1,
        "flaky".into(),
        Some(99),
        Some(5),
    )));
    t.push(attempts_line(s.open_attempts(1)));
    t.push(answer(s.attempt_end(&f1, 1, 1, "failed", "exit 3".into())));
    t.push(answer(s.attempt_detail(
        &f1,
        1,
        1,
        "log text".into(),
        Some("cgroup".into()),
    )));
    t.push(answer(s.attempt_end(
        &f1,
        1,
        2,
        "failed",
        "in-process".into(),
    )));
    t.push(attempts_line(s.attempts(1)));
    t.push(attempts_line(s.open_attempts(1)));
    t.push(answer(s.checkpoint(
        &f1,
        Entry {
            seq: 1,
            name: "flaky".into(),
            kind: "step",
            completed: false,
            attempts: 2,
            output: None,
            error: Some("boom".into()),
        },
    )));
    t.push(answer(s.checkpoint(&f1, entry(1, b"dup"))));
    t.push(answer(s.retry(1, None)));
    t.push(answer(s.fail(&f1, "boom".into())));
    t.push(answer(s.fail(&f1, "boom again".into())));
    let retried = s.retry(1, None);
    t.push(answer(retried.as_ref().map(|_| ()).map_err(|e| match e {
        StoreError::NotFound { run_id } => StoreError::NotFound { run_id: *run_id },
        _ => StoreError::NotFound { run_id: -1 },
    })));
    let r = retried.unwrap_or(0);
    t.push(run_line(s, r));
    t.push(journal_line(s, r));
    t.push(answer(s.retry(1, Some(5))));
    t.push(answer(s.retry(999, None)));
    // Run 2: suspended into the past, woken and claimed by e2 with the others.
    t.push(answer(s.suspend(&f2, now_ms() - 1, "sleeping".into())));
    t.push(run_line(s, 2));
    t.push(claimed_line(s.claim(&e2, 10, &wf, 60_000)));
    let claimed2: Vec<(i64, i64)> = s.runs_of_owner("e2").unwrap_or_default();
    let mut claimed2 = claimed2;
    claimed2.sort();
    t.push(format!("runs of e2 {claimed2:?}"));
    let fence_of = |id: i64| Fence {
        run_id: id,
        owner: e2.clone(),
        epoch: claimed2
            .iter()
            .find(|r| r.0 == id)
            .map(|r| r.1)
            .unwrap_or(-1),
    };
    t.push(answer(s.block(&fence_of(2), "blocked", "bad data".into())));
    t.push(run_line(s, 2));
    t.push(answer(s.resume(2)));
    t.push(answer(s.resume(2)));
    t.push(answer(s.release(&fence_of(r))));
    t.push(answer(s.fence_holds(&fence_of(r))));
    t.push(answer(s.cancel_requested(r)));
    t.push(answer(s.cancel_requested(12345)));
    let mut owners: Vec<String> = s
        .owners()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{} {:?} {:?} {:?} {:?} {} lease={}",
                o.id,
                o.pid,
                o.pid_start,
                o.boot_id,
                o.beat,
                o.stopped,
                o.lease_expires_at.is_some()
            )
        })
        .collect();
    owners.sort();
    t.push(format!("owners {owners:?}"));
    t.push(answer(s.engine_host("e1")));
    t.push(answer(s.engine_host("nobody")));
    // e2 judged dead at a stale heartbeat: nothing; at its heartbeat: all reclaimed.
    let beat = s
        .owners()
        .unwrap()
        .into_iter()
        .find(|o| o.id == "e2")
        .and_then(|o| o.beat)
        .unwrap_or(-1);
    t.push(answer(s.reclaim_many(
        &e2,
        Some(beat + 1),
        claimed2.clone(),
        "dead".into(),
        10,
    )));
    t.push(answer(s.reclaim_many(
        &e2,
        Some(beat),
        claimed2.clone(),
        "dead".into(),
        10,
    )));
    t.push(answer(s.heartbeat(&e2, 60_000)));
    for (id, _) in &claimed2 {
        t.push(run_line(s, *id));
    }
    // A run past its poison limit fails.
    let got = s.claim(&e1, 1, &wf, 60_000).unwrap_or_default();
    if let Some(c) = got.first() {
        t.push(format!("e1 claimed {} at {}", c.run_id, c.epoch));
        t.push(answer(s.reclaim(c.run_id, c.epoch, "stalled".into(), 0)));
        t.push(run_line(s, c.run_id));
        t.push(answer(s.reclaim(c.run_id, c.epoch, "stalled".into(), 0)));
    }
    let mut idle: Vec<String> = s
        .idle_engines()
        .unwrap()
        .iter()
        .map(|o| format!("{} {}", o.id, o.stopped))
        .collect();
    idle.sort();
    t.push(format!("idle {idle:?}"));
    t.push(answer(s.forget_engine("e2")));
    t.push(answer(s.stop_engine(&e1)));
    t.push(answer(s.heartbeat(&e1, 60_000)));
    t.push(answer(s.run_exists(3)));
    t.push(answer(s.run_exists(300)));
    t.push(answer(s.run_input(4)));
    t.push(answer(s.run_input(400)));
    t.push(answer(s.start_runs(vec![
        (new_run(Some("b"), b"b"), OnKeyConflict::Error),
        (new_run(Some("a"), b"one"), OnKeyConflict::Error),
    ])));
    t.push(answer(s.run_exists(10)));
    // Batches: a start that claims what it started; an ending with deferred entries that
    // claims the next run (with and without the sweep); a failing batch writes nothing.
    let e3 = reg("e3");
    let next = |sweep: bool, only_started: bool| ClaimNext {
        owner: e3.clone(),
        limit: 2,
        workflows_json: wf.clone(),
        lease_ms: 60_000,
        sweep,
        only_started,
    };
    let started = s.start_runs_claiming(
        vec![
            (new_run(Some("d"), b"d"), OnKeyConflict::Error),
            (new_run(Some("b"), b"b"), OnKeyConflict::Error),
        ],
        next(false, true),
    );
    t.push(match &started {
        Ok((st, cl)) => format!("started {st:?} claimed {:?}", ids_of(cl)),
        Err(e) => format!("start claiming: {e}"),
    });
    let (d, d_epoch) = match &started {
        Ok((_, cl)) if !cl.is_empty() => (cl[0].run_id, cl[0].epoch),
        _ => (-1, -1),
    };
    let fd = Fence {
        run_id: d,
        owner: e3.clone(),
        epoch: d_epoch,
    };
    t.push(answer(
        s.checkpoints(&fd, vec![entry(0, b"a"), entry(1, b"b")]),
    ));
    t.push(answer(
        s.finish(
            &fd,
            vec![entry(2, b"c"), entry(1, b"again")],
            Ending::Complete(b"done".to_vec()),
            Some(next(false, false)),
        )
        .map(|c| ids_of(&c)),
    ));
    t.push(run_line(s, d));
    t.push(journal_line(s, d));
    t.push(answer(
        s.finish(
            &fd,
            vec![entry(2, b"c")],
            Ending::Suspend {
                until: now_ms() - 1,
                note: "nap".into(),
            },
            Some(next(true, false)),
        )
        .map(|c| ids_of(&c)),
    ));
    t.push(run_line(s, d));
    t.push(journal_line(s, d));
    t.push(answer(s.runs_of_owner("e3").map(|mut v| {
        v.sort();
        v
    })));
    t.push(answer(s.stats()));
    t.push(answer(s.finished_between(0, i64::MAX)));
    for id in 1..=12 {
        t.push(run_line(s, id));
        t.push(journal_line(s, id));
    }
    // Last: a rolled-back insert burns an id on PostgreSQL (a sequence is not
    // transactional), not on SQLite.
    t.push(answer(s.start_runs(vec![
        (new_run(Some("c"), b"c"), OnKeyConflict::Error),
        (new_run(Some("a"), b"not one"), OnKeyConflict::Error),
    ])));
    t
}

#[test]
fn the_core_transitions_answer_as_on_sqlite() {
    use waymark::internal::store::{open_storage, StoreOptions};
    let dir = tempdir();
    let clock: Arc<dyn waymark::internal::clock::Clock> = Arc::new(SystemClock::from_env());
    let sqlite = open_storage(
        &dir.path().join("t.db"),
        &StoreOptions::default(),
        clock.clone(),
        4,
    )
    .unwrap()
    .api;
    let url = fresh_pg_db();
    let pg = open_storage(Path::new(&url), &StoreOptions::default(), clock, 4)
        .unwrap()
        .api;
    let on_sqlite = scenario(&*sqlite);
    let on_pg = scenario(&*pg);
    if std::env::var_os("PG_CORE_TRANSCRIPT").is_some() {
        eprintln!("{on_pg:#?}");
    }
    for (i, (a, b)) in on_sqlite.iter().zip(&on_pg).enumerate() {
        assert_eq!(a, b, "step {i} differs (left: SQLite, right: PostgreSQL)");
    }
    assert_eq!(on_sqlite.len(), on_pg.len());
    assert!(
        on_pg.iter().all(|l| !l.contains("unexpected error")),
        "{on_pg:#?}"
    );
}

#[test]
fn a_frozen_owner_is_fenced_by_its_judged_heartbeat_and_writes_nothing_after() {
    let url = fresh_pg_db();
    let dir = tempdir();
    let db = Path::new(&url);
    // In-process steps: SIGSTOP freezes the engine and the step it runs.
    let a = serve_with(dir.path(), "a", db, 2, 2000, &[], &["--in-process"]);
    let id = start(db, "fixture.slow", r#"{"steps":6,"ms":300}"#, 1)[0];
    let mut c = pg_cluster_client(&url);
    wait_until(
        "engine a to journal two steps",
        Duration::from_secs(60),
        || journal_rows(&mut c, id).len() >= 2,
    );
    a.signal(libc::SIGSTOP);
    let a_id: String = c
        .query_one("SELECT owner FROM runs WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    let at_freeze = journal_rows(&mut c, id).len();
    // a's pid lives: b judges it by its heartbeat counter, then fences its incarnation
    // in the reclaim's own transaction.
    let _b = serve_with(dir.path(), "b", db, 2, 2000, &[], &["--in-process"]);
    wait_until("the run to complete on b", Duration::from_secs(90), || {
        let s: String = c
            .query_one("SELECT status FROM runs WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        s == "completed"
    });
    let fenced: Option<i64> = c
        .query_one("SELECT stopped_at FROM engines WHERE id = $1", &[&a_id])
        .unwrap()
        .get(0);
    assert!(fenced.is_some(), "a's incarnation was not fenced");
    let before = c
        .query_one(
            "SELECT status, epoch, interruptions, output, updated_at,
                    (SELECT count(*) FROM steps WHERE run_id = $1),
                    (SELECT max(recorded_at) FROM steps WHERE run_id = $1)
             FROM runs WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let snapshot =
        |r: &postgres::Row| -> (String, i64, i64, Option<Vec<u8>>, i64, i64, Option<i64>) {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        };
    let before = snapshot(&before);
    assert_eq!((before.1, before.2, before.5), (3, 1, 6), "{before:?}");
    assert!(at_freeze >= 2);
    // a wakes: its heartbeat finds its incarnation fenced, it continues as a new one.
    a.signal(libc::SIGCONT);
    wait_until(
        "a to continue as a new incarnation",
        Duration::from_secs(60),
        || count(&mut c, "SELECT count(*) FROM engines") >= 3,
    );
    let after = c
        .query_one(
            "SELECT status, epoch, interruptions, output, updated_at,
                    (SELECT count(*) FROM steps WHERE run_id = $1),
                    (SELECT max(recorded_at) FROM steps WHERE run_id = $1)
             FROM runs WHERE id = $1",
            &[&id],
        )
        .unwrap();
    assert_eq!(snapshot(&after), before, "the fenced owner changed the run");
    assert_eq!(
        journal_rows(&mut c, id)
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        (0..6).collect::<Vec<i64>>()
    );
    // (The step a was frozen in still holds its overlap lock while b runs it again: that
    // is what a reclaim of a frozen owner means, so the effects file is not checked here.)
}

#[test]
fn a_claimed_row_that_does_not_read_is_parked_not_claimed_again() {
    let url = fresh_pg_db();
    let s = store(&url);
    let a = engine(&s, "engine-a");
    let ids: Vec<i64> = s
        .enqueue_many(vec![new_run(None, b"x"), new_run(None, b"y")])
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    // A column of another type than this build reads (a schema changed under it).
    let mut c = pg_cluster_client(&url);
    c.batch_execute("ALTER TABLE runs ALTER COLUMN deadline_at TYPE text USING deadline_at::text")
        .unwrap();
    let claimed = s.claim(&a, 10, &workflows(), 60_000).unwrap();
    assert!(claimed.is_empty(), "{claimed:?}");
    for id in &ids {
        let r = c
            .query_one("SELECT status, owner, note FROM runs WHERE id = $1", &[id])
            .unwrap();
        let (status, owner, note): (String, Option<String>, Option<String>) =
            (r.get(0), r.get(1), r.get(2));
        assert_eq!(status, "blocked");
        assert_eq!(owner, None);
        let note = note.unwrap_or_default();
        assert!(
            note.contains("runs.deadline_at") && note.contains(&format!("waymark resume {id}")),
            "{note}"
        );
    }
    // Parked once: the next claim finds nothing, and fails nothing.
    assert!(s.claim(&a, 10, &workflows(), 60_000).unwrap().is_empty());
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM runs WHERE status = 'blocked' AND epoch = 1"
        ),
        2
    );
}

/// A claim walks the head of the pending runs in claim order and stops at its limit: with
/// 10,000 runs pending, claiming one touches a handful of pages. Reading and sorting every
/// pending run (what the planner chose on its own, misled by the never-analyzed `queues`
/// table) touches hundreds, and drained a deep queue at a fraction of the commit rate.
#[test]
fn a_claim_reads_the_head_of_a_deep_queue_not_every_pending_run() {
    const PENDING: usize = 10_000;
    let url = fresh_pg_db();
    let s = store(&url);
    let a = engine(&s, "engine-a");
    let runs: Vec<NewRun> = (0..PENDING).map(|_| new_run(None, b"in")).collect();
    s.enqueue_many(runs).unwrap();
    let mut c = pg_cluster_client(&url);
    c.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; ANALYZE runs;
         SELECT pg_stat_statements_reset();",
    )
    .unwrap();
    // More claims than PostgreSQL's five custom plans, so a generic plan is judged too.
    for _ in 0..12 {
        assert_eq!(s.claim(&a, 1, &workflows(), 60_000).unwrap().len(), 1);
    }
    let (calls, blocks) = statement_cost(&mut c, "UPDATE runs SET status = %SKIP LOCKED%");
    assert_eq!(calls, 12, "the claim statement was seen once per claim");
    assert!(
        blocks < 60,
        "one claim touched {blocks} pages with {PENDING} runs pending: it read every pending run"
    );
}

/// Calls of the statements whose text is `LIKE pattern` in this database, and the most
/// pages (shared buffers hit or read) one call touched, from `pg_stat_statements`.
fn statement_cost(c: &mut postgres::Client, pattern: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint,
                    coalesce(max((shared_blks_hit + shared_blks_read) / calls), 0)::bigint
             FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND query LIKE $1",
            &[&pattern],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// The dispatcher's poll ("is there a run this engine can take?") seeks pending runs by
/// workflow and version: with 10,000 pending runs of a version this engine does not run
/// (another build's, queued behind a rolling upgrade) a poll touches no more pages than
/// with 100, never a walk past each of them; one pending run of a version it runs is found.
#[test]
fn the_claimable_poll_does_not_walk_pending_runs_of_other_versions() {
    let pages = |parked: usize| -> i64 {
        let url = fresh_pg_db();
        let s = store(&url);
        let other: Vec<NewRun> = (0..parked)
            .map(|_| NewRun {
                version: 2,
                ..new_run(None, b"in")
            })
            .collect();
        s.enqueue_many(other).unwrap();
        let mut c = pg_cluster_client(&url);
        c.batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; ANALYZE runs;
             SELECT pg_stat_statements_reset();",
        )
        .unwrap();
        let now = i64::MAX / 2;
        for _ in 0..12 {
            assert!(
                !s.claimable(now, &workflows()).unwrap(),
                "no run of {WF}@1 is pending"
            );
        }
        let (calls, pages) = statement_cost(&mut c, "SELECT waymark_pending_known(%");
        assert_eq!(calls, 12, "the poll statement was seen once per poll");
        s.enqueue(new_run(None, b"in")).unwrap();
        assert!(
            s.claimable(now, &workflows()).unwrap(),
            "a run of {WF}@1 is pending"
        );
        pages
    };
    let (few, many) = (pages(100), pages(10_000));
    assert!(
        many <= few + 10,
        "a poll touched {few} pages with 100 runs of another version pending, {many} with 10,000"
    );
}

/// A database of schema version 7 (before `runs_pending_workflow`) is brought to this
/// build's version in place, its runs kept; opening it again changes nothing.
#[test]
fn a_version_7_database_is_migrated_in_place() {
    let url = fresh_pg_db();
    let id = store(&url).enqueue(new_run(None, b"kept")).unwrap().id;
    let mut c = pg_cluster_client(&url);
    c.batch_execute(
        "DROP FUNCTION waymark_pending_known(jsonb); DROP INDEX runs_pending_workflow;
         UPDATE waymark_meta SET value = 7 WHERE key = 'schema_version';",
    )
    .unwrap();
    for _ in 0..2 {
        let s = store(&url);
        assert!(s.claimable(0, &workflows()).unwrap(), "run {id} is pending");
    }
    let version: i64 = c
        .query_one(
            "SELECT value FROM waymark_meta WHERE key = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, waymark::internal::store::schema::SCHEMA_VERSION);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'runs_pending_workflow'"
        ),
        1
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM runs"), 1);
}

/// A column whose type was changed under the schema (an operator's ALTER TABLE) gives the
/// claim a typed error naming what it was doing, never a panic.
#[test]
fn a_column_of_another_type_is_a_typed_error_not_a_panic() {
    let url = fresh_pg_db();
    let s = store(&url);
    let a = engine(&s, "engine-a");
    s.enqueue(NewRun {
        queue: "q".into(),
        ..new_run(None, b"in")
    })
    .unwrap();
    let mut c = pg_cluster_client(&url);
    c.batch_execute(
        "INSERT INTO queues(name, concurrency) VALUES ('q', 1);
         ALTER TABLE queues ALTER COLUMN concurrency TYPE numeric;",
    )
    .unwrap();
    match s.claim(&a, 10, &workflows(), 60_000) {
        Err(StoreError::Postgres {
            context, detail, ..
        }) => {
            assert_eq!(context, "locking a queue");
            assert!(detail.contains("column 0"), "{detail}");
        }
        other => panic!("expected a typed error, got {other:?}"),
    }
}
