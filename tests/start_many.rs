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
                String::from_utf8(bytes).unwrap(),
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
