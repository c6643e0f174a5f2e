//! `runs`, `show`, `stats`, `resume`: read (and nudge) a database without running an engine.

use super::{client, parse_run_id, plain_client, when, BuildRegistry, CliResult};
use crate::{AttemptRow, Client, RunFilter, RunRow, RunStatus};
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// A run as JSON: the stored fields (milliseconds kept) plus ISO-8601 strings of its times.
fn run_json(r: &RunRow) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["created_at_iso"] = when::iso(r.created_at).into();
    v["updated_at_iso"] = when::iso(r.updated_at).into();
    v["ready_at_iso"] = when::iso(r.ready_at).into();
    if let Some(f) = r.finished_at {
        v["finished_at_iso"] = when::iso(f).into();
    }
    v
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct RunsArgs {
    /// Database file.
    #[arg(long)]
    pub db: PathBuf,
    /// Only runs with this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only runs whose idempotency key starts with this.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Only runs created at or after this time: an age (`2h`, `30m`, `7d`) or an
    /// ISO-8601 UTC time (`2026-11-30T12:00:00Z`).
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Only runs created before this time (same forms as --since).
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<String>,
    /// At most this many runs (default: all); stderr names the --after of the next page.
    #[arg(long, allow_hyphen_values = true)]
    pub limit: Option<String>,
    /// Only runs after this run id (the last id of the previous page).
    #[arg(long, allow_hyphen_values = true)]
    pub after: Option<String>,
    /// One JSON object a line.
    #[arg(long)]
    pub json: bool,
}

/// The listing `args` ask for, and at most how many runs to print (`None`: all).
fn runs_filter(args: &RunsArgs, now: i64) -> Result<(RunFilter, Option<u64>), String> {
    let mut filter = RunFilter::new();
    if let Some(s) = args.status.as_deref() {
        if !STATUSES.contains(&s) {
            return Err(format!(
                "unknown status '{s}': valid statuses are {}",
                STATUSES.join(", ")
            ));
        }
        filter = filter.status(s.parse::<RunStatus>().map_err(|e| e.to_string())?);
    }
    if let Some(w) = &args.workflow {
        filter = filter.workflow(w.clone());
    }
    if let Some(p) = &args.key_prefix {
        filter = filter.key_prefix(p.clone());
    }
    let since = args
        .since
        .as_deref()
        .map(|s| when::parse_point(s, now).map_err(|e| format!("--since: {e}")))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| when::parse_point(s, now).map_err(|e| format!("--until: {e}")))
        .transpose()?;
    filter = filter.created_between(since, until);
    if let Some(a) = args.after.as_deref() {
        let id = a
            .parse::<i64>()
            .ok()
            .filter(|&n| n >= 0)
            .ok_or_else(|| format!("bad --after '{a}': expected a run id (0 or more)"))?;
        filter = filter.after(id);
    }
    let limit = args
        .limit
        .as_deref()
        .map(|l| {
            l.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("bad --limit '{l}': expected a positive integer"))
        })
        .transpose()?;
    Ok((filter, limit))
}

fn run_line(r: &RunRow, now: i64, json: bool) -> String {
    if json {
        return run_json(r).to_string();
    }
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
}

/// `runs`: the runs matching the filters, oldest first, one a line; with `--limit`, one
/// page (and, on stderr, the `--after` that continues it when more runs match).
pub fn runs(args: RunsArgs) -> CliResult {
    // Bad arguments are reported before the file is opened (a missing file or not).
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let (filter, limit) = runs_filter(&args, wall_ms)?;
    let client = plain_client(&args.db)?;
    let now = client.now_ms();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut after = filter.cursor.unwrap_or(0);
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let page_len = left.min(u64::from(RunFilter::LIMIT_MAX)) as u32;
        let page = client
            .list(&filter.clone().after(after).limit(page_len))
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = last.id;
        left -= page.len() as u64;
        for r in &page {
            if writeln!(out, "{}", run_line(r, now, args.json)).is_err() {
                return Ok(0); // stdout closed (e.g. piped into head)
            }
        }
        if (page.len() as u32) < page_len {
            break;
        }
    }
    if limit.is_some() && left == 0 {
        let more = client
            .list(&filter.clone().after(after).limit(1))
            .map_err(|e| e.to_string())?;
        if !more.is_empty() {
            eprintln!("more runs match: continue with --after {after}");
        }
    }
    Ok(0)
}

/// An attempt as JSON: stored fields plus ISO times, its duration and, for an attempt
/// without an outcome, what became of it (`state`).
fn attempt_json(client: &Client, run: &RunRow, a: &AttemptRow) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    v["started_at_iso"] = when::iso(a.started_at).into();
    if let Some(e) = a.ended_at {
        v["ended_at_iso"] = when::iso(e).into();
        v["duration_ms"] = (e - a.started_at).into();
    }
    v["state"] = client
        .attempt_state(run, a)
        .unwrap_or_else(|e| format!("unknown: {e}"))
        .into();
    v
}

/// A payload shown as JSON (through the client's registry), or its bytes in hex with a
/// note saying why not.
fn shown(json: crate::PayloadJson, bytes: &[u8]) -> serde_json::Value {
    json.unwrap_or_else(|why| serde_json::json!({ "hex": hex(bytes), "note": why.reason }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn show(build: BuildRegistry, db: &Path, run_id: &str, json: bool) -> CliResult {
    let id = parse_run_id(run_id)?;
    let client = client(build, db)?;
    let now = client.now_ms();
    let not_found = |e: crate::Error| match e {
        crate::Error::Store(crate::StoreError::NotFound { .. }) => {
            format!("no run with id {id} in {}", db.display())
        }
        e => e.to_string(),
    };
    let run = client.run(id).map_err(not_found)?;
    let journal = client.journal(id).map_err(|e| e.to_string())?;
    let attempts = client.attempts(id).map_err(|e| e.to_string())?;
    if json {
        let mut v = run_json(&run);
        let input = client.run_input(id).map_err(|e| e.to_string())?;
        v["input"] = shown(client.input_json(&run, &input), &input);
        if let (Some(out), Some(json)) = (&run.output, client.output_json(&run)) {
            v["output"] = shown(json, out);
        }
        let mut steps = serde_json::to_value(&journal).unwrap_or_default();
        if let Some(list) = steps.as_array_mut() {
            for (s, row) in list.iter_mut().zip(&journal) {
                s["recorded_at_iso"] = when::iso(row.recorded_at).into();
                if let (Some(out), Some(json)) = (&row.output, client.entry_output_json(row)) {
                    s["output"] = shown(json, out);
                }
            }
        }
        v["steps"] = steps;
        v["attempts"] = attempts
            .iter()
            .map(|a| attempt_json(&client, &run, a))
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
            None => client
                .attempt_state(&run, a)
                .unwrap_or_else(|e| format!("unknown: {e}")),
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
fn print_logs(a: &AttemptRow) {
    let Some(logs) = a.logs.as_deref().filter(|l| !l.is_empty()) else {
        return;
    };
    println!("    logs:");
    for line in logs.lines() {
        println!("      | {line}");
    }
}

pub fn stats(db: &Path, json: bool) -> CliResult {
    let counts = plain_client(db)?.stats().map_err(|e| e.to_string())?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(s, n)| (s.to_string(), serde_json::Value::from(*n)))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        let total: u64 = counts.values().sum();
        for (s, n) in &counts {
            println!("{:<16} {n}", s.to_string());
        }
        println!("{:<16} {total}", "total");
    }
    Ok(0)
}

pub fn resume(db: &Path, run_id: &str) -> CliResult {
    let id = parse_run_id(run_id)?;
    plain_client(db)?.resume(id).map_err(|_| {
        format!(
            "run {id} is not blocked (or does not exist) in {}",
            db.display()
        )
    })?;
    eprintln!("run {id} is pending again");
    Ok(0)
}
