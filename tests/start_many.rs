//! A batch of starts (`Client::start_many`, `Engine::start_many`, the store's `start_runs`)
//! answers each input with its own run, in input order, whatever mix of keyed and keyless
//! runs it holds; and it is all or none. SQLite inserts keyless runs 32 at a time in one
//! multi-row INSERT, so batches here cross those chunks, and keyed runs sit between them.

mod support;

use std::collections::HashMap;
use support::db::{rows, storage};
use support::{now_ms, Backend};
use waymark::internal::store::{NewRun, OnKeyConflict, StoreError};

/// Input `i` of the batch, as stored.
fn input(i: usize) -> Vec<u8> {
    format!("in-{i}").into_bytes()
}

/// Every stored run: id -> (input as text, status, queue, priority, ready_at or NULL).
fn stored(db: &std::path::Path) -> HashMap<i64, (String, String, String, String, i64)> {
    rows(
        db,
        "SELECT id, input, status, queue, priority, ready_at, created_at FROM runs",
    )
    .into_iter()
    .map(|r| {
        let bytes: Vec<u8> = (0..r[1].len() / 2)
            .map(|k| u8::from_str_radix(&r[1][2 * k..2 * k + 2], 16).unwrap())
            .collect();
        let ready_at: i64 = r[5].parse().unwrap();
        let created_at: i64 = r[6].parse().unwrap();
        (
            r[0].parse().unwrap(),
            (
                String::from_utf8_lossy(&bytes).into_owned(),
                r[2].clone(),
                r[3].clone(),
                r[4].clone(),
                ready_at - created_at,
            ),
        )
    })
    .collect()
}

// Scenario: one batch of 150 starts mixing keyless runs (in stretches longer and shorter than
// 32), keyed runs whose key repeats within the batch (same key, first run answers), delayed
// runs (suspended until their time), two queues and priorities. Must hold: 150 answers in
// input order; each created run holds exactly its input, status, queue and priority; a
// repeated key answers the first run with that key, `created = false`; keyless runs' ids
// grow with their position.
on_both_stores!(a_mixed_batch_answers_each_input_with_its_own_run_in_order);
fn a_mixed_batch_answers_each_input_with_its_own_run_in_order(backend: Backend) {
    let dir = support::tempdir();
    let db = backend.fresh_db(dir.path(), "batch.db");
    let store = storage(&db);
    let keyed = |i: usize| (i % 37 == 5 || i % 37 == 6).then(|| format!("k{}", i % 3));
    let batch: Vec<(NewRun, OnKeyConflict)> = (0..150)
        .map(|i| {
            let mut run = NewRun::new("w", 1, input(i));
            run.idempotency_key = keyed(i);
            run.queue = format!("q{}", i % 2);
            run.priority = (i % 5) as i64;
            if i % 4 == 0 {
                run.ready_at = Some(now_ms() + 3_600_000);
            }
            (run, OnKeyConflict::ReturnExisting)
        })
        .collect();
    let answers = store.start_runs(batch).unwrap();
    assert_eq!(answers.len(), 150);
    let runs = stored(&db);
    let mut first_of_key: HashMap<String, (usize, i64)> = HashMap::new();
    let mut last_keyless = 0;
    for (i, a) in answers.iter().enumerate() {
        if let Some(key) = keyed(i) {
            if let Some((first, id)) = first_of_key.get(&key) {
                assert_eq!(
                    (a.id, a.created),
                    (*id, false),
                    "input {i} repeats the key of input {first}"
                );
                continue;
            }
            first_of_key.insert(key, (i, a.id));
        } else {
            assert!(
                a.id > last_keyless,
                "keyless input {i} got id {} after {last_keyless}",
                a.id
            );
            last_keyless = a.id;
        }
        assert!(a.created, "input {i}");
        let (text, status, queue, priority, delay) = &runs[&a.id];
        assert_eq!(text, &format!("in-{i}"), "run {} answers input {i}", a.id);
        let want = if i % 4 == 0 { "suspended" } else { "pending" };
        assert_eq!(status, want, "input {i}");
        assert_eq!(queue, &format!("q{}", i % 2), "input {i}");
        assert_eq!(priority, &((i % 5).to_string()), "input {i}");
        assert_eq!(
            *delay > 0,
            i % 4 == 0,
            "input {i}: ready_at - created_at = {delay}"
        );
    }
    let created = answers.iter().filter(|a| a.created).count();
    assert_eq!(
        runs.len(),
        created,
        "every created run and nothing else is stored"
    );
}

// Scenario: a batch of 100 starts whose 70th repeats the key of an earlier run with another
// input (the default policy: a key conflict is an error). Must hold: the call fails with
// the key conflict and none of the 100 runs exists (the runs before it, inserted in
// chunks, are undone with it); a second batch afterwards starts normally.
on_both_stores!(a_batch_with_a_key_conflict_starts_nothing);
fn a_batch_with_a_key_conflict_starts_nothing(backend: Backend) {
    let dir = support::tempdir();
    let db = backend.fresh_db(dir.path(), "conflict.db");
    let store = storage(&db);
    let mut first = NewRun::new("w", 1, input(1000));
    first.idempotency_key = Some("taken".into());
    let before = store
        .start_runs(vec![(first, OnKeyConflict::Error)])
        .unwrap();
    let batch: Vec<(NewRun, OnKeyConflict)> = (0..100)
        .map(|i| {
            let mut run = NewRun::new("w", 1, input(i));
            if i == 70 {
                run.idempotency_key = Some("taken".into());
            }
            (run, OnKeyConflict::Error)
        })
        .collect();
    match store.start_runs(batch) {
        Err(StoreError::KeyConflict { key, existing_run }) => {
            assert_eq!((key.as_str(), existing_run), ("taken", before[0].id));
        }
        other => panic!("expected a key conflict, got {other:?}"),
    }
    assert_eq!(stored(&db).len(), 1, "a failed batch left runs behind");
    let again: Vec<(NewRun, OnKeyConflict)> = (0..40)
        .map(|i| (NewRun::new("w", 1, input(i)), OnKeyConflict::Error))
        .collect();
    let answers = store.start_runs(again).unwrap();
    let runs = stored(&db);
    assert_eq!(runs.len(), 41);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(runs[&a.id].0, format!("in-{i}"));
    }
}

// Scenario: three `waymark start --count 100` processes (each its own input) and three
// threads of this process (5 batches of 70 distinct inputs each, through one store, so
// its writer groups their commands into shared transactions) start into one database at
// once. Must hold: every caller's answers name runs holding that caller's input (a
// thread's answer i holds its input i); no id is answered twice; the database holds
// exactly the answered runs. Mutation: `insert_rows` reversing the sorted ids fails it on
// SQLite (a thread's answer names another input of its batch).
on_both_stores!(batches_from_several_processes_at_once_keep_each_input_with_its_run);
fn batches_from_several_processes_at_once_keep_each_input_with_its_run(backend: Backend) {
    use std::process::Stdio;
    let dir = support::tempdir();
    let db = backend.fresh_db(dir.path(), "many.db");
    let store = storage(&db);
    let db_arg = db.to_str().unwrap().to_string();
    let procs: Vec<_> = (0..3)
        .map(|p| {
            // ms 65 + p: the encoded input's last bytes read as 'A', 'B', 'C'.
            let json = format!(r#"{{"steps":1,"ms":{}}}"#, 65 + p);
            support::cmd(&[
                "start",
                "fixture.slow",
                "--db",
                &db_arg,
                "--json",
                &json,
                "--count",
                "100",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn waymark start")
        })
        .collect();
    let mine: Vec<(usize, i64)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || {
                    let mut got = Vec::new();
                    for b in 0..5 {
                        let ks: Vec<usize> = (0..70).map(|i| t * 1000 + b * 100 + i).collect();
                        let batch = ks
                            .iter()
                            .map(|&k| (NewRun::new("w", 1, input(k)), OnKeyConflict::Error))
                            .collect();
                        let answers = store.start_runs(batch).unwrap();
                        assert_eq!(answers.len(), 70);
                        got.extend(ks.into_iter().zip(answers.into_iter().map(|a| a.id)));
                    }
                    got
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let outs: Vec<_> = procs
        .into_iter()
        .map(|c| c.wait_with_output().expect("waymark start"))
        .collect();
    let runs = stored(&db);
    let mut answered = std::collections::HashSet::new();
    for (k, id) in &mine {
        assert!(answered.insert(*id), "id {id} answered twice");
        assert_eq!(runs[id].0, format!("in-{k}"), "run {id} answers input {k}");
    }
    let mut texts = std::collections::HashSet::new();
    for (p, out) in outs.iter().enumerate() {
        assert!(
            out.status.success(),
            "start {p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 100, "start {p}");
        let first = runs[&ids[0]].0.clone();
        assert!(
            texts.insert(first.clone()),
            "start {p}'s input is another's"
        );
        for id in ids {
            assert!(answered.insert(id), "id {id} answered twice");
            assert_eq!(runs[&id].0, first, "run {id} of start {p}");
        }
    }
    assert_eq!(
        runs.len(),
        answered.len(),
        "the database holds exactly the answered runs"
    );
    assert_eq!(runs.len(), 3 * 100 + 3 * 5 * 70);
}

// Scenario: `waymark start --count 100` SIGKILLed by WAYMARK_FAULT at its N-th pass of
// `before_commit` / `after_commit`, for N = 1, 2, ... until it exits by itself. Must hold:
// after each kill the database holds either none or all of the 100 runs (never part of the
// batch); before_commit kills leave none; at least one after_commit kill leaves all 100
// (the batch's own commit). Mutation: the writer's `before_commit` point moved after its
// COMMIT (src/store/writer.rs) fails it on SQLite (a before_commit kill left all 100).
on_both_stores!(a_batch_killed_around_its_commit_is_all_or_none);
fn a_batch_killed_around_its_commit_is_all_or_none(backend: Backend) {
    use std::os::unix::process::ExitStatusExt;
    let dir = support::tempdir();
    let db = backend.fresh_db(dir.path(), "kill.db");
    drop(storage(&db));
    let db_arg = db.to_str().unwrap().to_string();
    for point in ["before_commit", "after_commit"] {
        let mut kills = 0;
        let mut whole_after_kill = false;
        for n in 1..=20 {
            let before = stored(&db).len();
            let out = support::cmd(&[
                "start",
                "fixture.slow",
                "--db",
                &db_arg,
                "--json",
                r#"{"steps":1,"ms":5}"#,
                "--count",
                "100",
            ])
            .env("WAYMARK_FAULT", format!("{point}={n}"))
            .output()
            .expect("spawn waymark start");
            let added = stored(&db).len() - before;
            if out.status.signal() == Some(9) {
                kills += 1;
                assert!(
                    added == 0 || added == 100,
                    "{point}={n}: a killed batch left {added} of 100 runs"
                );
                if point == "before_commit" {
                    assert_eq!(added, 0, "{point}={n}: killed before its commit");
                }
                whole_after_kill |= added == 100;
            } else {
                assert!(
                    out.status.success(),
                    "{point}={n}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(added, 100, "{point}={n}");
                break;
            }
        }
        assert!(kills > 0, "{point}: the fault never killed the start");
        if point == "after_commit" {
            assert!(whole_after_kill, "no kill after the batch's own commit");
        }
    }
}

// Scenario: the run ids are nearly used up (the id sequence set 40 below i64::MAX). A batch
// of 100 keyless starts (more than are left; on SQLite its first chunk of 32 fits) fails
// and starts nothing; a batch of 40 then takes exactly the last 40 ids, in input order; one
// more start fails; the store keeps working for reads. Mutation: `insert_rows` reversing
// the sorted ids fails it on SQLite.
on_both_stores!(a_batch_that_runs_out_of_ids_starts_nothing);
fn a_batch_that_runs_out_of_ids_starts_nothing(backend: Backend) {
    let dir = support::tempdir();
    let db = backend.fresh_db(dir.path(), "ids.db");
    let store = storage(&db);
    store
        .start_runs(vec![(
            NewRun::new("w", 1, input(9999)),
            OnKeyConflict::Error,
        )])
        .unwrap();
    const MAX: i64 = i64::MAX;
    let leave_40 = || {
        if support::db::pg_url(&db).is_some() {
            support::db::exec(
                &db,
                &format!(
                    "SELECT setval(pg_get_serial_sequence('runs', 'id'), {})",
                    MAX - 40
                ),
            );
        } else {
            support::db::exec(
                &db,
                &format!(
                    "UPDATE sqlite_sequence SET seq = {} WHERE name = 'runs'",
                    MAX - 40
                ),
            );
        }
    };
    leave_40();
    let batch = |n: usize| -> Vec<(NewRun, OnKeyConflict)> {
        (0..n)
            .map(|i| (NewRun::new("w", 1, input(i)), OnKeyConflict::Error))
            .collect()
    };
    let too_many = store.start_runs(batch(100));
    assert!(
        too_many.is_err(),
        "100 starts with 40 ids left: {too_many:?}"
    );
    assert_eq!(stored(&db).len(), 1, "a failed batch left runs behind");
    // A PostgreSQL sequence is not transactional: the failed batch used up its ids there
    // (SQLite's sqlite_sequence rolled back with it). Leave 40 again on both.
    leave_40();
    let answers = store.start_runs(batch(40)).unwrap();
    let ids: Vec<i64> = answers.iter().map(|a| a.id).collect();
    let want: Vec<i64> = (MAX - 39..=MAX).collect();
    assert_eq!(ids, want);
    let runs = stored(&db);
    assert_eq!(runs.len(), 41);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(runs[&a.id].0, format!("in-{i}"), "run {}", a.id);
    }
    assert!(store.start_runs(batch(1)).is_err(), "no id is left");
    assert_eq!(stored(&db).len(), 41);
}
