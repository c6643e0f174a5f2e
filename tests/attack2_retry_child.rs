//! Adversarial review 2: retry of a run that started a child run. On both stores (SQLite and
//! PostgreSQL).
//!
//! Scenario: `fixture.parent_then_third` starts a child (`fixture.slow`), then runs the step
//! `fixture.third`, which fails for good while a file exists, then joins the child. The
//! parent fails at `third`; a parent's failure does not cancel its child, which runs on.
//! The test process (a `waymark::Client`, no engine) removes the file and retries the
//! parent while the child still runs, and (second test) after the child completed.
//! Must hold: the retry copies the `child` entry (the child is not started twice: one
//! `fixture.slow` run in the file), joins that child and completes with its output: a retry
//! executes from the step that failed, and a copied step's result stands (README: "Retry").
//! It must neither fail its join ("child run N does not exist") nor wait forever for a
//! child whose completion wakes only the old parent.

mod support;
use serde::Serialize;
use std::time::Duration;
use support::*;
use waymark::{Client, RunStatus, StartOptions, Workflow};

const LONG: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct SlowIn {
    steps: u32,
    ms: u64,
}
#[derive(Serialize)]
struct ParentThirdIn {
    child: SlowIn,
    fail_file: String,
}
const PARENT_THIRD: Workflow<ParentThirdIn, u64> = Workflow::new("fixture.parent_then_third");

/// Start the parent with its fail file present and wait until it failed at `third`.
/// Returns `(parent, child)`.
fn failed_parent(served: &Served, client: &Client, child_ms: u64) -> (i64, i64) {
    // Beside the database in the engine's temp dir (a PostgreSQL URL names no directory).
    let fail = served.dir.path().join("retry_child.fail");
    std::fs::write(&fail, b"").unwrap();
    let input = ParentThirdIn {
        child: SlowIn {
            steps: 1,
            ms: child_ms,
        },
        fail_file: fail.to_str().unwrap().to_string(),
    };
    let old = client
        .start_run(PARENT_THIRD, &input, StartOptions::default())
        .unwrap();
    let row = client.wait(old, LONG).unwrap();
    assert_eq!(row.status, RunStatus::Failed, "{row:?}");
    std::fs::remove_file(&fail).unwrap();
    let child = query_i64(
        &served.db,
        &format!("SELECT id FROM runs WHERE parent_id = {old}"),
    );
    (old, child)
}

fn slow_runs(db: &std::path::Path) -> i64 {
    query_i64(
        db,
        "SELECT count(*) FROM runs WHERE workflow = 'fixture.slow'",
    )
}

on_both_stores!(attack2_retry_joins_the_child_it_copied_while_that_child_still_runs);
fn attack2_retry_joins_the_child_it_copied_while_that_child_still_runs(backend: Backend) {
    let (served, client) = serve_with_client_on(backend, "retry_child.db");
    let (old, child) = failed_parent(&served, &client, 3_000);
    assert_eq!(
        status(&served.db, child),
        "running",
        "the child outlives its failed parent (a failure does not cancel children)"
    );
    let retry = client.retry(old).unwrap();
    let row = client.wait(retry, LONG).unwrap();
    assert_eq!(
        row.status,
        RunStatus::Completed,
        "the retry must join the child its copied entry names: {row:?}"
    );
    let child_out: u64 = client
        .wait_output(Workflow::<SlowIn, u64>::new("fixture.slow"), child, LONG)
        .unwrap();
    assert_eq!(
        client.wait_output(PARENT_THIRD, retry, LONG).unwrap(),
        child_out + 3
    );
    assert_eq!(slow_runs(&served.db), 1, "the child was not started twice");
}

on_both_stores!(attack2_retry_joins_the_child_it_copied_after_that_child_completed);
fn attack2_retry_joins_the_child_it_copied_after_that_child_completed(backend: Backend) {
    let (served, client) = serve_with_client_on(backend, "retry_child.db");
    let (old, child) = failed_parent(&served, &client, 10);
    let row = client.wait(child, LONG).unwrap();
    assert_eq!(row.status, RunStatus::Completed, "{row:?}");
    let retry = client.retry(old).unwrap();
    let row = client.wait(retry, LONG).unwrap();
    assert_eq!(
        row.status,
        RunStatus::Completed,
        "the retry must join the child its copied entry names: {row:?}"
    );
    assert_eq!(slow_runs(&served.db), 1, "the child was not started twice");
}
