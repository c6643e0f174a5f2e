//! Attack (schema 8 on PostgreSQL): a database at schema 7 with runs queued is upgraded in
//! place by engines that all start at once (`waymark serve --db URL` processes). The
//! upgrade (index `runs_pending_workflow`, function `waymark_pending_known`) runs in one
//! transaction under the migration advisory lock.
//! Must hold: every engine starts (none dies on a half-made or doubly made schema), the
//! database ends at version 8 with the index and the function, and every queued run
//! completes: the dispatchers' poll (the new function) sees the runs queued before it.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn engines_starting_at_once_upgrade_schema_7_and_drain_its_queue() {
    let tmp = Tmp::pg();
    let db = tmp.db();
    let url = tmp.url.clone().unwrap();
    let ids = tmp.start("fixture.slow", r#"{"steps":2,"ms":5}"#, 24);
    // Back to schema 7: what a build of yesterday left.
    let mut c = pg_cluster_client(&url);
    c.batch_execute(
        "DROP FUNCTION waymark_pending_known(jsonb);
         DROP INDEX runs_pending_workflow;
         UPDATE waymark_meta SET value = 7 WHERE key = 'schema_version';",
    )
    .unwrap();
    let mut engines: Vec<Proc> = (0..4).map(|_| tmp.serve(2, &[])).collect();
    wait_for(
        "every queued run to complete",
        Duration::from_secs(90),
        || {
            (query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'")
                == ids.len() as i64)
                .then_some(())
        },
    );
    for (i, e) in engines.iter_mut().enumerate() {
        assert!(
            e.child.try_wait().unwrap().is_none(),
            "engine {i} exited while the others upgraded the schema: {:?}",
            e.child.try_wait()
        );
    }
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM engines WHERE stopped_at IS NULL"),
        4,
        "every engine registered"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT value FROM waymark_meta WHERE key = 'schema_version'"
        ),
        8
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'runs_pending_workflow'"
        ),
        1
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM pg_proc WHERE proname = 'waymark_pending_known'"
        ),
        1
    );
    // Each step ran once (no crash here: at-least-once never needed a second run).
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM steps"),
        2 * ids.len() as i64
    );
    for mut e in engines.drain(..) {
        e.kill();
    }
}
