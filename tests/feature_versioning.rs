//! Versioning: a run started under workflow version v runs only under v. A build that knows
//! the workflow but not v parks the run as `blocked_version` (listed by
//! `waymark runs --status blocked_version`); a build that has v still claims it.

mod support;

use serde::{Deserialize, Serialize};
use std::time::Duration;
use support::*;
use waymark::{Config, Ctx, Engine, Registry, Step, StepCtx, Workflow};

#[derive(Serialize, Deserialize)]
struct SlowIn {
    steps: u32,
    ms: u64,
}

const SLEEP: Step<u64, u64> = Step::new("fixture.sleep");
const SLOW_V2: Workflow<SlowIn, u64> = Workflow::new("fixture.slow").version(2);

fn note(tmp: &Tmp, id: i64) -> String {
    query_text(&tmp.db(), &format!("SELECT note FROM runs WHERE id = {id}"))
}

// Scenario: runs of fixture.slow at versions 1 and 2 are started; the `waymark serve` build
// registers only version 1; it is SIGKILLed and restarted. Must hold: v1 completes; v2 waits
// as `blocked_version` with a message naming the workflow and version (not failed, not run
// under v1), survives the restart, is listed by `waymark runs --status blocked_version`, and
// an engine built with version 2 (here in-process, next to the v1-only process) claims and
// completes it.
on_both_stores!(unknown_version_is_parked_and_claimed_by_a_build_that_has_it);
fn unknown_version_is_parked_and_claimed_by_a_build_that_has_it(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let db_s = db.to_str().unwrap().to_string();
    let v1 = tmp.start("fixture.slow", r#"{"steps":2,"ms":10}"#, 1)[0];
    let v2 = tmp
        .waymark(&[
            "start",
            "fixture.slow",
            "--db",
            &db_s,
            "--json",
            r#"{"steps":2,"ms":10}"#,
            "--workflow-version",
            "2",
        ])
        .trim()
        .parse::<i64>()
        .unwrap();
    let mut engine = tmp.serve(2, &[]);
    wait_until("v2 parked", Duration::from_secs(30), || {
        status(&db, v1) == "completed" && status(&db, v2) == "blocked_version"
    });
    kill9(&mut engine);
    let n = note(&tmp, v2);
    assert!(
        n.contains("'fixture.slow' version 2 is not registered"),
        "{n}"
    );
    let mut engine = tmp.serve(2, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status(&db, v2),
        "blocked_version",
        "still parked after a restart"
    );
    assert!(
        journal(&db, v2).is_empty(),
        "nothing of it ran under version 1"
    );
    let listed = tmp.waymark(&[
        "runs",
        "--db",
        &db_s,
        "--status",
        "blocked_version",
        "--json",
    ]);
    let rows: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], v2);
    assert_eq!(rows[0]["version"], 2);

    // A build with version 2, sharing the file with the running v1-only engine.
    let mut reg = Registry::new();
    reg.step(SLEEP, |_: &StepCtx, ms: u64| Ok(ms * 100));
    reg.workflow(SLOW_V2, |ctx: &mut Ctx<'_>, input: SlowIn| {
        let mut total = 0;
        for _ in 0..input.steps {
            total += ctx.step(SLEEP, &input.ms)?;
        }
        Ok(total)
    });
    let mut config = Config::new(&db);
    config.isolation = waymark::Isolation::InProcess; // test binaries have no child hook
    config.workers = 1;
    let v2_engine = Engine::start(reg, config).unwrap();
    // `wait` returns on parked runs too; poll until the v2 build has claimed and finished it.
    wait_until("v2 run completed", Duration::from_secs(30), || {
        status(&db, v2) == "completed"
    });
    let out = v2_engine
        .wait_output(SLOW_V2, v2, Duration::from_secs(30))
        .unwrap();
    assert_eq!(out, 2000, "ran the version-2 code");
    drop(v2_engine);
    kill9(&mut engine);
}
