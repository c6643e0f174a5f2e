//! When a child step is over: the exchange ends when the step's process exits (not when its
//! pipes close).

mod common;

use common::*;
use std::time::Duration;
use waymark::child::{CommandOutput, CommandSpec};
use waymark::store::queries;
use waymark::{Engine, Registry, StartOptions, Step, Workflow};

const CMD: Step<CommandSpec, CommandOutput> = Step::new("fixture.cmd");
const CMD_WF: Workflow<CommandSpec, CommandOutput> = Workflow::new("t.cmd");

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.command(CMD).retry = Some(waymark::RetryPolicy::never());
    reg.workflow(CMD_WF, |ctx, c| ctx.step(CMD, &c));
    reg
}

// Scenario (issue 9, defect 6): a command step points its own stdout and stderr at a file
// (`exec >f 2>&1`), so both pipes to the engine close while it still runs; it then sleeps
// 3 s (six times the 500 ms kill grace) and writes "done" to that file. Must hold: the step
// completes with exit status 0 (it is not killed when its pipes close) and "done" is in the
// file.
#[test]
fn command_step_that_redirects_its_own_output_runs_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), config(dir.path())).unwrap();
    let out_file = dir.path().join("own-output");
    let script = format!(
        "exec >'{}' 2>&1; sleep 3; echo done",
        out_file.to_string_lossy()
    );
    let spec = CommandSpec::new("sh", &["-c", &script]);
    let id = engine
        .start_run(CMD_WF, &spec, StartOptions::default())
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(60)).unwrap();
    let a = engine.store().read(|c| queries::attempts(c, id)).unwrap();
    assert_eq!(row.status, "completed", "{:?} {a:?}", row.error);
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap_or_default(),
        "done\n"
    );
    engine.shutdown().unwrap();
}

// Scenario: a command step prints "hi" and exits at once, leaving a background grandchild
// (`yes`) that floods the inherited stdout pipe without pause. Must hold: the exchange ends
// when the step's process exits (the drain after the exit is bounded, a pipe that never
// goes quiet does not keep it open): the step completes with exit 0, its kept stdout starts
// with "hi", and the flooding grandchild is killed with the step's process group.
#[test]
fn command_step_ends_when_its_process_exits_even_if_a_grandchild_floods_the_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), config(dir.path())).unwrap();
    let pid_file = dir.path().join("yes-pid");
    let script = format!(
        "echo hi; yes & echo $! > '{}'; exit 0",
        pid_file.to_string_lossy()
    );
    let spec = CommandSpec::new("sh", &["-c", &script]);
    let id = engine
        .start_run(CMD_WF, &spec, StartOptions::default())
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(60));
    let yes_pid: Option<u32> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = yes_pid {
                // SAFETY: kill(2) of the test's own leftover grandchild.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            panic!("the step never ended: {e}");
        }
    };
    assert_eq!(row.status, "completed", "{:?}", row.error);
    let out: CommandOutput = waymark::codec::decode(&row.output.unwrap(), 1 << 30).unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout.starts_with(b"hi\n"), "{:?}", &out.stdout[..8]);
    let yes_pid = yes_pid.expect("the script wrote the grandchild's pid");
    assert!(
        poll(Duration::from_secs(5), || (!alive(yes_pid)).then_some(())).is_some(),
        "the flooding grandchild {yes_pid} outlived its step"
    );
    engine.shutdown().unwrap();
}
