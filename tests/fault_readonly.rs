//! Read-only storage. Scenario: the database (existing, and a fresh path) sits on a read-only
//! mount (a tmpfs remounted read-only; this needs root, else the test falls back to a
//! directory the `nobody` user cannot write, through `runuser`). What must survive:
//! `waymark serve` fails within a second (asserted with a generous 5 s) with one actionable
//! line naming the path and the need for write access, and creates no stray file.

mod support;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn listing(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

fn assert_refused(mut cmd: Command, dir: &Path, what: &str) {
    let files = listing(dir);
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: refused");
    assert!(
        took < Duration::from_secs(5),
        "{what}: failed fast ({took:?})"
    );
    assert!(
        err.contains("write access"),
        "{what}: actionable message: {err:?}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err:?}");
    assert_eq!(listing(dir), files, "{what}: no stray files");
    eprintln!("{what}: refused in {took:?}: {}", err.trim());
}

#[test]
fn read_only_storage_fails_fast_with_an_actionable_message() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    let db = mnt.join("ro.db");
    if mounted {
        let _m = Mount(mnt.clone());
        start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 3);
        let remount = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(remount.success());
        let before = file_bytes(&db);
        for (path, what) in [
            (&db, "existing file on a read-only mount"),
            (&mnt.join("new.db"), "fresh path on a read-only mount"),
        ] {
            let mut cmd = Command::new(bin());
            cmd.arg("serve").arg("--db").arg(path);
            assert_refused(cmd, &mnt, what);
        }
        assert_eq!(file_bytes(&db), before);
    } else {
        eprintln!(
            "cannot mount a tmpfs here (not root?): testing a directory `nobody` cannot write"
        );
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        let db = ro.join("ro.db");
        start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 3);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        for (path, what) in [
            (&db, "file nobody may not write"),
            (
                &ro.join("new.db"),
                "fresh path in a directory nobody may not write",
            ),
        ] {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "nobody", "--", bin(), "serve", "--db"])
                .arg(path);
            assert_refused(cmd, &ro, what);
        }
    }
}
