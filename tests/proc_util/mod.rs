//! Helpers shared by the real-process fault tests: spawn the real binary, poll the database.
#![allow(dead_code)]

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_waymark");

/// A spawned engine process with its stderr captured to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// `waymark serve --db DB --workers W --lease-ttl-ms TTL` with `envs`.
pub fn serve(
    dir: &Path,
    name: &str,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    envs: &[(&str, String)],
) -> Proc {
    serve_with(dir, name, db, workers, ttl_ms, envs, &[])
}

/// `waymark serve --db DB --workers W --lease-ttl-ms TTL EXTRA...` with `envs`.
pub fn serve_with(
    dir: &Path,
    name: &str,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    envs: &[(&str, String)],
    extra: &[&str],
) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--db")
        .arg(db)
        .args([
            "--workers",
            &workers.to_string(),
            "--lease-ttl-ms",
            &ttl_ms.to_string(),
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("WAYMARK_DEMO_EFFECTS", dir.join("effects"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log,
    }
}

/// `waymark start WORKFLOW --db DB --json JSON --count N`; returns the run ids.
pub fn start(db: &Path, workflow: &str, json: &str, count: usize) -> Vec<i64> {
    let out = Command::new(BIN)
        .args([
            "start",
            workflow,
            "--json",
            json,
            "--count",
            &count.to_string(),
            "--db",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "start failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

pub fn reader(db: &Path) -> Connection {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

pub fn status(db: &Path, run: i64) -> String {
    reader(db)
        .query_row("SELECT status FROM runs WHERE id = ?1", [run], |r| r.get(0))
        .unwrap()
}

pub fn query_i64(db: &Path, sql: &str) -> i64 {
    reader(db).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Poll `cond` every 25 ms until it holds; panic with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Effects lines `run seq step pid` written by the fixture steps.
pub fn effects(dir: &Path) -> Vec<(i64, i64, String, u32)> {
    std::fs::read_to_string(dir.join("effects"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.to_string(),
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

/// sha256-free content fingerprint: the bytes themselves (files in these tests are small).
pub fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Pids of live (non-zombie) processes whose environment holds `KEY=VALUE`: a tag the test
/// set on an engine, inherited by every process of its step trees. Read from /proc, never
/// from the engine's own records.
pub fn procs_tagged(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
                    .unwrap_or(true)
            })
            .unwrap_or(true);
        if !zombie && env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Effects recorded for `(run, seq)` with step name `step`.
pub fn effect_count(dir: &Path, run: i64, seq: i64, step: &str) -> usize {
    effects(dir)
        .iter()
        .filter(|e| e.0 == run && e.1 == seq && e.2 == step)
        .count()
}

/// Every "overlap" effect: a second execution of one (run, seq) found the first still running.
pub fn overlaps(dir: &Path) -> Vec<(i64, i64, String, u32)> {
    effects(dir)
        .into_iter()
        .filter(|e| e.2 == "overlap")
        .collect()
}

/// `unshare --pid --fork --mount-proc --kill-child waymark serve --workers W --lease-ttl-ms
/// TTL EXTRA... --db DB`: an engine in its own PID namespace (as in another container on this
/// host), stderr to `log` (or discarded). Killing the returned `unshare` takes the engine
/// down with it. Needs root.
pub fn serve_in_pid_namespace(
    dir: &Path,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    extra: &[&str],
    log: Option<&Path>,
) -> Child {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .expect("unshare(1) from util-linux must be installed");
    assert!(ok.success(), "unshare --pid needs root (CI runs as root)");
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(BIN)
        .arg("serve")
        .args(extra)
        .args([
            "--workers",
            &workers.to_string(),
            "--lease-ttl-ms",
            &ttl_ms.to_string(),
            "--db",
        ])
        .arg(db)
        .env("RUST_LOG", "info")
        .env("WAYMARK_DEMO_EFFECTS", dir.join("effects"))
        .stdout(Stdio::null())
        .stderr(match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap()
}
