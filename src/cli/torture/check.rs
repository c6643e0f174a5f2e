//! The invariants `waymark torture` checks once every engine has stopped, against the
//! database, the effects file the step processes wrote, and the engine logs.
//!
//! - Every run is final with its fault-free result (`completed`, or `failed` at its failing
//!   seq), except the runs the harness corrupted, which must be `blocked`.
//! - One result per journal seq, and it is the output of one of that seq's executions.
//! - No two executions of one (run, seq) held its lock at once (`concurrent_executions`),
//!   with one documented exception counted apart (`inprocess_pause_overlaps`): the earlier
//!   execution is an in-process step of an engine the harness paused (SIGSTOP). Nothing can
//!   end a thread of a stopped process; when it resumes, the step's remaining work runs
//!   before its engine can see that the run was reclaimed (its result is never recorded).
//!   Child and command steps have no such exception: their process trees can be ended.
//! - Every execution whose result was not recorded belongs to an engine that was killed,
//!   paused or shut down, or that logged losing that run's lease.

use super::workload::{expected, expected_values, parse_command_stdout, RunIn, StepOut, CMD};
use super::{read_conn, Harness, Summary};
use std::collections::{HashMap, HashSet};

/// A run as the harness reads it: id, status, output, error.
type RunRecord = (i64, String, Option<Vec<u8>>, Option<String>);

/// One step execution seen in the effects file.
#[derive(Debug, Default)]
struct Exec {
    pid: u32,
    /// Label of the engine it ran under.
    engine: String,
    ended: bool,
}

/// One parsed effects record.
struct Record<'a> {
    kind: char,
    run: i64,
    seq: i64,
    pid: u32,
    nonce: u64,
    engine: &'a str,
    /// Where the execution ran: `i`, `c`, `x`.
    place: &'a str,
    /// For `C`: the holder's engine label, place and pid.
    holder: Option<(&'a str, &'a str, &'a str)>,
}

fn parse(line: &str) -> Option<Record<'_>> {
    let f: Vec<&str> = line.split(' ').collect();
    Some(Record {
        kind: f.first()?.chars().next()?,
        run: f.get(1)?.parse().ok()?,
        seq: f.get(2)?.parse().ok()?,
        pid: f.get(3)?.parse().ok()?,
        nonce: f.get(4)?.parse().ok()?,
        engine: f.get(5)?,
        place: f.get(6)?,
        holder: match (f.get(7), f.get(8), f.get(9)) {
            (Some(e), Some(p), Some(pid)) => Some((*e, *p, *pid)),
            _ => None,
        },
    })
}

/// Check every invariant against the database, the effects file and the engine logs.
pub(super) fn check(h: &Harness, runs: &[RunIn]) -> Result<Summary, String> {
    let mut s = Summary {
        runs: runs.len() as u64,
        ..Default::default()
    };
    let v = &mut s.violations;
    // Engines whose executions may legitimately have been cut short.
    let interrupted: HashSet<&str> = h
        .killed
        .iter()
        .chain(&h.paused)
        .chain(&h.shut_down)
        .map(String::as_str)
        .collect();
    // Effects: executions per (run, seq), keyed by nonce.
    let text = std::fs::read_to_string(h.dir.join("effects")).unwrap_or_default();
    let mut execs: HashMap<(i64, i64), HashMap<u64, Exec>> = HashMap::new();
    for line in text.lines() {
        let Some(r) = parse(line) else {
            v.push(format!("unparsable effects record: {line:?}"));
            continue;
        };
        let e = execs
            .entry((r.run, r.seq))
            .or_default()
            .entry(r.nonce)
            .or_default();
        e.pid = r.pid;
        e.engine = r.engine.to_string();
        match r.kind {
            'C' => {
                let (holder_engine, holder_place, holder_pid) = r.holder.unwrap_or(("?", "?", "?"));
                if holder_place == "i" && h.paused.contains(holder_engine) {
                    s.inprocess_pause_overlaps += 1;
                } else {
                    s.concurrent_executions += 1;
                    v.push(format!(
                        "run {} seq {}: executed by pid {} ({} step of engine {}) while pid {holder_pid} \
                         ({} step of engine {holder_engine}) held its lock",
                        r.run,
                        r.seq,
                        r.pid,
                        place_name(r.place),
                        r.engine,
                        place_name(holder_place),
                    ));
                }
            }
            'E' | 'F' => e.ended = true,
            _ => {}
        }
    }
    // Lease losses logged by each engine: (engine, run) pairs whose abandonment explains a
    // re-execution without a kill.
    let mut lease_lost: HashSet<(&str, i64)> = HashSet::new();
    for (label, log) in &h.logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.split("run ").nth(1) {
                if line.contains("lease lost") || line.contains("lease guard expired") {
                    if let Some(run) = rest.split(':').next().and_then(|r| r.parse().ok()) {
                        lease_lost.insert((label.as_str(), run));
                    }
                }
            }
        }
    }
    let conn = read_conn(&h.db)?;
    let db_err = |e: rusqlite::Error| format!("reading {}: {e}", h.db.display());
    let dups: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT run_id, seq FROM steps GROUP BY run_id, seq HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    s.duplicate_results = dups as u64;
    let mut by_key: HashMap<String, RunRecord> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT id, idempotency_key, status, output, error FROM runs")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (id, key, status, output, error) = row.map_err(db_err)?;
            if let Some(key) = key {
                by_key.insert(key, (id, status, output, error));
            }
        }
    }
    // `CAST(output AS BLOB)`: a row the harness corrupted holds TEXT.
    let mut journal_stmt = conn
        .prepare(
            "SELECT seq, status, CAST(output AS BLOB), name FROM steps WHERE run_id = ?1 ORDER BY seq",
        )
        .map_err(db_err)?;
    for input in runs {
        let key = format!("torture-{}", input.index);
        let Some((id, status, output, error)) = by_key.get(&key) else {
            s.lost += 1;
            v.push(format!("run {key} is missing from the database"));
            continue;
        };
        let id = *id;
        if h.corrupted.contains(&input.index) {
            if status == "blocked" {
                s.blocked_expected += 1;
            } else {
                s.lost += 1;
                v.push(format!(
                    "run {id} ({key}) has a row the harness corrupted: status {status} ({error:?}), expected blocked"
                ));
            }
            continue;
        }
        type JournalRow = (i64, String, Option<Vec<u8>>, String);
        let journal: Vec<JournalRow> = journal_stmt
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|it| it.collect())
            .map_err(db_err)?;
        let want = expected(input);
        let values = expected_values(input);
        let mut run_ok = true;
        match (&want, status.as_str()) {
            (Ok(out), "completed") => {
                let got = output
                    .as_deref()
                    .and_then(|b| waymark::internal::codec::decode::<u64>(b, 1024).ok());
                if got != Some(*out) {
                    run_ok = false;
                    v.push(format!(
                        "run {id} ({key}): output {got:?} differs from the fault-free {out}"
                    ));
                }
            }
            (Err(seq), "failed") => {
                let last = journal.last();
                if !matches!(last, Some((s, st, _, _)) if *s == *seq as i64 && st == "failed") {
                    run_ok = false;
                    v.push(format!(
                        "run {id} ({key}): failed ({error:?}) but not at its failing seq {seq}"
                    ));
                }
            }
            (_, st) => {
                run_ok = false;
                v.push(format!(
                    "run {id} ({key}): status {st} ({error:?}), expected {}",
                    if want.is_ok() { "completed" } else { "failed" }
                ));
            }
        }
        let expected_len = values.len() + usize::from(want.is_err());
        if journal.len() != expected_len {
            run_ok = false;
            v.push(format!(
                "run {id}: journal has {} entries, the fault-free run records {expected_len}",
                journal.len()
            ));
        }
        for (i, (seq, st, out, name)) in journal.iter().enumerate() {
            if *seq != i as i64 {
                run_ok = false;
                v.push(format!("run {id}: journal seq {seq} at position {i}"));
                continue;
            }
            let runs_of_step = execs.get(&(id, *seq));
            let committed_nonce = if st == "completed" {
                match decode_output(name, out.as_deref()) {
                    Some(o) => {
                        if values.get(i) != Some(&o.value) {
                            run_ok = false;
                            v.push(format!("run {id} seq {seq}: recorded value differs from the fault-free one"));
                        }
                        let ended = runs_of_step
                            .and_then(|m| m.get(&o.nonce))
                            .is_some_and(|e| e.ended);
                        if !ended {
                            run_ok = false;
                            v.push(format!("run {id} seq {seq}: recorded result is not the output of any execution"));
                        }
                        Some(o.nonce)
                    }
                    None => {
                        run_ok = false;
                        v.push(format!(
                            "run {id} seq {seq}: recorded output does not decode"
                        ));
                        None
                    }
                }
            } else {
                None
            };
            // Every execution whose result was not recorded must have been interrupted.
            let Some(all) = runs_of_step else {
                run_ok = false;
                v.push(format!(
                    "run {id} seq {seq}: recorded without any execution"
                ));
                continue;
            };
            let mut uncommitted = 0u64;
            for (nonce, e) in all {
                let is_committed = match committed_nonce {
                    Some(n) => n == *nonce,
                    // A failed entry records the one execution that failed for good.
                    None => failed_recorded(all, &interrupted) == Some(*nonce),
                };
                if is_committed {
                    continue;
                }
                uncommitted += 1;
                if interrupted.contains(e.engine.as_str())
                    || lease_lost.contains(&(e.engine.as_str(), id))
                {
                    s.max_reexecutions_bound += 1;
                } else {
                    v.push(format!(
                        "run {id} seq {seq}: re-executed although execution {nonce:x} (pid {}, engine {}) \
                         was neither killed, paused nor shut down, nor lost its lease",
                        e.pid, e.engine
                    ));
                }
            }
            s.reexecutions += uncommitted;
        }
        if run_ok {
            match want {
                Ok(_) => s.completed += 1,
                Err(_) => s.failed_expected += 1,
            }
        } else {
            s.lost += 1;
        }
    }
    if s.reexecutions > s.max_reexecutions_bound {
        v.push(format!(
            "{} re-executions exceed the {} interrupted executions",
            s.reexecutions, s.max_reexecutions_bound
        ));
    }
    if s.duplicate_results > 0 {
        v.push(format!(
            "{} journal sequence numbers hold more than one result",
            s.duplicate_results
        ));
    }
    Ok(s)
}

fn place_name(place: &str) -> &'static str {
    match place {
        "i" => "in-process",
        "c" => "child",
        "x" => "command",
        _ => "unknown",
    }
}

/// A recorded step output: `StepOut` for Rust steps, `VALUE NONCE` on a command's stdout.
fn decode_output(name: &str, out: Option<&[u8]>) -> Option<StepOut> {
    let bytes = out?;
    if name == CMD.name() {
        let o = waymark::internal::codec::decode::<waymark::CommandOutput>(bytes, 1 << 20).ok()?;
        parse_command_stdout(&o.stdout)
    } else {
        waymark::internal::codec::decode::<StepOut>(bytes, 1024).ok()
    }
}

/// For a step recorded as failed (no nonce in the journal), the recorded execution is an
/// ended one, preferably from an engine that was not interrupted (a stable choice: smallest
/// nonce).
fn failed_recorded(all: &HashMap<u64, Exec>, interrupted: &HashSet<&str>) -> Option<u64> {
    let ended = || all.iter().filter(|(_, e)| e.ended);
    ended()
        .filter(|(_, e)| !interrupted.contains(e.engine.as_str()))
        .map(|(n, _)| *n)
        .min()
        .or_else(|| ended().map(|(n, _)| *n).min())
}
