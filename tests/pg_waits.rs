//! Durable features on PostgreSQL, end to end, in the cases the shared feature tests
//! (`tests/feature_*.rs`, each on both stores) do not cover: a wrongly typed event set
//! aside, deadlines across a restart, gc keeping the children of unfinished runs. Real
//! `waymark serve --db URL` processes, the CLI on the same URL, assertions on the rows.

mod support;

use std::time::Duration;
use support::*;

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

// ---- events ----

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
