//! Concurrent start-up, on both stores (SQLite and PostgreSQL). Scenario: three engine
//! processes open the same fresh database at the same instant (an absent SQLite file; an
//! empty PostgreSQL database); and, second, several `waymark start` processes (CLI clients)
//! and an engine open one fresh database at once. What must survive: the schema is
//! migrated exactly once (one migration over all processes: SQLite logs each step
//! "to schema version N", PostgreSQL creates the whole schema under its advisory lock and
//! logs "created the waymark schema"), every process succeeds, all engines register and run
//! work, and every run completes with one result per journal seq.

mod support;
use std::path::Path;
use std::time::Duration;
use support::*;

/// Number of migration log lines in `log` (lines of one engine or CLI process).
fn migrations_logged(backend: Backend, log: &str) -> usize {
    match backend {
        Backend::Sqlite => log.matches("to schema version").count(),
        Backend::Postgres => log.matches("created the waymark schema").count(),
    }
}

/// The migration lines all processes must have logged together: SQLite runs every step once,
/// PostgreSQL creates the schema in one step.
fn migrations_expected(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => waymark::internal::store::schema::SCHEMA_VERSION as usize,
        Backend::Postgres => 1,
    }
}

/// The database is at this build's schema version, stamped once.
fn assert_one_schema(backend: Backend, db: &Path) {
    match backend {
        Backend::Sqlite => assert_eq!(
            query_i64(db, "PRAGMA user_version"),
            waymark::internal::store::schema::SCHEMA_VERSION
        ),
        Backend::Postgres => assert_eq!(
            rows(db, "SELECT key, value FROM waymark_meta"),
            vec![vec![
                "schema_version".to_string(),
                waymark::internal::store::pg::schema::SCHEMA_VERSION.to_string()
            ]],
            "one version stamp"
        ),
    }
}

on_both_stores!(three_engines_on_a_fresh_database_migrate_once_and_all_run);
fn three_engines_on_a_fresh_database_migrate_once_and_all_run(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "fresh.db");
    let engines: Vec<Proc> = (0..3)
        .map(|i| serve(dir.path(), &format!("e{i}"), &db, 2, 3000, &[]))
        .collect();
    wait_until("three engines registered", Duration::from_secs(30), || {
        try_query_i64(&db, "SELECT count(*) FROM engines") == Some(3)
    });
    let runs = start(&db, "fixture.slow", r#"{"steps":3,"ms":60}"#, 60);
    wait_until("every run to complete", Duration::from_secs(90), || {
        runs.iter().all(|r| status(&db, *r) == "completed")
    });
    // One engine ran every migration step (one log line each); the others found it done.
    let per_engine: Vec<usize> = engines
        .iter()
        .map(|e| migrations_logged(backend, &e.log_text()))
        .collect();
    assert_eq!(
        per_engine.iter().filter(|&&n| n > 0).count(),
        1,
        "migrated by exactly one engine: {per_engine:?}"
    );
    assert_eq!(
        per_engine.iter().sum::<usize>(),
        migrations_expected(backend),
        "each step once"
    );
    assert_one_schema(backend, &db);
    let eff = effects_in(dir.path());
    for e in &engines {
        assert!(
            eff.iter().any(|x| x.3 == e.pid() as u32),
            "engine {} ran work:\n{}",
            e.pid(),
            e.log_text()
        );
    }
    assert_eq!(query_i64(&db, "SELECT count(*) FROM steps"), 180);
}

on_both_stores!(cli_clients_and_an_engine_opening_a_fresh_database_at_once_all_succeed);
fn cli_clients_and_an_engine_opening_a_fresh_database_at_once_all_succeed(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.fresh_db(dir.path(), "fresh.db");
    let db_arg = db.to_str().unwrap();
    let engine = serve(dir.path(), "engine", &db, 2, 3000, &[]);
    let clients: Vec<(std::process::Child, std::path::PathBuf)> = (0..6)
        .map(|i| {
            let log = dir.path().join(format!("start{i}.log"));
            let child = spawn(
                &[
                    "start",
                    "fixture.slow",
                    "--db",
                    db_arg,
                    "--json",
                    r#"{"steps":1,"ms":10}"#,
                ],
                &[("RUST_LOG", "info")],
                &log,
            );
            (child, log)
        })
        .collect();
    let mut logs = vec![engine.log_text()];
    for (mut child, log) in clients {
        let status = wait_exit(&mut child, Duration::from_secs(60));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success(),
            "`waymark start` on a fresh database failed ({status}): {text}"
        );
        logs.push(text);
    }
    wait_until("every run to complete", Duration::from_secs(60), || {
        try_query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'") == Some(6)
    });
    logs[0] = engine.log_text();
    let per_process: Vec<usize> = logs.iter().map(|l| migrations_logged(backend, l)).collect();
    assert_eq!(
        per_process.iter().filter(|&&n| n > 0).count(),
        1,
        "migrated by exactly one process (the engine first, then six clients): {per_process:?}"
    );
    assert_eq!(
        per_process.iter().sum::<usize>(),
        migrations_expected(backend),
        "each step once: {per_process:?}"
    );
    assert_one_schema(backend, &db);
    assert_eq!(query_i64(&db, "SELECT count(*) FROM runs"), 6);
}
