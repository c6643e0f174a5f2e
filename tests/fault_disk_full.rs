//! Disk full. Two forms: (1) the engine runs under RLIMIT_FSIZE just above the current file
//! sizes, so the WAL cannot grow (SQLITE_IOERR_WRITE / EFBIG); (2) the database sits on a
//! small tmpfs that a filler file fills up (SQLITE_FULL). Form 2 needs root to mount; where
//! the mount fails the test says so and runs form 1 only.
//! What must survive: the engine surfaces a typed disk-full error in its log and stops
//! claiming (it stays alive, it does not crash); a `waymark start` that cannot commit fails
//! with a disk-full message and its run does not exist afterwards (nothing acknowledged that
//! did not commit); `PRAGMA integrity_check` is ok; after space is freed, a new engine
//! (started while the first is still alive) finishes every run, one result per journal seq.

mod support;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn with_fsize_limit(cmd: &mut Command, limit: Option<u64>) {
    if let Some(limit) = limit {
        // SAFETY: setrlimit(2) and signal(2) are async-signal-safe; no allocation here.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &r);
                // Without this, exceeding the limit kills with SIGXFSZ instead of EFBIG.
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
}

fn files_max(db: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

fn integrity_ok(db: &Path) {
    let r: String = reader(db)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(r, "ok");
}

/// Run the scenario; `limit` is the RLIMIT_FSIZE form, `free_space` frees the tmpfs form.
fn scenario(dir: &Path, db: &Path, limit: Option<u64>, free_space: impl FnOnce()) {
    let runs = start(db, "fixture.slow", r#"{"steps":4,"ms":5}"#, 150);
    let log = dir.join("full.log");
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--workers", "4", "--lease-ttl-ms", "1500"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    with_fsize_limit(&mut cmd, limit);
    let mut full = Proc {
        child: cmd.spawn().unwrap(),
        log: Some(log),
    };
    wait_until(
        "the engine to hit the full disk",
        Duration::from_secs(60),
        || full.log_text().contains("stops claiming"),
    );
    assert!(
        full.log_text().contains("disk full") || full.log_text().contains("I/O"),
        "typed error in the log:\n{}",
        full.log_text()
    );
    assert!(
        full.child.try_wait().unwrap().is_none(),
        "the engine is still alive"
    );
    let done_then = query_i64(db, "SELECT count(*) FROM runs WHERE status = 'completed'");
    assert!(
        done_then < runs.len() as i64,
        "the disk filled before the work was done"
    );
    // A start that cannot commit is not acknowledged and leaves nothing behind.
    let mut start_cmd = Command::new(bin());
    start_cmd
        .args([
            "start",
            "fixture.slow",
            "--json",
            r#"{"steps":1,"ms":1}"#,
            "--key",
            "unacked",
            "--db",
        ])
        .arg(db);
    with_fsize_limit(&mut start_cmd, limit);
    let out = start_cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start on a full disk fails: {err}");
    assert!(err.contains("disk full"), "typed message: {err:?}");
    assert_eq!(
        query_i64(
            db,
            "SELECT count(*) FROM runs WHERE idempotency_key = 'unacked'"
        ),
        0
    );
    integrity_ok(db);
    free_space();
    let _b = serve(dir, "b", db, 4, 1500, &[]);
    wait_until(
        "a new engine to finish every run",
        Duration::from_secs(90),
        || runs.iter().all(|r| status(db, *r) == "completed"),
    );
    assert_eq!(
        query_i64(
            db,
            &format!("SELECT count(*) FROM steps WHERE run_id >= {}", runs[0])
        ),
        runs.len() as i64 * 4
    );
    integrity_ok(db);
    full.kill();
}

#[test]
fn rlimit_fsize_disk_full_stops_claiming_and_a_new_engine_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fsize.db");
    start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1);
    // Fold the WAL so the limit is relative to a stable main file.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    // Runs are enqueued by the scenario (no limit on the test's own `start`), then the
    // engine gets a limit a little above what is on disk.
    let runs_bytes = 150 * 1024;
    let limit = files_max(&db) + runs_bytes + 96 * 1024;
    scenario(dir.path(), &db, Some(limit), || {});
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn tmpfs_disk_full_stops_claiming_and_a_new_engine_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (no privilege): only the RLIMIT_FSIZE form runs");
        return;
    }
    let _m = Mount(mnt.clone());
    let db = mnt.join("full.db");
    start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1);
    let filler = mnt.join("filler");
    let fill = |leave: u64| {
        let total = 8 * 1024 * 1024u64;
        let used: u64 = std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let size = total.saturating_sub(used + leave);
        std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
    };
    // Leave room for the runs and a little work, not for all of it. (The tmpfs must hold a
    // full WAL once space is freed: wal_autocheckpoint lets it grow to about 4 MiB.)
    fill(420 * 1024);
    scenario(dir.path(), &db, None, || {
        std::fs::remove_file(&filler).unwrap()
    });
}
