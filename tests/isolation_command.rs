//! Command steps: an external program through the exec trampoline.

mod support;

use std::time::Duration;
use support::*;
use waymark::{CommandOutput, CommandSpec};
use waymark::{Engine, Registry, StartOptions, Step, Workflow};

const CMD: Step<CommandSpec, CommandOutput> = Step::new("fixture.cmd");
const CMD_WF: Workflow<CommandSpec, CommandOutput> = Workflow::new("t.cmd");

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.command(CMD).retry = Some(waymark::RetryPolicy::never());
    reg.workflow(CMD_WF, |ctx, c| ctx.step(CMD, &c));
    reg
}

// Scenario: three command steps: (1) `sh` reading stdin bytes, printing an env variable and
// its working directory; (2) a program exiting with status 3 after writing to stderr; (3) a
// program that does not exist. Must hold: (1) completes with exactly that stdout, exit 0 and
// none of the engine's WAYMARK_CHILD* variables visible to the program; (2) fails as a step
// error naming status 3 and the stderr line; (3) fails as spawn naming the program.
#[test]
fn command_steps_get_stdin_env_cwd_and_classified_exits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    let work = tempfile::tempdir().unwrap();
    let ok = CommandSpec {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "cat; echo \"$FOO\"; pwd; env | grep -c '^WAYMARK_CHILD' || true".into(),
        ],
        env: vec![("FOO".into(), "bar".into())],
        cwd: Some(work.path().to_string_lossy().into()),
        stdin: b"hello\n".to_vec(),
    };
    let id = engine
        .start_run(CMD_WF, &ok, StartOptions::default())
        .unwrap();
    let out = engine
        .wait_output(CMD_WF, id, Duration::from_secs(60))
        .unwrap();
    assert_eq!(out.exit_code, 0);
    let real = std::fs::canonicalize(work.path()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello\nbar\n{}\n0\n", real.display())
    );
    assert!(!out.stdout_truncated);

    let bad = CommandSpec::new("sh", &["-c", "echo 'disk on fire' >&2; exit 3"]);
    let id = engine
        .start_run(CMD_WF, &bad, StartOptions::default())
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(60)).unwrap();
    assert_eq!(row.status, "failed");
    let err = row.error.unwrap_or_default();
    assert!(
        err.contains("command exited with status 3: disk on fire"),
        "{err}"
    );
    let a = engine.attempts(id).unwrap();
    assert_eq!(a[0].outcome.as_deref(), Some("error"));

    let missing = CommandSpec::new("/no/such/program", &[]);
    let id = engine
        .start_run(CMD_WF, &missing, StartOptions::default())
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(60)).unwrap();
    let err = row.error.unwrap_or_default();
    assert!(
        err.contains("cannot start the program") && err.contains("/no/such/program"),
        "{err}"
    );
    let a = engine.attempts(id).unwrap();
    assert_eq!(a[0].outcome.as_deref(), Some("spawn"));
    engine.shutdown().unwrap();
}
