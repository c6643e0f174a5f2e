//! Clean shutdown (issue 9, defect 1). Scenario: engine A runs a long step and is asked to
//! stop cleanly (SIGTERM to `waymark serve`, which calls `Engine::shutdown`); engine B on the
//! same file waits to take over.
//! What must survive: no step runs in two places at once. A keeps its leases renewed while
//! its in-flight steps finish (an in-process step is never killed and its run never released
//! while it runs); a child step still running at the end of the shutdown grace is killed with
//! its whole process group and its run released at once. A release by a clean shutdown is not
//! an interruption: rolling restarts never walk a run toward the poison limit.

mod support;
use std::time::Duration;
use support::*;

const TTL: u64 = 1500;

fn interruptions(db: &std::path::Path, run: i64) -> i64 {
    query_i64(
        db,
        &format!("SELECT interruptions FROM runs WHERE id = {run}"),
    )
}

on_both_stores!(shutdown_keeps_an_in_process_step_leased_until_it_returns);
fn shutdown_keeps_an_in_process_step_leased_until_it_returns(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "shutdown.db");
    let run = start(&db, "fixture.slow", r#"{"steps":2,"ms":5000}"#, 1)[0];
    let mut a = serve_with(dir.path(), "a", &db, 1, TTL, &[], &["--in-process"]);
    wait_until("A to start seq 0", Duration::from_secs(30), || {
        effect_count(dir.path(), run, 0, "sleep") == 1
    });
    a.signal(libc::SIGTERM);
    let b = serve_with(dir.path(), "b", &db, 1, TTL, &[], &["--in-process"]);
    wait_until("the run to complete", Duration::from_secs(90), || {
        status(&db, run) == "completed"
    });
    let exit = a.child.wait().unwrap();
    assert!(
        exit.success(),
        "A exits 0 after a clean shutdown: {exit:?}\n{}",
        a.log_text()
    );
    assert_eq!(overlaps(dir.path()), vec![], "no step ran twice at once");
    assert_eq!(
        effect_count(dir.path(), run, 0, "sleep"),
        1,
        "seq 0 ran once: A finished it and recorded it before releasing the run"
    );
    assert_eq!(effect_count(dir.path(), run, 1, "sleep"), 1);
    assert_eq!(
        interruptions(&db, run),
        0,
        "a clean shutdown is no interruption"
    );
    assert!(!b.log_text().contains("reclaimed"), "{}", b.log_text());
}

on_both_stores!(shutdown_grace_kills_child_steps_and_releases_their_runs);
fn shutdown_grace_kills_child_steps_and_releases_their_runs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "grace.db");
    let tag = format!("grace-{}", std::process::id());
    let run = start(&db, "fixture.slow", r#"{"steps":1,"ms":8000}"#, 1)[0];
    let envs = [("WAYMARK_TEST_TAG", tag.clone())];
    let mut a = serve_with(
        dir.path(),
        "a",
        &db,
        1,
        60_000,
        &envs,
        &["--shutdown-grace-ms", "500"],
    );
    wait_until(
        "A's child to start the step",
        Duration::from_secs(30),
        || effect_count(dir.path(), run, 0, "sleep") == 1,
    );
    assert!(!procs_tagged("WAYMARK_TEST_TAG", &tag).is_empty());
    a.signal(libc::SIGTERM);
    let exit = a.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}\n{}", a.log_text());
    assert_eq!(
        procs_tagged("WAYMARK_TEST_TAG", &tag),
        Vec::<u32>::new(),
        "the killed step left no process behind"
    );
    // Released at once (a 60 s lease would otherwise hold it), and not as an interruption.
    assert_eq!(status(&db, run), "pending");
    assert_eq!(interruptions(&db, run), 0);
    let _b = serve_with(dir.path(), "b", &db, 1, 60_000, &[], &[]);
    wait_until("B to complete the run", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    assert_eq!(overlaps(dir.path()), vec![]);
    assert_eq!(interruptions(&db, run), 0);
    let outcomes: Vec<String> = rows(
        &db,
        &format!(
            "SELECT coalesce(outcome, 'open') FROM attempts WHERE run_id = {run} ORDER BY attempt"
        ),
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert_eq!(
        outcomes.first().map(String::as_str),
        Some("shutdown"),
        "{outcomes:?}"
    );
}

on_both_stores!(rolling_restarts_do_not_walk_a_run_toward_the_poison_limit);
fn rolling_restarts_do_not_walk_a_run_toward_the_poison_limit(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "rolling.db");
    // interruptions_max is 5: seven clean restarts mid-step would fail the run if they counted.
    let run = start(&db, "fixture.slow", r#"{"steps":1,"ms":4000}"#, 1)[0];
    for i in 0..7 {
        let mut a = serve_with(
            dir.path(),
            &format!("r{i}"),
            &db,
            1,
            60_000,
            &[],
            &["--shutdown-grace-ms", "100"],
        );
        wait_until("the step to start", Duration::from_secs(30), || {
            effect_count(dir.path(), run, 0, "sleep") == i + 1
        });
        a.signal(libc::SIGTERM);
        let exit = a.wait_exit(Duration::from_secs(30));
        assert!(exit.success(), "{exit:?}\n{}", a.log_text());
        assert_eq!(status(&db, run), "pending");
    }
    let _last = serve_with(dir.path(), "last", &db, 1, 60_000, &[], &[]);
    wait_until("the run to complete", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    assert_eq!(interruptions(&db, run), 0);
    assert_eq!(overlaps(dir.path()), vec![]);
}
