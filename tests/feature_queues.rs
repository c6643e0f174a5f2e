//! Queues with concurrency limits across engine processes, priorities, and not-before
//! (delayed start).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn start_with(tmp: &Tmp, workflow: &str, json: &str, count: usize, extra: &[&str]) -> Vec<i64> {
    let db = tmp.db();
    let count = count.to_string();
    let mut args = vec![
        "start",
        workflow,
        "--db",
        db.to_str().unwrap(),
        "--json",
        json,
    ];
    args.extend(["--count", &count]);
    args.extend(extra);
    tmp.waymark(&args)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

// Scenario: queue "q" is limited to 2 running runs; 30 runs of a concurrency probe step
// (150 ms each) are shared by two engine processes of 4 workers each. Must hold: all
// complete and no probe ever saw more than 2 of them running at once (the limit is counted
// inside the claim's write transaction, so it holds across processes).
on_both_stores!(queue_limit_holds_across_two_engine_processes);
fn queue_limit_holds_across_two_engine_processes(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let probe_dir = tmp.dir.path().join("probe");
    std::fs::create_dir(&probe_dir).unwrap();
    let ids = start_with(&tmp, "fixture.qprobe", "150", 30, &["--queue", "q"]);
    tmp.waymark(&["queue", "q", "--db", db.to_str().unwrap(), "--limit", "2"]);
    let env = [("WAYMARK_PROBE_DIR", probe_dir.to_str().unwrap())];
    let mut a = tmp.serve(4, &env);
    let mut b = tmp.serve(4, &env);
    let mut most_running = 0;
    wait_until("all probes completed", Duration::from_secs(60), || {
        let running = query_i64(
            &db,
            "SELECT count(*) FROM runs WHERE queue = 'q' AND status = 'running'",
        );
        most_running = most_running.max(running);
        count(&db, "completed") == 30
    });
    kill9(&mut a);
    kill9(&mut b);
    assert!(most_running <= 2, "saw {most_running} running in queue q");
    let mut seen = Vec::new();
    for id in ids {
        let out = query_blob(&db, &format!("SELECT output FROM runs WHERE id = {id}"));
        seen.push(waymark::internal::codec::decode::<u64>(&out, 1024).unwrap());
    }
    let max = seen.iter().copied().max().unwrap();
    eprintln!("queue limit 2: most probes seen at once {max}, most running rows {most_running}");
    assert!(max <= 2, "a probe saw {max} running at once: {seen:?}");
}

// Scenario: 5 low-priority and 5 high-priority runs wait on an engine with one worker, plus a
// run not to start before now + 2 s; the engine is killed before that time and restarted.
// Must hold: every high-priority run finishes before any low-priority one; the delayed run
// survives the kill and does not start before its not-before time.
on_both_stores!(priorities_and_not_before_survive_restart);
fn priorities_and_not_before_survive_restart(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let low = start_with(&tmp, "fixture.slow", r#"{"steps":1,"ms":20}"#, 5, &[]);
    let high = start_with(
        &tmp,
        "fixture.slow",
        r#"{"steps":1,"ms":20}"#,
        5,
        &["--priority", "10"],
    );
    let not_before = now_ms() + 2000;
    let nb = not_before.to_string();
    let delayed = start_with(
        &tmp,
        "fixture.slow",
        r#"{"steps":1,"ms":1}"#,
        1,
        &["--not-before-ms", &nb],
    )[0];
    let mut engine = tmp.serve(1, &[]);
    wait_until("ten runs completed", Duration::from_secs(30), || {
        count(&db, "completed") == 10
    });
    assert_ne!(status(&db, delayed), "completed");
    kill9(&mut engine);
    let mut engine = tmp.serve(1, &[]);
    wait_until("delayed run completed", Duration::from_secs(30), || {
        status(&db, delayed) == "completed"
    });
    kill9(&mut engine);
    let finished = |id: i64| -> i64 {
        query_i64(
            &db,
            &format!("SELECT finished_at FROM runs WHERE id = {id}"),
        )
    };
    let last_high = high.iter().map(|id| finished(*id)).max().unwrap();
    let first_low = low.iter().map(|id| finished(*id)).min().unwrap();
    assert!(
        last_high <= first_low,
        "high priority first ({last_high} > {first_low})"
    );
    let started = query_i64(
        &db,
        &format!("SELECT min(recorded_at) FROM steps WHERE run_id = {delayed}"),
    );
    assert!(started >= not_before, "delayed run started early");
}
