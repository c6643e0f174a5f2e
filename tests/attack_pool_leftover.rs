//! Adversarial review of issue 9 (attack: the warm pool). Scenario: a Rust step starts a
//! background process (in the step's process group, no `setsid`) and returns. A fresh
//! child step ends with its leader: the engine kills the rest of the group. A pooled child
//! does not end: it goes back to the pool with the step's background process still in its
//! group.
//! What must survive: no step process stays alive more than a second after its run ended,
//! whatever the isolation (cold child or pool).

mod support;
use std::time::Duration;
use support::*;

fn leftover_after_run(isolation: &[&str], tag: &str) -> Vec<u32> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db");
    let pid_file = dir.path().join("bg.pid");
    let json = format!(r#"{{"Bg":"{}"}}"#, pid_file.display());
    let run = start(&db, "fixture.probe", &json, 1)[0];
    let _e = serve_with(
        dir.path(),
        "e",
        &db,
        1,
        5000,
        &[("WAYMARK_ATTACK_TAG", tag.to_string())],
        isolation,
    );
    wait_until("the run to complete", Duration::from_secs(60), || {
        status(&db, run) == "completed"
    });
    std::thread::sleep(Duration::from_millis(1500));
    let bg: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Step processes of this engine still alive, other than pooled step servers themselves:
    // the background process the step started.
    procs_tagged("WAYMARK_ATTACK_TAG", tag)
        .into_iter()
        .filter(|&p| p == bg)
        .collect()
}

#[test]
fn a_cold_child_steps_background_process_ends_with_the_step() {
    let tag = format!("cold-{}", std::process::id());
    assert_eq!(leftover_after_run(&[], &tag), Vec::<u32>::new());
}

#[test]
fn a_pooled_steps_background_process_ends_with_the_step() {
    let tag = format!("pool-{}", std::process::id());
    let left = leftover_after_run(&["--pool"], &tag);
    for &p in &left {
        // SAFETY: kill(2) of a leftover this test made (tagged and named by the step).
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
    assert_eq!(
        left,
        Vec::<u32>::new(),
        "the step's background process outlived its completed run by >1 s (pooled child went back to the pool with it)"
    );
}
