//! Step logs (issue 13): what a child step writes to stdout and stderr, and its `log`
//! records, are captured per attempt (bounded head + tail), stored with the attempt, shown
//! by `waymark show` (text and JSON), and re-emitted through the host's `log` with the run
//! id, step name and seq (target `waymark::step`).

mod support;

use serde_json::Value;
use std::sync::Mutex;
use std::time::Duration;
use support::*;
use waymark::{CommandOutput, CommandSpec};
use waymark::{Engine, Isolation, Registry, RetryPolicy, StartOptions, Step, Workflow};

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ChattyIn {
    flood_bytes: u64,
    fail_marker: Option<String>,
}

const CHATTY: Step<ChattyIn, u32> = Step::new("fixture.chatty");
const CMD: Step<CommandSpec, CommandOutput> = Step::new("fixture.cmd");
const CHATTY_WF: Workflow<ChattyIn, u32> = Workflow::new("t.chatty");
const CMD_WF: Workflow<CommandSpec, CommandOutput> = Workflow::new("t.cmd");

/// Every record the host logger got: (target, level, message).
static RECORDS: Mutex<Vec<(String, log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        RECORDS
            .lock()
            .unwrap()
            .push((r.target().to_string(), r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

fn install_capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    child_step(&mut reg, CHATTY).retry = Some(RetryPolicy {
        backoff_initial: Duration::from_millis(10),
        ..RetryPolicy::default()
    });
    reg.command(CMD).retry = Some(RetryPolicy::never());
    reg.workflow(CHATTY_WF, |ctx, i| ctx.step(CHATTY, &i));
    reg.workflow(CMD_WF, |ctx, c| ctx.step(CMD, &c));
    reg
}

/// `waymark show ID --db DB [--json]`: stdout, asserting exit 0.
fn show(db: &std::path::Path, id: i64, json: bool) -> String {
    let mut args = vec![
        "show".to_string(),
        id.to_string(),
        "--db".into(),
        db.display().to_string(),
    ];
    if json {
        args.push("--json".into());
    }
    let out = std::process::Command::new(bin())
        .args(&args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn attempts_json(db: &std::path::Path, id: i64) -> Vec<Value> {
    let v: Value = serde_json::from_str(&show(db, id, true)).unwrap();
    v["attempts"].as_array().cloned().unwrap_or_default()
}

fn logs_of(a: &Value) -> String {
    a["logs"].as_str().unwrap_or_default().to_string()
}

const LINES: [&str; 8] = [
    "chatty stderr 1",
    "chatty stderr 2",
    "chatty stderr 3",
    "chatty stdout 1",
    "chatty stdout 2",
    "chatty log 1",
    "chatty log 2",
    "chatty log 3",
];

// Scenario: a child step (cold child, then a pooled child) eprintln!s 3 lines, println!s 2
// lines and log::info!s 3 records, and succeeds. Must hold: its println! does not corrupt
// the protocol (the step succeeds); all 8 lines are in the attempt's stored logs, the log
// records with their level; `waymark show RUN` prints them and `show --json` carries them;
// the host's logger got each log record again under target `waymark::step`, naming the run,
// the step and its seq, with its level.
on_both_stores!(a_successful_child_steps_output_and_log_records_are_kept_per_attempt);
fn a_successful_child_steps_output_and_log_records_are_kept_per_attempt(backend: Backend) {
    install_capture();
    for isolation in [Isolation::Child, Isolation::Pool] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = child_config_on(backend, dir.path());
        config.isolation = isolation;
        let db = config.db_path.clone();
        let engine = Engine::start(registry(), config).unwrap();
        let id = engine
            .start_run(CHATTY_WF, &ChattyIn::default(), StartOptions::default())
            .unwrap();
        let out = engine
            .wait_output(CHATTY_WF, id, Duration::from_secs(60))
            .unwrap();
        assert_eq!(out, 1);
        engine.shutdown().unwrap();

        let attempts = attempts_json(&db, id);
        assert_eq!(attempts.len(), 1, "{isolation:?}: {attempts:?}");
        let logs = logs_of(&attempts[0]);
        for line in LINES {
            assert!(
                logs.contains(line),
                "{isolation:?}: '{line}' missing in {logs:?}"
            );
        }
        assert!(
            logs.contains("INFO") && logs.contains("chatty log 1"),
            "{isolation:?}: level missing: {logs:?}"
        );
        let text = show(&db, id, false);
        for line in LINES {
            assert!(
                text.contains(line),
                "{isolation:?}: '{line}' missing in show:\n{text}"
            );
        }
        let records = RECORDS.lock().unwrap().clone();
        for i in 1..=3 {
            let want = format!("chatty log {i}");
            assert!(
                records
                    .iter()
                    .any(|(target, level, msg)| target == "waymark::step"
                        && *level == log::Level::Info
                        && msg.contains(&format!("run {id}"))
                        && msg.contains("fixture.chatty")
                        && msg.contains("seq 0")
                        && msg.contains(&want)),
                "{isolation:?}: host did not re-emit '{want}' of run {id}: {records:?}"
            );
        }
    }
}

// Scenario: a command step writes one line to stdout (its result) and two to stderr.
// Must hold: its stderr lines are the attempt's logs; its stdout stays the result.
#[test]
fn a_command_steps_stderr_is_its_log() {
    install_capture();
    let dir = tempfile::tempdir().unwrap();
    let config = child_config(dir.path());
    let db = config.db_path.clone();
    let engine = Engine::start(registry(), config).unwrap();
    let spec = CommandSpec::new(
        "sh",
        &["-c", "echo result-line; echo err-1 >&2; echo err-2 >&2"],
    );
    let id = engine
        .start_run(CMD_WF, &spec, StartOptions::default())
        .unwrap();
    let out = engine
        .wait_output(CMD_WF, id, Duration::from_secs(60))
        .unwrap();
    assert_eq!(out.stdout, b"result-line\n");
    engine.shutdown().unwrap();
    let logs = logs_of(&attempts_json(&db, id)[0]);
    assert!(logs.contains("err-1") && logs.contains("err-2"), "{logs:?}");
    assert!(!logs.contains("result-line"), "{logs:?}");
}

// Scenario: a child step prints 10 MiB to stdout after its 8 lines. Must hold: the stored
// logs are bounded (16 KiB head + 16 KiB tail + a marker naming the dropped bytes): the
// first lines are in the head, the flood's last line in the tail.
#[test]
fn ten_mebibytes_of_output_are_kept_as_head_tail_and_marker() {
    install_capture();
    let dir = tempfile::tempdir().unwrap();
    let config = child_config(dir.path());
    let db = config.db_path.clone();
    let engine = Engine::start(registry(), config).unwrap();
    let input = ChattyIn {
        flood_bytes: 10 * 1024 * 1024,
        fail_marker: None,
    };
    let id = engine
        .start_run(CHATTY_WF, &input, StartOptions::default())
        .unwrap();
    engine
        .wait_output(CHATTY_WF, id, Duration::from_secs(120))
        .unwrap();
    engine.shutdown().unwrap();
    let logs = logs_of(&attempts_json(&db, id)[0]);
    assert!(logs.len() <= 32 * 1024 + 200, "{} bytes kept", logs.len());
    assert!(logs.contains("bytes dropped ...]"), "no marker");
    assert!(logs.contains("chatty stderr 1"), "head lost");
    assert!(logs.contains("chatty flood end"), "tail lost");
}

// Scenario: the step fails its first attempt (retryable) and succeeds on the retry. Must
// hold: attempt 1 keeps its own logs (its lines and the warning it logged before failing)
// and attempt 2 its own; neither holds the other's lines.
on_both_stores!(a_failed_attempts_logs_are_kept_apart_from_the_retrys);
fn a_failed_attempts_logs_are_kept_apart_from_the_retrys(backend: Backend) {
    install_capture();
    let dir = tempfile::tempdir().unwrap();
    let config = child_config_on(backend, dir.path());
    let db = config.db_path.clone();
    let engine = Engine::start(registry(), config).unwrap();
    let input = ChattyIn {
        flood_bytes: 0,
        fail_marker: Some(dir.path().join("marker").display().to_string()),
    };
    let id = engine
        .start_run(CHATTY_WF, &input, StartOptions::default())
        .unwrap();
    let out = engine
        .wait_output(CHATTY_WF, id, Duration::from_secs(60))
        .unwrap();
    assert_eq!(out, 2);
    engine.shutdown().unwrap();
    let attempts = attempts_json(&db, id);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let first = logs_of(&attempts[0]);
    let second = logs_of(&attempts[1]);
    assert_eq!(attempts[0]["outcome"], "error");
    assert!(first.contains("chatty stderr 1 (attempt 1)"), "{first:?}");
    assert!(first.contains("chatty log 3 (attempt 1)"), "{first:?}");
    assert!(
        first.contains("WARN") && first.contains("chatty fails this attempt (1)"),
        "{first:?}"
    );
    assert!(!first.contains("(attempt 2)"), "{first:?}");
    assert!(second.contains("chatty stdout 2 (attempt 2)"), "{second:?}");
    assert!(!second.contains("(attempt 1)"), "{second:?}");
    let text = show(&db, id, false);
    assert!(text.contains("chatty fails this attempt (1)"), "{text}");
}

// Scenario: `waymark demo --runs 1` (real engine, steps in children of the binary). Must
// hold: `waymark show 1` prints the one line each demo step logged, under its attempt.
on_both_stores!(the_demo_steps_log_lines_are_in_show);
fn the_demo_steps_log_lines_are_in_show(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "demo.db");
    let out = std::process::Command::new(bin())
        .args(["demo", "--db", db.to_str().unwrap(), "--runs", "1"])
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = show(&db, 1, false);
    for line in [
        "generating 5000 numbers",
        "transforming 5000 numbers",
        "writing the summary",
    ] {
        assert!(text.contains(line), "'{line}' missing in show:\n{text}");
    }
}
