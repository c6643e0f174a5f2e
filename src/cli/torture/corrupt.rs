//! Rows the harness corrupts itself, behind the store's back, while engines run. The target
//! runs are enqueued waiting far in the future (`suspended`), so no engine has read them
//! yet; the corruption makes them due in the same transaction. Each must end `blocked`
//! (parked for an operator) while every other run finishes: one bad row must stall nothing
//! else.
//!
//! Two kinds, alternating (see [`Corruption`]): a bad run row (SQLite: `deadline_at =
//! 'soon'`, TEXT in an INTEGER column, read by the claim; PostgreSQL, whose typed columns
//! refuse that: a flipped byte in the run's sealed input, found by the codec's checksum),
//! and a journal entry for seq 0 whose output is not an encoded output (read by the replay).

use super::db::{Corruption, Reader};
use std::path::Path;

/// `ready_at` of a corruption target until it is corrupted: 2100-01-01, in ms.
pub const PARKED_UNTIL_MS: i64 = 4_102_444_800_000;

/// Corrupt the runs with these workload indexes; `first_step` names the step each calls at
/// seq 0. Returns a description per run.
pub fn corrupt(db: &Path, targets: &[(u64, &str)]) -> Result<Vec<String>, String> {
    let mut conn = Reader::open_writable(db)?;
    let mut done = Vec::new();
    for (i, (index, first_step)) in targets.iter().enumerate() {
        let how = if i % 2 == 0 {
            Corruption::RunRow
        } else {
            Corruption::JournalOutput
        };
        done.push(conn.corrupt(&format!("torture-{index}"), how, first_step)?);
    }
    Ok(done)
}
