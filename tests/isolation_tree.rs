//! A step's whole process tree dies with its engine (issue 9, defect 3): every descendant that
//! stays in the step's process group, not only the direct child. A reclaiming engine kills
//! what is left of a dead owner's step tree (by process group, even when the recorded leader
//! is dead) before it runs the step again. A descendant that calls setsid leaves the group:
//! it is out of reach of all of this, and survives (the documented limit).
//!
//! Each test tags its step's processes with a unique environment variable and finds them by
//! scanning /proc/*/environ, whatever their parent or group.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TAG_VAR: &str = "WAYMARK_TREE_TEST_TAG";

/// Live (non-zombie) processes whose environment holds `TAG_VAR=tag`.
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("{TAG_VAR}={tag}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Kills every tagged process when the test ends, passed or not.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in tagged(&self.0) {
            // SAFETY: kill(2) of a process this test started (found by its unique tag).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn unique_tag(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        waymark::internal::host::random_id()
    )
}

fn serve_engine(db: &Path, exit_when_idle: bool) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--db"])
        .arg(db)
        .args(["--workers", "2", "--lease-ttl-ms", "10000"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(db.with_extension("log"))
                .unwrap(),
        );
    if exit_when_idle {
        cmd.arg("--exit-when-idle");
    }
    cmd.spawn().unwrap()
}

fn start_probe(db: &Path, probe: &serde_json::Value) -> i64 {
    let out = Command::new(bin())
        .args(["start", "fixture.probe", "--db"])
        .arg(db)
        .args(["--json", &probe.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A command step `sh -c script` whose processes carry `TAG_VAR=tag`.
fn cmd_probe(script: &str, tag: &str) -> serde_json::Value {
    serde_json::json!({"Cmd": {
        "program": "sh", "args": ["-c", script],
        "env": [[TAG_VAR, tag]], "cwd": null, "stdin": []
    }})
}

fn db_conn(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Leader pid recorded for attempt 1 of `run_id`, once recorded.
fn first_leader(db: &Path, run_id: i64) -> Option<u32> {
    if !db.exists() {
        return None;
    }
    db_conn(db)
        .query_row(
            "SELECT pid FROM attempts WHERE run_id = ?1 AND attempt = 1",
            [run_id],
            |r| r.get::<_, Option<i64>>(0),
        )
        .ok()
        .flatten()
        .map(|p| p as u32)
}

fn run_status(db: &Path, run_id: i64) -> String {
    db_conn(db)
        .query_row("SELECT status FROM runs WHERE id = ?1", [run_id], |r| {
            r.get(0)
        })
        .unwrap()
}

fn finish(engine: &mut Child) {
    let status = poll(Duration::from_secs(60), || engine.try_wait().unwrap());
    if status.is_none() {
        kill9(engine);
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// The two-execution script: the first execution starts `sleep 600` in the background and a
/// subshell that writes `marker` after 3 s, records their pids, and waits; a later execution
/// appends "overlap" to `runs` for every recorded pid still alive (not a zombie), then exits
/// 0.
fn two_phase_script(dir: &Path) -> (String, PathBuf, PathBuf) {
    let d = dir.to_string_lossy();
    let runs = dir.join("runs");
    let marker = dir.join("marker");
    let script = format!(
        "echo run >> '{d}/runs'
         if [ -e '{d}/first' ]; then
           for p in $(cat '{d}/pids'); do
             state=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1)
             if [ -n \"$state\" ] && [ \"$state\" != Z ]; then echo overlap >> '{d}/runs'; fi
           done
           exit 0
         fi
         touch '{d}/first'
         (sleep 3; echo late > '{d}/marker') &
         echo $! >> '{d}/pids'
         sleep 600 &
         echo $! >> '{d}/pids'
         echo $$ >> '{d}/pids'
         wait
         echo x"
    );
    (script, runs, marker)
}

// Scenario: `waymark serve` runs a command step `sh -c '... (sleep 3; echo late > marker) &
// sleep 600 & wait'`; the test SIGKILLs the engine once the tree is up (3+ processes), then
// a second engine reclaims the run. Must hold: within 5 s of the kill no process of the
// step's tree is alive (they were all in the step's process group), the marker never
// appears, and the second engine runs the step once more (two executions in all) with no
// process of the first still alive when it starts; the run completes.
#[test]
fn step_tree_dies_with_the_engine_and_the_step_reruns_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tree.db");
    let tag = unique_tag("engine-death");
    let _cleanup = Cleanup(tag.clone());
    let (script, runs, marker) = two_phase_script(dir.path());
    let mut engine = serve_engine(&db, false);
    let id = start_probe(&db, &cmd_probe(&script, &tag));
    // Leader, sh, the subshell, sleep 600 (and the subshell's sleep 3).
    poll(Duration::from_secs(30), || {
        (tagged(&tag).len() >= 4 && dir.path().join("pids").exists()).then_some(())
    })
    .expect("the step's tree never came up");
    let before = tagged(&tag);
    kill9(&mut engine);
    let killed_at = Instant::now();
    let left = poll(Duration::from_secs(5), || {
        tagged(&tag).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "step processes outlived their engine by 5 s: {:?} (of {before:?})",
        tagged(&tag)
    );
    std::thread::sleep(Duration::from_secs(4).saturating_sub(killed_at.elapsed()));
    assert!(
        !marker.exists(),
        "a grandchild of the dead engine wrote its marker"
    );

    let mut again = serve_engine(&db, true);
    finish(&mut again);
    assert_eq!(run_status(&db, id), "completed");
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(lines, "run\nrun\n", "executions and overlaps: {lines:?}");
    assert!(tagged(&tag).is_empty(), "{:?}", tagged(&tag));
}

// Scenario: the step's leader dies while its engine cannot react and then the engine dies
// too (the test SIGSTOPs the engine, SIGKILLs the recorded leader, SIGKILLs the engine):
// the leader's process group lives on without it (sh, the subshell, sleep 600, reparented
// away). A second engine reclaims the run. Must hold: the group is still alive before the
// second engine starts (the simulation works); the second engine kills it before running
// the step again (process group of the recorded leader, checked against pid reuse by start
// time): the re-execution sees none of the first tree alive, the marker never appears, no
// tagged process is left, and the run completes with two executions.
#[test]
fn reclaim_kills_the_group_of_a_dead_leader_before_running_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("group.db");
    let tag = unique_tag("dead-leader");
    let _cleanup = Cleanup(tag.clone());
    let (script, runs, marker) = two_phase_script(dir.path());
    let mut engine = serve_engine(&db, false);
    let id = start_probe(&db, &cmd_probe(&script, &tag));
    // The whole tree: the shell writes its own pid last, after both background processes
    // started. Four tagged processes alone can be seen before `sleep 600` was forked; on a
    // loaded machine the subshell's `sleep 3` could then end before the group is checked,
    // leaving nothing to survive the leader (a CI dry run failed so).
    let pids = dir.path().join("pids");
    poll(Duration::from_secs(30), || {
        let up = std::fs::read_to_string(&pids).is_ok_and(|p| p.lines().count() >= 3);
        (up && tagged(&tag).len() >= 4).then_some(())
    })
    .expect("the step's tree never came up");
    // Polled: a single read can miss (a busy file under a loaded machine reads as None).
    let leader = poll(Duration::from_secs(10), || first_leader(&db, id))
        .expect("attempt 1 recorded with its pid");
    // SAFETY: kill(2) of processes this test started.
    unsafe {
        libc::kill(engine.id() as i32, libc::SIGSTOP);
        libc::kill(leader as i32, libc::SIGKILL);
    }
    poll(Duration::from_secs(5), || (!alive(leader)).then_some(())).expect("leader gone");
    kill9(&mut engine);
    std::thread::sleep(Duration::from_millis(500));
    let survivors = tagged(&tag);
    assert!(
        !survivors.is_empty(),
        "the simulation failed: the leader's group died with it"
    );

    let mut again = serve_engine(&db, true);
    finish(&mut again);
    assert_eq!(run_status(&db, id), "completed");
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        lines,
        "run\nrun\n",
        "executions and overlaps: {lines:?}; log: {}",
        std::fs::read_to_string(db.with_extension("log")).unwrap_or_default()
    );
    assert!(
        tagged(&tag).is_empty(),
        "left behind: {:?} (of {survivors:?})",
        tagged(&tag)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !marker.exists(),
        "a process of the first tree wrote its marker"
    );
}

// Scenario: a Rust step (fixture.spin, sleeping) starts a grandchild `sleep 600` with
// std::process::Command, then the test SIGKILLs the engine. Must hold: the grandchild
// (same process group as the step child) is gone within 5 s.
#[test]
fn rust_step_grandchild_dies_with_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spin.db");
    let pid_file = dir.path().join("grandchild");
    let mut engine = serve_engine(&db, false);
    let id = start_probe(
        &db,
        &serde_json::json!({"Spin": {"pid_file": pid_file.to_string_lossy(), "spin": false}}),
    );
    let grandchild: u32 = poll(Duration::from_secs(30), || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .expect("the step never started its grandchild");
    assert!(first_leader(&db, id).is_some());
    kill9(&mut engine);
    let gone = poll(Duration::from_secs(5), || {
        (!alive(grandchild)).then_some(())
    });
    if gone.is_none() {
        // SAFETY: kill(2) of the test's own leftover grandchild.
        unsafe { libc::kill(grandchild as i32, libc::SIGKILL) };
        panic!("grandchild {grandchild} of a Rust step outlived its engine by 5 s");
    }
}

// Scenario: a command step starts `setsid sleep 600` in the background (a new session and
// process group) and sleeps; the test SIGKILLs the engine, then a second engine reclaims
// and runs the step again (it exits at once). Must hold, as documented: the rest of the
// tree dies within 5 s, but the setsid descendant has left the step's process group and is
// killed by nobody: it is alive after the engine's death and after the re-execution (the
// test kills it at the end).
#[test]
fn setsid_descendant_leaves_the_group_and_is_not_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("setsid.db");
    let tag = unique_tag("setsid");
    let _cleanup = Cleanup(tag.clone());
    let d = dir.path().to_string_lossy();
    let script = format!(
        "if [ -e '{d}/first' ]; then exit 0; fi
         touch '{d}/first'
         setsid sleep 600 &
         echo $! > '{d}/escaped'
         sleep 600"
    );
    let mut engine = serve_engine(&db, false);
    let id = start_probe(&db, &cmd_probe(&script, &tag));
    let escaped: u32 = poll(Duration::from_secs(30), || {
        std::fs::read_to_string(dir.path().join("escaped"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .expect("the step never started its setsid descendant");
    poll(Duration::from_secs(10), || {
        (tagged(&tag).len() >= 3).then_some(())
    })
    .expect("the step's tree never came up");
    kill9(&mut engine);
    let rest = poll(Duration::from_secs(5), || {
        (tagged(&tag) == vec![escaped]).then_some(())
    });
    assert!(
        rest.is_some(),
        "tagged after the kill: {:?}, escaped {escaped}",
        tagged(&tag)
    );

    let mut again = serve_engine(&db, true);
    finish(&mut again);
    assert_eq!(run_status(&db, id), "completed");
    assert_eq!(
        tagged(&tag),
        vec![escaped],
        "the setsid descendant was killed"
    );
}
