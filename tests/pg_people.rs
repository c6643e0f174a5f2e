//! Scenario: what people read (clients, the CLI, the console) from a PostgreSQL database:
//! listings with every filter and keyset paging, the change log and its subscription
//! (LISTEN/NOTIFY), and the console's dashboards (engines, queues, schedules, events, step
//! durations, totals). Rows are written with plain SQL, so the readers are checked against
//! known contents.
//! Must hold: the same answers as SQLite's readers, whatever the database's collation (a key
//! prefix is a literal prefix: `%` and `_` match only themselves).

mod support;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use waymark::internal::clock::{Clock, SystemClock};
use waymark::internal::store::pg::PgStore;
use waymark::internal::store::{RunQuery, Storage, DURATION_BUCKETS_MS};
use waymark::{Client, RunFilter, RunStatus};

/// One run as the test inserts it.
#[derive(Debug, Clone)]
struct Seed {
    id: i64,
    workflow: &'static str,
    status: RunStatus,
    key: Option<String>,
    created_at: i64,
    parent_id: Option<i64>,
    retry_of: Option<i64>,
}

const STATUSES: [RunStatus; 5] = [
    RunStatus::Pending,
    RunStatus::Running,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Suspended,
];

/// Thirty runs: workflows `a`/`b`, five statuses, keys `k01..k10`, `p%_11..p%_15`
/// (`%` and `_` are LIKE's wildcards), `p-x16..p-x20`, then none; children of run 1; run 4
/// retries run 3.
fn seeds() -> Vec<Seed> {
    (1..=30)
        .map(|i: i64| Seed {
            id: i,
            workflow: if i % 2 == 1 { "a" } else { "b" },
            status: STATUSES[(i % 5) as usize],
            key: match i {
                1..=10 => Some(format!("k{i:02}")),
                11..=15 => Some(format!("p%_{i}")),
                16..=20 => Some(format!("p-x{i}")),
                _ => None,
            },
            created_at: 1000 * i,
            parent_id: (i > 25).then_some(1),
            retry_of: (i == 4).then_some(3),
        })
        .collect()
}

fn insert_runs(url: &str, seeds: &[Seed]) {
    let mut c = pg_cluster_client(url);
    for s in seeds {
        let status = s.status.as_str();
        let (owner, epoch) = if s.status == RunStatus::Running {
            (Some("eng-1"), 1i64)
        } else {
            (None, 0)
        };
        c.execute(
            "INSERT INTO runs(id, workflow, version, input, status, idempotency_key, queue,
                              ready_at, owner, epoch, created_at, updated_at, parent_id,
                              retry_of, interruptions)
             VALUES ($1, $2, 1, '\\x00', $3, $4, 'default', 0, $5, $6, $7, $7, $8, $9, $10)",
            &[
                &s.id,
                &s.workflow,
                &status,
                &s.key,
                &owner,
                &epoch,
                &s.created_at,
                &s.parent_id,
                &s.retry_of,
                &(s.id % 3),
            ],
        )
        .unwrap();
    }
    // Run 3's journal: two completed entries and a failed one.
    for (seq, status) in [(0i64, "completed"), (1, "completed"), (2, "failed")] {
        c.execute(
            "INSERT INTO steps(run_id, seq, name, status, attempts, recorded_at)
             VALUES (3, $1, 's', $2, 1, 0)",
            &[&seq, &status],
        )
        .unwrap();
    }
}

fn ids(rows: &[waymark::RunRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

/// The ids `filter` must list, in its order (the specification, in Rust).
fn expected(seeds: &[Seed], filter: &RunFilter) -> Vec<i64> {
    let mut v: Vec<i64> = seeds
        .iter()
        .filter(|s| filter.statuses.is_empty() || filter.statuses.contains(&s.status))
        .filter(|s| filter.workflow.as_deref().is_none_or(|w| w == s.workflow))
        .filter(|s| {
            filter
                .key_prefix
                .as_deref()
                .is_none_or(|p| s.key.as_deref().is_some_and(|k| k.starts_with(p)))
        })
        .filter(|s| filter.created_from_ms.is_none_or(|t| s.created_at >= t))
        .filter(|s| filter.created_before_ms.is_none_or(|t| s.created_at < t))
        .map(|s| s.id)
        .collect();
    if filter.newest_first {
        v.reverse();
    }
    v
}

/// Every page of `filter` at `page` runs a page, following the cursor.
fn all_pages(client: &Client, filter: &RunFilter, page: u32) -> Vec<i64> {
    let mut out = Vec::new();
    let mut f = filter.clone().limit(page);
    loop {
        let rows = client.list(&f).unwrap();
        assert!(rows.len() <= page as usize);
        out.extend(ids(&rows));
        match rows.last() {
            Some(last) if rows.len() == page as usize => f = f.after(last.id),
            _ => return out,
        }
    }
}

#[test]
fn list_filters_and_pages_on_postgres() {
    let url = fresh_pg_db();
    let client = Client::open(&url).unwrap();
    let seeds = seeds();
    insert_runs(&url, &seeds);

    let filters = vec![
        RunFilter::new(),
        RunFilter::new().newest_first(),
        RunFilter::new()
            .status(RunStatus::Completed)
            .status(RunStatus::Failed),
        RunFilter::new().workflow("a"),
        RunFilter::new().workflow("nope"),
        RunFilter::new().key_prefix("k0"),
        RunFilter::new().key_prefix("p%"),
        RunFilter::new().key_prefix("p%_1"),
        RunFilter::new().key_prefix("p_"),
        RunFilter::new().key_prefix(""),
        RunFilter::new().created_between(Some(5000), Some(12000)),
        RunFilter::new().created_between(None, Some(3000)),
        RunFilter::new()
            .workflow("b")
            .status(RunStatus::Pending)
            .status(RunStatus::Running)
            .created_between(Some(2000), None)
            .newest_first(),
    ];
    for f in &filters {
        let want = expected(&seeds, f);
        assert_eq!(ids(&client.list(f).unwrap()), want, "filter {f:?}");
        for page in [1, 4, 7] {
            assert_eq!(
                all_pages(&client, f, page),
                want,
                "filter {f:?}, pages of {page}"
            );
        }
    }
    // The literal prefix: `p%` lists the five `p%_..` keys, not `p-x..`; `p_` lists none.
    assert_eq!(
        ids(&client.list(&RunFilter::new().key_prefix("p%")).unwrap()),
        vec![11, 12, 13, 14, 15]
    );
    assert!(client
        .list(&RunFilter::new().key_prefix("p_"))
        .unwrap()
        .is_empty());

    // The row itself: steps completed, retried as, owner of a running run.
    let rows = client.list(&RunFilter::new().limit(30)).unwrap();
    let r3 = rows.iter().find(|r| r.id == 3).unwrap();
    assert_eq!(r3.steps_completed, 2);
    assert_eq!(r3.retried_as, Some(4));
    assert_eq!(rows.iter().find(|r| r.id == 4).unwrap().retry_of, Some(3));
    let r6 = rows.iter().find(|r| r.id == 6).unwrap();
    assert_eq!(r6.status, RunStatus::Running);
    assert_eq!(r6.owner.as_deref(), Some("eng-1"));
    assert_eq!(r6.interruptions, 0);
    assert_eq!(rows.iter().find(|r| r.id == 5).unwrap().interruptions, 2);
    // The default limit and the cap.
    assert_eq!(client.list(&RunFilter::new()).unwrap().len(), 30);
    assert_eq!(
        RunFilter::new().limit(u32::MAX).effective_limit(),
        RunFilter::LIMIT_MAX
    );
}

fn store(url: &str) -> PgStore {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::from_env());
    PgStore::open(url, 4, clock).unwrap()
}

#[test]
fn console_listing_and_pages_on_postgres() {
    let url = fresh_pg_db();
    let store = store(&url);
    let seeds = seeds();
    insert_runs(&url, &seeds);

    // runs_filtered: newest first, keyset paging by `before`.
    let want = |q: &RunQuery, before: Option<i64>| -> Vec<i64> {
        let mut v: Vec<i64> = seeds
            .iter()
            .filter(|s| before.is_none_or(|b| s.id < b))
            .filter(|s| q.status.is_none_or(|st| st == s.status))
            .filter(|s| q.workflow.as_deref().is_none_or(|w| w == s.workflow))
            .filter(|s| {
                q.key_prefix
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .is_none_or(|p| s.key.as_deref().is_some_and(|k| k.starts_with(p)))
            })
            .filter(|s| q.created_from.is_none_or(|t| s.created_at >= t))
            .filter(|s| q.created_to.is_none_or(|t| s.created_at < t))
            .filter(|s| q.parent.is_none_or(|p| s.parent_id == Some(p)))
            .map(|s| s.id)
            .collect();
        v.reverse();
        v
    };
    let queries = vec![
        RunQuery::default(),
        RunQuery {
            status: Some(RunStatus::Failed),
            ..RunQuery::default()
        },
        RunQuery {
            workflow: Some("a".into()),
            key_prefix: Some("p%".into()),
            ..RunQuery::default()
        },
        RunQuery {
            key_prefix: Some(String::new()),
            created_from: Some(3000),
            created_to: Some(20000),
            ..RunQuery::default()
        },
        RunQuery {
            parent: Some(1),
            ..RunQuery::default()
        },
    ];
    for q in &queries {
        for before in [None, Some(20), Some(1)] {
            for limit in [1i64, 5, 100] {
                let got = ids(&store.runs_filtered(q, before, limit).unwrap());
                let mut w = want(q, before);
                w.truncate(limit as usize);
                assert_eq!(got, w, "{q:?} before {before:?} limit {limit}");
            }
        }
    }

    // runs_page: ids after `after`, optionally of one status.
    let page = store.runs_page(Some("failed"), 3, 2).unwrap();
    assert_eq!(ids(&page), vec![8, 13]);
    assert_eq!(ids(&store.runs_page(None, 28, 10).unwrap()), vec![29, 30]);

    // The change log: one change per run inserted, in order; last_change is the newest.
    let changes = store.changes(0, 1000).unwrap();
    assert_eq!(changes.len(), 30);
    assert_eq!(
        changes.iter().map(|c| c.run_id).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<i64>>()
    );
    assert_eq!(changes[4].status, Some(RunStatus::Pending));
    assert_eq!(store.last_change().unwrap(), changes.last().unwrap().seq);
    assert_eq!(store.changes(changes[27].seq, 1000).unwrap().len(), 2);
}

#[test]
fn dashboards_read_engines_queues_schedules_events_durations_on_postgres() {
    let url = fresh_pg_db();
    let store = store(&url);
    let seeds = seeds();
    insert_runs(&url, &seeds);
    let now = SystemClock::from_env().now_ms();
    let mut c = pg_cluster_client(&url);
    c.batch_execute(&format!(
        "INSERT INTO engines(id, pid, pid_start, boot_id, started_at, beat, beat_at, stopped_at) VALUES
           ('eng-1', 11, 111, 'boot/ns', 10, 5, {now}, NULL),
           ('eng-2', 22, 222, 'boot/ns', 20, 9, {old}, NULL),
           ('eng-3', 33, 333, 'boot/ns', 30, 1, {now}, {now});
         INSERT INTO queues(name, concurrency) VALUES ('default', 3), ('idle', 0);
         INSERT INTO schedules(name, cron, workflow, version, input, next_due, created_at, updated_at, catch_up)
           VALUES ('late', '0 * * * *', 'a', 1, '\\x00', 200, 0, 0, 0),
                  ('soon', '*/5 * * * *', 'b', 1, '\\x00', 100, 0, 0, 1);
         INSERT INTO events(id, run_id, name, payload, sent_at, consumed_seq) VALUES
           (7, 5, 'go', '\\x0102', 50, 3), (9, 5, 'go', '\\x03', 60, NULL), (8, 6, 'x', '\\x', 55, NULL);
         INSERT INTO attempts(run_id, seq, attempt, name, owner, epoch, started_at, ended_at, outcome) VALUES
           (1, 0, 1, 'fetch', 'eng-1', 1, 1000, 1003, 'ok'),
           (2, 0, 1, 'fetch', 'eng-1', 1, 1000, 1030, 'ok'),
           (3, 0, 1, 'fetch', 'eng-1', 1, 1000, 701000, 'error'),
           (6, 0, 1, 'fetch', 'eng-1', 1, 1000, NULL, NULL),
           (5, 0, 1, 'fetch', 'eng-gone', 1, 1000, NULL, NULL),
           (4, 0, 1, 'parse', 'eng-1', 1, 1000, 1100, 'ok');",
        old = now - 60_000
    ))
    .unwrap();

    // Engines newest first, with the runs each holds (every running seed is eng-1's).
    let engines = store.engines().unwrap();
    assert_eq!(
        engines.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["eng-3", "eng-2", "eng-1"]
    );
    let running = seeds
        .iter()
        .filter(|s| s.status == RunStatus::Running)
        .count() as i64;
    assert_eq!(engines[2].runs_held, running);
    assert_eq!(engines[2].pid, Some(11));
    assert_eq!(engines[2].host.as_deref(), Some("boot/ns"));
    assert_eq!(engines[0].stopped_at, Some(now));

    // Queues: limits, and what runs and waits in each.
    let queues = store.queues().unwrap();
    let pending = seeds
        .iter()
        .filter(|s| s.status == RunStatus::Pending)
        .count() as i64;
    assert_eq!(queues.len(), 2);
    assert_eq!(
        (
            queues[0].name.as_str(),
            queues[0].limit,
            queues[0].running,
            queues[0].pending
        ),
        ("default", Some(3), running, pending)
    );
    assert_eq!(
        (queues[1].name.as_str(), queues[1].limit, queues[1].running),
        ("idle", Some(0), 0)
    );

    // Schedules soonest first.
    let schedules = store.schedules().unwrap();
    assert_eq!(
        schedules
            .iter()
            .map(|s| (s.name.as_str(), s.next_due, s.catch_up))
            .collect::<Vec<_>>(),
        vec![("soon", 100, true), ("late", 200, false)]
    );

    // A run's events, oldest first, with payloads.
    let events = store.events_of(5).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.id, e.consumed_seq, e.payload.clone()))
            .collect::<Vec<_>>(),
        vec![(7, Some(3), vec![1, 2]), (9, None, vec![3])]
    );
    assert!(store.events_of(99).unwrap().is_empty());

    // Durations: cumulative buckets as SQLite computes them.
    let bucket = |ms: &[i64]| -> Vec<i64> {
        DURATION_BUCKETS_MS
            .iter()
            .map(|b| ms.iter().filter(|m| *m <= b).count() as i64)
            .collect()
    };
    let d = store.step_durations().unwrap();
    let got: Vec<(String, String, i64, i64, Vec<i64>)> = d
        .into_iter()
        .map(|s| (s.name, s.outcome, s.count, s.sum_ms, s.buckets))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "fetch".into(),
                "error".into(),
                1,
                700_000,
                bucket(&[700_000])
            ),
            ("fetch".into(), "none".into(), 0, 0, bucket(&[])),
            ("fetch".into(), "ok".into(), 2, 33, bucket(&[3, 30])),
            ("parse".into(), "ok".into(), 1, 100, bucket(&[100])),
        ]
    );

    // Totals: interruptions of every run, attempts whose run no longer runs them (run 5's,
    // of an engine that does not hold it; run 6's is held by eng-1 at epoch 1), live engines.
    let totals = store.run_totals(now, 15_000).unwrap();
    let interruptions: i64 = seeds.iter().map(|s| s.id % 3).sum();
    assert_eq!(totals.interruptions, interruptions);
    assert_eq!(totals.attempts_interrupted, 1);
    assert_eq!(totals.engines_live, 1);
}

#[test]
fn subscribe_sees_changes_committed_by_another_connection() {
    let url = fresh_pg_db();
    let client = Client::open(&url).unwrap();
    let sub = client.subscribe().unwrap();
    let mut c = pg_cluster_client(&url);
    c.batch_execute(
        "INSERT INTO runs(id, workflow, input, status, ready_at, created_at, updated_at)
         VALUES (41, 'a', '\\x00', 'pending', 0, 1, 1)",
    )
    .unwrap();
    c.batch_execute("UPDATE runs SET status = 'running', updated_at = 2 WHERE id = 41")
        .unwrap();
    c.batch_execute("UPDATE runs SET status = 'completed', updated_at = 3 WHERE id = 41")
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = sub
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no change after {seen:?}"));
        seen.push((e.run_id, e.status, e.at_ms));
    }
    assert_eq!(
        seen,
        vec![
            (41, RunStatus::Pending, 1),
            (41, RunStatus::Running, 2),
            (41, RunStatus::Completed, 3)
        ]
    );
    // Changes before the subscription are not replayed to a new one.
    let late = client.subscribe().unwrap();
    c.batch_execute(
        "INSERT INTO runs(id, workflow, input, status, ready_at, created_at, updated_at)
         VALUES (42, 'a', '\\x00', 'pending', 0, 5, 5)",
    )
    .unwrap();
    let e = late.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((e.run_id, e.status), (42, RunStatus::Pending));
    let statuses: BTreeSet<i64> = sub.drain().iter().map(|e| e.run_id).collect();
    assert!(statuses.is_subset(&BTreeSet::from([42])));
}

fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn json_ids(body: &str) -> Vec<i64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn console_api_runs_on_postgres() {
    let url = fresh_pg_db();
    let client = Client::open(&url).unwrap();
    insert_runs(&url, &seeds());
    let console = waymark::console::serve_client(
        &client,
        waymark::console::Options::default()
            .listen("127.0.0.1:0".parse().unwrap())
            .read_only(true),
    )
    .unwrap();
    let base = console.url();
    let base = base.trim_end_matches('/');
    let (code, body) = http_get(&format!("{base}/api/runs?status=failed"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_ids(&body), vec![28, 23, 18, 13, 8, 3]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["counts"]["failed"], 6);
    // `%` is a literal prefix character (URL-encoded as %25).
    let (_, body) = http_get(&format!("{base}/api/runs?key=p%25"));
    assert_eq!(json_ids(&body), vec![15, 14, 13, 12, 11]);
    let (_, body) = http_get(&format!("{base}/api/runs?workflow=b&limit=3&before=10"));
    assert_eq!(json_ids(&body), vec![8, 6, 4]);
    let (code, body) = http_get(&format!("{base}/api/runs/3"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"retried_as\":4"), "{body}");
    let (code, body) = http_get(&format!("{base}/metrics"));
    assert_eq!(code, 200, "{body}");
    console.shutdown();
}

#[test]
fn wait_returns_when_another_connection_finishes_the_run() {
    let url = fresh_pg_db();
    let client = Client::open(&url).unwrap();
    let mut c = pg_cluster_client(&url);
    c.batch_execute(
        "INSERT INTO runs(id, workflow, input, status, ready_at, created_at, updated_at)
         VALUES (51, 'a', '\\x00', 'running', 0, 1, 1), (52, 'a', '\\x00', 'suspended', 0, 1, 1)",
    )
    .unwrap();
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c.batch_execute(
            "UPDATE runs SET status = 'completed', finished_at = 2, updated_at = 2 WHERE id = 51",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.batch_execute("UPDATE runs SET status = 'failed', error = 'boom', finished_at = 3, updated_at = 3 WHERE id = 52")
            .unwrap();
    });
    let row = client.wait(51, Duration::from_secs(30)).unwrap();
    assert_eq!(row.status, RunStatus::Completed);
    let rows = client.wait_all(&[51, 52], Duration::from_secs(30)).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![RunStatus::Completed, RunStatus::Failed]
    );
    finisher.join().unwrap();
    // A run that does not settle times out with its id.
    let mut c = pg_cluster_client(&url);
    c.batch_execute(
        "INSERT INTO runs(id, workflow, input, status, ready_at, created_at, updated_at)
         VALUES (53, 'a', '\\x00', 'pending', 0, 1, 1)",
    )
    .unwrap();
    match client.wait(53, Duration::from_millis(300)) {
        Err(waymark::Error::WaitTimeout { run_id }) => assert_eq!(run_id, 53),
        other => panic!("expected a timeout, got {other:?}"),
    }
}
