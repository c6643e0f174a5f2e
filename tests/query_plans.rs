//! The hot write statements use their partial indexes: the claim walks `runs_claim` in
//! order and stops at its limit (no scan of the table, no sort), the wake-up uses
//! `runs_wake`, heartbeats use `runs_owner`. Checked with EXPLAIN QUERY PLAN on a database
//! that holds runs in every relevant state, with the SQLite bundled in this build.

use rusqlite::Connection;
use std::sync::Arc;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::write::{CLAIM_SQL, HEARTBEAT_SQL, WAKE_SQL};
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
}
