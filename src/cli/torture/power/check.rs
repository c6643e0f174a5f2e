//! The checks of one crash image, opened with SQLite's ordinary VFS.
//!
//! - `PRAGMA integrity_check` is ok (else `corrupt`);
//! - every acknowledged fact is present as acknowledged (missing: `acknowledged_lost`;
//!   present with another value, i.e. a result replaced after it was acknowledged:
//!   `duplicate_results`); a fact is counted once, then forgotten;
//! - nothing is present that no process wrote (`foreign`): every run is one the harness
//!   submitted, with its input; every journal entry holds its run's fault-free value and the
//!   nonce of an execution some process made; every completed run holds its fault-free output.

use super::segment::{
    event_payload, expected_output, expected_values, input, waits_event, Ack, PStepOut, Report,
    DB_NAME,
};
use rusqlite::{Connection, OpenFlags};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use waymark::internal::codec::{decode, decode_json, PAYLOAD_BYTES_MAX};

/// Every acknowledgement given so far (and still believed), and what processes wrote.
#[derive(Debug, Default)]
pub struct Acked {
    pub submitted: BTreeSet<u64>,
    /// index -> run id
    pub started: HashMap<u64, i64>,
    /// (run id, seq) -> (value, nonce)
    pub steps: HashMap<(i64, i64), (u64, u64)>,
    /// run id -> output
    pub completed: HashMap<i64, u64>,
    /// event id -> run id
    pub events: HashMap<i64, i64>,
    pub nonces: HashSet<u64>,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub cycles: u64,
    pub cuts: u64,
    pub acknowledged_lost: u64,
    pub corrupt: u64,
    pub lost: u64,
    pub duplicate_results: u64,
    pub foreign: u64,
    pub runs: u64,
    pub acks_started: u64,
    pub acks_steps: u64,
    pub acks_completed: u64,
    pub acks_events: u64,
    /// Cuts after which at least one acknowledged fact was missing.
    pub cuts_losing_acks: u64,
    pub empty_images: u64,
    /// Final engines that refused a zero-length database file (created, no data durable).
    pub refused_zero_length: u64,
    pub torn_writes: u64,
    /// Cuts with unsynced operations pending on some file.
    pub unsynced_at_cut: u64,
    pub violations: Vec<String>,
}

impl Acked {
    /// Add a segment's acknowledgements; one that contradicts an earlier one is a duplicate.
    pub fn merge(&mut self, r: &Report, c: &mut Counts) {
        self.nonces.extend(r.nonces.iter().copied());
        for a in &r.acks {
            match *a {
                Ack::Started { index, id } => match self.started.insert(index, id) {
                    Some(was) if was != id => dup(
                        c,
                        format!("run key p-{index} acknowledged as run {was}, then as run {id}"),
                    ),
                    Some(_) => {}
                    None => c.acks_started += 1,
                },
                Ack::Step {
                    id,
                    seq,
                    value,
                    nonce,
                } => match self.steps.insert((id, seq), (value, nonce)) {
                    Some(was) if was != (value, nonce) => dup(
                        c,
                        format!(
                            "run {id} seq {seq} acknowledged as {was:?}, then as {:?}",
                            (value, nonce)
                        ),
                    ),
                    Some(_) => {}
                    None => c.acks_steps += 1,
                },
                Ack::Completed { id, output } => match self.completed.insert(id, output) {
                    Some(was) if was != output => dup(
                        c,
                        format!("run {id} acknowledged completed with {was}, then with {output}"),
                    ),
                    Some(_) => {}
                    None => c.acks_completed += 1,
                },
                Ack::Event { id, event_id } => match self.events.insert(event_id, id) {
                    Some(was) if was != id => dup(
                        c,
                        format!("event {event_id} acknowledged for run {was}, then for run {id}"),
                    ),
                    Some(_) => {}
                    None => c.acks_events += 1,
                },
            }
        }
    }
}

fn dup(c: &mut Counts, msg: String) {
    c.duplicate_results += 1;
    c.violations.push(format!("duplicate result: {msg}"));
}

struct RunRow {
    workflow: String,
    key: Option<String>,
    input: Vec<u8>,
    status: String,
    output: Option<Vec<u8>>,
}

type StepMap = HashMap<(i64, i64), (String, String, Option<Vec<u8>>)>;

struct Tables {
    runs: HashMap<i64, RunRow>,
    /// (run id, seq) -> (kind, status, output)
    steps: StepMap,
    /// event id -> (run id, name, payload)
    events: HashMap<i64, (i64, String, Vec<u8>)>,
}

fn empty() -> Tables {
    Tables {
        runs: HashMap::new(),
        steps: HashMap::new(),
        events: HashMap::new(),
    }
}

fn read_tables(conn: &Connection) -> rusqlite::Result<Tables> {
    let has_runs: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('runs', 'steps')",
        [],
        |r| r.get(0),
    )?;
    let mut t = empty();
    if has_runs < 2 {
        return Ok(t);
    }
    let mut s =
        conn.prepare("SELECT id, workflow, idempotency_key, input, status, output FROM runs")?;
    let rows = s.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            RunRow {
                workflow: r.get(1)?,
                key: r.get(2)?,
                input: r.get(3)?,
                status: r.get(4)?,
                output: r.get(5)?,
            },
        ))
    })?;
    for row in rows {
        let (id, row) = row?;
        t.runs.insert(id, row);
    }
    let mut s = conn.prepare("SELECT run_id, seq, kind, status, output FROM steps")?;
    let rows = s.query_map([], |r| {
        Ok((
            (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?),
            (r.get(2)?, r.get(3)?, r.get(4)?),
        ))
    })?;
    for row in rows {
        let (k, v) = row?;
        t.steps.insert(k, v);
    }
    let mut s = conn.prepare("SELECT id, run_id, name, payload FROM events")?;
    let rows = s.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
    })?;
    for row in rows {
        let (k, v) = row?;
        t.events.insert(k, v);
    }
    Ok(t)
}

/// Check the image in `dir` (a copy: opening it may recover and checkpoint the WAL).
pub fn check_image(dir: &Path, acked: &mut Acked, c: &mut Counts, at: &str) {
    let db = dir.join(DB_NAME);
    let Tables {
        runs,
        steps,
        events,
    } = if !db.exists() {
        c.empty_images += 1;
        empty()
    } else {
        let opened = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_WRITE);
        let result = opened.and_then(|conn| {
            let rows: Vec<String> = conn
                .prepare("PRAGMA integrity_check")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((rows, read_tables(&conn)?))
        });
        match result {
            Ok((rows, tables)) if rows == ["ok"] => tables,
            Ok((rows, tables)) => {
                c.corrupt += 1;
                c.violations
                    .push(format!("{at}: integrity_check: {}", rows.join("; ")));
                tables
            }
            Err(e) => {
                c.corrupt += 1;
                c.violations
                    .push(format!("{at}: the image cannot be read: {e}"));
                return;
            }
        }
    };
    let mut foreign = |msg: String| {
        c.foreign += 1;
        c.violations.push(format!("{at}: foreign: {msg}"));
    };
    // Nothing present that no process wrote.
    let mut index_of = HashMap::new();
    for (id, r) in &runs {
        let index = r
            .key
            .as_deref()
            .and_then(|k| k.strip_prefix("p-"))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|i| acked.submitted.contains(i));
        let Some(index) = index else {
            foreign(format!("run {id} has key {:?}, never submitted", r.key));
            continue;
        };
        index_of.insert(*id, index);
        let want = input(index);
        if r.workflow != "power"
            || decode::<super::segment::PIn>(&r.input, PAYLOAD_BYTES_MAX).ok() != Some(want.clone())
        {
            foreign(format!(
                "run {id} ({}) has workflow {} and an input that is not its own",
                r.workflow, index
            ));
        }
        if r.status == "completed" {
            let out = r
                .output
                .as_deref()
                .and_then(|b| decode::<u64>(b, PAYLOAD_BYTES_MAX).ok());
            if out != Some(expected_output(index)) {
                foreign(format!(
                    "run {id} completed with {out:?}, not its fault-free output"
                ));
            }
        }
    }
    for ((id, seq), (kind, status, output)) in &steps {
        let Some(&index) = index_of.get(id) else {
            foreign(format!("journal entry ({id}, {seq}) of no run"));
            continue;
        };
        let steps_n = i64::from(input(index).steps);
        if *seq >= steps_n {
            // The event wait: its timer entry, then the event's JSON payload.
            let payload = output
                .as_deref()
                .and_then(|b| decode_json::<u64>(b, PAYLOAD_BYTES_MAX).ok());
            let ok = waits_event(index)
                && match seq - steps_n {
                    0 => kind == "sleep",
                    1 => {
                        kind == "event"
                            && (status != "completed" || payload == Some(event_payload(index)))
                    }
                    _ => false,
                };
            if !ok {
                foreign(format!(
                    "journal entry ({id}, {seq}) {kind} {status} {output:?} of run p-{index}"
                ));
            }
            continue;
        }
        let out = output
            .as_deref()
            .and_then(|b| decode::<PStepOut>(b, PAYLOAD_BYTES_MAX).ok());
        let want = expected_values(&input(index)).get(*seq as usize).copied();
        match out {
            Some(o) if status == "completed" && Some(o.value) == want && acked.nonces.contains(&o.nonce) => {}
            other => foreign(format!("journal entry ({id}, {seq}) holds {status} {other:?}, expected value {want:?} from a known execution")),
        }
    }
    for (eid, (run, name, payload)) in &events {
        let want = index_of
            .get(run)
            .filter(|&&i| waits_event(i))
            .map(|&i| event_payload(i));
        if name != "go"
            || want.is_none()
            || decode_json::<u64>(payload, PAYLOAD_BYTES_MAX).ok() != want
        {
            foreign(format!("event {eid} ({name}) for run {run}"));
        }
    }
    // Every acknowledged fact present.
    let mut lost = |what: String| {
        c.acknowledged_lost += 1;
        c.violations
            .push(format!("{at}: acknowledged but lost: {what}"));
    };
    acked.started.retain(|&index, &mut id| match runs.get(&id) {
        Some(r) if r.key.as_deref() == Some(super::segment::key(index).as_str()) => true,
        _ => {
            lost(format!("run p-{index} started as run {id}"));
            false
        }
    });
    let mut replaced = Vec::new();
    acked.steps.retain(|&(id, seq), &mut (value, nonce)| {
        let got = steps
            .get(&(id, seq))
            .and_then(|(_, _, o)| o.as_deref())
            .and_then(|b| decode::<PStepOut>(b, PAYLOAD_BYTES_MAX).ok());
        match got {
            Some(o) if o.value == value && o.nonce == nonce => true,
            Some(o) => {
                replaced.push(format!(
                    "run {id} seq {seq} acknowledged with nonce {nonce}, now holds {o:?}"
                ));
                false
            }
            None => {
                lost(format!("journal entry ({id}, {seq})"));
                false
            }
        }
    });
    acked.completed.retain(|&id, &mut output| {
        let got = runs.get(&id).filter(|r| r.status == "completed").map(|r| {
            r.output
                .as_deref()
                .and_then(|b| decode::<u64>(b, PAYLOAD_BYTES_MAX).ok())
        });
        match got {
            Some(Some(o)) if o == output => true,
            Some(o) => {
                replaced.push(format!(
                    "run {id} acknowledged completed with {output}, now holds {o:?}"
                ));
                false
            }
            None => {
                lost(format!("completion of run {id}"));
                false
            }
        }
    });
    acked
        .events
        .retain(|&eid, &mut run| match events.get(&eid) {
            Some((r, _, _)) if *r == run => true,
            _ => {
                lost(format!("event {eid} sent to run {run}"));
                false
            }
        });
    for r in replaced {
        dup(c, format!("{at}: {r}"));
    }
}
