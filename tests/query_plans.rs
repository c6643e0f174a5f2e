//! The hot write statements use their partial indexes: the claim walks `runs_claim` in
//! order and stops at its limit (no scan of the table, no sort), the wake-up uses
//! `runs_wake`, heartbeats use `runs_owner`. Checked with EXPLAIN QUERY PLAN on a database
//! that holds runs in every relevant state, with the SQLite bundled in this build.

use rusqlite::Connection;
use std::sync::Arc;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::queries::{ATTEMPTS_SQL, CLAIMABLE_SQL, JOURNAL_SQL};
use waymark::internal::store::write::{CLAIM_ONE_SQL, CLAIM_SQL, HEARTBEAT_SQL, WAKE_SQL};
use waymark::internal::store::{NewRun, Op, Store, StoreOptions};

fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("statement prepares");
    // Bind NULL to every parameter: the plan does not depend on the values.
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .expect("plan query")
        .collect::<Result<Vec<_>, _>>()
        .expect("plan rows")
}

fn assert_no_scan_or_sort(lines: &[String], what: &str) {
    for l in lines {
        assert!(
            !l.starts_with("SCAN runs") || l.contains("USING INDEX"),
            "{what} scans the runs table: {lines:?}"
        );
        assert!(!l.contains("TEMP B-TREE"), "{what} sorts: {lines:?}");
    }
}

#[test]
fn hot_statements_use_their_partial_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("plans.db");
    let store = Store::open(
        &db,
        &StoreOptions::default(),
        Arc::new(SystemClock::from_env()),
    )
    .expect("open");
    let now = 1_700_000_000_000i64;
    let runs: Vec<NewRun> = (0..3000)
        .map(|i| NewRun {
            workflow: if i % 2 == 0 { "a" } else { "b" }.into(),
            version: 1,
            input: vec![1, 2, 3],
            idempotency_key: Some(format!("k{i}")),
            queue: "default".into(),
            priority: i % 3,
            // A third of them in the future: enqueued as suspended.
            ready_at: (i % 3 == 0).then_some(now * 2),
            parent_id: None,
            deadline_at: None,
        })
        .collect();
    store.call(Op::EnqueueMany(runs)).expect("enqueue");
    drop(store);
    let conn = Connection::open(&db).expect("raw connection");
    conn.execute_batch("ANALYZE").expect("analyze");

    let claim = plan(&conn, CLAIM_SQL);
    assert!(
        claim.iter().any(|l| l.contains("INDEX runs_claim")),
        "claim does not use runs_claim: {claim:?}"
    );
    assert_no_scan_or_sort(&claim, "claim");

    let one = plan(&conn, CLAIM_ONE_SQL);
    assert!(
        one.iter()
            .any(|l| l.contains("SEARCH runs USING INTEGER PRIMARY KEY")),
        "claim by id is not a rowid lookup: {one:?}"
    );
    assert_no_scan_or_sort(&one, "claim by id");

    let wake = plan(&conn, WAKE_SQL);
    assert!(
        wake.iter().any(|l| l.contains("INDEX runs_wake")),
        "wake-up does not use runs_wake: {wake:?}"
    );
    assert_no_scan_or_sort(&wake, "wake-up");

    let beat = plan(&conn, HEARTBEAT_SQL);
    assert!(
        beat.iter().any(|l| l.contains("INDEX runs_owner")),
        "heartbeat does not use runs_owner: {beat:?}"
    );
    assert_no_scan_or_sort(&beat, "heartbeat");

    // The dispatcher's poll seeks pending runs by workflow and version: walking
    // `runs_claim` past every pending run of a version this engine does not run made each
    // poll O(queue depth) (W1a: 100,000 parked starts, each waking the dispatcher).
    let poll = plan(&conn, CLAIMABLE_SQL);
    assert!(
        poll.iter().any(|l| l.starts_with("SEARCH runs")
            && l.contains("INDEX runs_pending_workflow (workflow=? AND version=?)")),
        "the claimable poll does not seek runs_pending_workflow: {poll:?}"
    );
    assert_no_scan_or_sort(&poll, "the claimable poll");
}

/// Hot statements are prepared once and then reused from the statement cache: the bundled
/// SQLite prepares a statement again at every execution when its plan depends on a bound
/// value (found by profiling `bench --only W2`: the claim and the journal and attempts reads
/// were prepared again once per run, parsing and planning each time).
#[test]
fn hot_statements_are_not_prepared_again_at_each_execution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("reprepare.db");
    let store = Store::open(
        &db,
        &StoreOptions::default(),
        Arc::new(SystemClock::from_env()),
    )
    .expect("open");
    drop(store);
    let conn = Connection::open(&db).expect("raw connection");
    let now = 1_700_000_000_000i64;
    let wf = r#"["a@1","b@1"]"#;
    let cases: Vec<(&str, &str, Vec<rusqlite::types::Value>)> = vec![
        ("journal", JOURNAL_SQL, vec![1i64.into()]),
        ("attempts", ATTEMPTS_SQL, vec![1i64.into()]),
        (
            "claim",
            CLAIM_SQL,
            vec![
                "owner".to_string().into(),
                (now + 1000).into(),
                now.into(),
                wf.to_string().into(),
                4i64.into(),
            ],
        ),
        (
            "claim by id",
            CLAIM_ONE_SQL,
            vec![
                "owner".to_string().into(),
                (now + 1000).into(),
                now.into(),
                wf.to_string().into(),
                1i64.into(),
            ],
        ),
        ("wake", WAKE_SQL, vec![now.into()]),
        (
            "heartbeat",
            HEARTBEAT_SQL,
            vec!["owner".to_string().into(), now.into()],
        ),
    ];
    for (what, sql, params) in cases {
        for round in 0..4 {
            let mut stmt = conn.prepare_cached(sql).expect("prepare");
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params.iter()))
                .expect("execute");
            while rows.next().expect("step").is_some() {}
            drop(rows);
            let again = stmt.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(
                again, 0,
                "{what}: prepared again {again} times by round {round}: {sql}"
            );
        }
    }
}

/// The dispatcher's poll ("is there a run this engine can take?") costs the same however
/// many pending runs of versions this engine does not run are queued: counted in SQLite VM
/// steps, 10,000 such runs cost no more than 100.
#[test]
fn the_claimable_poll_does_not_grow_with_runs_of_other_versions() {
    let steps = |parked: i64| -> i32 {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("poll.db");
        let store = Store::open(
            &db,
            &StoreOptions::default(),
            Arc::new(SystemClock::from_env()),
        )
        .expect("open");
        let runs: Vec<NewRun> = (0..parked).map(|_| NewRun::new("a", 2, vec![1])).collect();
        store.call(Op::EnqueueMany(runs)).expect("enqueue");
        drop(store);
        let conn = Connection::open(&db).expect("raw connection");
        let mut stmt = conn.prepare(CLAIMABLE_SQL).expect("prepare");
        let found: bool = stmt
            .query_row(rusqlite::params![0i64, r#"["a@1","b@1"]"#], |r| r.get(0))
            .expect("poll");
        assert!(!found, "no run of a@1 or b@1 is pending");
        stmt.get_status(rusqlite::StatementStatus::VmStep)
    };
    let (few, many) = (steps(100), steps(10_000));
    assert!(
        many <= few * 2,
        "the poll took {few} VM steps with 100 runs of another version pending, {many} with 10,000"
    );
}
