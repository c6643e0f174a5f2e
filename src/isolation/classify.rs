//! How a child's end becomes a classified `Outcome` with a human reason.
//!
//! Order of evidence: the engine's own recorded intent first (it may have killed the child),
//! then a complete response frame, then the exit status read together with stderr. A Rust
//! child that runs out of memory under its cap aborts (SIGABRT) after printing "memory
//! allocation of N bytes failed": both are required, because SIGABRT alone also means
//! panic=abort or a stack overflow.

use super::protocol::Response;
use super::spawn::{Exit, Finished, Intent, Stdout};
use crate::config::StepLimits;
use crate::isolation::limits::human_bytes;
use crate::outcome::{Failure, FailureClass, Outcome};

/// Name of a signal number, for reasons.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

fn fail(class: FailureClass, reason: String) -> Outcome {
    Err(Failure::new(class, reason))
}

/// The memory-limit reason, naming the cap.
pub fn memory_reason(limits: &StepLimits) -> String {
    match limits.memory_bytes {
        Some(m) => format!("memory limit exceeded ({})", human_bytes(m)),
        None => "memory limit exceeded".to_string(),
    }
}

/// Classify a finished child. `command` is true for command steps (stdout is output).
pub fn classify(f: &Finished, limits: &StepLimits, step: &str) -> Outcome {
    match &f.intent {
        Some(Intent::Timeout(t)) => {
            return fail(
                FailureClass::Timeout,
                format!("timed out after {:.1} s (step '{step}')", t.as_secs_f64()),
            )
        }
        Some(Intent::Cancelled) => {
            return Err(Failure {
                class: FailureClass::Cancelled,
                reason: "cancelled".into(),
                permanent: true,
            })
        }
        Some(Intent::OutputLimit { size, limit }) => {
            return fail(
                FailureClass::OutputLimit,
                format!("output over limit ({size} bytes > {limit} bytes)"),
            )
        }
        Some(Intent::Protocol(e)) => {
            return fail(FailureClass::Protocol, format!("protocol error: {e}"))
        }
        None => {}
    }
    if let Some(resp) = &f.response {
        return classify_response(resp, limits);
    }
    classify_exit(f, limits)
}

/// Classify a complete response frame.
pub fn classify_response(resp: &Response, limits: &StepLimits) -> Outcome {
    {
        match resp {
            Response::Ok(bytes) if bytes.len() as u64 > limits.output_bytes_max => fail(
                FailureClass::OutputLimit,
                format!(
                    "output over limit ({} bytes > {} bytes)",
                    bytes.len(),
                    limits.output_bytes_max
                ),
            ),
            Response::Ok(bytes) => Ok(bytes.clone()),
            Response::Err { message, permanent } => Err(Failure {
                class: FailureClass::StepError,
                reason: message.clone(),
                permanent: *permanent,
            }),
            Response::Panic(m) => fail(FailureClass::Panic, format!("panicked: {m}")),
            Response::OutputTooLarge { size, limit } => fail(
                FailureClass::OutputLimit,
                format!("output over limit ({size} bytes > {limit} bytes)"),
            ),
            Response::Codec(m) => Err(Failure {
                class: FailureClass::Protocol,
                reason: format!("protocol error: {m}"),
                permanent: true,
            }),
            Response::UnknownStep(s) => Err(Failure {
                class: FailureClass::Protocol,
                reason: format!("protocol error: the child program has no step '{s}' registered"),
                permanent: true,
            }),
            Response::Log { .. } => fail(
                FailureClass::Protocol,
                "protocol error: a log record where a step result was expected".into(),
            ),
            Response::Hello { .. } => fail(
                FailureClass::Protocol,
                "protocol error: handshake answer where a step result was expected".into(),
            ),
        }
    }
}

fn classify_exit(f: &Finished, limits: &StepLimits) -> Outcome {
    let stderr_hint = || {
        let l = f.stderr.last_line();
        if l.is_empty() {
            String::new()
        } else {
            format!(": {l}")
        }
    };
    let stderr = f.stderr.text();
    let oom = stderr.contains("memory allocation of") && stderr.contains("failed");
    let cpu_over = limits
        .cpu_seconds
        .is_some_and(|c| f.cpu.as_secs_f64() + 0.05 >= c as f64);
    match f.exit {
        Exit::Signal(libc::SIGABRT) if oom => {
            fail(FailureClass::MemoryLimit, memory_reason(limits))
        }
        Exit::Signal(libc::SIGXCPU) => fail(
            FailureClass::CpuLimit,
            format!("CPU limit exceeded ({} s)", limits.cpu_seconds.unwrap_or(0)),
        ),
        Exit::Signal(libc::SIGKILL) if cpu_over => fail(
            FailureClass::CpuLimit,
            format!("CPU limit exceeded ({} s)", limits.cpu_seconds.unwrap_or(0)),
        ),
        Exit::Signal(libc::SIGABRT) if stderr.contains("panicked at") => {
            let msg = panic_line(&stderr).unwrap_or_else(|| f.stderr.last_line());
            fail(FailureClass::Panic, format!("panicked (aborted): {msg}"))
        }
        Exit::Signal(sig) => fail(
            FailureClass::Signal,
            format!(
                "killed by signal {sig} ({}){}",
                signal_name(sig),
                stderr_hint()
            ),
        ),
        Exit::Lost => fail(
            FailureClass::Signal,
            "the step's process ended, but its exit status was lost: the kernel reaped it \
             because SIGCHLD is ignored in the engine's process; treated as a failure"
                .to_string(),
        ),
        Exit::Code(c) if oom => fail(
            FailureClass::MemoryLimit,
            format!("{} (exit status {c})", memory_reason(limits)),
        ),
        Exit::Code(super::hook::EXIT_EXEC) if stderr.contains("waymark exec:") => fail(
            FailureClass::Spawn,
            format!("cannot start the program{}", stderr_hint()),
        ),
        Exit::Code(c) => match &f.stdout {
            Stdout::Capture(_) => unreachable_command(c, &stderr_hint()),
            Stdout::Frames(_) => fail(
                FailureClass::Protocol,
                format!(
                    "protocol error: the child exited with status {c} without a result{}",
                    stderr_hint()
                ),
            ),
        },
    }
}

fn unreachable_command(code: i32, hint: &str) -> Outcome {
    // Command steps turn exit codes into results before calling `classify`; a code here
    // means a non-zero exit of the program.
    fail(
        FailureClass::StepError,
        format!("command exited with status {code}{hint}"),
    )
}

/// The message of the "thread '...' panicked at FILE:LINE:COL:\nMESSAGE" report.
fn panic_line(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    while let Some(l) = lines.next() {
        if l.contains("panicked at") {
            return lines.next().map(|m| m.trim().to_string());
        }
    }
    None
}
