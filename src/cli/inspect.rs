//! `runs`, `show`, `stats`, `resume`: read (and nudge) a database without running an engine.

use super::{parse_run_id, when, CliResult};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use waymark::internal::clock::SystemClock;
use waymark::internal::store::{queries, Op, Store, StoreOptions};

fn open(db: &Path) -> Result<Store, String> {
    let opts = StoreOptions {
        create: false,
        readers_max: 1,
        ..Default::default()
    };
    Store::open(db, &opts, Arc::new(SystemClock::from_env())).map_err(|e| e.to_string())
}

/// Every run status, for `runs --status` validation.
const STATUSES: &[&str] = &[
    "pending",
    "running",
    "suspended",
    "completed",
    "failed",
    "cancelled",
    "blocked",
    "blocked_version",
];

fn now_ms() -> i64 {
    use waymark::internal::clock::Clock;
    SystemClock::from_env().now_ms()
}

/// A run as JSON: the stored fields (milliseconds kept) plus ISO-8601 strings of its times.
fn run_json(r: &queries::RunRow) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["created_at_iso"] = when::iso(r.created_at).into();
    v["updated_at_iso"] = when::iso(r.updated_at).into();
    v["ready_at_iso"] = when::iso(r.ready_at).into();
    if let Some(f) = r.finished_at {
        v["finished_at_iso"] = when::iso(f).into();
    }
    v
}

pub fn runs(db: &Path, status: Option<&str>, json: bool) -> CliResult {
    if let Some(s) = status {
        if !STATUSES.contains(&s) {
            return Err(format!(
                "unknown status '{s}': valid statuses are {}",
                STATUSES.join(", ")
            ));
        }
    }
    let store = open(db)?;
    let now = now_ms();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut after = 0;
    loop {
        let page = store
            .read(|c| queries::runs_page(c, status, after, 1000))
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            let line = if json {
                run_json(r).to_string()
            } else {
                format!(
                    "{:>8}  {:<16} {:<16} steps={:<4} age={:<8} key={} {}",
                    r.id,
                    format!("{}@{}", r.workflow, r.version),
                    r.status,
                    r.steps_completed,
                    when::span(now - r.created_at),
                    r.idempotency_key.as_deref().unwrap_or("-"),
                    r.error
                        .clone()
                        .or_else(|| r.note.as_deref().map(|n| when::humanize_note(n, now)))
                        .unwrap_or_default()
                )
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(0); // stdout closed (e.g. piped into head)
            }
        }
    }
    Ok(0)
}

fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// What became of an attempt with no recorded outcome: still running, or cut off when
/// its owner died or lost its lease (the run moved on: a later epoch, or finished).
fn open_attempt_state(store: &Store, run: &queries::RunRow, a: &queries::AttemptRow) -> String {
    let moved_on = is_final(run.status.as_str()) || run.epoch != a.epoch || run.status != "running";
    if !moved_on {
        return "running".into();
    }
    // The reaper's reason names the owner and its pid ("owner engine ID (pid N) is dead");
    // it is kept for the run's last interruption only.
    if let Some(why) = run
        .last_interruption
        .as_deref()
        .filter(|w| w.contains(a.owner.as_str()))
    {
        let pid = why
            .split("(pid ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|p| p.parse::<i64>().ok());
        return match pid {
            Some(pid) if why.ends_with("is dead") => format!("interrupted: owner pid {pid} died"),
            _ => format!("interrupted: owner lost its lease ({why})"),
        };
    }
    let engine = store.read(|c| queries::engine(c, &a.owner)).ok().flatten();
    let Some(e) = engine else {
        return "interrupted: owner lost its lease (its engine record is gone)".into();
    };
    let Some(pid) = e.pid else {
        return "interrupted: owner lost its lease".into();
    };
    let alive = e.boot_id.as_deref() == Some(waymark::internal::host::boot_id().as_str())
        && u32::try_from(pid)
            .ok()
            .and_then(waymark::internal::host::pid_start_time)
            .is_some_and(|start| Some(start as i64) == e.pid_start);
    if alive {
        format!("interrupted: owner (pid {pid}) lost its lease")
    } else {
        format!("interrupted: owner pid {pid} died")
    }
}

/// An attempt as JSON: stored fields plus ISO times, its duration and, for an attempt
/// without an outcome, what became of it (`state`).
fn attempt_json(
    store: &Store,
    run: &queries::RunRow,
    a: &queries::AttemptRow,
) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    v["started_at_iso"] = when::iso(a.started_at).into();
    if let Some(e) = a.ended_at {
        v["ended_at_iso"] = when::iso(e).into();
        v["duration_ms"] = (e - a.started_at).into();
    }
    v["state"] = match &a.outcome {
        Some(o) => o.clone(),
        None => open_attempt_state(store, run, a),
    }
    .into();
    v
}

pub fn show(db: &Path, run_id: &str, json: bool) -> CliResult {
    let id = parse_run_id(run_id)?;
    let store = open(db)?;
    let now = now_ms();
    let run = store
        .read(|c| queries::run(c, id))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no run with id {id} in {}", db.display()))?;
    let journal = store
        .read(|c| queries::journal(c, id))
        .map_err(|e| e.to_string())?;
    let attempts = store
        .read(|c| queries::attempts(c, id))
        .map_err(|e| e.to_string())?;
    if json {
        let mut v = run_json(&run);
        let mut steps = serde_json::to_value(&journal).unwrap_or_default();
        if let Some(list) = steps.as_array_mut() {
            for (s, row) in list.iter_mut().zip(&journal) {
                s["recorded_at_iso"] = when::iso(row.recorded_at).into();
            }
        }
        v["steps"] = steps;
        v["attempts"] = attempts
            .iter()
            .map(|a| attempt_json(&store, &run, a))
            .collect();
        if let Some(n) = &run.note {
            v["note_readable"] = when::humanize_note(n, now).into();
        }
        println!("{v}");
        return Ok(0);
    }
    println!(
        "run {} {}@{} status={} key={}",
        run.id,
        run.workflow,
        run.version,
        run.status,
        run.idempotency_key.as_deref().unwrap_or("-")
    );
    let finished = match run.finished_at {
        Some(f) => format!(
            ", finished {} after {}",
            when::both(f, now),
            when::span(f - run.created_at)
        ),
        None => String::new(),
    };
    println!("  created {}{finished}", when::both(run.created_at, now));
    println!(
        "  interruptions={} epoch={} owner={}",
        run.interruptions,
        run.epoch,
        run.owner.as_deref().unwrap_or("-")
    );
    if let Some(e) = &run.error {
        println!("  error: {e}");
    }
    if let Some(n) = &run.note {
        println!("  note: {}", when::humanize_note(n, now));
    }
    for s in &journal {
        println!(
            "  seq {:>4} {:<20} {:<9} attempts={} {}",
            s.seq,
            s.name,
            s.status,
            s.attempts,
            s.error.as_deref().unwrap_or("")
        );
    }
    for a in &attempts {
        let took = match a.ended_at {
            Some(e) => when::span(e - a.started_at),
            None => "-".into(),
        };
        let state = match &a.outcome {
            Some(o) => format!("{o}: {}", a.reason.as_deref().unwrap_or("")),
            None => open_attempt_state(&store, &run, a),
        };
        println!(
            "  attempt seq={} #{} started {} took {} pid={}{} {}",
            a.seq,
            a.attempt,
            when::iso(a.started_at),
            took,
            a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            a.memory_cap
                .as_deref()
                .map(|m| format!(" memory={m}"))
                .unwrap_or_default(),
            state.trim_end_matches(": ")
        );
        print_logs(a);
    }
    Ok(0)
}

/// An attempt's captured logs, indented under it.
fn print_logs(a: &queries::AttemptRow) {
    let Some(logs) = a.logs.as_deref().filter(|l| !l.is_empty()) else {
        return;
    };
    println!("    logs:");
    for line in logs.lines() {
        println!("      | {line}");
    }
}

pub fn stats(db: &Path, json: bool) -> CliResult {
    let store = open(db)?;
    let counts = store.read(queries::stats).map_err(|e| e.to_string())?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(s, n)| (s.clone(), serde_json::Value::from(*n)))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        let total: i64 = counts.iter().map(|(_, n)| n).sum();
        for (s, n) in &counts {
            println!("{s:<16} {n}");
        }
        println!("{:<16} {total}", "total");
    }
    Ok(0)
}

pub fn resume(db: &Path, run_id: &str) -> CliResult {
    let id = parse_run_id(run_id)?;
    let store = open(db)?;
    store.call(Op::Resume { run_id: id }).map_err(|_| {
        format!(
            "run {id} is not blocked (or does not exist) in {}",
            db.display()
        )
    })?;
    eprintln!("run {id} is pending again");
    Ok(0)
}
