//! Stored payload format (codec header, schema version 5).
//! Scenario: a file written by waymark at schema version 4 (payloads stored bare, no
//! header) holds runs in the middle of their work: journaled step outputs and timers. A
//! current engine opens it. What must survive: migration 5 seals every payload in place, the
//! runs replay their journal (no step runs again) and complete with their true outputs.
//! The version-4 file is made from a current one by stripping the 6-byte headers, which
//! gives exactly the bytes version 4 wrote (the bodies are unchanged bincode / JSON).

mod support;
use std::time::{Duration, Instant};
use support::*;
use waymark::internal::codec::{decode, PAYLOAD_BYTES_MAX};

#[test]
fn a_version_4_file_with_runs_in_flight_is_migrated_and_its_runs_complete() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v4.db");
    let texts: Vec<String> = (0..4).map(|i| format!("legacy-{i}")).collect();
    let runs: Vec<i64> = texts
        .iter()
        .map(|t| {
            start(
                &db,
                "fixture.echo",
                &format!(r#"{{"text":"{t}","ms":1500}}"#),
                1,
            )[0]
        })
        .collect();
    let mut a = serve(dir.path(), "a", &db, 4, 2000, &[]);
    wait_until(
        "every step and timer journaled",
        Duration::from_secs(60),
        || {
            runs.iter().all(|r| {
                query_i64(
                    &db,
                    &format!("SELECT count(*) FROM steps WHERE run_id = {r}"),
                ) == 2
            })
        },
    );
    a.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "engine did not stop");
        std::thread::sleep(Duration::from_millis(25));
    }
    {
        let w = rusqlite::Connection::open(&db).unwrap();
        w.execute_batch(
            "UPDATE runs SET input = substr(input, 7) WHERE typeof(input) = 'blob';
             UPDATE runs SET output = substr(output, 7) WHERE typeof(output) = 'blob';
             UPDATE steps SET output = substr(output, 7) WHERE typeof(output) = 'blob';
             UPDATE events SET payload = substr(payload, 7) WHERE typeof(payload) = 'blob';
             UPDATE schedules SET input = substr(input, 7) WHERE typeof(input) = 'blob';
             -- What versions 6, 7 and 8 add, so the file is a version-4 file again.
             DROP INDEX runs_pending_workflow;
             DROP TRIGGER run_changes_insert;
             DROP TRIGGER run_changes_status;
             DROP TABLE run_changes;
             DROP INDEX runs_retry_of;
             ALTER TABLE runs DROP COLUMN retry_of;
             ALTER TABLE steps DROP COLUMN copied_from;
             ALTER TABLE attempts DROP COLUMN logs;
             ALTER TABLE attempts DROP COLUMN memory_cap;
             PRAGMA user_version = 4;",
        )
        .unwrap();
        let bare: Vec<u8> = w
            .query_row(
                "SELECT output FROM steps WHERE run_id = ?1 AND seq = 0",
                [runs[0]],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            decode::<String>(&bare, PAYLOAD_BYTES_MAX).is_err(),
            "bare bytes are refused"
        );
        assert_eq!(bare, {
            let mut v = (texts[0].len() as u64 + 7).to_le_bytes().to_vec();
            v.extend_from_slice(format!("{}-OUTPUT", texts[0]).as_bytes());
            v
        });
    }
    let attempts = query_i64(&db, "SELECT count(*) FROM attempts");
    let b = serve(dir.path(), "b", &db, 4, 2000, &[]);
    wait_until("the runs to end", Duration::from_secs(60), || {
        runs.iter()
            .all(|r| !["pending", "running", "suspended"].contains(&status(&db, *r).as_str()))
    });
    for (run, text) in runs.iter().zip(&texts) {
        assert_eq!(status(&db, *run), "completed", "run {run}");
        let out: Vec<u8> = reader(&db)
            .query_row("SELECT output FROM runs WHERE id = ?1", [run], |r| r.get(0))
            .unwrap();
        assert_eq!(
            decode::<String>(&out, PAYLOAD_BYTES_MAX).unwrap(),
            format!("{text}-OUTPUT")
        );
    }
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM attempts"),
        attempts,
        "replayed from the journal: no step ran again"
    );
    assert_eq!(
        query_i64(&db, "PRAGMA user_version"),
        waymark::internal::store::schema::SCHEMA_VERSION
    );
    drop(b);
}
