//! Shared helpers of the isolation tests: an engine in the test process whose step children
//! are the real `waymark` binary (its main installs the child hook and registers the
//! fixture steps), and helpers to look at processes.
#![allow(dead_code)]

use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use waymark::StepOptions;
use waymark::{Config, Registry, Step, StepError};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waymark"))
}

/// Register `step` on the engine side only: it runs in a child of the waymark binary,
/// which registers the real function under the same name.
pub fn child_step<I, O>(reg: &mut Registry, step: Step<I, O>) -> &mut StepOptions
where
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    reg.step(step, |_, _: I| -> Result<O, StepError> {
        Err(StepError::permanent("this step runs in a child process"))
    })
}

/// An engine configuration on `dir/t.db` whose children are the waymark binary.
pub fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir.join("t.db")).with_lease_ttl(Duration::from_secs(10));
    c.workers = 4;
    c.child_program = Some(bin());
    c.kill_grace = Duration::from_millis(500);
    c
}

/// Poll `f` until it returns Some, up to `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    waymark::internal::host::pid_start_time(pid).is_some()
}

/// Children of this process: (pid, state letter).
pub fn my_children() -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().unwrap_or("").to_string();
        let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me {
            out.push((pid, state));
        }
    }
    out
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
