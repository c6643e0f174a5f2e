//! Command steps: an external program as a step. Its exit status, stdout (bounded, head and
//! tail) and stderr tail are the result. It runs through the same trampoline as Rust steps:
//! our own binary in `exec` mode applies the limits and starts the death watch, then starts
//! the program and stays as the leader of the step's process group until it ends (see
//! `exec_from_args`), so no `pre_exec` is needed.

use serde::{Deserialize, Serialize};

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

/// Child side of `exec` mode: argv is `[our binary, program, args...]`. Limits and the
/// death watch are already in place (see [`super::hook`](mod@super::hook)). This process stays the step's
/// leader and supervises the program: it starts the program as its child, in this
/// process's group, without our variables in its environment, waits for it, and ends the same
/// way (same exit code, or killed by the same signal), so the engine reads the program's
/// status from the leader. Why not exec the program: the death watch is a thread of this
/// process, and it must outlive the engine to kill the program's whole tree.
///
/// The termination signals the engine sends to the whole group (SIGTERM on timeout or
/// cancel; SIGINT, SIGHUP, SIGQUIT from a terminal) are blocked here, so the program gets
/// its grace and this process ends only after it; std starts the program with an empty
/// signal mask. SIGKILL ends both.
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
    // SAFETY: sigset operations on a local set; pthread_sigmask for this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(err) => {
            eprintln!(
                "waymark exec: cannot execute {}: {err}",
                program.to_string_lossy()
            );
            return super::hook::EXIT_EXEC;
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            eprintln!(
                "waymark exec: lost the status of {}: {}",
                program.to_string_lossy(),
                std::io::Error::last_os_error()
            );
            return super::hook::EXIT_SETUP;
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // End by the same signal: default action, unblocked, raised on this thread.
        // SAFETY: signal/sigprocmask/raise on this process with a valid signal number.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        // A signal whose default action does not end a process cannot have ended it.
        return 128 + sig;
    }
    libc::WEXITSTATUS(status)
}
