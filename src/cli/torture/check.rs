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
//! - Waits: the journal holds each wait where the workload's layout puts it; every event the
//!   driver sent is consumed at most once, into the wait of the run it was sent to, whose
//!   journal entry carries its payload; a completed run that reached its event wait consumed
//!   it. A run whose cancel was acknowledged (answered for an unfinished run) ends
//!   `cancelled`, never `completed`, and its journal is a prefix of the fault-free one. No
//!   run is left parked, and no engine's backstop sweep had to carry out a cancel that a
//!   wait lost (`stalled` counts both: runs left active, and the runs each sweep ended).

use super::db::{JournalRow, Reader};
use super::workload::{
    fault_free, parse_command_stdout, reaches_event, Entry, RunIn, StepOut, CMD,
};
use super::{Harness, Summary};
use std::collections::{HashMap, HashSet};

/// A run as the checker keeps it: id, status, output, error.
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
            if line.contains("had a cancel requested but were not cancelled") {
                // "N parked runs had a cancel requested ...": N cancels a wait lost.
                s.stalled += line
                    .split("WARN")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(1);
                v.push(format!(
                    "engine {label}: its backstop sweep found parked runs whose cancel was lost: {line}"
                ));
            }
            if let Some(rest) = line.split("run ").nth(1) {
                if line.contains("lease lost") || line.contains("lease guard expired") {
                    if let Some(run) = rest.split(':').next().and_then(|r| r.parse().ok()) {
                        lease_lost.insert((label.as_str(), run));
                    }
                }
            }
        }
    }
    let mut conn = Reader::open(&h.db)?;
    s.duplicate_results = conn.duplicate_entries()? as u64;
    let mut by_key: HashMap<String, RunRecord> = HashMap::new();
    for (id, key, status, output, error) in conn.runs()? {
        if let Some(key) = key {
            by_key.insert(key, (id, status, output, error));
        }
    }
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
        let journal: Vec<JournalRow> = conn.journal(id)?;
        let sent = h.driver.as_ref().and_then(|d| d.events.get(&input.index));
        let ack = h.driver.as_ref().and_then(|d| d.cancels.get(&input.index));
        let cancel_acked = ack.is_some_and(|a| a.acknowledged());
        let payload = sent.map_or(0, |e| e.payload);
        let (entries, want) = fault_free(input, payload);
        let mut run_ok = true;
        match (&want, status.as_str()) {
            _ if cancel_acked && status == "cancelled" => {}
            _ if cancel_acked && matches!(status.as_str(), "completed" | "failed") => {
                run_ok = false;
                v.push(format!(
                    "run {id} ({key}): ended {status} although its cancel was acknowledged (the cancel answered '{}')",
                    ack.map_or("", |a| a.status.as_str())
                ));
            }
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
                if !matches!(last, Some((s, st, ..)) if s == seq && st == "failed") {
                    run_ok = false;
                    v.push(format!(
                        "run {id} ({key}): failed ({error:?}) but not at its failing seq {seq}"
                    ));
                }
            }
            (_, st @ ("pending" | "running" | "suspended")) => {
                run_ok = false;
                s.stalled += 1;
                v.push(format!(
                    "run {id} ({key}): stalled {st}{}",
                    if cancel_acked {
                        " after its cancel was acknowledged"
                    } else {
                        ""
                    }
                ));
            }
            (_, st) => {
                run_ok = false;
                v.push(format!(
                    "run {id} ({key}): status {st} ({error:?}), expected {}",
                    if want.is_ok() { "completed" } else { "failed" }
                ));
            }
        }
        // A cancelled run's journal is a prefix of the fault-free one.
        let len_ok = if status == "cancelled" && cancel_acked {
            journal.len() <= entries.len()
        } else {
            journal.len() == entries.len()
        };
        if !len_ok {
            run_ok = false;
            v.push(format!(
                "run {id} ({status}): journal has {} entries, the fault-free run records {}",
                journal.len(),
                entries.len()
            ));
        }
        if !check_events(
            &mut conn,
            id,
            input,
            &journal,
            sent,
            status == "completed",
            v,
        )? {
            run_ok = false;
        }
        for (i, (seq, st, out, name, kind)) in journal.iter().enumerate() {
            if *seq != i as i64 {
                run_ok = false;
                v.push(format!("run {id}: journal seq {seq} at position {i}"));
                continue;
            }
            let Some(&(entry, value)) = entries.get(i) else {
                continue;
            };
            if let Some((want_kind, want_name)) = entry.wait_row() {
                if kind != want_kind || *name != want_name || st != "completed" {
                    run_ok = false;
                    v.push(format!(
                        "run {id} seq {seq}: journal holds {kind} '{name}' ({st}), the workload waits with {want_kind} '{want_name}'"
                    ));
                }
                continue;
            }
            let runs_of_step = execs.get(&(id, *seq));
            let committed_nonce = if st == "completed" {
                match decode_output(name, out.as_deref()) {
                    Some(o) => {
                        if value != o.value {
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
                _ if cancel_acked => {}
                Ok(_) => s.completed += 1,
                Err(_) => s.failed_expected += 1,
            }
        } else {
            s.lost += 1;
        }
    }
    if let Some(d) = &h.driver {
        s.waits = d.waits;
        for e in d.events.values() {
            match e.event_id {
                Some(_) => s.events += 1,
                None => s.events_refused += 1,
            }
            *s.events_at.entry(e.at.name().into()).or_default() += 1;
        }
        for c in d.cancels.values() {
            if c.acknowledged() {
                s.cancels += 1;
            } else {
                s.cancels_late += 1;
            }
            *s.cancels_at.entry(c.at.name().into()).or_default() += 1;
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

/// The event checks of one run (see the module's invariants); false after a violation.
fn check_events(
    conn: &mut Reader,
    id: i64,
    input: &RunIn,
    journal: &[JournalRow],
    sent: Option<&super::waits::SentEvent>,
    completed: bool,
    v: &mut Vec<String>,
) -> Result<bool, String> {
    let mut ok = true;
    let rows = conn.events(id)?;
    // Every consumed event went into one event entry of this run, carrying its payload.
    let mut into: HashMap<i64, u32> = HashMap::new();
    for (event, payload, consumed) in &rows {
        let Some(q) = consumed else { continue };
        *into.entry(*q).or_default() += 1;
        let entry = journal.iter().find(|(seq, ..)| seq == q);
        if !matches!(entry, Some((_, st, Some(out), _, kind)) if kind == "event" && st == "completed" && out == payload)
        {
            ok = false;
            v.push(format!(
                "run {id}: event {event} consumed at seq {q}, which is not an event entry carrying its payload"
            ));
        }
    }
    for (seq, st, ..) in journal.iter().filter(|(.., kind)| kind == "event") {
        let n = into.get(seq).copied().unwrap_or(0);
        if st == "completed" && n != 1 {
            ok = false;
            v.push(format!(
                "run {id} seq {seq}: the event entry consumed {n} events, not exactly one"
            ));
        }
    }
    // The event the driver sent: kept for this run with its payload; consumed by a
    // completed run that reached its wait, at the wait's seq.
    let Some(sent) = sent else {
        return Ok(ok);
    };
    let Some(event_id) = sent.event_id else {
        return Ok(ok);
    };
    // Stored sealed (header + CRC + JSON body): compare the body.
    let want = waymark::internal::codec::seal(
        waymark::internal::codec::Format::Json,
        &serde_json::to_vec(&sent.payload).unwrap_or_default(),
    );
    match rows.iter().find(|(e, ..)| *e == event_id) {
        None => {
            ok = false;
            v.push(format!("run {id}: the event {event_id} sent to it is gone"));
        }
        Some((_, payload, _)) if *payload != want => {
            ok = false;
            v.push(format!(
                "run {id}: event {event_id} holds another payload than was sent"
            ));
        }
        Some((_, _, consumed)) => {
            let wait_seq = super::workload::layout(input)
                .iter()
                .position(|e| *e == Entry::Event)
                .map(|p| p as i64);
            if completed && reaches_event(input) && *consumed != wait_seq {
                ok = false;
                v.push(format!(
                    "run {id}: completed, but its event {event_id} was consumed at {consumed:?}, not at its wait (seq {wait_seq:?})"
                ));
            }
        }
    }
    Ok(ok)
}
