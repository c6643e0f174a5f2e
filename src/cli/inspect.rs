//! `runs`, `show`, `stats`, `resume`: read (and nudge) a database without running an engine.

use super::{parse_run_id, CliResult};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use waymark::clock::SystemClock;
use waymark::store::{queries, Op, Store, StoreOptions};

fn open(db: &Path) -> Result<Store, String> {
    let opts = StoreOptions {
        create: false,
        readers_max: 1,
        ..Default::default()
    };
    Store::open(db, &opts, Arc::new(SystemClock::from_env())).map_err(|e| e.to_string())
}

fn run_json(r: &queries::RunRow) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_default()
}

pub fn runs(db: &Path, status: Option<&str>, json: bool) -> CliResult {
    let store = open(db)?;
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
                    "{:>8}  {:<16} {:<16} steps={:<4} key={} {}",
                    r.id,
                    format!("{}@{}", r.workflow, r.version),
                    r.status,
                    r.steps_completed,
                    r.idempotency_key.as_deref().unwrap_or("-"),
                    r.error.as_deref().or(r.note.as_deref()).unwrap_or("")
                )
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(0); // stdout closed (e.g. piped into head)
            }
        }
    }
    Ok(0)
}

pub fn show(db: &Path, run_id: &str, json: bool) -> CliResult {
    let id = parse_run_id(run_id)?;
    let store = open(db)?;
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
        v["steps"] = serde_json::to_value(&journal).unwrap_or_default();
        v["attempts"] = serde_json::to_value(&attempts).unwrap_or_default();
        println!("{v}");
    } else {
        println!(
            "run {} {}@{} status={} key={}",
            run.id,
            run.workflow,
            run.version,
            run.status,
            run.idempotency_key.as_deref().unwrap_or("-")
        );
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
            println!("  note: {n}");
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
            println!(
                "  attempt seq={} #{} pid={} outcome={} {}",
                a.seq,
                a.attempt,
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                a.outcome.as_deref().unwrap_or("interrupted-or-running"),
                a.reason.as_deref().unwrap_or("")
            );
            print_logs(a);
        }
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
