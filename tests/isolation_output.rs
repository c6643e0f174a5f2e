//! Output floods: a child writing 1 GiB to stdout and stderr is contained.

mod support;

use std::time::Duration;
use support::*;
use waymark::{CommandOutput, CommandSpec};
use waymark::{Engine, Registry, StartOptions, Step, StepLimits, Workflow};

const CMD: Step<CommandSpec, CommandOutput> = Step::new("fixture.cmd");
const FLOOD: Step<(u64, u64), u64> = Step::new("fixture.flood");
const CMD_WF: Workflow<CommandSpec, CommandOutput> = Workflow::new("t.cmd");
const FLOOD_WF: Workflow<(u64, u64), u64> = Workflow::new("t.flood");

const HALF_GIB: u64 = 512 * 1024 * 1024;
const KEEP: u64 = 1024 * 1024;

fn registry() -> Registry {
    let limits = StepLimits {
        output_bytes_max: KEEP,
        stderr_bytes_max: 64 * 1024,
        timeout: Some(Duration::from_secs(120)),
        ..StepLimits::default()
    };
    let mut reg = Registry::new();
    reg.command(CMD).limits = Some(limits.clone());
    child_step(&mut reg, FLOOD).limits = Some(limits);
    reg.workflow(CMD_WF, |ctx, c| ctx.step(CMD, &c));
    reg.workflow(FLOOD_WF, |ctx, x| ctx.step(FLOOD, &x));
    reg
}

// Scenario: a command step writes 512 MiB to stdout and 512 MiB to stderr at the same time
// (1 GiB in all), and a Rust step child does the same through print!/eprint!. Must hold: no
// deadlock (both finish), the command's result keeps at most 1 MiB of stdout with a
// "[... N bytes truncated ...]" marker and counts all 512 MiB, stderr is bounded too, the
// Rust step completes, and the engine's resident memory grows by less than 64 MiB.
#[test]
fn a_gigabyte_of_output_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(registry(), child_config(dir.path())).unwrap();
    let rss_before = rss_kib();
    let script = format!("head -c {HALF_GIB} /dev/zero & head -c {HALF_GIB} /dev/zero >&2; wait");
    let cmd = CommandSpec::new("sh", &["-c", &script]);
    let c = engine
        .start_run(CMD_WF, &cmd, StartOptions::default())
        .unwrap();
    let f = engine
        .start_run(FLOOD_WF, &(HALF_GIB, HALF_GIB), StartOptions::default())
        .unwrap();
    let out = engine
        .wait_output(CMD_WF, c, Duration::from_secs(180))
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout_bytes, HALF_GIB);
    assert!(out.stdout_truncated);
    assert!(
        out.stdout.len() as u64 <= KEEP + 100,
        "{}",
        out.stdout.len()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("[... {} bytes truncated ...]", HALF_GIB - KEEP)),
        "marker missing"
    );
    assert!(out.stderr.len() as u64 <= 64 * 1024 + 100);
    let written = engine
        .wait_output(FLOOD_WF, f, Duration::from_secs(180))
        .unwrap();
    assert!(written >= 2 * HALF_GIB);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "engine RSS grew by {grown} KiB");
    engine.shutdown().unwrap();
}
