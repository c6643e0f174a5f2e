//! `waymark bench --json` (issue 15): every workload reports what it cost per unit of work
//! (context switches, CPU microseconds, and commits where the writers count them), and the
//! new workloads M1 (1, 2, 4, 8 engine processes on one file, 16 workers in all) and Q1
//! (shallow and deep queue) run in `--quick` as CI calls it, with no BUSY reaching a caller.

mod support;

use serde_json::Value;
use support::*;

#[test]
fn bench_quick_json_reports_cost_of_every_workload_and_m1_q1() {
    let dir = tempdir();
    let out = run(&[
        "bench",
        "--quick",
        "--json",
        "--only",
        "M1,Q1",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let results = report["results"].as_array().expect("results");

    // Every measured row (baselines included) carries its cost; the busy count is a tally.
    for r in results {
        if r["unit"] == "errors" {
            continue;
        }
        let cost = &r["cost"];
        assert!(cost.is_object(), "no cost in {r}");
        assert!(cost["per"].is_string(), "{r}");
        assert!(cost["units"].as_u64().unwrap() > 0, "{r}");
        assert!(cost["context_switches"].as_f64().unwrap() > 0.0, "{r}");
        assert!(cost["cpu_us"].as_f64().unwrap() > 0.0, "{r}");
    }
    let rows = |id: &str| -> Vec<&Value> { results.iter().filter(|r| r["id"] == id).collect() };

    // M1: one row per process count, each with commits per run read from its engines'
    // writers; 2, 4 and 8 processes as a ratio to one process; then the BUSY tally, 0.
    let m1 = rows("M1");
    assert_eq!(m1.len(), 5, "{m1:?}");
    for (i, r) in m1[..4].iter().enumerate() {
        assert_eq!(r["unit"], "runs/s");
        assert!(r["value"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["cost"]["commits"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["ratio"].is_number(), i > 0, "{r}");
    }
    assert_eq!(m1[4]["value"].as_f64(), Some(0.0), "BUSY reached a caller");
    assert_eq!(m1[4]["goal_met"], true);

    // Q1: shallow then deep, the deep rate as a ratio to the shallow one.
    let q1 = rows("Q1");
    assert_eq!(q1.len(), 2, "{q1:?}");
    assert!(q1[1]["ratio"].as_f64().unwrap() > 0.0);
    for r in q1 {
        assert!(r["cost"]["commits"].as_f64().unwrap() > 0.0, "{r}");
    }
}
