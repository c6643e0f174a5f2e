//! Shared helpers for integration tests: a temp dir per test, the real binary, and
//! read-only peeks at the database with plain rusqlite.
#![allow(dead_code)]

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Start in the background with stderr captured to a file in `dir`.
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

/// Poll `f` until it returns Some, or fail after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A read-only connection for assertions (never creates the file).
pub fn peek(db: &Path) -> Connection {
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open db for assertions");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch("PRAGMA query_only = 1").unwrap();
    c
}

/// One integer from a query, or None if the database is not readable yet.
pub fn query_i64(db: &Path, sql: &str) -> Option<i64> {
    if !db.exists() {
        return None;
    }
    let c = peek(db);
    c.query_row(sql, [], |r| r.get(0)).ok()
}

/// Status of run `id`.
pub fn status(db: &Path, id: i64) -> Option<String> {
    let c = peek(db);
    c.query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0))
        .ok()
}

/// `(run_id, seq)` pairs recorded in the journal.
pub fn journal_keys(db: &Path) -> Vec<(i64, i64)> {
    let c = peek(db);
    let mut s = c
        .prepare("SELECT run_id, seq FROM steps ORDER BY run_id, seq")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Lines `run seq step pid` of an effects file.
pub fn effects(path: &Path) -> Vec<(i64, i64, String, u32)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Start `count` runs of a built-in workflow; returns their ids.
pub fn start_runs(
    db: &Path,
    workflow: &str,
    json: &str,
    key: Option<&str>,
    count: usize,
) -> Vec<i64> {
    let count_s = count.to_string();
    let mut args = vec![
        "start",
        workflow,
        "--db",
        db.to_str().unwrap(),
        "--json",
        json,
        "--count",
        &count_s,
    ];
    if let Some(k) = key {
        args.extend(["--key", k]);
    }
    let out = run(&args);
    assert!(
        out.status.success(),
        "start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// SHA-like fingerprint of a file's bytes (for "left untouched" checks).
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}

pub fn db_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Engine config for library tests: test binaries have no child hook in `main`, so steps run
/// in-process.
pub fn in_process_config(db: &Path) -> waymark::Config {
    let mut c = waymark::Config::new(db);
    c.isolation = waymark::Isolation::InProcess;
    c
}
