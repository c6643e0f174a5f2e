//! Rows the harness corrupts itself, with plain rusqlite, while engines run. The target runs
//! are enqueued waiting far in the future (`suspended`), so no engine has read them yet;
//! the corruption makes them due in the same transaction. Each must end `blocked` (parked
//! for an operator) while every other run finishes: one bad row must stall nothing else.
//!
//! Two kinds, alternating: `deadline_at = 'soon'` (TEXT in an INTEGER column, read by the
//! claim), and a journal entry for seq 0 whose output is TEXT instead of an encoded BLOB
//! (read by the replay).

use rusqlite::{params, Connection, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// `ready_at` of a corruption target until it is corrupted: 2100-01-01, in ms.
pub const PARKED_UNTIL_MS: i64 = 4_102_444_800_000;

/// Corrupt the runs with these workload indexes; `first_step` names the step each calls at
/// seq 0. Returns a description per run.
pub fn corrupt(db: &Path, targets: &[(u64, &str)]) -> Result<Vec<String>, String> {
    let mut conn = Connection::open(db).map_err(|e| format!("opening {}: {e}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let err = |e: rusqlite::Error| format!("corrupting rows of {}: {e}", db.display());
    let mut done = Vec::new();
    for (i, (index, first_step)) in targets.iter().enumerate() {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let id: i64 = tx
            .query_row(
                "SELECT id FROM runs WHERE idempotency_key = ?1",
                [format!("torture-{index}")],
                |r| r.get(0),
            )
            .map_err(err)?;
        if i % 2 == 0 {
            tx.execute(
                "UPDATE runs SET deadline_at = 'soon', ready_at = 0 WHERE id = ?1",
                [id],
            )
            .map_err(err)?;
            done.push(format!("run {id}: deadline_at = 'soon'"));
        } else {
            tx.execute(
                "INSERT INTO steps(run_id, seq, name, kind, status, attempts, output, error, recorded_at)
                 VALUES (?1, 0, ?2, 'step', 'completed', 1, 'not an encoded output', NULL, 0)",
                params![id, first_step],
            )
            .map_err(err)?;
            tx.execute("UPDATE runs SET ready_at = 0 WHERE id = ?1", [id])
                .map_err(err)?;
            done.push(format!("run {id}: journal seq 0 output is TEXT"));
        }
        tx.commit().map_err(err)?;
    }
    Ok(done)
}
