//! Limits enforced by killing: a CPU-cap spinner and a timed-out sleeper are killed together
//! with the grandchild each started (their whole process group).

mod support;

use serde::{Deserialize, Serialize};
use std::time::Duration;
use support::*;
use waymark::{Engine, Registry, RetryPolicy, StartOptions, Step, StepLimits, Workflow};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpinIn {
    pid_file: String,
    spin: bool,
}

const SPIN: Step<SpinIn, ()> = Step::new("fixture.spin");
const SPIN_WF: Workflow<SpinIn, ()> = Workflow::new("t.spin");

fn registry(spin: bool) -> Registry {
    let mut reg = Registry::new();
    let opts = child_step(&mut reg, SPIN);
    // The spinner gets a generous timeout so its CPU cap (not the clock) ends it even on a
    // loaded machine; the sleeper has no CPU cap that could matter.
    opts.limits = Some(StepLimits {
        cpu_seconds: Some(1),
        timeout: Some(Duration::from_secs(if spin { 60 } else { 2 })),
        ..StepLimits::default()
    });
    opts.retry = Some(RetryPolicy::never());
    reg.workflow(SPIN_WF, |ctx, s| ctx.step(SPIN, &s));
    reg
}

// Scenario: one step starts a grandchild (`sleep 600`) and burns CPU past its 1 s CPU cap;
// another starts a grandchild and sleeps past its 2 s timeout. Must hold: the first fails
// as cpu_limit ("CPU limit exceeded (1 s)"), the second as timeout, and both grandchildren
// are gone afterwards (the whole process group was killed); no child of the engine is left.
#[test]
fn cpu_cap_and_timeout_kill_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    for (spin, class) in [(true, "cpu_limit"), (false, "timeout")] {
        let engine = Engine::start(registry(spin), child_config(dir.path())).unwrap();
        let pid_file = dir.path().join(format!("grandchild-{spin}"));
        let input = SpinIn {
            pid_file: pid_file.to_string_lossy().into(),
            spin,
        };
        let id = engine
            .start_run(SPIN_WF, &input, StartOptions::default())
            .unwrap();
        let row = engine.wait(id, Duration::from_secs(60)).unwrap();
        assert_eq!(row.status, "failed");
        let err = row.error.unwrap_or_default();
        let attempts = engine.attempts(id).unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome.as_deref(), Some(class), "{err}");
        if class == "cpu_limit" {
            assert!(err.contains("CPU limit exceeded (1 s)"), "{err}");
        } else {
            assert!(err.contains("timed out after 2.0 s"), "{err}");
        }
        let grandchild: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            poll(Duration::from_secs(10), || (!alive(grandchild))
                .then_some(()))
            .is_some(),
            "grandchild {grandchild} of the {class} step is still alive"
        );
        assert!(my_children().is_empty(), "{:?}", my_children());
        engine.shutdown().unwrap();
    }
}
