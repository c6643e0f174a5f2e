//! The one support module of the integration tests: `mod support; use support::*;` at the
//! top of a test file gives it everything below.
//!
//! - this file: the binary under test ([`bin`]), a temp dir per test, starting, signalling,
//!   killing and waiting for processes, and polling for a condition;
//! - [`serve`]: engines as real `waymark serve` processes ([`Proc`]; [`Served`] with a
//!   `waymark::Client` from [`serve_with_client`]), the `waymark start` and other
//!   subcommands, and [`Tmp`] (a temp dir with a database and an effects file);
//! - [`db`]: peeks at the database (an SQLite file or a PostgreSQL URL), and the writes of
//!   tests that damage rows;
//! - [`effects`]: the effects file the fixture steps append to;
//! - [`procfs`]: what `/proc` says about processes;
//! - [`engine`]: engine configurations for tests that run an engine in the test process;
//! - [`pg`]: a throwaway PostgreSQL cluster (one per test binary) and a fresh database per test;
//! - [`pg_db`]: peeks at a test's PostgreSQL database;
//! - [`pg_proxy`]: a TCP proxy in front of the cluster that can lose a COMMIT's answer.
//!
//! Each test binary uses a subset, hence `allow(dead_code)`.
#![allow(dead_code)]

pub mod db;
pub mod effects;
pub mod engine;
pub mod pg;
pub mod pg_db;
pub mod pg_proxy;
pub mod procfs;
pub mod serve;

// One glob in a test (`use support::*`) reaches every helper; a binary that uses none of a
// file's helpers would otherwise warn.
#[allow(unused_imports)]
pub use {db::*, effects::*, engine::*, pg::*, pg_db::*, pg_proxy::*, procfs::*, serve::*};

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Which store a conformance test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in the test's temp dir.
    Sqlite,
    /// A fresh database on the test binary's throwaway PostgreSQL cluster.
    Postgres,
}

impl Backend {
    /// A fresh database for a test: `dir/name` for SQLite, a new database's URL for
    /// PostgreSQL (as a path: every helper and `--db` take either).
    pub fn fresh_db(self, dir: &Path, name: &str) -> std::path::PathBuf {
        match self {
            Backend::Sqlite => dir.join(name),
            Backend::Postgres => std::path::PathBuf::from(pg::fresh_pg_db()),
        }
    }
}

/// Behavioural tests that must hold on every store: `on_both_stores!(NAME);` beside
/// `fn NAME(backend: Backend)` makes the tests `NAME::sqlite` and `NAME::postgres` (a
/// module and a function may share a name).
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite)
                }
                #[test]
                fn postgres() {
                    super::$name($crate::support::Backend::Postgres)
                }
            }
        )+
    };
}

/// The waymark binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_waymark")
}

/// A fresh temporary directory (removed on drop).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("waymark-test-")
        .tempdir()
        .expect("tempdir")
}

/// `waymark ARGS` with a quiet logger.
pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).env("RUST_LOG", "warn");
    c
}

/// Run to completion, capturing output.
pub fn run(args: &[&str]) -> Output {
    cmd(args).output().expect("spawn waymark")
}

/// Start in the background with stderr captured to the file `log`.
pub fn spawn(args: &[&str], envs: &[(&str, &str)], log: &Path) -> Child {
    let mut c = cmd(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn waymark")
}

/// Wait for a child with a generous timeout; panics (test failure) if it does not exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL and reap.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Send a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Wall-clock time in ms since the Unix epoch (what the engine stamps rows with).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Poll `f` every 20 ms until it returns Some, up to `limit`; None after that.
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

/// Poll `f` until it returns Some, or fail (panic) with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    match poll(timeout, f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Poll `cond` until it holds, or fail (panic) with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, timeout, || cond().then_some(()))
}
