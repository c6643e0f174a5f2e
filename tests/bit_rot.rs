//! Bit rot (issue 11): SQLite keeps no checksum of a page, so a flipped bit in a stored
//! payload would change it silently; waymark seals every payload with a CRC-32 (codec.rs).
//! The damage is made by hand in the real files, with every engine stopped (or killed).
//! (a) Scenario: one bit of a journaled step output flips in the database file. What must
//!     hold: that run is parked `blocked` with a note naming the run, the step and its seq
//!     and the checksum mismatch; the other runs complete with their own outputs; no panic.
//! (b) Scenario: one bit flips inside a WAL frame (the engine was SIGKILLed, nothing was
//!     checkpointed). What must hold: SQLite's recovery drops the damaged frame's commit and
//!     every later one (its frame checksums are cumulative): the file opens, passes
//!     quick_check, and holds exactly the commits before the damage; the run continues from
//!     there and completes with its true output. Never a wrong output.
//! (c) Scenario: a whole page is zeroed (the journal table's page, or an index's page).
//!     What must hold: every open is refused with one clear line (quick_check), the file
//!     left unchanged; no panic.

mod support;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;
use waymark::internal::codec::{decode, PAYLOAD_BYTES_MAX};

/// Start one `fixture.echo` run per text: a step returns `TEXT-OUTPUT`, then a durable
/// sleep of `ms`, then the run ends with that output.
fn echo(db: &Path, texts: &[String], ms: u64) -> Vec<i64> {
    texts
        .iter()
        .map(|t| {
            let json = format!(r#"{{"text":"{t}","ms":{ms}}}"#);
            start(db, "fixture.echo", &json, 1)[0]
        })
        .collect()
}

fn journaled(db: &Path, runs: &[i64]) -> bool {
    runs.iter().all(|r| {
        query_i64(
            db,
            &format!("SELECT count(*) FROM steps WHERE run_id = {r} AND seq = 0"),
        ) == 1
    })
}

/// Stop an engine with SIGTERM (a clean shutdown) and reap it.
fn stop(mut p: Proc) {
    p.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "engine did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Fold the WAL into the database file, so the file alone holds every committed page.
fn checkpoint(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "checkpoint completed");
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Write `data` at `offset` of `path` in place (no other byte of the file changes).
fn overwrite(path: &Path, offset: usize, data: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset as u64)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Flip bit 0 of the byte at `offset`.
fn flip(path: &Path, offset: usize) {
    let byte = file_bytes(path)[offset];
    overwrite(path, offset, &[byte ^ 1]);
}

fn output(db: &Path, run: i64) -> Option<String> {
    let blob: Option<Vec<u8>> = reader(db)
        .query_row("SELECT output FROM runs WHERE id = ?1", [run], |r| r.get(0))
        .unwrap();
    blob.map(|b| decode::<String>(&b, PAYLOAD_BYTES_MAX).unwrap_or_else(|e| format!("<{e}>")))
}

fn note(db: &Path, run: i64) -> String {
    reader(db)
        .query_row(
            "SELECT coalesce(note, '') FROM runs WHERE id = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap()
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

#[test]
fn a_flipped_bit_in_a_stored_step_output_blocks_only_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rot.db");
    let victim_text = "bitrot-victim".to_string();
    let victim = echo(&db, std::slice::from_ref(&victim_text), 1500)[0];
    let others_text = texts("bitrot-other", 5);
    let others = echo(&db, &others_text, 1500);
    let a = serve(dir.path(), "a", &db, 4, 2000, &[]);
    wait_until(
        "every step output journaled",
        Duration::from_secs(60),
        || journaled(&db, &[victim]) && journaled(&db, &others),
    );
    stop(a);
    checkpoint(&db);
    let marker = format!("{victim_text}-OUTPUT");
    let at = find_all(&file_bytes(&db), marker.as_bytes());
    assert!(!at.is_empty(), "the step output is in the database file");
    // 'v' (0x76) becomes 'w' (0x77): still valid UTF-8, so only the checksum can tell.
    for offset in &at {
        flip(&db, offset + "bitrot-".len());
    }
    let b = serve(dir.path(), "b", &db, 4, 2000, &[]);
    wait_until(
        "the other runs to complete",
        Duration::from_secs(60),
        || others.iter().all(|r| status(&db, *r) == "completed"),
    );
    for (run, text) in others.iter().zip(&others_text) {
        assert_eq!(
            output(&db, *run),
            Some(format!("{text}-OUTPUT")),
            "run {run}"
        );
    }
    wait_until(
        "the damaged run to end or park",
        Duration::from_secs(60),
        || !["pending", "running", "suspended"].contains(&status(&db, victim).as_str()),
    );
    let (st, n) = (status(&db, victim), note(&db, victim));
    assert_eq!(
        st,
        "blocked",
        "run {victim} ended {st} with output {:?}, note {n:?}",
        output(&db, victim)
    );
    for part in [
        format!("run {victim}"),
        "'fixture.echo'".into(),
        "seq 0".into(),
        "checksum mismatch".into(),
    ] {
        assert!(n.contains(&part), "note {n:?} names {part}");
    }
    assert_eq!(output(&db, victim), None, "no output recorded");
    stop(b);
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(!log.contains("panicked"), "no panic: {log}");
}

#[test]
fn a_flipped_bit_in_a_wal_frame_loses_that_commit_and_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rot.db");
    let wal = dir.path().join("rot.db-wal");
    let victim_text = "walrot-victim".to_string();
    let victim = echo(&db, std::slice::from_ref(&victim_text), 1000)[0];
    // Fold the enqueue into the file, so the WAL holds only the engine's commits.
    checkpoint(&db);
    let mut a = serve(dir.path(), "a", &db, 2, 2000, &[]);
    wait_until(
        "the victim's step journaled",
        Duration::from_secs(60),
        || journaled(&db, &[victim]),
    );
    // Later commits: more runs enqueued and journaled.
    let later_text = texts("walrot-later", 3);
    let later = echo(&db, &later_text, 1000);
    wait_until("the later steps journaled", Duration::from_secs(60), || {
        journaled(&db, &later)
    });
    a.kill(); // SIGKILL: no checkpoint, the commits live only in the WAL.
    let marker = format!("{victim_text}-OUTPUT");
    assert!(
        find_all(&file_bytes(&db), marker.as_bytes()).is_empty(),
        "the step output is not in the database file yet"
    );
    let wal_bytes = file_bytes(&wal);
    let page_size = u32::from_be_bytes(wal_bytes[8..12].try_into().unwrap()) as usize;
    let first = *find_all(&wal_bytes, marker.as_bytes())
        .first()
        .expect("the step output is in the WAL");
    // The first frame holding it belongs to the commit that journaled it.
    let frame = (first - 32) / (24 + page_size);
    flip(&wal, first + "walrot-".len());

    // What SQLite's recovery keeps: the commits before that frame.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let qc: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
        assert_eq!(qc, "ok", "the recovered file is consistent");
        let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM steps WHERE run_id = {victim}"
            )),
            0,
            "the damaged commit (WAL frame {frame}) is lost"
        );
        assert_eq!(
            count("SELECT count(*) FROM runs"),
            1,
            "every later commit is lost too: the later runs' enqueues are gone"
        );
        let st: String = c
            .query_row("SELECT status FROM runs WHERE id = ?1", [victim], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            st, "running",
            "the claim, committed before the damage, is kept"
        );
    }
    // The run continues from the kept commits: its step runs again, its output is true.
    let b = serve(dir.path(), "b", &db, 2, 2000, &[]);
    wait_until("the victim to end", Duration::from_secs(60), || {
        !["pending", "running", "suspended"].contains(&status(&db, victim).as_str())
    });
    assert_eq!(
        status(&db, victim),
        "completed",
        "note {:?}",
        note(&db, victim)
    );
    assert_eq!(output(&db, victim), Some(marker));
    for run in &later {
        assert_eq!(
            query_i64(&db, &format!("SELECT count(*) FROM runs WHERE id = {run}")),
            0,
            "run {run} was lost with the later commits"
        );
    }
    stop(b);
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(!log.contains("panicked"), "no panic: {log}");
}

#[test]
fn a_zeroed_page_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rot.db");
    let runs = echo(&db, &texts("zero", 4), 10);
    let a = serve(dir.path(), "a", &db, 2, 2000, &[]);
    wait_until("the runs to complete", Duration::from_secs(60), || {
        runs.iter().all(|r| status(&db, *r) == "completed")
    });
    stop(a);
    checkpoint(&db);
    let original = file_bytes(&db);
    let page_size = u16::from_be_bytes(original[16..18].try_into().unwrap()) as usize;
    for btree in ["steps", "runs", "runs_status"] {
        let root: i64 = reader(&db)
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                [btree],
                |r| r.get(0),
            )
            .unwrap();
        let sub = dir.path().join(btree);
        std::fs::create_dir(&sub).unwrap();
        let copy = sub.join("x.db");
        std::fs::write(&copy, &original).unwrap();
        overwrite(
            &copy,
            (root as usize - 1) * page_size,
            &vec![0u8; page_size],
        );
        let before = file_bytes(&copy);
        for args in [vec!["stats"], vec!["serve"]] {
            let mut child = Command::new(bin())
                .args(&args)
                .arg("--db")
                .arg(&copy)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{btree}: {args:?} opened a file with a zeroed page");
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{btree}: {args:?} refused");
            assert!(
                err.contains("failed its integrity check"),
                "{btree}: clear message, got {err:?}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{btree}: one line: {err:?}");
            assert!(!err.contains("panicked"), "{btree}: no panic: {err:?}");
            assert_eq!(file_bytes(&copy), before, "{btree}: bytes unchanged");
        }
    }
}

/// Flip bit 0 of the last byte of the blob `column` of the row `key` in `table` (through
/// SQL, engines stopped): a payload changed after it was written.
fn rot_blob(db: &Path, table: &str, column: &str, key: &str) {
    let w = rusqlite::Connection::open(db).unwrap();
    let mut blob: Vec<u8> = w
        .query_row(
            &format!("SELECT {column} FROM {table} WHERE {key}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    *blob.last_mut().unwrap() ^= 1;
    let n = w
        .execute(
            &format!("UPDATE {table} SET {column} = ?1 WHERE {key}"),
            [blob],
        )
        .unwrap();
    assert_eq!(n, 1, "{table}.{column} where {key}");
}

// (a') The other places the engine reads a run's payloads: a damaged run input (claim), a
// damaged event payload (consumed by a wait), a damaged child output (journaled by a join,
// read on replay). Each parks only its own run `blocked`, naming the payload and the
// checksum mismatch; an undamaged run of each kind completes.
#[test]
fn damaged_input_event_and_child_payloads_park_only_their_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rot.db");
    let parents = start(&db, "fixture.parent", r#"{"steps":1,"ms":1}"#, 2);
    let a = serve(dir.path(), "a", &db, 4, 2000, &[]);
    wait_until("the parents to complete", Duration::from_secs(60), || {
        parents.iter().all(|r| status(&db, *r) == "completed")
    });
    stop(a);
    // Replay parents[0] with a damaged join entry (its child's output).
    rot_blob(
        &db,
        "steps",
        "output",
        &format!("run_id = {} AND kind = 'join'", parents[0]),
    );
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE runs SET status = 'pending', output = NULL, finished_at = NULL WHERE id = ?1",
            [parents[0]],
        )
        .unwrap();
    let inputs = echo(&db, &texts("input", 2), 1);
    rot_blob(&db, "runs", "input", &format!("id = {}", inputs[0]));
    let waiters = start(
        &db,
        "fixture.waiter",
        r#"{"name":"go","timeout_ms":600000}"#,
        2,
    );
    for run in &waiters {
        let out = Command::new(bin())
            .args(["send", &run.to_string(), "go", "--json", "17", "--db"])
            .arg(&db)
            .output()
            .unwrap();
        assert!(out.status.success(), "send: {out:?}");
    }
    rot_blob(
        &db,
        "events",
        "payload",
        &format!("run_id = {}", waiters[0]),
    );

    let b = serve(dir.path(), "b", &db, 4, 2000, &[]);
    let damaged = [
        (parents[0], "join:"),
        (inputs[0], "cannot decode the input of run"),
        (waiters[0], "payload of event 'go'"),
    ];
    let intact = [parents[1], inputs[1], waiters[1]];
    wait_until(
        "the intact runs to complete",
        Duration::from_secs(60),
        || intact.iter().all(|r| status(&db, *r) == "completed"),
    );
    wait_until("the damaged runs to park", Duration::from_secs(60), || {
        damaged.iter().all(|(r, _)| status(&db, *r) == "blocked")
    });
    for (run, what) in damaged {
        let n = note(&db, run);
        for part in [what, "checksum mismatch", &format!("run {run}")] {
            assert!(n.contains(part), "run {run}: note {n:?} names {part:?}");
        }
    }
    assert_eq!(output(&db, inputs[1]), Some("input-01-OUTPUT".into()));
    stop(b);
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(!log.contains("panicked"), "no panic: {log}");
}
