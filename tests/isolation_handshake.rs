//! The start-up handshake: a host that forgot the hook gets an error naming the line to add.

mod support;

use support::*;
use waymark::{Config, Engine, Error, Isolation, Registry, Step};

const QUICK: Step<u64, u64> = Step::new("fixture.quick");

fn registry() -> Registry {
    let mut reg = Registry::new();
    child_step(&mut reg, QUICK);
    reg
}

// Scenario (one test: it sets a process-wide environment variable at the end):
// 1. this test binary never called the hook and children would be itself;
// 2. children are a program that does not speak the protocol (/bin/true);
// 3. children are the waymark binary but a step is missing from its registry;
// 4. the same setup with in-process isolation;
// 5. the process looks like a step child (WAYMARK_CHILD set) and tries to start an engine.
// Must hold: 1, 2 and 3 fail at Engine::start with Error::Isolation; 1 and 2 quote the exact
// line to add to main; 4 starts; 5 is refused even with in-process isolation, so a host
// without the hook can never loop through its own main.
#[test]
fn missing_hook_is_detected_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let line = waymark::internal::isolation::HOOK_LINE;
    assert_eq!(line, "waymark::hook(build_registry);");

    let mut c1 = Config::new(dir.path().join("a.db"));
    c1.child_program = None;
    let e = Engine::start(registry(), c1).unwrap_err();
    assert!(matches!(e, Error::Isolation(_)));
    assert!(e.to_string().contains(line), "{e}");

    let mut c2 = child_config(dir.path());
    c2.child_program = Some("/bin/true".into());
    let e = Engine::start(registry(), c2).unwrap_err();
    assert!(e.to_string().contains(line), "{e}");

    let mut reg = registry();
    child_step(&mut reg, Step::<u64, u64>::new("no.such.step"));
    let e = Engine::start(reg, child_config(dir.path())).unwrap_err();
    assert!(e.to_string().contains("no.such.step"), "{e}");

    let mut c4 = Config::new(dir.path().join("b.db"));
    c4.isolation = Isolation::InProcess;
    let mut reg = Registry::new();
    reg.step(QUICK, |_, n| Ok(n + 1));
    Engine::start(reg, c4.clone()).unwrap().shutdown().unwrap();

    std::env::set_var(waymark::internal::isolation::ENV_MODE, "step");
    let mut reg = Registry::new();
    reg.step(QUICK, |_, n| Ok(n + 1));
    let e = Engine::start(reg, c4).unwrap_err();
    assert!(e.to_string().contains(line), "{e}");
}
