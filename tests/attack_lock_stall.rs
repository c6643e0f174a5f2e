//! Adversarial review of issue 9 (attack: liveness by heartbeat progress). Scenario: engine
//! A executes a long in-process step; engines B..E are idle on the same file. Another
//! process (a `sqlite3` shell, a backup tool) holds the write lock (`BEGIN IMMEDIATE`) for
//! two lease TTLs, then commits. Nobody can write meanwhile, so A's heartbeat cannot move;
//! their reapers see it stand still for a TTL and queue a reclaim behind the lock.
//! When the lock is released, every writer races for it.
//! What must survive: A is alive and not paused, its step is running; a global write stall
//! is not evidence that A died. No step may run twice at once.

mod support;
use std::time::Duration;
use support::*;

const TTL: u64 = 1500;

#[test]
fn a_write_lock_held_by_another_process_does_not_make_a_live_owner_dead() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stall.db");
    let run = start(&db, "fixture.slow", r#"{"steps":1,"ms":25000}"#, 1)[0];
    let a = serve_with(dir.path(), "a", &db, 1, TTL, &[], &["--in-process"]);
    wait_until("A to start the long step", Duration::from_secs(30), || {
        effect_count(dir.path(), run, 0, "sleep") == 1
    });
    let observers: Vec<Proc> = ["b", "c", "d", "e"]
        .iter()
        .map(|n| serve_with(dir.path(), n, &db, 1, TTL, &[], &["--in-process"]))
        .collect();
    wait_until("the observers to register", Duration::from_secs(30), || {
        query_i64(&db, "SELECT count(*) FROM engines WHERE stopped_at IS NULL") == 5
    });
    let interruptions = || {
        query_i64(
            &db,
            &format!("SELECT interruptions FROM runs WHERE id = {run}"),
        )
    };
    for _ in 0..3 {
        let holder = rusqlite::Connection::open(&db).unwrap();
        holder.busy_timeout(Duration::from_secs(30)).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(Duration::from_millis(2 * TTL));
        holder.execute_batch("COMMIT").unwrap();
        drop(holder);
        std::thread::sleep(Duration::from_millis(1500));
        if interruptions() > 0 {
            break;
        }
    }
    wait_until("the run to complete", Duration::from_secs(90), || {
        status(&db, run) == "completed"
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        overlaps(dir.path()),
        vec![],
        "the step ran twice at once (interruptions {});\nA:\n{}\nobservers:\n{}",
        interruptions(),
        a.log_text(),
        observers
            .iter()
            .map(|o| o.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    assert_eq!(
        interruptions(),
        0,
        "a live owner was reclaimed after a write stall"
    );
}
