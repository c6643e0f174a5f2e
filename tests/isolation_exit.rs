//! When a child step is over: the exchange ends when the step's process exits (not when its
//! pipes close), and a step is never recorded as a success without a real exit status.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;
use waymark::{CommandOutput, CommandSpec};
use waymark::{Engine, Registry, StartOptions, Step, StepLimits, Workflow};

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
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
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
    let a = engine.attempts(id).unwrap();
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
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
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
    let out: CommandOutput =
        waymark::internal::codec::decode(&row.output.unwrap(), 1 << 30).unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout.starts_with(b"hi\n"), "{:?}", &out.stdout[..8]);
    let yes_pid = yes_pid.expect("the script wrote the grandchild's pid");
    assert!(
        poll(Duration::from_secs(5), || (!alive(yes_pid)).then_some(())).is_some(),
        "the flooding grandchild {yes_pid} outlived its step"
    );
    engine.shutdown().unwrap();
}

fn limited_registry(limits: StepLimits) -> Registry {
    limited_registry_retrying(limits, waymark::RetryPolicy::never())
}

fn limited_registry_retrying(limits: StepLimits, retry: waymark::RetryPolicy) -> Registry {
    let mut reg = Registry::new();
    let opts = reg.command(CMD);
    opts.retry = Some(retry);
    opts.limits = Some(limits);
    reg.workflow(CMD_WF, |ctx, c| ctx.step(CMD, &c));
    reg
}

// Scenario: the command trampoline stays as the step's leader and supervises the program
// (issue 9, defect 3), so the engine reads the program's end from it. A command step with a
// 1 s timeout runs `sleep 600` in the background and waits; another, under a 1 s CPU cap,
// spins in `sh`. Must hold: the first fails as timeout (the engine's SIGTERM reached the
// program through the group; the leader waited for it) and its `sleep 600` is gone; the
// second fails as cpu_limit, "CPU limit exceeded (1 s)": the program's SIGXCPU death is
// re-raised by the leader, so the engine sees the same signal; under the default retry
// policy cpu_limit is not retried (one attempt).
#[test]
fn command_leader_mirrors_timeout_and_cpu_cap_of_its_program() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleep-pid");
    let engine = Engine::start(
        limited_registry(StepLimits {
            timeout: Some(Duration::from_secs(1)),
            ..StepLimits::default()
        }),
        child_config(dir.path()),
    )
    .unwrap();
    let script = format!(
        "sleep 600 & echo $! > '{}'; wait",
        pid_file.to_string_lossy()
    );
    let id = engine
        .start_run(
            CMD_WF,
            &CommandSpec::new("sh", &["-c", &script]),
            StartOptions::default(),
        )
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(60)).unwrap();
    let a = engine.attempts(id).unwrap();
    assert_eq!(row.status, "failed");
    assert_eq!(a[0].outcome.as_deref(), Some("timeout"), "{a:?}");
    let sleep: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        poll(Duration::from_secs(5), || (!alive(sleep)).then_some(())).is_some(),
        "sleep {sleep} outlived its timed-out step"
    );
    engine.shutdown().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(
        limited_registry_retrying(
            StepLimits {
                cpu_seconds: Some(1),
                timeout: Some(Duration::from_secs(60)),
                ..StepLimits::default()
            },
            waymark::RetryPolicy {
                backoff_initial: Duration::from_millis(10),
                ..waymark::RetryPolicy::default()
            },
        ),
        child_config(dir.path()),
    )
    .unwrap();
    let id = engine
        .start_run(
            CMD_WF,
            &CommandSpec::new("sh", &["-c", "while :; do :; done"]),
            StartOptions::default(),
        )
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(90)).unwrap();
    let err = row.error.unwrap_or_default();
    let a = engine.attempts(id).unwrap();
    assert_eq!(a[0].outcome.as_deref(), Some("cpu_limit"), "{err} {a:?}");
    assert_eq!(a.len(), 1, "cpu_limit retried by default: {a:?}");
    assert!(err.contains("CPU limit exceeded (1 s)"), "{err}");
    engine.shutdown().unwrap();
}

fn serve_engine(db: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .args(["serve", "--db"])
        .arg(db)
        .args(["--workers", "1", "--exit-when-idle"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn start_probe(db: &Path, json: &str, not_before_ms: Option<i64>) -> i64 {
    let mut cmd = Command::new(bin());
    cmd.args(["start", "fixture.probe", "--db"])
        .arg(db)
        .args(["--json", json]);
    if let Some(t) = not_before_ms {
        cmd.args(["--not-before-ms", &t.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// (status, error) of the run, and (outcome, reason) of its attempts.
type Ended = (
    (String, Option<String>),
    Vec<(Option<String>, Option<String>)>,
);

fn ended(db: &Path, id: i64) -> Ended {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let run = c
        .query_row("SELECT status, error FROM runs WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let mut s = c
        .prepare("SELECT outcome, reason FROM attempts WHERE run_id = ?1 ORDER BY attempt")
        .unwrap();
    let attempts = s
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (run, attempts)
}

// Scenario (issue 9, suspect): the host process sets SIGCHLD to SIG_IGN, so the kernel reaps
// step children by itself and `wait4` finds no status (ECHILD); once before the engine
// starts, once after. A command step runs `sh -c 'exit 3'`. Must hold in both cases: the run
// is failed, never completed: a step is recorded as a success only with a real exit status
// 0. Before the engine starts, the engine restores SIGCHLD's default (and logs it), so the
// failure names status 3; after, the status is lost and the failure says so.
#[test]
fn host_ignoring_sigchld_never_turns_a_failed_command_into_a_success() {
    for when in ["before", "after"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sigchld.db");
        // Enqueue first (the start command creates the file), then serve until idle. With
        // "after", the run is due 2 s later, so that it runs once SIGCHLD is ignored.
        let due = (when == "after").then(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_millis() as i64 + 2000
        });
        let id = start_probe(
            &db,
            r#"{"Cmd":{"program":"sh","args":["-c","exit 3"],"env":[],"cwd":null,"stdin":[]}}"#,
            due,
        );
        let mut engine = serve_engine(&db, &["--ignore-sigchld", when]);
        let status = poll(Duration::from_secs(60), || engine.try_wait().unwrap());
        if status.is_none() {
            let _ = engine.kill();
            let _ = engine.wait();
        }
        let ((st, err), attempts) = ended(&db, id);
        assert_eq!(
            st, "failed",
            "SIGCHLD ignored {when} start: {err:?} {attempts:?}"
        );
        assert!(status.is_some_and(|s| s.success()), "{when}: {status:?}");
        let err = err.unwrap_or_default();
        if when == "before" {
            assert!(err.contains("command exited with status 3"), "{err}");
        } else {
            assert!(err.contains("exit status was lost"), "{err}");
        }
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_ne!(attempts[0].0.as_deref(), Some("success"), "{attempts:?}");
    }
}
