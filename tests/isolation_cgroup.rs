//! Memory caps that name themselves for any program (issue 13): where the host offers a
//! memory cgroup (v2, or the v1 memory controller), each cold child step runs in a cgroup
//! of its own with its cap, and an OOM kill is classified `memory_limit` from the cgroup's
//! counter, whatever the program; the attempt record names the mechanism (`memory_cap`).
//! Elsewhere (no writable cgroup) the rlimit is used, and these tests assert that the
//! record names it instead.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;
use waymark::internal::isolation::cgroup::CgroupParent;
use waymark::{CommandOutput, CommandSpec};
use waymark::{Engine, Isolation, Registry, RetryPolicy, StartOptions, Step, StepLimits, Workflow};

const CMD: Step<CommandSpec, CommandOutput> = Step::new("fixture.cmd");
const CMD_WF: Workflow<CommandSpec, CommandOutput> = Workflow::new("t.cmd");
const CAP: u64 = 256 * 1024 * 1024;
const QUICK: Step<u64, u64> = Step::new("fixture.quick");
const HOG: Step<u64, u64> = Step::new("fixture.hog");
const QUICK_WF: Workflow<u64, u64> = Workflow::new("t.pool.quick");
const HOG_WF: Workflow<u64, u64> = Workflow::new("t.pool.hog");
const POOL_CAP: u64 = 128 * 1024 * 1024;

fn registry() -> Registry {
    let mut reg = Registry::new();
    let opts = reg.command(CMD);
    opts.limits = Some(StepLimits {
        memory_bytes: Some(CAP),
        timeout: Some(Duration::from_secs(120)),
        ..StepLimits::default()
    });
    opts.retry = Some(RetryPolicy {
        backoff_initial: Duration::from_millis(10),
        ..RetryPolicy::default()
    });
    reg.workflow(CMD_WF, |ctx, c| ctx.step(CMD, &c));
    reg
}

/// Pooled Rust steps: `fixture.quick` (default limits) and `fixture.hog` (capped at
/// `POOL_CAP`), both under the default retry policy.
fn pool_registry() -> Registry {
    let mut reg = Registry::new();
    child_step(&mut reg, QUICK).isolation = Some(Isolation::Pool);
    let hog = child_step(&mut reg, HOG);
    hog.isolation = Some(Isolation::Pool);
    hog.limits = Some(StepLimits {
        memory_bytes: Some(POOL_CAP),
        timeout: Some(Duration::from_secs(120)),
        ..StepLimits::default()
    });
    reg.workflow(QUICK_WF, |ctx, n| ctx.step(QUICK, &n));
    reg.workflow(HOG_WF, |ctx, n| ctx.step(HOG, &n));
    reg
}

/// A program that allocates (and touches) far more than the cap.
fn hog() -> CommandSpec {
    let python = std::process::Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_ok_and(|s| s.success());
    if python {
        CommandSpec::new("python3", &["-c", "x = bytearray(600*1024*1024)"])
    } else {
        CommandSpec::new(
            "sh",
            &[
                "-c",
                "x=$(head -c 700000000 /dev/zero | tr '\\0' a); echo ${#x}",
            ],
        )
    }
}

/// A child process killed (and reaped) when dropped, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Step cgroups below `parent` whose names contain `part`.
fn step_cgroups(parent: &Path, part: &str) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().contains(part))
                .collect()
        })
        .unwrap_or_default()
}

// Scenario: a command step (Python, or a shell where there is none) allocates 600 MiB
// under a 256 MiB cap, default retry policy (which does not retry memory_limit). Must hold
// where a memory cgroup can be made: exactly one attempt, classified `memory_limit` with the
// reason "memory limit exceeded (256 MiB)" (not `error` from Python's MemoryError, which
// would be retried), naming "cgroup v1 256 MiB" or "cgroup v2 256 MiB" as its mechanism, and
// no step cgroup of the run is left behind. Elsewhere: the attempts name "rlimit data 256 MiB".
#[test]
fn a_command_over_its_cgroup_cap_is_a_memory_limit() {
    let cgroups = CgroupParent::detect();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    let id = engine
        .start_run(CMD_WF, &hog(), StartOptions::default())
        .unwrap();
    let row = engine.wait(id, Duration::from_secs(120)).unwrap();
    assert_eq!(row.status, "failed");
    let attempts = engine.attempts(id).unwrap();
    engine.shutdown().unwrap();
    match &cgroups {
        Some(parent) => {
            let want = format!("{} 256 MiB", parent.version().name());
            assert_eq!(attempts.len(), 1, "{attempts:?}");
            for a in &attempts {
                assert_eq!(a.memory_cap.as_deref(), Some(want.as_str()), "{a:?}");
                assert_eq!(a.outcome.as_deref(), Some("memory_limit"), "{a:?}");
                assert_eq!(
                    a.reason.as_deref(),
                    Some("memory limit exceeded (256 MiB)"),
                    "{a:?}"
                );
            }
            // This process's engine made them (other test binaries' engines may leave theirs).
            let mine = format!("p{}.", std::process::id());
            let left: Vec<_> = step_cgroups(parent.dir(), &format!("-r{id}-s"))
                .into_iter()
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&mine))
                .collect();
            assert!(left.is_empty(), "step cgroups left: {left:?}");
        }
        None => {
            eprintln!("no writable memory cgroup here: asserting the rlimit mechanism");
            assert!(!attempts.is_empty());
            for a in &attempts {
                assert_eq!(
                    a.memory_cap.as_deref(),
                    Some("rlimit data 256 MiB"),
                    "{a:?}"
                );
            }
        }
    }
}

// Scenario: `waymark serve` runs a command step (`sleep 60`) in its cgroup and is
// SIGKILLed. Must hold: the next engine that starts removes the cgroup left behind.
#[test]
fn a_killed_engines_step_cgroup_is_removed_by_the_next_engine() {
    killed_engine_cgroup_is_removed_by_the_next(
        "fixture.probe",
        r#"{"Cmd":{"program":"sleep","args":["60"],"env":[],"cwd":null,"stdin":[]}}"#,
        &[],
        "-r",
    );
}

// Scenario: `waymark serve --pool` runs a pooled step (`fixture.sleep`, 60 s) in its pooled
// child's cgroup and is SIGKILLed. Must hold: the next engine removes the pooled cgroup
// (the stale sweep covers pooled children as it does cold ones).
#[test]
fn a_killed_engines_pooled_cgroup_is_removed_by_the_next_engine() {
    killed_engine_cgroup_is_removed_by_the_next(
        "fixture.slow",
        r#"{"steps":1,"ms":60000}"#,
        &["--pool"],
        "-pool-fixture.sleep-",
    );
}

/// `waymark serve SERVE_EXTRA...` runs `workflow` (`input`: a step that sleeps a minute)
/// and is SIGKILLed once a step cgroup whose name contains `label_part` exists; its step dies
/// with it (death watch), leaving an empty cgroup nobody removes. Must hold: the next
/// engine that starts removes it. Without cgroups: the attempt names the rlimit mechanism.
fn killed_engine_cgroup_is_removed_by_the_next(
    workflow: &str,
    input: &str,
    serve_extra: &[&str],
    label_part: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c.db");
    let db_s = db.to_str().unwrap();
    let out = std::process::Command::new(bin())
        .args(["start", workflow, "--db", db_s, "--json", input])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let mut serve = Reaped(
        std::process::Command::new(bin())
            .args(["serve", "--db", db_s])
            .args(serve_extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let Some(parent) = CgroupParent::detect() else {
        drop(serve);
        eprintln!("no writable memory cgroup here: asserting the rlimit mechanism");
        let quick = r#"{"Cmd":{"program":"true","args":[],"env":[],"cwd":null,"stdin":[]}}"#;
        let db2 = tmp.path().join("q.db");
        let db2_s = db2.to_str().unwrap();
        for args in [
            &["start", "fixture.probe", "--db", db2_s, "--json", quick][..],
            &["serve", "--db", db2_s, "--exit-when-idle"][..],
        ] {
            let out = std::process::Command::new(bin())
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cap: String = rusqlite::Connection::open(&db2)
            .unwrap()
            .query_row("SELECT memory_cap FROM attempts", [], |r| r.get(0))
            .unwrap();
        assert!(cap.starts_with("rlimit data"), "{cap}");
        return;
    };
    let mine = format!("p{}.", serve.0.id());
    let created = poll(Duration::from_secs(30), || {
        let v: Vec<PathBuf> = step_cgroups(parent.dir(), &mine)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(label_part))
            .collect();
        (!v.is_empty()).then_some(v)
    })
    .expect("the step's cgroup");
    let _ = serve.0.kill();
    let _ = serve.0.wait();
    // The step dies with its engine (death watch); its cgroup stays, empty.
    let empty = poll(Duration::from_secs(30), || {
        created
            .iter()
            .all(|c| {
                std::fs::read_to_string(c.join("cgroup.procs"))
                    .map(|p| p.trim().is_empty())
                    .unwrap_or(true)
            })
            .then_some(())
    });
    assert!(empty.is_some(), "step processes outlived their engine");
    let next = Reaped(
        std::process::Command::new(bin())
            .args(["serve", "--db", db_s])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gone = poll(Duration::from_secs(30), || {
        created.iter().all(|c| !c.exists()).then_some(())
    });
    drop(next);
    assert!(gone.is_some(), "stale step cgroups left: {created:?}");
}

// Scenario: pooled children (recycled after 2 executions) serve four quick runs one after
// another, then a pooled step allocates 4x its 128 MiB cap (default retry policy). Must hold
// where a memory cgroup can be made: each pooled child lives in a step cgroup of its own
// (`...-pool-<step>-...` below the engine's parent) while it is alive, and the cgroup is
// gone once the child is recycled; every pooled attempt names "cgroup v1/v2 <cap>" as its
// mechanism; the hog's OOM kill is classified `memory_limit` ("memory limit exceeded
// (128 MiB)", one attempt) from the cgroup's counter, not `signal`; after shutdown no pooled
// cgroup of this process is left. Elsewhere: the attempts name the rlimit.
#[test]
fn a_pooled_child_lives_in_its_own_cgroup_and_its_oom_is_a_memory_limit() {
    let cgroups = CgroupParent::detect();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = child_config(dir.path());
    cfg.pool_runs_max = 2;
    let engine = Engine::start(pool_registry(), cfg).unwrap();
    let mine = format!("p{}.", std::process::id());
    let mut served = Vec::new();
    for i in 0..4u64 {
        let id = engine
            .start_run(QUICK_WF, &i, StartOptions::default())
            .unwrap();
        assert_eq!(
            engine
                .wait_output(QUICK_WF, id, Duration::from_secs(60))
                .unwrap(),
            i + 1
        );
        let a = engine.attempts(id).unwrap();
        assert_eq!(a.len(), 1, "{a:?}");
        let pid = a[0].pid.unwrap() as u32;
        // Idle in the pool after executions 1 and 3; recycled after 2 and 4.
        served.push((pid, a[0].memory_cap.clone(), memory_cgroup_of(pid)));
    }
    assert_eq!(served[0].0, served[1].0, "{served:?}");
    assert_eq!(served[2].0, served[3].0, "{served:?}");
    assert_ne!(served[0].0, served[2].0, "{served:?}");
    let hog = engine
        .start_run(HOG_WF, &(4 * POOL_CAP), StartOptions::default())
        .unwrap();
    let row = engine.wait(hog, Duration::from_secs(120)).unwrap();
    assert_eq!(row.status, "failed");
    let hog_attempts = engine.attempts(hog).unwrap();
    assert_eq!(hog_attempts.len(), 1, "{hog_attempts:?}");
    let h = &hog_attempts[0];
    assert_eq!(h.outcome.as_deref(), Some("memory_limit"), "{h:?}");
    assert_eq!(
        h.reason.as_deref(),
        Some("memory limit exceeded (128 MiB)"),
        "{h:?}"
    );
    let Some(parent) = cgroups else {
        engine.shutdown().unwrap();
        eprintln!("no writable memory cgroup here: asserting the rlimit mechanism");
        for (_, cap, _) in &served {
            assert_eq!(cap.as_deref(), Some("rlimit data 512 MiB"));
        }
        assert_eq!(h.memory_cap.as_deref(), Some("rlimit data 128 MiB"));
        return;
    };
    let v = parent.version().name();
    for (pid, cap, _) in &served {
        assert_eq!(
            cap.as_deref(),
            Some(format!("{v} 512 MiB").as_str()),
            "{pid}"
        );
    }
    assert_eq!(
        h.memory_cap.as_deref(),
        Some(format!("{v} 128 MiB").as_str()),
        "{h:?}"
    );
    // The idle children were each in a pooled cgroup of their own, made by this engine.
    let mut names = Vec::new();
    for i in [0, 2] {
        let (pid, _, cg) = &served[i];
        let cg = cg
            .as_deref()
            .unwrap_or_else(|| panic!("child {pid} gone while idle"));
        let name = cg.rsplit('/').next().unwrap().to_string();
        assert!(
            name.starts_with(&mine) && name.contains("-pool-fixture.quick-"),
            "pooled child {pid} is in {cg}, not a pooled step cgroup of this engine"
        );
        names.push(name);
    }
    assert_ne!(names[0], names[1], "two children share a cgroup");
    // The first child was recycled after its second execution: its cgroup is gone.
    assert!(
        !parent.dir().join(&names[0]).exists(),
        "cgroup of the recycled child {} left",
        served[0].0
    );
    // The hog's child died: its cgroup is gone too.
    let hog_left = step_cgroups(parent.dir(), "-pool-fixture.hog-");
    assert!(
        hog_left
            .iter()
            .all(|p| !p.file_name().unwrap().to_string_lossy().starts_with(&mine)),
        "{hog_left:?}"
    );
    engine.shutdown().unwrap();
    let left: Vec<_> = step_cgroups(parent.dir(), "-pool-")
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&mine))
        .collect();
    assert!(
        left.is_empty(),
        "pooled cgroups left after shutdown: {left:?}"
    );
}
