//! Scenario: `waymark copy --from FILE --to postgres://...` (issue 16) moves an SQLite file
//! filled by real engines (finished runs with journals, retried attempts and consumed events,
//! a retry with copied entries, a suspended waiter with an unconsumed event, a queue limit, a
//! schedule, and a run in flight under an engine killed with SIGKILL) into PostgreSQL.
//! Must hold: every row arrives with its ids (row-for-row equal, but for the in-flight run,
//! which arrives claimable as the reaper would have left it); `waymark serve --db URL`
//! finishes it; new ids continue past the copied ones. Refused, with a clear message and
//! nothing written: a target that holds runs, a source with a live engine.

mod support;
use std::path::Path;
use std::time::Duration;
use support::*;

/// The columns compared per table, and the order of the rows.
const TABLES: [(&str, &str, &str); 6] = [
    (
        "runs",
        "id, workflow, version, input, status, idempotency_key, queue, priority, ready_at, owner,
         epoch, lease_expires_at, interruptions, last_interruption, output, error, note,
         parent_id, deadline_at, cancel_requested, created_at, updated_at, finished_at, retry_of",
        "id",
    ),
    (
        "steps",
        "run_id, seq, name, kind, status, attempts, output, error, recorded_at, copied_from",
        "run_id, seq",
    ),
    (
        "attempts",
        "run_id, seq, attempt, name, owner, epoch, pid, pid_start, started_at, ended_at, outcome,
         reason, logs, memory_cap",
        "run_id, seq, attempt",
    ),
    (
        "events",
        "id, run_id, name, payload, sent_at, consumed_seq",
        "id",
    ),
    ("queues", "name, concurrency", "name"),
    (
        "schedules",
        "name, cron, workflow, version, input, queue, catch_up, next_due, created_at, updated_at",
        "name",
    ),
];

type Rows = Vec<Vec<String>>;

fn columns(cols: &str) -> Vec<&str> {
    cols.split(',').map(str::trim).collect()
}

/// Every row of `table` in the SQLite file, each value as text (blobs as `\x` + hex, NULL
/// as `NULL`: PostgreSQL's text forms).
fn sqlite_rows(db: &Path, table: &str, cols: &str, order: &str) -> Rows {
    let exprs: Vec<String> = columns(cols)
        .iter()
        .map(|c| {
            format!(
                "coalesce(CASE WHEN typeof({c}) = 'blob' THEN '\\x' || lower(hex({c})) ELSE CAST({c} AS TEXT) END, 'NULL')"
            )
        })
        .collect();
    let n = exprs.len();
    let c = reader(db);
    let mut stmt = c
        .prepare(&format!(
            "SELECT {} FROM {table} ORDER BY {order}",
            exprs.join(", ")
        ))
        .unwrap();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, String>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The same from PostgreSQL.
fn pg_rows(url: &str, table: &str, cols: &str, order: &str) -> Rows {
    let exprs: Vec<String> = columns(cols)
        .iter()
        .map(|c| format!("coalesce({c}::text, 'NULL')"))
        .collect();
    let n = exprs.len();
    let mut c = pg_cluster_client(url);
    c.query(
        &format!("SELECT {} FROM {table} ORDER BY {order}", exprs.join(", ")),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (0..n).map(|i| r.get::<_, String>(i)).collect())
    .collect()
}

fn pg_i64(url: &str, sql: &str) -> i64 {
    pg_cluster_client(url).query_one(sql, &[]).unwrap().get(0)
}

fn copy(from: &Path, to: &str) -> std::process::Output {
    run(&["copy", "--from", from.to_str().unwrap(), "--to", to])
}

/// `waymark start` on a database given as a path or a URL.
fn start_on(db: &str, workflow: &str, json: &str) -> i64 {
    start_runs(Path::new(db), workflow, json, None, 1)[0]
}

#[test]
fn copy_keeps_every_row_and_engines_continue_on_postgres() {
    let tmp = Tmp::new();
    let db = tmp.db();
    let dbs = db.to_str().unwrap();
    let marker = tmp.dir.path().join("flaky-marker");
    let finished = tmp.start("fixture.slow", r#"{"steps":2,"ms":5}"#, 4);
    tmp.waymark(&["queue", "default", "--db", dbs, "--limit", "8"]);
    tmp.waymark(&[
        "schedule",
        "yearly",
        "--db",
        dbs,
        "--cron",
        "0 0 1 1 *",
        "--workflow",
        "fixture.slow",
        "--json",
        r#"{"steps":1,"ms":1}"#,
    ]);
    let keyed = start_runs(
        &db,
        "fixture.slow",
        r#"{"steps":1,"ms":1}"#,
        Some("order-7"),
        1,
    )[0];
    let flaky = tmp.start(
        "fixture.flaky",
        &format!(r#"{{"ms":1,"marker":"{}"}}"#, marker.display()),
        1,
    )[0];
    let failing = tmp.start("fixture.slow_then_fail", r#"{"steps":2,"ms":1}"#, 1)[0];
    let answered = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":3600000}"#, 1)[0];
    let waiting = tmp.start("fixture.waiter", r#"{"name":"go","timeout_ms":3600000}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    let done = |id: i64| try_status(&db, id).is_some_and(|s| s == "completed" || s == "failed");
    wait_until("the first runs to finish", Duration::from_secs(120), || {
        finished
            .iter()
            .chain([&keyed, &flaky, &failing])
            .all(|&id| done(id))
            && try_status(&db, waiting).as_deref() == Some("suspended")
            && try_status(&db, answered).as_deref() == Some("suspended")
    });
    tmp.waymark(&[
        "send",
        &answered.to_string(),
        "go",
        "--db",
        dbs,
        "--json",
        "true",
    ]);
    tmp.waymark(&[
        "send",
        &waiting.to_string(),
        "later",
        "--db",
        dbs,
        "--json",
        "1",
    ]);
    wait_until("the answered waiter", Duration::from_secs(60), || {
        done(answered)
    });
    let retry: i64 = tmp
        .waymark(&["retry", &failing.to_string(), "--db", dbs])
        .trim()
        .parse()
        .unwrap();
    wait_until("the retry", Duration::from_secs(60), || done(retry));
    // A run in flight, then the engine dies holding it.
    let inflight = tmp.start("fixture.slow", r#"{"steps":3,"ms":1500}"#, 1)[0];
    wait_until(
        "the in-flight run's first step",
        Duration::from_secs(60),
        || {
            try_status(&db, inflight).as_deref() == Some("running")
                && query_i64(
                    &db,
                    &format!("SELECT count(*) FROM steps WHERE run_id = {inflight}"),
                ) >= 1
        },
    );
    engine.kill();
    assert_eq!(status(&db, inflight), "running");
    assert_eq!(
        query_i64(
            &db,
            &format!(
                "SELECT count(*) FROM steps WHERE run_id = {retry} AND copied_from = {failing}"
            )
        ),
        2,
        "the retry copied its two successful entries"
    );
    assert!(query_i64(&db, "SELECT count(*) FROM attempts WHERE attempt > 1") >= 1);

    let url = fresh_pg_db();
    let out = copy(&db, &url);
    assert!(
        out.status.success(),
        "copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1 running under a gone engine"),
        "report: {said}"
    );

    // Row for row, every table but the in-flight run's lease columns.
    for (table, cols, order) in TABLES {
        let src = sqlite_rows(&db, table, cols, order);
        let dst = pg_rows(&url, table, cols, order);
        assert!(!src.is_empty(), "{table}: the source has rows");
        assert_eq!(src.len(), dst.len(), "{table}: row counts");
        for (s, d) in src.iter().zip(&dst) {
            if table == "runs" && s[0] == inflight.to_string() {
                continue;
            }
            assert_eq!(s, d, "{table}: a row differs");
        }
    }
    // The in-flight run arrives as the reaper leaves a run of a dead owner.
    let names = columns(TABLES[0].1);
    let at = |name: &str| names.iter().position(|c| *c == name).unwrap();
    let src = sqlite_rows(&db, "runs", TABLES[0].1, "id")
        .into_iter()
        .find(|r| r[0] == inflight.to_string())
        .unwrap();
    let dst = pg_rows(&url, "runs", TABLES[0].1, "id")
        .into_iter()
        .find(|r| r[0] == inflight.to_string())
        .unwrap();
    assert_eq!(dst[at("status")], "pending");
    assert_eq!(dst[at("owner")], "NULL");
    assert_eq!(dst[at("lease_expires_at")], "NULL");
    let num = |r: &Vec<String>, c: &str| r[at(c)].parse::<i64>().unwrap();
    assert_eq!(num(&dst, "epoch"), num(&src, "epoch") + 1);
    assert_eq!(num(&dst, "interruptions"), num(&src, "interruptions") + 1);
    assert!(dst[at("last_interruption")].contains("gone when the database was copied"));
    for c in ["input", "workflow", "created_at", "queue"] {
        assert_eq!(dst[at(c)], src[at(c)], "{c} of the in-flight run");
    }

    // Engines on the PostgreSQL URL finish the in-flight run, and the answered/suspended
    // runs stay as they were.
    let mut pg_engine = serve(tmp.dir.path(), "pg-engine", Path::new(&url), 2, 3000, &[]);
    wait_until(
        "the in-flight run to complete on PostgreSQL",
        Duration::from_secs(120),
        || {
            pg_i64(
                &url,
                &format!(
                    "SELECT count(*) FROM runs WHERE id = {inflight} AND status = 'completed'"
                ),
            ) == 1
        },
    );
    assert_eq!(
        pg_i64(
            &url,
            &format!("SELECT count(*) FROM steps WHERE run_id = {inflight}")
        ),
        3
    );
    // New runs and events take ids past the copied ones.
    let max_run = query_i64(&db, "SELECT max(id) FROM runs");
    let fresh = start_on(&url, "fixture.slow", r#"{"steps":1,"ms":1}"#);
    assert!(fresh > max_run, "new run id {fresh} after {max_run}");
    let max_event = sqlite_rows(&db, "events", "id", "id").len() as i64;
    let out = run(&[
        "send",
        &waiting.to_string(),
        "more",
        "--db",
        &url,
        "--json",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pg_i64(&url, "SELECT max(id) FROM events") > max_event,
        "a new event id past the copied ones"
    );
    assert_eq!(
        pg_i64(
            &url,
            &format!("SELECT count(*) FROM runs WHERE id = {waiting} AND status = 'suspended'")
        ),
        1
    );
    pg_engine.kill();

    // A second copy into the now-populated target is refused and writes nothing.
    let runs_before = pg_i64(&url, "SELECT count(*) FROM runs");
    let out = copy(&db, &url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds waymark data") && err.contains("nothing was written"),
        "stderr: {err}"
    );
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM runs"), runs_before);
}

#[test]
fn copy_refuses_a_source_with_a_live_engine() {
    let tmp = Tmp::new();
    let db = tmp.db();
    let ids = tmp.start("fixture.slow", r#"{"steps":1,"ms":1}"#, 2);
    let engine = tmp.serve(1, &[]);
    wait_until("the engine's runs", Duration::from_secs(60), || {
        ids.iter()
            .all(|&id| try_status(&db, id).as_deref() == Some("completed"))
    });
    let url = fresh_pg_db();
    let out = copy(&db, &url);
    assert!(!out.status.success(), "a copy under a live engine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("an engine is running")
            && err.contains(&format!("pid {}", engine.pid()))
            && err.contains("nothing was written"),
        "stderr: {err}"
    );
    // Refused before the target was touched: not even the schema was created.
    assert_eq!(
        pg_i64(
            &url,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'"
        ),
        0
    );
    drop(engine);
}

#[test]
fn copy_watches_the_heartbeat_of_an_engine_in_another_pid_namespace() {
    let tmp = Tmp::new();
    let db = tmp.db();
    let ids = tmp.start("fixture.slow", r#"{"steps":1,"ms":1}"#, 1);
    // Its pid means nothing here: only its heartbeat tells.
    let mut unshare = serve_in_pid_namespace(tmp.dir.path(), &db, 1, 3000, &["--in-process"], None);
    wait_until("the engine's run", Duration::from_secs(60), || {
        try_status(&db, ids[0]).as_deref() == Some("completed")
    });
    let url = fresh_pg_db();
    let from = db.to_str().unwrap();
    let args = [
        "copy",
        "--from",
        from,
        "--to",
        &url,
        "--heartbeat-wait",
        "3s",
    ];
    let out = run(&args);
    assert!(!out.status.success(), "a copy under a beating engine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("an engine is running") && err.contains("heartbeat moved"),
        "stderr: {err}"
    );
    // Killed, its row stays (not stopped) but its heartbeat no longer moves.
    kill9(&mut unshare);
    let out = run(&args);
    assert!(
        out.status.success(),
        "copy after the engine died: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM runs"), 1);
}

#[test]
fn copy_reads_a_file_left_by_a_clean_shutdown() {
    let tmp = Tmp::new();
    let db = tmp.db();
    let ids = tmp.start("fixture.slow", r#"{"steps":2,"ms":1}"#, 3);
    let mut engine = tmp.serve(1, &[]);
    wait_until("the runs", Duration::from_secs(60), || {
        ids.iter()
            .all(|&id| try_status(&db, id).as_deref() == Some("completed"))
    });
    engine.signal(libc::SIGTERM);
    assert!(engine.wait_exit(Duration::from_secs(60)).success());
    // A clean stop checkpoints and removes the WAL and shared-memory files: the copy must
    // still open the file without writing to it.
    let url = fresh_pg_db();
    let out = copy(&db, &url);
    assert!(
        out.status.success(),
        "copy after a clean stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (table, cols, order) in TABLES {
        assert_eq!(
            sqlite_rows(&db, table, cols, order),
            pg_rows(&url, table, cols, order),
            "{table}"
        );
    }
}

#[test]
fn copy_refuses_a_source_written_during_the_copy() {
    let tmp = Tmp::new();
    let db = tmp.db();
    tmp.start("fixture.slow", r#"{"steps":1,"ms":1}"#, 2);
    // A writer that is not an engine (no engine row: nothing to judge) commits every few ms
    // for as long as the copy runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                c.execute(
                    "INSERT OR REPLACE INTO queues(name, concurrency) VALUES ('busy', ?1)",
                    [n],
                )
                .unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let url = fresh_pg_db();
    let out = copy(&db, &url);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(writer.join().unwrap() > 1);
    assert!(!out.status.success(), "a copy of a file written meanwhile");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("changed while it was copied") && err.contains("nothing was written"),
        "stderr: {err}"
    );
    for table in ["runs", "steps", "attempts", "events", "queues", "schedules"] {
        assert_eq!(
            pg_i64(&url, &format!("SELECT count(*) FROM {table}")),
            0,
            "{table} after a refused copy"
        );
    }
    // Once the writer is gone, the same copy succeeds.
    let out = copy(&db, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM runs"), 2);
    assert_eq!(pg_i64(&url, "SELECT count(*) FROM queues"), 1);
}
