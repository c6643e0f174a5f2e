//! Durable sleep (`ctx.sleep`): the wake-up time is a journal entry, a sleeping run is a
//! `suspended` row (no thread), and it resumes by replay when due, also after SIGKILL.

mod support;

use rusqlite::params;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

fn wake_times(tmp: &Tmp) -> HashMap<i64, i64> {
    rows(
        &tmp.db(),
        "SELECT run_id, output FROM steps WHERE kind = 'sleep' AND seq = 0",
    )
    .into_iter()
    .map(|r| {
        let b: Vec<u8> = (0..r[1].len() / 2)
            .map(|i| u8::from_str_radix(&r[1][2 * i..2 * i + 2], 16).unwrap())
            .collect();
        (
            r[0].parse().unwrap(),
            waymark::internal::codec::decode::<i64>(&b, 1024).unwrap(),
        )
    })
    .collect()
}

// Scenario: 300 runs each sleep 4 s; the engine is SIGKILLed while all of them are
// suspended, then restarted. Must survive: every run's journaled wake-up time (unchanged by
// the restart), and every run completes, not before its wake-up time, with the step after
// the sleep executed exactly once.
on_both_stores!(sleeping_runs_survive_a_kill_and_wake_after_restart);
fn sleeping_runs_survive_a_kill_and_wake_after_restart(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let ids = tmp.start("fixture.sleeper", r#"{"ms":4000}"#, 300);
    let mut engine = tmp.serve(4, &[]);
    wait_until("all runs suspended", Duration::from_secs(60), || {
        count(&db, "suspended") == 300
    });
    let before = wake_times(&tmp);
    assert_eq!(before.len(), 300);
    kill9(&mut engine);
    assert_eq!(
        count(&db, "suspended"),
        300,
        "nothing ran while the engine was dead"
    );

    let mut engine = tmp.serve(4, &[]);
    wait_until("all runs completed", Duration::from_secs(90), || {
        count(&db, "completed") == 300
    });
    kill9(&mut engine);

    assert_eq!(
        wake_times(&tmp),
        before,
        "wake-up times are journaled, not recomputed"
    );
    for id in &ids {
        let finished = query_i64(
            &db,
            &format!("SELECT finished_at FROM runs WHERE id = {id}"),
        );
        assert!(
            finished >= before[id],
            "run {id} finished before its wake-up time"
        );
        let j = journal(&db, *id);
        assert_eq!(j.len(), 2, "run {id}: {j:?}");
        assert_eq!((j[0].1.as_str(), j[0].2.as_str()), ("sleep", "sleep"));
        assert_eq!(
            (j[1].1.as_str(), j[1].3.as_str()),
            ("fixture.mark", "completed")
        );
    }
    let marks = tmp.effect_steps();
    let runs: std::collections::HashSet<i64> = marks.iter().map(|m| m.0).collect();
    assert_eq!(
        (marks.len(), runs.len()),
        (300, 300),
        "each post-sleep step ran exactly once"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// Scenario: 10,000 runs all sleep until one common wall-clock time, on one engine process
// with 4 worker threads (synchronous=NORMAL: this test is about threads and memory, not
// fsync). Must hold: all wake (not before that time) and complete, and the engine's peak
// RSS (VmHWM) stays under 100 MB: a sleeping run costs a row, not a thread or memory.
#[test]
fn ten_thousand_sleeping_runs_on_four_workers() {
    let tmp = Tmp::new();
    let db = tmp.db();
    let until = now_ms() + 15_000;
    let ids = tmp.start(
        "fixture.sleeper",
        &format!(r#"{{"ms":0,"until_ms":{until}}}"#),
        10_000,
    );
    assert_eq!(ids.len(), 10_000);
    let mut engine = tmp.serve(4, &[("--sync-normal", "")]);
    let pid = engine.id();
    let mut peak_suspended = 0;
    let mut hwm = 0;
    wait_until("10,000 runs completed", Duration::from_secs(300), || {
        let c = counts(&db);
        peak_suspended = peak_suspended.max(c.get("suspended").copied().unwrap_or(0));
        hwm = vm_hwm_kb(pid).unwrap_or(hwm);
        c.get("completed").copied().unwrap_or(0) == 10_000
    });
    hwm = vm_hwm_kb(pid).unwrap_or(hwm);
    kill9(&mut engine);
    eprintln!("10k sleepers: peak suspended {peak_suspended}, engine VmHWM {hwm} kB");
    assert!(hwm > 0, "read VmHWM of the engine");
    assert!(hwm < 100 * 1024, "engine peak RSS {hwm} kB is over 100 MB");
    let c = reader(&db);
    let (slept, early): (i64, i64) = c
        .query_row(
            "SELECT count(*), sum(r.finished_at < ?1) FROM runs r
             JOIN steps s ON s.run_id = r.id AND s.seq = 0 AND s.kind = 'sleep'
             WHERE r.status = 'completed'",
            params![until],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(slept, 10_000, "every run journaled its sleep and completed");
    assert_eq!(early, 0, "no run woke before its wake-up time");
    assert!(
        peak_suspended > 1000,
        "runs slept concurrently (saw {peak_suspended})"
    );
}
