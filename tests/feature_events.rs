//! Events (`ctx.wait_event` / `waymark send`): kept until waited for, delivered into the
//! journal exactly once, waking a suspended run; all across SIGKILL and restart.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

fn output(tmp: &Tmp, run_id: i64) -> String {
    let out = tmp.waymark(&[
        "show",
        &run_id.to_string(),
        "--db",
        tmp.db().to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    // The output column is not in the JSON; decode it from the database (a sealed bincode String).
    let bytes = query_blob(
        &tmp.db(),
        &format!("SELECT output FROM runs WHERE id = {run_id}"),
    );
    waymark::internal::codec::decode::<String>(&bytes, waymark::internal::codec::PAYLOAD_BYTES_MAX)
        .unwrap()
}

/// (id, consumed_seq) of the run's events, in send order.
fn events(tmp: &Tmp, run_id: i64) -> Vec<(i64, Option<i64>)> {
    rows(
        &tmp.db(),
        &format!("SELECT id, consumed_seq FROM events WHERE run_id = {run_id} ORDER BY id"),
    )
    .into_iter()
    .map(|r| (r[0].parse().unwrap(), r[1].parse().ok()))
    .collect()
}

fn send(tmp: &Tmp, run_id: i64, name: &str, json: &str) {
    tmp.waymark(&[
        "send",
        &run_id.to_string(),
        name,
        "--db",
        tmp.db().to_str().unwrap(),
        "--json",
        json,
    ]);
}

fn waiting(tmp: &Tmp, run_id: i64) -> bool {
    query_i64(
        &tmp.db(),
        &format!("SELECT count(*) FROM runs WHERE id = {run_id} AND status = 'suspended' AND note = 'waiting for event ''go'''"),
    ) == 1
}

// Scenario: a run waits (suspended) for event "go"; the engine is SIGKILLed; two "go" events
// are sent while no engine runs (between send_event and delivery); the engine restarts.
// Must survive: the events (kept in the database), the run wakes and gets exactly the first
// one, journaled once; the second stays unconsumed.
on_both_stores!(event_sent_while_engine_dead_is_delivered_once_after_restart);
fn event_sent_while_engine_dead_is_delivered_once_after_restart(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let id = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":600000}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("run waits for the event", Duration::from_secs(30), || {
        waiting(&tmp, id)
    });
    kill9(&mut engine);
    send(&tmp, id, "go", r#"{"n":1}"#);
    send(&tmp, id, "go", r#"{"n":2}"#);
    let mut engine = tmp.serve(2, &[]);
    wait_until("run completed", Duration::from_secs(30), || {
        status(&db, id) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(output(&tmp, id), r#"{"n":1}"#);
    let ev = events(&tmp, id);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].1, Some(2), "first event consumed into seq 2");
    assert_eq!(ev[1].1, None, "second event kept, not consumed");
    let kinds: Vec<_> = journal(&db, id).into_iter().map(|e| (e.1, e.2)).collect();
    assert_eq!(
        kinds,
        vec![
            ("fixture.mark".to_string(), "step".to_string()),
            ("wait:go".into(), "sleep".into()),
            ("go".into(), "event".into()),
            ("fixture.mark".into(), "step".into()),
        ]
    );
}

// Scenario: the engine is killed right after the delivery transaction committed (fault point
// after_checkpoint, 3rd pass: mark, timer, delivery), before the workflow used the payload.
// Must survive: the delivered payload (replayed from the journal after restart, not
// re-consumed); the event is consumed exactly once.
on_both_stores!(kill_right_after_delivery_replays_the_journaled_event);
fn kill_right_after_delivery_replays_the_journaled_event(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let id = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":600000}"#, 1)[0];
    let mut engine = tmp.serve(2, &[("WAYMARK_FAULT", "after_checkpoint=3")]);
    wait_until("run waits for the event", Duration::from_secs(30), || {
        waiting(&tmp, id)
    });
    send(&tmp, id, "go", r#""hello""#);
    let code = engine.wait().unwrap();
    assert!(
        !code.success(),
        "the engine killed itself at the fault point"
    );
    assert_eq!(events(&tmp, id), vec![(events(&tmp, id)[0].0, Some(2))]);
    assert_eq!(status(&db, id), "running", "killed mid-run");
    let mut engine = tmp.serve(2, &[]);
    wait_until("run completed", Duration::from_secs(30), || {
        status(&db, id) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(output(&tmp, id), r#""hello""#);
    assert_eq!(events(&tmp, id).len(), 1);
}

// Scenario: an event sent before the run ever waits (the run is still pending, no engine).
// Must hold: it is kept and delivered when the run reaches the wait. A second scenario
// in the same test: a wait that times out while the engine is dead ends with "timeout".
// Sending to a finished run is refused with a one-line error.
on_both_stores!(early_events_are_kept_and_timeouts_survive_restart);
fn early_events_are_kept_and_timeouts_survive_restart(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let early = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":600000}"#, 1)[0];
    send(&tmp, early, "go", "[1,2,3]");
    let late = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":1500}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("early run completed", Duration::from_secs(30), || {
        status(&db, early) == "completed"
    });
    wait_until("late run waits", Duration::from_secs(30), || {
        waiting(&tmp, late)
    });
    kill9(&mut engine);
    std::thread::sleep(Duration::from_millis(1600));
    let mut engine = tmp.serve(2, &[]);
    wait_until("late run completed", Duration::from_secs(30), || {
        status(&db, late) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(output(&tmp, early), "[1,2,3]");
    assert_eq!(output(&tmp, late), "timeout");
    let j = journal(&db, late);
    assert_eq!((j[2].2.as_str(), j[2].3.as_str()), ("event", "failed"));

    let out = Command::new(bin())
        .args([
            "send",
            &early.to_string(),
            "go",
            "--db",
            db.to_str().unwrap(),
            "--json",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already ended (completed)"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
}
