//! Scenario (issue 13): a process that holds only a `waymark::Client` (this test process)
//! operates runs executed by a `waymark serve` engine in another process: it starts runs and
//! receives their completion events, retries and restarts a failed run, and repairs a run
//! parked by a bad event; an engine or client with a registry refuses unknown workflows and
//! an idempotency key reused with another input.
//! Must hold: a retry or restart is a new run linked to the old one, whose copied steps do
//! not run again (side effects counted in a file); the old run is unchanged; a wrong event
//! parks the run `blocked` and never fails it.

mod support;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use support::*;
use waymark::{
    Client, ClientConfig, Engine, Error, Event, OnKeyConflict, Registry, RunFilter, RunStatus,
    StartOptions, Step, StoreError, Workflow,
};

const LONG: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct SlowIn {
    steps: u32,
    ms: u64,
}
#[derive(Serialize)]
struct ThreeIn {
    fail_file: String,
}
const SLOW: Workflow<SlowIn, u64> = Workflow::new("fixture.slow");
const THREE: Workflow<ThreeIn, u64> = Workflow::new("fixture.three");
const APPROVE_WF: Workflow<(), String> = Workflow::new("fixture.approve");
const APPROVE: Event<bool> = Event::new("approve");

/// Side effects of run `run`: `(seq, step)` in the order they happened.
fn effects_of(path: &Path, run: i64) -> Vec<(i64, String)> {
    effects(path)
        .into_iter()
        .filter(|(r, ..)| *r == run)
        .map(|(_, seq, step, _)| (seq, step))
        .collect()
}

on_both_stores!(client_process_starts_runs_and_receives_completion_events);
fn client_process_starts_runs_and_receives_completion_events(backend: Backend) {
    let (served, client) = serve_with_client_on(backend, "operate.db");
    let sub = client.subscribe().unwrap();
    let ids: Vec<i64> = (0..3)
        .map(|_| {
            client
                .start_run(SLOW, &SlowIn { steps: 2, ms: 10 }, StartOptions::default())
                .unwrap()
        })
        .collect();
    let any = client.wait_any(&ids, LONG).unwrap();
    assert!(ids.contains(&any.id));
    let rows = client.wait_all(&ids, LONG).unwrap();
    assert!(
        rows.iter().all(|r| r.status == RunStatus::Completed),
        "{rows:?}"
    );
    // Every run's completion arrives through the subscription (as a progress bar sees it).
    let mut completed = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + LONG;
    while completed.len() < ids.len() && std::time::Instant::now() < deadline {
        if let Some(ev) = sub.recv_timeout(Duration::from_secs(1)) {
            if ev.status == RunStatus::Completed {
                completed.insert(ev.run_id);
            }
        }
    }
    assert_eq!(completed, ids.iter().copied().collect());
    // Reads: listing with a filter, stats, and NotFound alike for run and journal.
    let listed = client
        .list(
            &RunFilter::new()
                .status(RunStatus::Completed)
                .workflow("fixture.slow"),
        )
        .unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    let page = client
        .list(&RunFilter::new().after(ids[0]).limit(1))
        .unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[1]]);
    assert_eq!(client.stats().unwrap()[&RunStatus::Completed], 3);
    assert!(matches!(
        client.run(999),
        Err(Error::Store(StoreError::NotFound { run_id: 999 }))
    ));
    assert!(matches!(
        client.journal(999),
        Err(Error::Store(StoreError::NotFound { run_id: 999 }))
    ));
    assert_eq!(client.journal(ids[0]).unwrap().len(), 2);
    drop(served);
}

on_both_stores!(retry_copies_successful_steps_and_restart_reruns_from_a_step);
fn retry_copies_successful_steps_and_restart_reruns_from_a_step(backend: Backend) {
    let (served, client) = serve_with_client_on(backend, "operate.db");
    let fail = served.dir.path().join("operate.fail");
    std::fs::write(&fail, b"").unwrap();
    let input = ThreeIn {
        fail_file: fail.to_str().unwrap().to_string(),
    };
    let old = client
        .start_run(THREE, &input, StartOptions::default())
        .unwrap();
    let row = client.wait(old, LONG).unwrap();
    assert_eq!(row.status, RunStatus::Failed, "{row:?}");
    let old_journal = client.journal(old).unwrap();
    assert_eq!(old_journal.len(), 3);
    assert_eq!(
        effects_of(&served.effects, old),
        vec![(0, "mark".into()), (1, "mark".into()), (2, "third".into())]
    );
    std::fs::remove_file(&fail).unwrap();

    // retry through the CLI: a new run, executing from the step that failed.
    let out = run(&[
        "retry",
        &old.to_string(),
        "--db",
        served.db.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let retry: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_ne!(retry, old);
    assert_eq!(client.wait_output(THREE, retry, LONG).unwrap(), 6);
    assert_eq!(
        effects_of(&served.effects, retry),
        vec![(2, "third".into())],
        "steps 1-2 (seq 0-1) were copied, not run again"
    );
    let journal = client.journal(retry).unwrap();
    assert_eq!(journal.len(), 3);
    assert_eq!(journal[0].copied_from, Some(old));
    assert_eq!(journal[1].copied_from, Some(old));
    assert_eq!(journal[2].copied_from, None);
    assert_eq!(client.run(retry).unwrap().retry_of, Some(old));
    let old_row = client.run(old).unwrap();
    assert_eq!(
        old_row.status,
        RunStatus::Failed,
        "a finished run stays finished"
    );
    assert_eq!(old_row.retried_as, Some(retry));
    let again = client.journal(old).unwrap();
    assert_eq!(
        again
            .iter()
            .map(|s| (s.seq, s.status.clone(), s.recorded_at))
            .collect::<Vec<_>>(),
        old_journal
            .iter()
            .map(|s| (s.seq, s.status.clone(), s.recorded_at))
            .collect::<Vec<_>>(),
        "the old journal is unchanged"
    );

    // restart from the 2nd step (seq 1): steps 2 and 3 run again, step 1 is copied.
    let restart = client.restart(old, 1).unwrap();
    assert_eq!(client.wait_output(THREE, restart, LONG).unwrap(), 6);
    assert_eq!(
        effects_of(&served.effects, restart),
        vec![(1, "mark".into()), (2, "third".into())]
    );
    assert_eq!(client.run(old).unwrap().retried_as, Some(restart));
    assert_eq!(client.run(restart).unwrap().retry_of, Some(old));
    drop(served);
}

on_both_stores!(a_bad_event_parks_the_run_and_a_correct_send_resumes_it);
fn a_bad_event_parks_the_run_and_a_correct_send_resumes_it(backend: Backend) {
    let (served, client) = serve_with_client_on(backend, "operate.db");
    let db = served.db.to_str().unwrap().to_string();
    let out = run(&["start", "fixture.approve", "--db", &db, "--json", "null"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    wait_for("the run to wait for 'approve'", LONG, || {
        let r = client.run(id).unwrap();
        (r.status == RunStatus::Suspended
            && r.note.as_deref() == Some("waiting for event 'approve'"))
        .then_some(())
    });
    // Only finished runs can be retried.
    assert!(matches!(
        client.retry(id),
        Err(Error::Store(StoreError::RunNotFinished { .. }))
    ));
    // The CLI refuses a send without a payload, and (its registry knows `approve: bool`)
    // a payload of the wrong type; nothing is sent.
    let out = run(&["send", &id.to_string(), "approve", "--db", &db]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json"));
    let out = run(&[
        "send",
        &id.to_string(),
        "approve",
        "--db",
        &db,
        "--json",
        "\"yes\"",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not decode as bool"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        try_query_i64(&served.db, "SELECT count(*) FROM events"),
        Some(0)
    );

    // A client without a registry cannot check: the wrong payload reaches the run, which
    // parks `blocked` with the reason instead of failing.
    client.send_event_json(id, "approve", "\"yes\"").unwrap();
    let row = client.wait(id, LONG).unwrap();
    assert_eq!(row.status, RunStatus::Blocked, "{row:?}");
    let note = row.note.unwrap_or_default();
    assert!(
        note.contains("event 'approve' payload \"yes\" does not decode as bool"),
        "{note}"
    );
    client.send_event(id, APPROVE, &true).unwrap();
    client.resume(id).unwrap();
    assert_eq!(
        client.wait_output(APPROVE_WF, id, LONG).unwrap(),
        "approved=Some(true)"
    );
    assert_eq!(
        try_query_i64(
            &served.db,
            "SELECT count(*) FROM events WHERE consumed_seq = 0"
        ),
        Some(1),
        "the bad event is set aside, never delivered"
    );
    drop(served);
}

const ADD: Step<u64, u64> = Step::new("add1");
const WF: Workflow<u64, u64> = Workflow::new("operate.add");
const OTHER: Workflow<u64, u64> = Workflow::new("operate.elsewhere");

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.step(ADD, |_, x| Ok(x + 1));
    reg.workflow(WF, |ctx, x| ctx.step(ADD, &x));
    reg
}

on_both_stores!(unknown_workflows_and_conflicting_keys_are_refused);
fn unknown_workflows_and_conflicting_keys_are_refused(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "refuse.db");
    let engine = Engine::start(registry(), in_process_config(&db)).unwrap();
    match engine.start_run(OTHER, &1, StartOptions::default()) {
        Err(Error::UnknownWorkflow { name, version }) => {
            assert_eq!((name.as_str(), version), ("operate.elsewhere", 1))
        }
        other => panic!("expected UnknownWorkflow, got {other:?}"),
    }
    let meant = engine
        .start_run(OTHER, &1, StartOptions::default().for_other_build())
        .unwrap();
    assert_eq!(engine.run(meant).unwrap().status, RunStatus::Pending);

    let a = engine.start_run(WF, &1, StartOptions::key("k")).unwrap();
    assert_eq!(engine.start_run(WF, &1, StartOptions::key("k")).unwrap(), a);
    match engine.start_run(WF, &2, StartOptions::key("k")) {
        Err(Error::KeyConflict { key, existing_run }) => {
            assert_eq!((key.as_str(), existing_run), ("k", a))
        }
        other => panic!("expected KeyConflict, got {other:?}"),
    }
    let kept = engine
        .start_run(
            WF,
            &2,
            StartOptions::key("k").on_key_conflict(OnKeyConflict::ReturnExisting),
        )
        .unwrap();
    assert_eq!(kept, a);
    assert_eq!(engine.wait_output(WF, a, LONG).unwrap(), 2);

    // A client with the registry checks the same; without one it cannot.
    let client = Client::open_with(ClientConfig::new(&db).registry(registry())).unwrap();
    assert!(matches!(
        client.start_run(OTHER, &1, StartOptions::default()),
        Err(Error::UnknownWorkflow { .. })
    ));
    assert!(matches!(
        client.start_run(WF, &3, StartOptions::key("k")),
        Err(Error::KeyConflict { existing_run, .. }) if existing_run == a
    ));
    let bare = Client::open(&db).unwrap();
    assert!(bare.start_run(OTHER, &2, StartOptions::default()).is_ok());
    engine.shutdown().unwrap();
}
