//! Command steps: an external program as a step. Its exit status, stdout (bounded, head and
//! tail) and stderr tail are the result. It runs through the same trampoline as Rust steps:
//! our own binary in `exec` mode applies the limits and the death signal, then execs the
//! program, so no `pre_exec` is needed.

use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program name (looked up in PATH) or path.
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment variables (the engine's environment is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory (default: the engine's).
    pub cwd: Option<String>,
    /// Bytes written to the program's stdin, which is then closed.
    pub stdin: Vec<u8>,
}

impl CommandSpec {
    /// `program` with `args`, nothing else set.
    pub fn new(program: impl Into<String>, args: &[&str]) -> Self {
        CommandSpec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// How a command ended (only exit status 0 is a result; any other status is a step error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    pub exit_code: i32,
    /// Stdout, at most `StepLimits::output_bytes_max` bytes: head, a
    /// `[... N bytes truncated ...]` marker, tail.
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    /// Total stdout bytes the program wrote.
    pub stdout_bytes: u64,
    /// Stderr, at most `StepLimits::stderr_bytes_max` bytes, head and tail.
    pub stderr: Vec<u8>,
}

/// Child side of `exec` mode: argv is `[our binary, program, args...]`. Limits are already
/// applied; drop our variables from the environment and become the program.
pub(crate) fn exec_from_args() -> i32 {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("waymark exec: no program given");
        return super::hook::EXIT_EXEC;
    };
    let mut cmd = std::process::Command::new(&program);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with(super::ENV_MODE) {
            cmd.env_remove(k);
        }
    }
    let err = cmd.exec();
    eprintln!(
        "waymark exec: cannot execute {}: {err}",
        program.to_string_lossy()
    );
    super::hook::EXIT_EXEC
}
