//! On both stores (SQLite and PostgreSQL).
//! Scenario: a run whose step kills its engine process every time it executes.
//! Must hold: after more than `interruptions_max` (5) interruptions the run ends `failed` with
//! the reason "interrupted 6 times" and its last interruption, instead of crashing engines forever.

mod support;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use support::*;

on_both_stores!(a_run_that_keeps_killing_its_engine_ends_failed);
fn a_run_that_keeps_killing_its_engine_ends_failed(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "poison.db");
    let dbs = db.to_str().unwrap();
    let run = start_runs(&db, "fixture.crash", "null", None, 1)[0];
    let mut crashes = 0;
    for i in 0..12 {
        let mut e = spawn(
            &["serve", "--db", dbs, "--workers", "1", "--exit-when-idle"],
            &[],
            &dir.path().join(format!("{i}.log")),
        );
        let status = wait_exit(&mut e, Duration::from_secs(60));
        if status.success() {
            break;
        }
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        crashes += 1;
    }
    assert_eq!(
        crashes, 6,
        "the run crashed its engine six times, then was failed"
    );
    assert_eq!(try_status(&db, run).as_deref(), Some("failed"));
    let error = query_text(&db, &format!("SELECT error FROM runs WHERE id = {run}"));
    assert!(error.starts_with("interrupted 6 times"), "{error}");
    assert!(
        error.contains("is dead"),
        "the last interruption is named: {error}"
    );
}
