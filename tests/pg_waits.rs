//! The durable features on PostgreSQL, end to end: real `waymark serve --db URL` processes
//! (killed and restarted where the SQLite tests do), the CLI on the same URL, assertions on
//! the PostgreSQL rows. Modeled on tests/feature_{sleep,events,cancel,children,deadlines,
//! queues,schedules,retention,versioning}.rs.

mod support;

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;
use waymark::{Ctx, Engine, Registry, Step, StepCtx, Workflow};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

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

/// (id, consumed_seq) of the run's events, in send order.
fn events(url: &str, run_id: i64) -> Vec<(i64, Option<i64>)> {
    pg_cluster_client(url)
        .query(
            "SELECT id, consumed_seq FROM events WHERE run_id = $1 ORDER BY id",
            &[&run_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
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
    let ev = events(&url, id);
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
        events(&url, early).len(),
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
    let ev = events(&url, id);
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
        events(&url, id).iter().map(|e| e.1).collect::<Vec<_>>(),
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
// (150 ms each) are shared by two engine processes of 4 workers each. Must hold: all
// complete and no probe ever saw more than 2 of them running at once (the claim locks the
// queue's row before counting, across processes and connections).
#[test]
fn pg_queue_limit_holds_across_two_engine_processes() {
    let tmp = Tmp::pg();
    let url = url(&tmp);
    let probe_dir = tmp.dir.path().join("probe");
    std::fs::create_dir(&probe_dir).unwrap();
    let ids = start_with(&tmp, "fixture.qprobe", "150", 30, &["--queue", "q"]);
    wm(&tmp, &["queue", "q", "--limit", "2"]);
    assert_eq!(
        pg_i64(&url, "SELECT concurrency FROM queues WHERE name = 'q'"),
        2
    );
    let env = [("WAYMARK_PROBE_DIR", probe_dir.to_str().unwrap())];
    let mut a = tmp.serve(4, &env);
    let mut b = tmp.serve(4, &env);
    let mut most_running = 0;
    wait_until("all probes completed", Duration::from_secs(120), || {
        let running = pg_i64(
            &url,
            "SELECT count(*) FROM runs WHERE queue = 'q' AND status = 'running'",
        );
        most_running = most_running.max(running);
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
    let owners = pg_i64(
        &url,
        "SELECT count(DISTINCT owner) FROM attempts WHERE run_id IN (SELECT id FROM runs WHERE queue = 'q')",
    );
    eprintln!(
        "queue limit 2 on PostgreSQL: most probes at once {max}, engines that ran probes {owners}"
    );
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

// ---- the transitions' guards, on the store itself (commands as the engine sends them) ----

mod guards {
    use super::*;
    use std::sync::Arc;
    use waymark::internal::clock::SystemClock;
    use waymark::internal::store::pg::PgStore;
    use waymark::internal::store::write::{Done, Fence, NewRun, Op};
    use waymark::internal::store::{Awaited, ScheduleRow, Storage, StoreError};

    fn store(url: &str) -> PgStore {
        PgStore::open(url, 4, Arc::new(SystemClock::default())).unwrap()
    }

    /// A run inserted `running` under owner "t" at `epoch` (as a claim leaves it): its fence.
    fn running(c: &mut postgres::Client, workflow: &str, parent: Option<i64>) -> Fence {
        let id: i64 = c
            .query_one(
                "INSERT INTO runs(workflow, input, status, owner, epoch, ready_at, parent_id,
                                  created_at, updated_at)
                 VALUES ($1, '\\x00', 'running', 't', 1, 0, $2, 0, 0) RETURNING id",
                &[&workflow, &parent],
            )
            .unwrap()
            .get(0);
        Fence {
            run_id: id,
            owner: "t".into(),
            epoch: 1,
        }
    }

    /// Claim `fence`'s run again (a new epoch), as the engine does when a parked run is due.
    fn reclaim(c: &mut postgres::Client, fence: &Fence) -> Fence {
        c.execute(
            "UPDATE runs SET status = 'running', owner = 't', epoch = epoch + 1 WHERE id = $1",
            &[&fence.run_id],
        )
        .unwrap();
        Fence {
            run_id: fence.run_id,
            owner: "t".into(),
            epoch: fence.epoch + 1,
        }
    }

    fn row(c: &mut postgres::Client, id: i64) -> (String, Option<String>, i64, i64) {
        let r = c
            .query_one(
                "SELECT status, note, ready_at, cancel_requested FROM runs WHERE id = $1",
                &[&id],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    }

    fn new_run(workflow: &str, key: Option<&str>, parent: Option<i64>) -> NewRun {
        NewRun {
            workflow: workflow.into(),
            version: 1,
            input: vec![0],
            idempotency_key: key.map(Into::into),
            queue: "default".into(),
            priority: 0,
            ready_at: None,
            parent_id: parent,
            deadline_at: None,
        }
    }

    fn awaited(d: Done) -> Awaited {
        match d {
            Done::Awaited(a) => a,
            other => panic!("answered {other:?}"),
        }
    }

    // Timer: a stale fence is LeaseLost and writes nothing; a timer journals its wake-up
    // time and suspends the run until then with its note; a second entry at the same seq
    // is JournalConflict.
    #[test]
    fn pg_timer_is_fenced_journaled_once_and_suspends() {
        let url = fresh_pg_db();
        let s = store(&url);
        let mut c = pg_cluster_client(&url);
        let f = running(&mut c, "w", None);
        let wake = now_ms() + 60_000;
        let stale = Fence {
            epoch: 0,
            ..f.clone()
        };
        let timer = |fence: &Fence, seq: i64| Op::Timer {
            fence: fence.clone(),
            seq,
            name: "sleep".into(),
            wake,
            suspend: true,
        };
        assert!(matches!(
            s.call(timer(&stale, 0)),
            Err(StoreError::LeaseLost { .. })
        ));
        assert_eq!(pg_i64(&url, "SELECT count(*) FROM steps"), 0);
        assert_eq!(awaited(s.call(timer(&f, 0)).unwrap()), Awaited::Waiting);
        let (status, note, ready_at, _) = row(&mut c, f.run_id);
        assert_eq!(
            (status.as_str(), note.as_deref(), ready_at),
            ("suspended", Some(&*format!("sleeping until {wake}")), wake)
        );
        let f2 = reclaim(&mut c, &f);
        assert!(matches!(
            s.call(timer(&f2, 0)),
            Err(StoreError::JournalConflict { seq: 0, .. })
        ));
        assert_eq!(pg_status(&url, f.run_id), "running", "rolled back");
    }

    // Events: a wait with nothing sent suspends until the deadline; SendEvent wakes it;
    // an event the caller has not checked (`upto`) makes it look again instead of being
    // delivered; with `upto` it is delivered into the entry (consumed once); a passed
    // deadline journals a failed wait; RejectEvent sets the event aside and blocks the
    // run; sending to an unknown or finished run is refused.
    #[test]
    fn pg_events_wait_wake_deliver_once_time_out_and_set_aside() {
        let url = fresh_pg_db();
        let s = store(&url);
        let mut c = pg_cluster_client(&url);
        let f = running(&mut c, "w", None);
        let deadline = now_ms() + 600_000;
        let wait = |fence: &Fence, seq: i64, deadline: i64, upto: Option<i64>| Op::AwaitEvent {
            fence: fence.clone(),
            seq,
            name: "go".into(),
            deadline,
            upto,
        };
        assert_eq!(
            awaited(s.call(wait(&f, 0, deadline, None)).unwrap()),
            Awaited::Waiting
        );
        let (status, note, ready_at, _) = row(&mut c, f.run_id);
        assert_eq!(
            (status.as_str(), note.as_deref(), ready_at),
            ("suspended", Some("waiting for event 'go'"), deadline)
        );
        let sent = s.send_event(f.run_id, "go".into(), b"1".to_vec()).unwrap();
        assert!(sent.woke, "the suspended waiter is woken");
        assert!(row(&mut c, f.run_id).2 <= now_ms());
        assert_eq!(
            s.next_event(f.run_id, "go").unwrap(),
            Some((sent.event_id, b"1".to_vec()))
        );
        let f = reclaim(&mut c, &f);
        assert_eq!(
            awaited(s.call(wait(&f, 0, deadline, None)).unwrap()),
            Awaited::Waiting,
            "an unchecked event: look again"
        );
        assert!(row(&mut c, f.run_id).2 <= now_ms(), "due at once");
        assert_eq!(events(&url, f.run_id), vec![(sent.event_id, None)]);
        let f = reclaim(&mut c, &f);
        assert_eq!(
            awaited(s.call(wait(&f, 0, deadline, Some(sent.event_id))).unwrap()),
            Awaited::Delivered(b"1".to_vec())
        );
        assert_eq!(events(&url, f.run_id), vec![(sent.event_id, Some(0))]);
        assert_eq!(s.next_event(f.run_id, "go").unwrap(), None);
        match s.call(wait(&f, 1, now_ms() - 1, None)).unwrap() {
            Done::Awaited(Awaited::Failed(reason)) => {
                assert_eq!(reason, "timed out waiting for event 'go'")
            }
            other => panic!("{other:?}"),
        }
        let j = pg_journal(&url, f.run_id);
        assert_eq!(
            j.iter()
                .map(|e| (e.2.as_str(), e.3.as_str()))
                .collect::<Vec<_>>(),
            vec![("event", "completed"), ("event", "failed")]
        );
        assert_eq!(
            pg_status(&url, f.run_id),
            "running",
            "delivered and timed out without parking"
        );

        let bad = s.send_event(f.run_id, "go".into(), b"x".to_vec()).unwrap();
        assert!(!bad.woke, "a running run is not woken");
        s.call(Op::RejectEvent {
            fence: f.clone(),
            event_id: bad.event_id,
            note: "bad".into(),
        })
        .unwrap();
        let (status, note, _, _) = row(&mut c, f.run_id);
        assert_eq!((status.as_str(), note.as_deref()), ("blocked", Some("bad")));
        assert_eq!(events(&url, f.run_id)[1], (bad.event_id, Some(0)));
        assert!(matches!(
            s.call(Op::RejectEvent {
                fence: f.clone(),
                event_id: bad.event_id,
                note: "bad".into(),
            }),
            Err(StoreError::LeaseLost { .. })
        ));

        assert!(matches!(
            s.send_event(999_999, "go".into(), vec![]),
            Err(StoreError::NotFound { run_id: 999_999 })
        ));
        c.execute(
            "UPDATE runs SET status = 'completed' WHERE id = $1",
            &[&f.run_id],
        )
        .unwrap();
        assert!(matches!(
            s.send_event(f.run_id, "go".into(), vec![]),
            Err(StoreError::RunFinished { .. })
        ));
    }

    // Children: StartChild is idempotent by key (replay returns the same run); a join of a
    // running child suspends the parent, the child's end wakes it (trigger), the next join
    // delivers the child's output; a failed or missing child is a failed join.
    #[test]
    fn pg_children_start_once_park_their_parent_and_wake_it() {
        let url = fresh_pg_db();
        let s = store(&url);
        let mut c = pg_cluster_client(&url);
        let p = running(&mut c, "parent", None);
        let start = |fence: &Fence, seq: i64, key: &str| Op::StartChild {
            fence: fence.clone(),
            seq,
            name: "child".into(),
            run: new_run("child", Some(key), Some(fence.run_id)),
        };
        let child = match s.call(start(&p, 0, "k0")).unwrap() {
            Done::Run { id, created: true } => id,
            other => panic!("{other:?}"),
        };
        // A replay after a crash journals at a later seq here only to show the key holds.
        match s.call(start(&p, 1, "k0")).unwrap() {
            Done::Run { id, .. } => assert_eq!(id, child, "idempotent by key"),
            other => panic!("{other:?}"),
        }
        assert_eq!(pg_children(&url, p.run_id), vec![child]);
        assert_eq!(pg_status(&url, child), "pending");
        let join = |fence: &Fence, seq: i64, child_id: i64| Op::AwaitChild {
            fence: fence.clone(),
            seq,
            name: "join".into(),
            child_id,
        };
        assert_eq!(
            awaited(s.call(join(&p, 2, child)).unwrap()),
            Awaited::Waiting
        );
        let (status, note, ready_at, _) = row(&mut c, p.run_id);
        assert_eq!(
            (status.as_str(), note.as_deref(), ready_at),
            (
                "suspended",
                Some(&*format!("waiting for child {child}")),
                i64::MAX
            )
        );
        let t = now_ms();
        c.execute(
            "UPDATE runs SET status = 'completed', output = '\\x2a', updated_at = $2
             WHERE id = $1",
            &[&child, &t],
        )
        .unwrap();
        assert_eq!(
            row(&mut c, p.run_id).2,
            t,
            "the child's end woke the parent"
        );
        let p = reclaim(&mut c, &p);
        assert_eq!(
            awaited(s.call(join(&p, 2, child)).unwrap()),
            Awaited::Delivered(vec![42])
        );
        match s.call(join(&p, 3, 999_999)).unwrap() {
            Done::Awaited(Awaited::Failed(r)) => {
                assert_eq!(r, "child run 999999 does not exist")
            }
            other => panic!("{other:?}"),
        }
        let kinds: Vec<_> = pg_journal(&url, p.run_id)
            .into_iter()
            .map(|e| (e.2, e.3))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("child".to_string(), "completed".to_string()),
                ("child".into(), "completed".into()),
                ("join".into(), "completed".into()),
                ("join".into(), "failed".into()),
            ]
        );
    }

    // The race AwaitChild's FOR SHARE closes: the child's end is written (its trigger finds
    // the parent still running: no wake) but not yet committed when the parent's join
    // looks. The join must wait for that commit and deliver, never park the parent for
    // good (a lost wake-up: suspended until i64::MAX with its child completed).
    #[test]
    fn pg_a_join_racing_the_childs_end_never_loses_the_wake_up() {
        let url = fresh_pg_db();
        let s = store(&url);
        let mut c = pg_cluster_client(&url);
        let p = running(&mut c, "parent", None);
        let child = running(&mut c, "child", Some(p.run_id)).run_id;
        let mut tx = c.transaction().unwrap();
        tx.execute(
            "UPDATE runs SET status = 'completed', output = '\\x07', updated_at = 1
             WHERE id = $1",
            &[&child],
        )
        .unwrap();
        let join = {
            let s = s.clone();
            let p = p.clone();
            std::thread::spawn(move || {
                s.call(Op::AwaitChild {
                    fence: p,
                    seq: 0,
                    name: "join".into(),
                    child_id: child,
                })
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
        let answer = join.join().unwrap().unwrap();
        let (status, _, ready_at, _) = row(&mut c, p.run_id);
        assert!(
            matches!(answer, Done::Awaited(Awaited::Delivered(ref v)) if v == &vec![7])
                || (status == "suspended" && ready_at < i64::MAX),
            "lost wake-up: join answered {answer:?}, parent {status} until {ready_at}"
        );
    }

    // Cancel: a running run is flagged (its pending child ends at once), answered
    // "running"; its next wait ends it cancelled instead; a child started after the request
    // is created and ends cancelled with its parent; FinishCancelled is fenced; an unknown
    // run is NotFound.
    #[test]
    fn pg_cancel_flags_running_ends_parked_and_cancels_descendants() {
        let url = fresh_pg_db();
        let s = store(&url);
        let mut c = pg_cluster_client(&url);
        let p = running(&mut c, "parent", None);
        let kid = match s
            .call(Op::StartChild {
                fence: p.clone(),
                seq: 0,
                name: "kid".into(),
                run: new_run("child", Some("kid"), Some(p.run_id)),
            })
            .unwrap()
        {
            Done::Run { id, .. } => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(s.cancel(p.run_id).unwrap(), "running");
        assert_eq!(row(&mut c, p.run_id).3, 1, "flagged");
        assert_eq!(
            pg_status(&url, kid),
            "cancelled",
            "a pending child ends at once"
        );
        assert_eq!(s.running_cancel_requests("t").unwrap(), vec![(p.run_id, 1)]);
        let late = match s
            .call(Op::StartChild {
                fence: p.clone(),
                seq: 1,
                name: "late".into(),
                run: new_run("child", Some("late"), Some(p.run_id)),
            })
            .unwrap()
        {
            Done::Awaited(Awaited::Cancelled) => pg_children(&url, p.run_id)[1],
            other => panic!("{other:?}"),
        };
        assert_eq!(pg_status(&url, late), "cancelled");
        assert_eq!(pg_status(&url, p.run_id), "cancelled");
        assert_eq!(
            pg_journal(&url, p.run_id).len(),
            2,
            "both children journaled"
        );
        assert!(matches!(
            s.call(Op::FinishCancelled {
                fence: p.clone(),
                reason: "x".into()
            }),
            Err(StoreError::LeaseLost { .. })
        ));

        // A running run whose cancel was requested ends at its next wait (Timer).
        let r = running(&mut c, "w", None);
        let grandchild_parent = running(&mut c, "child", Some(r.run_id));
        assert_eq!(s.cancel(r.run_id).unwrap(), "running");
        assert_eq!(
            row(&mut c, grandchild_parent.run_id).3,
            1,
            "descendant flagged"
        );
        assert_eq!(
            awaited(
                s.call(Op::Timer {
                    fence: r.clone(),
                    seq: 0,
                    name: "sleep".into(),
                    wake: now_ms() + 60_000,
                    suspend: true,
                })
                .unwrap()
            ),
            Awaited::Cancelled
        );
        assert_eq!(pg_status(&url, r.run_id), "cancelled");
        assert!(pg_journal(&url, r.run_id).is_empty(), "nothing journaled");
        s.call(Op::FinishCancelled {
            fence: grandchild_parent.clone(),
            reason: "cancelled".into(),
        })
        .unwrap();
        assert_eq!(pg_status(&url, grandchild_parent.run_id), "cancelled");
        assert_eq!(s.cancel(r.run_id).unwrap(), "cancelled", "idempotent");
        assert!(matches!(
            s.cancel(999_999),
            Err(StoreError::NotFound { run_id: 999_999 })
        ));

        // A suspended run with the flag set (left by a crash) is found by the sweep.
        let z = running(&mut c, "w", None);
        c.execute(
            "UPDATE runs SET status = 'suspended', cancel_requested = 1 WHERE id = $1",
            &[&z.run_id],
        )
        .unwrap();
        assert_eq!(s.parked_cancel_requests(10).unwrap(), vec![z.run_id]);
    }

    // Deadlines and versions: ExpireDeadlines fails pending and suspended runs past their
    // deadline (not running ones, not future ones) with the deadline in the reason;
    // ParkUnknownVersions parks due pending runs of a known workflow at an unknown version.
    #[test]
    fn pg_deadlines_expire_and_unknown_versions_park() {
        let url = fresh_pg_db();
        let s = store(&url);
        let mut c = pg_cluster_client(&url);
        let now = now_ms();
        let mut insert = |status: &str, deadline: Option<i64>, version: i64| -> i64 {
            c.query_one(
                "INSERT INTO runs(workflow, version, input, status, ready_at, deadline_at,
                                  created_at, updated_at)
                 VALUES ('w', $1, '\\x00', $2, 0, $3, 0, 0) RETURNING id",
                &[&version, &status, &deadline],
            )
            .unwrap()
            .get(0)
        };
        let pending = insert("pending", Some(now - 10), 1);
        let suspended = insert("suspended", Some(now - 10), 1);
        let busy = insert("running", Some(now - 10), 1);
        let future = insert("pending", Some(now + 600_000), 1);
        let v2 = insert("pending", None, 2);
        assert!(s.deadlines_passed(now).unwrap());
        match s.call(Op::ExpireDeadlines { limit: 100 }).unwrap() {
            Done::Count(n) => assert_eq!(n, 2),
            other => panic!("{other:?}"),
        }
        assert!(!s.deadlines_passed(now_ms()).unwrap());
        for id in [pending, suspended] {
            assert_eq!(pg_status(&url, id), "failed");
        }
        let err: String = c
            .query_one("SELECT error FROM runs WHERE id = $1", &[&pending])
            .unwrap()
            .get(0);
        assert_eq!(
            err,
            format!(
                "deadline passed (deadline_at {} ms) before the run finished",
                now - 10
            )
        );
        assert_eq!(pg_status(&url, busy), "running");
        assert_eq!(pg_status(&url, future), "pending");

        let names = r#"["w"]"#;
        let known = r#"["w@1"]"#;
        assert!(s.pending_unknown_versions(now_ms(), names, known).unwrap());
        assert!(!s
            .pending_unknown_versions(now_ms(), names, r#"["w@1","w@2"]"#)
            .unwrap());
        assert!(!s
            .pending_unknown_versions(now_ms(), r#"["x"]"#, known)
            .unwrap());
        match s
            .call(Op::ParkUnknownVersions {
                names_json: names.into(),
                workflows_json: known.into(),
                limit: 100,
            })
            .unwrap()
        {
            Done::Count(n) => assert_eq!(n, 1),
            other => panic!("{other:?}"),
        }
        let (status, note, _, _) = row(&mut c, v2);
        assert_eq!(status, "blocked_version");
        assert_eq!(
            note.unwrap(),
            "workflow 'w' version 2 is not registered in this build (it has other versions of w); a build that registers version 2 will claim it"
        );
        assert_eq!(pg_status(&url, future), "pending", "a known version stays");
    }

    // Admin: queue limits set and removed; a schedule saved (a new cron resets next_due,
    // the same cron keeps it), read when due, fired once per due time even by two
    // firings at once (the second waits for the first and changes nothing); vacuum has
    // nothing to give back; purge is bounded and keeps children of unfinished runs.
    #[test]
    fn pg_admin_queues_schedules_fire_once_purge_and_vacuum() {
        let url = fresh_pg_db();
        let s = store(&url);
        let mut c = pg_cluster_client(&url);
        s.call(Op::SetQueueLimit {
            queue: "q".into(),
            concurrency: Some(3),
        })
        .unwrap();
        s.call(Op::SetQueueLimit {
            queue: "q".into(),
            concurrency: Some(-1),
        })
        .unwrap();
        assert_eq!(pg_i64(&url, "SELECT concurrency FROM queues"), 0, "floor 0");
        s.call(Op::SetQueueLimit {
            queue: "q".into(),
            concurrency: None,
        })
        .unwrap();
        assert_eq!(pg_i64(&url, "SELECT count(*) FROM queues"), 0);

        let now = now_ms();
        let sched = |cron: &str, next_due: i64| {
            Op::PutSchedule(ScheduleRow {
                name: "tick".into(),
                cron: cron.into(),
                workflow: "w".into(),
                version: 1,
                input: vec![1],
                queue: "default".into(),
                catch_up: true,
                next_due,
            })
        };
        s.call(sched("* * * * * *", now - 1000)).unwrap();
        s.call(sched("* * * * * *", now + 5000)).unwrap();
        let due = s.due_schedules(now, 10).unwrap();
        assert_eq!(due.len(), 1, "same cron: next_due kept");
        assert_eq!((due[0].next_due, due[0].catch_up), (now - 1000, true));
        s.call(sched("*/2 * * * * *", now - 2000)).unwrap();
        let due = s.due_schedules(now, 10).unwrap();
        assert_eq!(
            (due[0].cron.as_str(), due[0].next_due),
            ("*/2 * * * * *", now - 2000),
            "a new cron: next_due replaced"
        );
        let fire = |due: i64| Op::FireSchedule {
            name: "tick".into(),
            due,
            next: due + 2000,
            run: new_run("w", Some(&format!("sched:tick:{due}")), None),
        };
        // Another engine is firing the same due time right now (its transaction open).
        let mut tx = c.transaction().unwrap();
        assert_eq!(
            tx.execute(
                "UPDATE schedules SET next_due = $2 WHERE name = 'tick' AND next_due = $1",
                &[&(now - 2000), &now],
            )
            .unwrap(),
            1
        );
        let second = {
            let s = s.clone();
            let op = fire(now - 2000);
            std::thread::spawn(move || s.call(op))
        };
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
        assert!(
            matches!(second.join().unwrap().unwrap(), Done::Count(0)),
            "the second firing of a due time changes nothing"
        );
        match s.call(fire(now)).unwrap() {
            Done::Run { created: true, .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.call(fire(now)).unwrap(), Done::Count(0)));
        assert_eq!(
            pg_i64(
                &url,
                "SELECT count(*) FROM runs WHERE idempotency_key LIKE 'sched:tick:%'"
            ),
            1
        );
        assert!(s.due_schedules(now, 10).unwrap().is_empty());

        // Purge: 5 finished runs (one with a step, an event and an attempt), a finished
        // child of a suspended parent; limit 3, then the rest.
        let mut ins = |status: &str, parent: Option<i64>, finished: Option<i64>| -> i64 {
            c.query_one(
                "INSERT INTO runs(workflow, input, status, ready_at, parent_id, created_at,
                                  updated_at, finished_at)
                 VALUES ('w', '\\x00', $1, 0, $2, 0, 0, $3) RETURNING id",
                &[&status, &parent, &finished],
            )
            .unwrap()
            .get(0)
        };
        let old = now - 100_000;
        let done: Vec<i64> = (0..5).map(|_| ins("completed", None, Some(old))).collect();
        let parent = ins("suspended", None, None);
        let kept = ins("failed", Some(parent), Some(old));
        let young = ins("completed", None, Some(now + 100_000));
        c.batch_execute(&format!(
            "INSERT INTO steps(run_id, seq, name, kind, status, attempts, recorded_at)
               VALUES ({0}, 0, 's', 'step', 'completed', 1, 0);
             INSERT INTO events(run_id, name, payload, sent_at) VALUES ({0}, 'e', '\\x00', 0);
             INSERT INTO attempts(run_id, seq, attempt, name, owner, epoch, started_at)
               VALUES ({0}, 0, 1, 's', 'o', 1, 0);
             INSERT INTO run_changes(run_id, status, at) VALUES ({0}, 'completed', {1});",
            done[0], old
        ))
        .unwrap();
        let purge = |limit: i64| match s.call(Op::Purge { before: now, limit }).unwrap() {
            Done::Count(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(purge(3), 3);
        assert_eq!(purge(100), 2);
        assert_eq!(purge(100), 0);
        let left: Vec<i64> = c
            .query(
                "SELECT id FROM runs WHERE status <> 'pending' ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(left, vec![parent, kept, young]);
        assert_eq!(
            pg_i64(
                &url,
                "SELECT (SELECT count(*) FROM steps) + (SELECT count(*) FROM events)
                      + (SELECT count(*) FROM attempts)"
            ),
            0
        );
        assert_eq!(
            pg_i64(
                &url,
                &format!("SELECT count(*) FROM run_changes WHERE at <= {now}")
            ),
            0
        );
        assert!(matches!(
            s.call(Op::IncrementalVacuum { pages: 2048 }).unwrap(),
            Done::Count(0)
        ));
    }
}
