//! Cron schedules: one run per due time, with several engines and across SIGKILL and
//! restart; missed due times caught up or skipped as configured.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// (due time from the key, created_at) of every run the schedule started, by due time.
fn firings(tmp: &Tmp, name: &str) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = rows(
        &tmp.db(),
        &format!("SELECT idempotency_key, created_at FROM runs WHERE idempotency_key LIKE 'sched:{name}:%'"),
    )
    .into_iter()
    .map(|r| {
        (
            r[0].rsplit(':').next().unwrap().parse().unwrap(),
            r[1].parse().unwrap(),
        )
    })
    .collect();
    v.sort();
    v
}

fn schedule(tmp: &Tmp, name: &str, catch_up: bool) {
    let db = tmp.db();
    let mut args = vec![
        "schedule",
        name,
        "--db",
        db.to_str().unwrap(),
        "--cron",
        "* * * * * *",
        "--workflow",
        "fixture.slow",
        "--json",
        r#"{"steps":1,"ms":1}"#,
    ];
    if catch_up {
        args.push("--catch-up");
    }
    tmp.waymark(&args);
}

// Scenario: an every-second schedule with catch-up, served by two engine processes at once;
// both are SIGKILLed at an arbitrary moment (possibly while firing), everything stays down
// 3 s, then one engine restarts. Must hold: every due time from the first to the last has
// exactly one run (no duplicate from the two engines or the kill, no gap: the downtime's due
// times are caught up), and no run was created before its due time.
on_both_stores!(every_due_time_fires_once_across_engines_and_restarts);
fn every_due_time_fires_once_across_engines_and_restarts(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    schedule(&tmp, "tick", true);
    let mut a = tmp.serve(2, &[]);
    let mut b = tmp.serve(2, &[]);
    wait_until("three firings", Duration::from_secs(30), || {
        firings(&tmp, "tick").len() >= 3
    });
    kill9(&mut a);
    kill9(&mut b);
    let before = firings(&tmp, "tick").len();
    std::thread::sleep(Duration::from_secs(3));
    let mut a = tmp.serve(2, &[]);
    wait_until("five more firings", Duration::from_secs(30), || {
        firings(&tmp, "tick").len() >= before + 5
    });
    kill9(&mut a);
    let f = firings(&tmp, "tick");
    for w in f.windows(2) {
        assert_eq!(
            w[1].0 - w[0].0,
            1000,
            "consecutive seconds, no duplicate, no gap: {f:?}"
        );
    }
    for (due, created) in &f {
        assert!(created >= due, "run for {due} created early at {created}");
    }
    assert!(count(&db, "completed") >= 3, "scheduled runs ran");
}

// Scenario: the same schedule without catch-up (skip); the engine is SIGKILLed and stays
// down 3 s. Must hold: of the due times missed during the downtime at most one (the latest)
// gets a run; firing resumes afterwards, still one run per due time.
on_both_stores!(missed_due_times_are_skipped_without_catch_up);
fn missed_due_times_are_skipped_without_catch_up(backend: Backend) {
    let tmp = Tmp::on(backend);
    schedule(&tmp, "skip", false);
    let mut a = tmp.serve(2, &[]);
    wait_until("two firings", Duration::from_secs(30), || {
        firings(&tmp, "skip").len() >= 2
    });
    kill9(&mut a);
    let last_before = firings(&tmp, "skip").last().unwrap().0;
    let killed_at = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    let before = firings(&tmp, "skip").len();
    let mut a = tmp.serve(2, &[]);
    wait_until("three more firings", Duration::from_secs(30), || {
        firings(&tmp, "skip").len() >= before + 3
    });
    kill9(&mut a);
    let f = firings(&tmp, "skip");
    let in_downtime = f
        .iter()
        .filter(|(due, _)| *due > last_before && *due < killed_at + 3000)
        .count();
    assert!(in_downtime <= 1, "missed due times were skipped: {f:?}");
    let mut dues: Vec<i64> = f.iter().map(|x| x.0).collect();
    dues.dedup();
    assert_eq!(dues.len(), f.len(), "one run per due time");
    assert!(
        f.windows(2).any(|w| w[1].0 - w[0].0 >= 2000),
        "a gap where due times were skipped"
    );
}
