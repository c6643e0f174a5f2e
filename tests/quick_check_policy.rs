//! Open-time `PRAGMA quick_check` policy: small files are always checked; large files only
//! when an engine did not stop cleanly (its row has no `stopped_at` and its process is gone).

use rusqlite::{params, Connection};
use std::sync::Arc;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{quick_check_needed, Store, StoreOptions, QUICK_CHECK_ALWAYS_BYTES};

#[test]
fn large_files_are_checked_only_after_an_unclean_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("policy.db");
    drop(
        Store::open(
            &db,
            &StoreOptions::default(),
            Arc::new(SystemClock::from_env()),
        )
        .expect("create"),
    );
    let conn = Connection::open(&db).expect("raw connection");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    // Small file: always checked.
    assert!(quick_check_needed(&conn, &db));

    // Grow the file past the threshold with a few big finished runs.
    let blob = vec![7u8; 8 * 1024 * 1024];
    for i in 0..((QUICK_CHECK_ALWAYS_BYTES / blob.len() as u64) + 1) {
        conn.execute(
            "INSERT INTO runs(workflow, input, status, ready_at, created_at, updated_at, finished_at)
             VALUES ('w', ?1, 'completed', 0, 0, 0, 0)",
            params![blob],
        )
        .unwrap_or_else(|e| panic!("insert {i}: {e}"));
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    assert!(std::fs::metadata(&db).expect("stat").len() > QUICK_CHECK_ALWAYS_BYTES);

    // No engine ever ran, or all stopped cleanly: skipped.
    assert!(!quick_check_needed(&conn, &db));
    conn.execute(
        "INSERT INTO engines(id, pid, pid_start, boot_id, started_at, beat_at, stopped_at)
         VALUES ('clean', 1, 1, 'x', 0, 0, 5)",
        [],
    )
    .expect("clean engine row");
    assert!(!quick_check_needed(&conn, &db));

    // A live engine on this host (this process) vouches for the file.
    let (pid, start) = waymark::internal::host::this_process();
    conn.execute(
        "INSERT INTO engines(id, pid, pid_start, boot_id, started_at, beat_at)
         VALUES ('live', ?1, ?2, ?3, 0, 0)",
        params![pid, start as i64, waymark::internal::host::host_id()],
    )
    .expect("live engine row");
    assert!(!quick_check_needed(&conn, &db));

    // An engine that never stopped and whose process is gone: checked.
    conn.execute(
        "INSERT INTO engines(id, pid, pid_start, boot_id, started_at, beat_at)
         VALUES ('crashed', ?1, ?2, ?3, 0, 0)",
        params![pid, start as i64 + 1, waymark::internal::host::host_id()],
    )
    .expect("crashed engine row");
    assert!(quick_check_needed(&conn, &db));

    // An engine from before a reboot that never stopped: checked.
    conn.execute("DELETE FROM engines WHERE id = 'crashed'", [])
        .expect("delete");
    conn.execute(
        "INSERT INTO engines(id, pid, pid_start, boot_id, started_at, beat_at)
         VALUES ('old-boot', ?1, ?2, 'another-boot', 0, 0)",
        params![pid, start as i64],
    )
    .expect("old boot row");
    assert!(quick_check_needed(&conn, &db));
}
