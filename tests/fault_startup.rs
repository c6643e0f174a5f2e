//! Concurrent start-up. Scenario: three engine processes open the same fresh (absent) file at
//! the same instant. What must survive: the schema is migrated exactly once (one
//! "migrated" log line over all three), all three register and run work, and every run
//! completes with one result per journal seq.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn three_engines_on_a_fresh_file_migrate_once_and_all_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let engines: Vec<Proc> = (0..3)
        .map(|i| serve(dir.path(), &format!("e{i}"), &db, 2, 3000, &[]))
        .collect();
    wait_until("three engines registered", Duration::from_secs(30), || {
        std::fs::metadata(&db).is_ok_and(|m| m.len() > 0)
            && reader(&db)
                .query_row("SELECT count(*) FROM engines", [], |r| r.get::<_, i64>(0))
                .is_ok_and(|n| n == 3)
    });
    let runs = start(&db, "fixture.slow", r#"{"steps":3,"ms":60}"#, 60);
    wait_until("every run to complete", Duration::from_secs(90), || {
        runs.iter().all(|r| status(&db, *r) == "completed")
    });
    // One engine ran every migration step (one log line each); the others found it done.
    let per_engine: Vec<usize> = engines
        .iter()
        .map(|e| e.log_text().matches("to schema version").count())
        .collect();
    let version = waymark::internal::store::schema::SCHEMA_VERSION;
    assert_eq!(
        per_engine.iter().filter(|&&n| n > 0).count(),
        1,
        "migrated by exactly one engine: {per_engine:?}"
    );
    assert_eq!(
        per_engine.iter().sum::<usize>() as i64,
        version,
        "each step once"
    );
    assert_eq!(query_i64(&db, "PRAGMA user_version"), version);
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
