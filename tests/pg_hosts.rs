//! Scenario (PostgreSQL: engines on several hosts share one database): engine A on one host
//! runs a slow run; engine B starts on another host (each engine gets a boot id of its own
//! through the test hook `WAYMARK_SIMULATED_BOOT_ID`).
//! Must hold: B judges A only by A's heartbeat, never by A's boot id (on a shared store
//! another boot id is another host, not an earlier boot): while A renews its lease, B takes
//! nothing; the run completes once, on A, with every step executed once. When A is then
//! SIGKILLed on its "host", B reclaims A's next run after A's heartbeat stood still for a
//! TTL on B's clock and finishes it.
//! (Only about hosts, so only PostgreSQL: an SQLite file lives on one host, where another
//! boot id is an earlier boot and is reclaimed at once, as tests/fault_startup.rs shows.)

mod support;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

#[test]
fn an_engine_on_another_host_is_judged_by_its_heartbeat_not_its_boot_id() {
    let dir = tempdir();
    let db = Backend::Postgres.fresh_db(dir.path(), "unused");
    let run = start_runs(&db, "fixture.slow", r#"{"steps":3,"ms":1500}"#, None, 1)[0];
    let host = |b: &str| vec![("WAYMARK_SIMULATED_BOOT_ID", b.to_string())];
    let a = serve(dir.path(), "a", &db, 1, 2000, &host("host-a"));
    wait_for(
        "A to start the run's first step",
        Duration::from_secs(60),
        || {
            effects(&dir.path().join("effects"))
                .iter()
                .any(|e| e.0 == run)
                .then_some(())
        },
    );
    let b = serve(dir.path(), "b", &db, 1, 2000, &host("host-b"));
    wait_until("the run to complete", Duration::from_secs(120), || {
        status(&db, run) == "completed"
    });
    let fx = effects(&dir.path().join("effects"));
    let mut per_step: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
    for (r, seq, _, pid) in &fx {
        per_step.entry((*r, *seq)).or_default().push(*pid);
    }
    assert_eq!(per_step.len(), 3, "{fx:?}");
    for (key, pids) in &per_step {
        assert_eq!(
            pids.len(),
            1,
            "step {key:?} executed {} times: {fx:?}",
            pids.len()
        );
    }
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT interruptions FROM runs WHERE id = {run}")
        ),
        0,
        "B reclaimed a run whose owner on another host was alive: {}",
        b.log_text()
    );
    assert_eq!(overlaps(dir.path()), vec![]);

    // A dies on its host; B takes its next run once A's heartbeat stood still for a TTL.
    let mut a = a;
    let next = start_runs(&db, "fixture.slow", r#"{"steps":2,"ms":4000}"#, None, 1)[0];
    wait_until(
        "a step of the next run to start",
        Duration::from_secs(60),
        || {
            effects(&dir.path().join("effects"))
                .iter()
                .any(|e| e.0 == next)
        },
    );
    let owner = query_text(&db, &format!("SELECT owner FROM runs WHERE id = {next}"));
    let a_owner = query_text(
        &db,
        &format!(
            "SELECT id FROM engines WHERE pid = {} ORDER BY started_at DESC LIMIT 1",
            a.pid()
        ),
    );
    a.kill();
    wait_until(
        "B to complete the next run",
        Duration::from_secs(120),
        || status(&db, next) == "completed",
    );
    if owner == a_owner {
        assert_eq!(
            query_i64(
                &db,
                &format!("SELECT interruptions FROM runs WHERE id = {next}")
            ),
            1,
            "A's run was reclaimed once"
        );
    }
    drop(b);
}
