//! The durable features on PostgreSQL, end to end: real `waymark serve --db URL` processes
//! (killed and restarted where the SQLite tests do), the CLI on the same URL, assertions on
//! the PostgreSQL rows. Modeled on tests/feature_{sleep,events,cancel,children,deadlines,
//! queues,schedules,retention,versioning}.rs.

mod support;

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::*;
use waymark::{Ctx, Engine, Registry, Step, StepCtx, Workflow};

fn url(tmp: &Tmp) -> String {
    tmp.url.clone().expect("a PostgreSQL Tmp")
}

/// `waymark ARGS --db URL` on the test's database; its stdout.
fn wm(tmp: &Tmp, args: &[&str]) -> String {
    let url = url(tmp);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--db", &url]);
    tmp.waymark(&all)
}

/// `waymark start WORKFLOW --json JSON --count N EXTRA...`: the new run ids.
fn start_with(tmp: &Tmp, workflow: &str, json: &str, count: usize, extra: &[&str]) -> Vec<i64> {
    let count = count.to_string();
    let mut args = vec!["start", workflow, "--json", json, "--count", &count];
    args.extend(extra);
    wm(tmp, &args)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn send(tmp: &Tmp, run_id: i64, name: &str, json: &str) {
    wm(tmp, &["send", &run_id.to_string(), name, "--json", json]);
}

fn cancel(tmp: &Tmp, run_id: i64) -> String {
    wm(tmp, &["cancel", &run_id.to_string()]).trim().to_string()
}

fn effects_of(tmp: &Tmp, run_id: i64) -> usize {
    tmp.effect_steps().iter().filter(|e| e.0 == run_id).count()
}

// ---- sleep ----

/// run id -> the wake-up time journaled by its sleep (seq 0).
fn wake_times(url: &str) -> HashMap<i64, i64> {
    pg_cluster_client(url)
        .query(
            "SELECT run_id, output FROM steps WHERE kind = 'sleep' AND seq = 0",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let b: Vec<u8> = r.get(1);
            (
                r.get(0),
                waymark::internal::codec::decode::<i64>(&b, 1024).unwrap(),
            )
        })
        .collect()
}

// Scenario: 40 runs each sleep 3 s; the engine is SIGKILLed while all of them are
// suspended, then restarted. Must survive: every run's journaled wake-up time (unchanged by
// the restart); every run completes, not before its wake-up time, with the step after the
// sleep executed exactly once.
#[test]
fn pg_sleeping_runs_survive_a_kill_and_wake_after_restart() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let ids = tmp.start("fixture.sleeper", r#"{"ms":3000}"#, 40);
    let mut engine = tmp.serve(4, &[]);
    wait_until("all runs suspended", Duration::from_secs(60), || {
        pg_count(&url, "suspended") == 40
    });
    let before = wake_times(&url);
    assert_eq!(before.len(), 40);
    let notes = pg_i64(
        &url,
        "SELECT count(*) FROM runs WHERE note LIKE 'sleeping until %' AND ready_at > created_at",
    );
    assert_eq!(
        notes, 40,
        "suspended with the sleep's note and wake-up time"
    );
    kill9(&mut engine);
    assert_eq!(pg_count(&url, "suspended"), 40, "nothing ran while dead");

    let mut engine = tmp.serve(4, &[]);
    wait_until("all runs completed", Duration::from_secs(90), || {
        pg_count(&url, "completed") == 40
    });
    kill9(&mut engine);
    assert_eq!(wake_times(&url), before, "wake-up times are journaled");
    let mut c = pg_cluster_client(&url);
    for id in &ids {
        let finished: i64 = c
            .query_one("SELECT finished_at FROM runs WHERE id = $1", &[id])
            .unwrap()
            .get(0);
        assert!(finished >= before[id], "run {id} finished early");
        let j = pg_journal(&url, *id);
        assert_eq!(j.len(), 2, "run {id}: {j:?}");
        assert_eq!((j[0].1.as_str(), j[0].2.as_str()), ("sleep", "sleep"));
        assert_eq!(
            (j[1].1.as_str(), j[1].3.as_str()),
            ("fixture.mark", "completed")
        );
    }
    let marks = tmp.effect_steps();
    let runs: HashSet<i64> = marks.iter().map(|m| m.0).collect();
    assert_eq!(
        (marks.len(), runs.len()),
        (40, 40),
        "each post-sleep step ran once"
    );
}

// ---- events ----

fn waiting(url: &str, run_id: i64) -> bool {
    pg_cluster_client(url)
        .query_one(
            "SELECT status = 'suspended' AND note = 'waiting for event ''go''' FROM runs
             WHERE id = $1",
            &[&run_id],
        )
        .unwrap()
        .get(0)
}

// Scenario: a run waits (suspended) for event "go"; the engine is SIGKILLed; two "go"
// events are sent while no engine runs; the engine restarts. Must survive: the events; the
// run wakes and gets exactly the first one, journaled once; the second stays unconsumed.
#[test]
fn pg_event_sent_while_engine_dead_is_delivered_once_after_restart() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let id = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":600000}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("run waits for the event", Duration::from_secs(30), || {
        waiting(&url, id)
    });
    kill9(&mut engine);
    send(&tmp, id, "go", r#"{"n":1}"#);
    send(&tmp, id, "go", r#"{"n":2}"#);
    let ready_at = pg_i64(&url, &format!("SELECT ready_at FROM runs WHERE id = {id}"));
    assert!(
        ready_at <= now_ms(),
        "the first send woke the run (due now)"
    );
    let mut engine = tmp.serve(2, &[]);
    wait_until("run completed", Duration::from_secs(30), || {
        pg_status(&url, id) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(pg_output::<String>(&url, id).unwrap(), r#"{"n":1}"#);
    let ev = pg_events(&url, id);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].1, Some(2), "first event consumed into seq 2");
    assert_eq!(ev[1].1, None, "second event kept, not consumed");
    let kinds: Vec<_> = pg_journal(&url, id)
        .into_iter()
        .map(|e| (e.1, e.2))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("fixture.mark".to_string(), "step".to_string()),
            ("wait:go".into(), "sleep".into()),
            ("go".into(), "event".into()),
            ("fixture.mark".into(), "step".into()),
        ]
    );
}

// Scenario: an event sent before the run ever waits (pending, no engine) is kept and
// delivered; a wait that times out while the engine is dead ends with "timeout" after the
// restart; sending to a finished run is refused with a one-line error.
#[test]
fn pg_early_events_are_kept_and_timeouts_survive_restart() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let early = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":600000}"#, 1)[0];
    send(&tmp, early, "go", "[1,2,3]");
    let late = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":1500}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("early run completed", Duration::from_secs(30), || {
        pg_status(&url, early) == "completed"
    });
    wait_until("late run waits", Duration::from_secs(30), || {
        waiting(&url, late)
    });
    kill9(&mut engine);
    std::thread::sleep(Duration::from_millis(1600));
    let mut engine = tmp.serve(2, &[]);
    wait_until("late run completed", Duration::from_secs(30), || {
        pg_status(&url, late) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(pg_output::<String>(&url, early).unwrap(), "[1,2,3]");
    assert_eq!(pg_output::<String>(&url, late).unwrap(), "timeout");
    let j = pg_journal(&url, late);
    assert_eq!((j[2].2.as_str(), j[2].3.as_str()), ("event", "failed"));

    let out = cmd(&[
        "send",
        &early.to_string(),
        "go",
        "--db",
        &url,
        "--json",
        "1",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already ended (completed)"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert_eq!(
        pg_events(&url, early).len(),
        1,
        "nothing kept for a finished run"
    );
}

// Scenario (RejectEvent and AwaitEvent's `upto`): `fixture.approve` waits for a typed
// event (a bool); `"yes"`, `false` and `true` are queued before it waits. Must hold: the
// wrong event is set aside (`consumed_seq = 0`) and parks the run `blocked`; after `resume`
// the oldest good event is delivered into exactly one journal entry, the newer one stays.
#[test]
fn pg_a_wrongly_typed_event_is_set_aside_and_blocks_the_run() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let id = start_with(&tmp, "fixture.approve", "null", 1, &[])[0];
    // A client without a registry cannot check the event's type (the CLI would refuse it).
    let client = waymark::Client::open(std::path::Path::new(&url)).unwrap();
    client.send_event_json(id, "approve", r#""yes""#).unwrap();
    client.send_event_json(id, "approve", "false").unwrap();
    client.send_event_json(id, "approve", "true").unwrap();
    let mut engine = tmp.serve(2, &[]);
    wait_until("run blocked", Duration::from_secs(30), || {
        pg_status(&url, id) == "blocked"
    });
    let note: String = pg_cluster_client(&url)
        .query_one("SELECT note FROM runs WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert!(note.contains("\"yes\""), "{note}");
    let ev = pg_events(&url, id);
    assert_eq!(
        ev.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![Some(0), None, None],
        "the wrong event set aside, nothing delivered: {ev:?}"
    );
    wm(&tmp, &["resume", &id.to_string()]);
    wait_until("run completed", Duration::from_secs(30), || {
        pg_status(&url, id) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(
        pg_output::<String>(&url, id).unwrap(),
        "approved=Some(false)"
    );
    let j = pg_journal(&url, id);
    let wait_seq = j.iter().find(|e| e.2 == "event").expect("a delivery").0;
    assert_eq!(j.iter().filter(|e| e.2 == "event").count(), 1);
    assert_eq!(
        pg_events(&url, id).iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![Some(0), Some(wait_seq), None]
    );
}

// ---- cancellation ----

// Scenario: a run of 40 slow steps is cancelled while a step runs, and the engine is
// SIGKILLed right after the request. Must survive: the request (`cancel_requested`): after
// restart the run ends `cancelled` without executing any further step.
#[test]
fn pg_kill_during_cancellation_ends_cancelled_after_restart() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let id = tmp.start("fixture.slow", r#"{"steps":40,"ms":400}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("two steps done", Duration::from_secs(30), || {
        pg_steps_done(&url, id) >= 2
    });
    assert_eq!(cancel(&tmp, id), "running", "a running run is told");
    kill9(&mut engine);
    let effects_at_kill = effects_of(&tmp, id);
    let journal_at_kill = pg_journal(&url, id).len();
    assert_eq!(pg_status(&url, id), "running");
    assert_eq!(
        pg_i64(
            &url,
            &format!("SELECT cancel_requested FROM runs WHERE id = {id}")
        ),
        1
    );

    let mut engine = tmp.serve(2, &[]);
    wait_until("run cancelled", Duration::from_secs(30), || {
        pg_status(&url, id) == "cancelled"
    });
    std::thread::sleep(Duration::from_millis(1500));
    kill9(&mut engine);
    assert_eq!(pg_status(&url, id), "cancelled");
    assert_eq!(
        effects_of(&tmp, id),
        effects_at_kill,
        "no step after restart"
    );
    assert_eq!(pg_journal(&url, id).len(), journal_at_kill);
}

// Scenario: a sleeping (suspended) run and a pending run are cancelled with no engine.
// Must hold: both end `cancelled` at once; an engine started afterwards runs nothing of
// them; cancelling an unknown run is refused.
#[test]
fn pg_cancelling_a_sleeping_or_pending_run_ends_it_at_once() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let sleeper = tmp.start("fixture.sleeper", r#"{"ms":600000}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("sleeping", Duration::from_secs(30), || {
        pg_status(&url, sleeper) == "suspended"
    });
    kill9(&mut engine);
    let pending = tmp.start("fixture.slow", r#"{"steps":3,"ms":10}"#, 1)[0];
    assert_eq!(cancel(&tmp, sleeper), "cancelled");
    assert_eq!(cancel(&tmp, pending), "cancelled");
    let mut engine = tmp.serve(2, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    kill9(&mut engine);
    assert_eq!(pg_status(&url, sleeper), "cancelled");
    assert_eq!(pg_status(&url, pending), "cancelled");
    assert_eq!(pg_journal(&url, pending).len(), 0);
    assert_eq!(effects_of(&tmp, sleeper) + effects_of(&tmp, pending), 0);
    let errors = pg_i64(
        &url,
        "SELECT count(*) FROM runs WHERE error = 'cancelled' AND finished_at IS NOT NULL
           AND owner IS NULL AND note IS NULL",
    );
    assert_eq!(errors, 2);
    let out = cmd(&["cancel", "999999", "--db", &url]).output().unwrap();
    assert!(!out.status.success(), "an unknown run cannot be cancelled");
}

// ---- children ----

// Scenario: a parent starts a child of 10 slow steps and joins it; the engine is SIGKILLed
// while the child runs (parent suspended waiting for it), then restarted. Must survive: the
// single child (StartChild is idempotent on replay), the child's completed steps, and the
// parent completes with the child's output + 1 (woken by the child's end).
#[test]
fn pg_kill_while_a_child_runs() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let parent = tmp.start("fixture.parent", r#"{"steps":10,"ms":250}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("child ran 3 steps", Duration::from_secs(30), || {
        pg_children(&url, parent)
            .first()
            .is_some_and(|c| pg_steps_done(&url, *c) >= 3)
    });
    kill9(&mut engine);
    let child = pg_children(&url, parent)[0];
    assert_eq!(pg_status(&url, child), "running");

    let mut engine = tmp.serve(2, &[]);
    wait_until("parent completed", Duration::from_secs(60), || {
        pg_status(&url, parent) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(pg_children(&url, parent), vec![child], "exactly one child");
    assert_eq!(pg_status(&url, child), "completed");
    let c_out: u64 = pg_output(&url, child).unwrap();
    let p_out: u64 = pg_output(&url, parent).unwrap();
    assert_eq!(p_out, c_out + 1);
    let kinds: Vec<_> = pg_journal(&url, parent).into_iter().map(|e| e.2).collect();
    assert_eq!(kinds, vec!["child", "step", "join"]);
    let mut per_seq = HashMap::new();
    for (run, seq, _) in tmp.effect_steps() {
        if run == child {
            *per_seq.entry(seq).or_insert(0) += 1;
        }
    }
    assert_eq!(per_seq.len(), 10);
    assert!(
        per_seq.values().filter(|n| **n > 1).count() <= 1,
        "{per_seq:?}"
    );
}

// Scenario: the parent is cancelled while its child runs. Must hold: the suspended parent
// ends at once, the running child is flagged and ends `cancelled` without further steps.
#[test]
fn pg_cancelling_the_parent_cancels_the_child() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let parent = tmp.start("fixture.parent", r#"{"steps":40,"ms":250}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("child ran a step", Duration::from_secs(30), || {
        pg_children(&url, parent)
            .first()
            .is_some_and(|c| pg_steps_done(&url, *c) >= 1)
    });
    let child = pg_children(&url, parent)[0];
    wait_until(
        "parent waits for the child",
        Duration::from_secs(30),
        || pg_status(&url, parent) == "suspended",
    );
    assert_eq!(cancel(&tmp, parent), "cancelled", "a suspended parent ends");
    wait_until("child cancelled", Duration::from_secs(30), || {
        pg_status(&url, child) == "cancelled"
    });
    let done = pg_steps_done(&url, child);
    std::thread::sleep(Duration::from_millis(800));
    kill9(&mut engine);
    assert_eq!(pg_status(&url, parent), "cancelled");
    assert_eq!(pg_steps_done(&url, child), done);
    assert!(done < 40);
}

// ---- deadlines ----

// Scenario: a run of 50 steps of 100 ms has a deadline 1.5 s away; a sleeping run has a
// deadline 2 s away and its engine is SIGKILLed before that; a run whose deadline already
// passed is started. Must hold: all three end `failed` with a reason naming the deadline
// (the sleeping one by the restarted engine), the busy one stops at a step boundary, the
// late one runs nothing.
#[test]
fn pg_runs_fail_when_their_deadline_passes_also_across_a_restart() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let dl = |ms: i64| (now_ms() + ms).to_string();
    let busy = start_with(
        &tmp,
        "fixture.slow",
        r#"{"steps":50,"ms":100}"#,
        1,
        &["--deadline-ms", &dl(1500)],
    )[0];
    let asleep = start_with(
        &tmp,
        "fixture.sleeper",
        r#"{"ms":600000}"#,
        1,
        &["--deadline-ms", &dl(2500)],
    )[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("sleeping", Duration::from_secs(30), || {
        pg_status(&url, asleep) == "suspended"
    });
    kill9(&mut engine);
    std::thread::sleep(Duration::from_millis(2600));
    let late = start_with(
        &tmp,
        "fixture.slow",
        r#"{"steps":3,"ms":1}"#,
        1,
        &["--deadline-ms", &dl(-1)],
    )[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("all three failed", Duration::from_secs(60), || {
        [busy, asleep, late]
            .iter()
            .all(|id| pg_status(&url, *id) == "failed")
    });
    kill9(&mut engine);
    let mut c = pg_cluster_client(&url);
    for id in [busy, asleep, late] {
        let e: String = c
            .query_one("SELECT error FROM runs WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        assert!(e.contains("deadline"), "run {id}: {e}");
    }
    assert!(pg_journal(&url, busy).len() < 50);
    assert!(pg_journal(&url, late).is_empty());
}

// ---- queues ----

// Scenario: queue "q" is limited to 2 running runs; 30 runs of a concurrency probe step
// (300 ms each). Engine A (one worker) starts first and holds one of them; then engine B
// (4 workers, 29 runs waiting) starts: B must count A's running run (another process,
// another connection) and take one slot, not two. Must hold: all complete; no probe ever
// saw more than 2 of them running at once, nor did the rows; both engines ran probes.
#[test]
fn pg_queue_limit_holds_across_two_engine_processes() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let probe_dir = tmp.dir.path().join("probe");
    std::fs::create_dir(&probe_dir).unwrap();
    let ids = start_with(&tmp, "fixture.qprobe", "300", 30, &["--queue", "q"]);
    wm(&tmp, &["queue", "q", "--limit", "2"]);
    assert_eq!(
        pg_i64(&url, "SELECT concurrency FROM queues WHERE name = 'q'"),
        2
    );
    let env = [("WAYMARK_PROBE_DIR", probe_dir.to_str().unwrap())];
    let running_owners = || -> Vec<String> {
        pg_cluster_client(&url)
            .query(
                "SELECT owner FROM runs WHERE queue = 'q' AND status = 'running'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let mut a = tmp.serve(1, &env);
    wait_until("engine A runs a probe", Duration::from_secs(30), || {
        !running_owners().is_empty()
    });
    let mut b = tmp.serve(4, &env);
    let mut most_running = 0;
    let mut owners = HashSet::new();
    wait_until("all probes completed", Duration::from_secs(120), || {
        let running = running_owners();
        most_running = most_running.max(running.len());
        owners.extend(running);
        pg_count(&url, "completed") == 30
    });
    kill9(&mut a);
    kill9(&mut b);
    assert!(most_running <= 2, "saw {most_running} running in queue q");
    let seen: Vec<u64> = ids
        .iter()
        .map(|id| pg_output::<u64>(&url, *id).unwrap())
        .collect();
    let max = seen.iter().copied().max().unwrap();
    assert!(max <= 2, "a probe saw {max} running at once: {seen:?}");
    assert_eq!(owners.len(), 2, "both engines ran probes: {owners:?}");
    wm(&tmp, &["queue", "q", "--unlimited"]);
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM queues"), 0);
}

// ---- schedules ----

/// (due time from the key, created_at) of every run the schedule started, by due time.
fn firings(url: &str, name: &str) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = pg_cluster_client(url)
        .query(
            "SELECT idempotency_key, created_at FROM runs WHERE idempotency_key LIKE $1",
            &[&format!("sched:{name}:%")],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let key: String = r.get(0);
            (key.rsplit(':').next().unwrap().parse().unwrap(), r.get(1))
        })
        .collect();
    v.sort();
    v
}

// Scenario: an every-second schedule with catch-up, served by two engine processes at once;
// both are SIGKILLed at an arbitrary moment, everything stays down 3 s, then one engine
// restarts. Must hold: every due time from the first to the last has exactly one run (no
// duplicate from the two engines or the kill, no gap), none created before its due time,
// and the schedule's row points past the last firing.
#[test]
fn pg_every_due_time_fires_once_across_two_engines_and_a_restart() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    wm(
        &tmp,
        &[
            "schedule",
            "tick",
            "--cron",
            "* * * * * *",
            "--workflow",
            "fixture.slow",
            "--json",
            r#"{"steps":1,"ms":1}"#,
            "--catch-up",
        ],
    );
    assert_eq!(
        pg_i64(
            &url,
            "SELECT catch_up FROM schedules WHERE name = 'tick' AND cron = '* * * * * *'"
        ),
        1
    );
    let mut a = tmp.serve(2, &[]);
    let mut b = tmp.serve(2, &[]);
    wait_until("three firings", Duration::from_secs(30), || {
        firings(&url, "tick").len() >= 3
    });
    kill9(&mut a);
    kill9(&mut b);
    let before = firings(&url, "tick").len();
    std::thread::sleep(Duration::from_secs(3));
    let mut a = tmp.serve(2, &[]);
    wait_until("five more firings", Duration::from_secs(30), || {
        firings(&url, "tick").len() >= before + 5
    });
    kill9(&mut a);
    let f = firings(&url, "tick");
    for w in f.windows(2) {
        assert_eq!(w[1].0 - w[0].0, 1000, "one run per second: {f:?}");
    }
    for (due, created) in &f {
        assert!(created >= due, "run for {due} created early at {created}");
    }
    let next_due = pg_i64(&url, "SELECT next_due FROM schedules WHERE name = 'tick'");
    assert!(
        next_due > f.last().unwrap().0,
        "next_due moved past firings"
    );
    assert!(pg_count(&url, "completed") >= 3, "scheduled runs ran");
}

// Scenario: an every-second schedule without catch-up (skip; `catch_up = 0` read back as
// false); the engine is SIGKILLed and stays down 3 s. Must hold: of the due times missed
// during the downtime at most one (the latest) gets a run; firing resumes afterwards,
// still one run per due time.
#[test]
fn pg_missed_due_times_are_skipped_without_catch_up() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    wm(
        &tmp,
        &[
            "schedule",
            "skip",
            "--cron",
            "* * * * * *",
            "--workflow",
            "fixture.slow",
            "--json",
            r#"{"steps":1,"ms":1}"#,
        ],
    );
    assert_eq!(
        pg_i64(&url, "SELECT catch_up FROM schedules WHERE name = 'skip'"),
        0
    );
    let mut a = tmp.serve(2, &[]);
    wait_until("two firings", Duration::from_secs(30), || {
        firings(&url, "skip").len() >= 2
    });
    kill9(&mut a);
    let last_before = firings(&url, "skip").last().unwrap().0;
    let killed_at = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    let before = firings(&url, "skip").len();
    let mut a = tmp.serve(2, &[]);
    wait_until("three more firings", Duration::from_secs(30), || {
        firings(&url, "skip").len() >= before + 3
    });
    kill9(&mut a);
    let f = firings(&url, "skip");
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
        "a gap where due times were skipped: {f:?}"
    );
}

// ---- retention ----

// Scenario: 300 finished runs (more than one purge batch of 256) with journals, and an
// event each; plus, inserted directly, a finished child of a still-suspended parent. Then
// `waymark gc --older-than 0s --yes`. Must hold: it prints 300 and leaves none of their
// runs, journal entries, attempts or events, nor change-log rows as old; the child of the
// unfinished parent and the parent stay.
#[test]
fn pg_gc_deletes_finished_runs_with_their_rows_but_not_children_of_unfinished_runs() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let ids = tmp.start(
        "fixture.waiter",
        r#"{"name":"go","timeout_ms":600000}"#,
        300,
    );
    for id in &ids {
        send(&tmp, *id, "go", "1");
    }
    let mut engine = tmp.serve(4, &[]);
    wait_until("300 runs completed", Duration::from_secs(120), || {
        pg_count(&url, "completed") == 300
    });
    kill9(&mut engine);
    let mut c = pg_cluster_client(&url);
    let long_ago = now_ms() - 86_400_000;
    let parent: i64 = c
        .query_one(
            "INSERT INTO runs(workflow, input, status, ready_at, created_at, updated_at)
             VALUES ('fixture.parent', '\\x00', 'suspended', $1, $1, $1) RETURNING id",
            &[&(i64::MAX / 2)],
        )
        .unwrap()
        .get(0);
    let child: i64 = c
        .query_one(
            "INSERT INTO runs(workflow, input, status, ready_at, parent_id, created_at,
                              updated_at, finished_at)
             VALUES ('fixture.slow', '\\x00', 'completed', $1, $2, $1, $1, $1) RETURNING id",
            &[&long_ago, &parent],
        )
        .unwrap()
        .get(0);
    assert!(
        pg_i64(&url, "SELECT count(*) FROM attempts") + pg_i64(&url, "SELECT count(*) FROM steps")
            > 0
    );
    let out = cmd(&["gc", "--db", &url, "--older-than", "0s", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300");
    let left = pg_i64(
        &url,
        "SELECT (SELECT count(*) FROM steps) + (SELECT count(*) FROM events)
              + (SELECT count(*) FROM attempts)",
    );
    assert_eq!(left, 0, "journals, events and attempts purged");
    let mut runs: Vec<i64> = c
        .query("SELECT id FROM runs ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        vec![parent, child],
        "the unfinished parent's child stays"
    );
    let stale_changes = pg_i64(
        &url,
        &format!(
            "SELECT count(*) FROM run_changes WHERE at <= {}",
            now_ms() - 60_000
        ),
    );
    assert_eq!(stale_changes, 0, "old change-log rows purged too");
}

// ---- versioning ----

#[derive(Serialize, Deserialize)]
struct SlowIn {
    steps: u32,
    ms: u64,
}

const SLEEP: Step<u64, u64> = Step::new("fixture.sleep");
const SLOW_V2: Workflow<SlowIn, u64> = Workflow::new("fixture.slow").version(2);

// Scenario: runs of fixture.slow at versions 1 and 2; the `waymark serve` build registers
// only version 1; it is SIGKILLed and restarted. Must hold: v1 completes; v2 waits as
// `blocked_version` with a note naming workflow and version, survives the restart, runs
// nothing under v1; an engine that registers version 2 (in the test process, next to the
// v1-only process) claims and completes it.
#[test]
fn pg_unknown_version_is_parked_and_claimed_by_a_build_that_has_it() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let v1 = tmp.start("fixture.slow", r#"{"steps":2,"ms":10}"#, 1)[0];
    let v2 = start_with(
        &tmp,
        "fixture.slow",
        r#"{"steps":2,"ms":10}"#,
        1,
        &["--workflow-version", "2"],
    )[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("v2 parked", Duration::from_secs(30), || {
        pg_status(&url, v1) == "completed" && pg_status(&url, v2) == "blocked_version"
    });
    kill9(&mut engine);
    let note: String = pg_cluster_client(&url)
        .query_one("SELECT note FROM runs WHERE id = $1", &[&v2])
        .unwrap()
        .get(0);
    assert!(
        note.contains("'fixture.slow' version 2 is not registered"),
        "{note}"
    );
    let mut engine = tmp.serve(2, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pg_status(&url, v2), "blocked_version", "still parked");
    assert!(pg_journal(&url, v2).is_empty(), "nothing ran under v1");

    let mut reg = Registry::new();
    reg.step(SLEEP, |_: &StepCtx, ms: u64| Ok(ms * 100));
    reg.workflow(SLOW_V2, |ctx: &mut Ctx<'_>, input: SlowIn| {
        let mut total = 0;
        for _ in 0..input.steps {
            total += ctx.step(SLEEP, &input.ms)?;
        }
        Ok(total)
    });
    let mut config = in_process_config(std::path::Path::new(&url));
    config.workers = 1;
    let v2_engine = Engine::start(reg, config).unwrap();
    wait_until("v2 run completed", Duration::from_secs(30), || {
        pg_status(&url, v2) == "completed"
    });
    assert_eq!(pg_output::<u64>(&url, v2).unwrap(), 2000, "ran the v2 code");
    drop(v2_engine);
    kill9(&mut engine);
}
