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

/// `waymark serve --db DB --workers W --lease-ttl-ms TTL [extra]` with `envs`.
pub fn serve(
    dir: &Path,
    name: &str,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    envs: &[(&str, String)],
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
