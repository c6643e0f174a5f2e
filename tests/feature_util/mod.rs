//! Shared helpers of the feature_* tests: drive the real `waymark` binary and read the
//! database it writes (read-only, through SQLite).
#![allow(dead_code)]

use rusqlite::{params, Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_waymark")
}

pub struct Tmp {
    pub dir: tempfile::TempDir,
}

impl Tmp {
    pub fn new() -> Self {
        Tmp {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("wm.db")
    }
    pub fn effects(&self) -> PathBuf {
        self.dir.path().join("effects.log")
    }
}

/// Run a `waymark` subcommand to completion; returns stdout. Panics with stderr on failure.
pub fn waymark(tmp: &Tmp, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .env("WAYMARK_DEMO_EFFECTS", tmp.effects())
        .output()
        .expect("spawn waymark");
    assert!(
        out.status.success(),
        "waymark {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `waymark start WORKFLOW --json JSON --count N`: the new run ids.
pub fn start(tmp: &Tmp, workflow: &str, json: &str, count: usize) -> Vec<i64> {
    let db = tmp.db();
    let count = count.to_string();
    waymark(
        tmp,
        &[
            "start",
            workflow,
            "--db",
            db.to_str().unwrap(),
            "--json",
            json,
            "--count",
            &count,
        ],
    )
    .lines()
    .map(|l| l.trim().parse().expect("run id"))
    .collect()
}

/// Spawn `waymark serve` on the database. `extra_env` are environment variables, except
/// the pseudo-entry `("--sync-normal", "")` which passes that flag.
pub fn serve(tmp: &Tmp, workers: usize, extra_env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--db",
        tmp.db().to_str().unwrap(),
        "--workers",
        &workers.to_string(),
        "--lease-ttl-ms",
        "3000",
    ])
    .env("WAYMARK_DEMO_EFFECTS", tmp.effects())
    .env("RUST_LOG", "error")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        if *k == "--sync-normal" {
            cmd.arg("--sync-normal");
        } else {
            cmd.env(k, v);
        }
    }
    Served(cmd.spawn().expect("spawn waymark serve"))
}

/// A `waymark serve` process, SIGKILLed when dropped (also when a test panics).
pub struct Served(pub Child);

impl std::ops::Deref for Served {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

/// SIGKILL a process and reap it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn conn(db: &Path) -> Connection {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Runs by status.
pub fn counts(db: &Path) -> HashMap<String, i64> {
    let c = conn(db);
    let mut s = c
        .prepare("SELECT status, count(*) FROM runs GROUP BY status")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn count(db: &Path, status: &str) -> i64 {
    counts(db).get(status).copied().unwrap_or(0)
}

pub fn status(db: &Path, run_id: i64) -> String {
    conn(db)
        .query_row(
            "SELECT status FROM runs WHERE id = ?1",
            params![run_id],
            |r| r.get(0),
        )
        .unwrap()
}

/// Journal of a run: (seq, name, kind, status).
pub fn journal(db: &Path, run_id: i64) -> Vec<(i64, String, String, String)> {
    let c = conn(db);
    let mut s = c
        .prepare("SELECT seq, name, kind, status FROM steps WHERE run_id = ?1 ORDER BY seq")
        .unwrap();
    s.query_map(params![run_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Poll `f` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of the effects log: (run_id, seq, step).
pub fn effects(tmp: &Tmp) -> Vec<(i64, i64, String)> {
    std::fs::read_to_string(tmp.effects())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
            ))
        })
        .collect()
}

/// Peak resident set size (VmHWM) of a live process, in kB.
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
