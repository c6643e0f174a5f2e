//! Payloads as JSON through the registry in the admin CLI (issue 13, `waymark::cli`): the
//! `waymark` binary is `waymark::cli` over the built-in workflows, so these drive the same
//! CLI an application embeds. Scenarios, each on a real database (a file, or a PostgreSQL
//! URL as `--db`: every test runs on both stores) with real processes:
//! - `start` of a registered workflow by name with a JSON input (a struct), an engine runs
//!   it, and `show --json` carries the input, the output and the step's output decoded
//!   as JSON, not bincode;
//! - `send` with a payload of the wrong type for the registered event is refused (exit 1,
//!   nothing sent: the run still waits), a right one is delivered, and `show --json` carries
//!   the event payload;
//! - `start` with JSON that does not decode as the workflow's input type is refused.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

fn db_arg(db: &Path) -> &str {
    db.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn start(db: &Path, workflow: &str, json: &str) -> i64 {
    ok(&["start", workflow, "--db", db_arg(db), "--json", json])
        .trim()
        .parse()
        .unwrap()
}

fn serve_until_idle(db: &Path) {
    ok(&["serve", "--db", db_arg(db), "--exit-when-idle"]);
}

fn show_json(db: &Path, id: i64) -> Value {
    serde_json::from_str(&ok(&[
        "show",
        &id.to_string(),
        "--db",
        db_arg(db),
        "--json",
    ]))
    .unwrap()
}

on_both_stores!(show_json_decodes_input_output_and_step_outputs_of_a_workflow_started_by_name);
fn show_json_decodes_input_output_and_step_outputs_of_a_workflow_started_by_name(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "t.db");
    let id = start(&db, "fixture.echo", r#"{"text":"photo-7","ms":0}"#);
    serve_until_idle(&db);
    let v = show_json(&db, id);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(
        v["input"],
        serde_json::json!({"text": "photo-7", "ms": 0}),
        "{v}"
    );
    assert_eq!(v["output"], "photo-7-OUTPUT", "{v}");
    let steps = v["steps"].as_array().unwrap();
    let echo = steps
        .iter()
        .find(|s| s["kind"] == "step" && s["name"] == "fixture.echo")
        .unwrap_or_else(|| panic!("no echo step in {v}"));
    assert_eq!(echo["output"], "photo-7-OUTPUT", "{v}");
}

on_both_stores!(start_refuses_json_that_is_not_the_workflow_input_type);
fn start_refuses_json_that_is_not_the_workflow_input_type(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "t.db");
    // A run on the file first, so the refusal is not about a missing file.
    start(&db, "fixture.echo", r#"{"text":"a","ms":0}"#);
    let out = run(&[
        "start",
        "fixture.echo",
        "--db",
        db_arg(&db),
        "--json",
        r#"{"text":7}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EchoIn"), "{err}");
    assert_eq!(count(&db, "pending"), 1, "nothing started: {err}");
}

on_both_stores!(send_of_a_wrong_type_is_refused_and_show_json_carries_the_event_payload);
fn send_of_a_wrong_type_is_refused_and_show_json_carries_the_event_payload(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "t.db");
    let db_s = db_arg(&db).to_string();
    let id = start(&db, "fixture.approve", "null");
    let log = dir.path().join("serve.log");
    let mut engine = spawn(&["serve", "--db", &db_s], &[], &log);
    wait_until("the run waits for approve", Duration::from_secs(60), || {
        try_status(&db, id).as_deref() == Some("suspended")
    });
    let out = run(&[
        "send",
        &id.to_string(),
        "approve",
        "--db",
        &db_s,
        "--json",
        r#""yes""#,
    ]);
    assert_eq!(out.status.code(), Some(1), "a string for a bool is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bool"), "{err}");
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT count(*) FROM events WHERE run_id = {id}")
        ),
        0,
        "nothing was sent"
    );
    ok(&[
        "send",
        &id.to_string(),
        "approve",
        "--db",
        &db_s,
        "--json",
        "true",
    ]);
    wait_until("the run completes", Duration::from_secs(60), || {
        try_status(&db, id).as_deref() == Some("completed")
    });
    kill9(&mut engine);
    let v = show_json(&db, id);
    assert_eq!(v["input"], Value::Null, "{v}");
    assert_eq!(v["output"], "approved=Some(true)", "{v}");
    let steps = v["steps"].as_array().unwrap();
    let event = steps
        .iter()
        .find(|s| s["kind"] == "event")
        .unwrap_or_else(|| panic!("no event entry in {v}"));
    assert_eq!(event["output"], true, "{v}");
    let marks: Vec<&Value> = steps
        .iter()
        .filter(|s| s["kind"] == "step")
        .map(|s| &s["output"])
        .collect();
    assert_eq!(marks, [&serde_json::json!(1), &serde_json::json!(2)], "{v}");
}
