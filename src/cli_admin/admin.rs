//! `waymark send`, `waymark cancel`, `waymark gc`: act on a database from scripts, with or
//! without an engine running on it (the engines see the change through the database).

use super::{client, parse_run_id, BuildRegistry, CliResult};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct SendArgs {
    pub run_id: String,
    /// Event name.
    pub name: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Payload as JSON (required: `--json null` sends null).
    #[arg(long)]
    pub json: Option<String>,
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct RetryArgs {
    pub run_id: String,
    #[arg(long)]
    pub db: PathBuf,
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct RestartArgs {
    pub run_id: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Journal seq (as `waymark show` prints it, from 0) of the first entry to run again;
    /// the entries before it are copied.
    #[arg(long)]
    pub from_step: i64,
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct CancelArgs {
    pub run_id: String,
    #[arg(long)]
    pub db: PathBuf,
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct GcArgs {
    #[arg(long)]
    pub db: PathBuf,
    /// Delete runs finished longer ago than this (e.g. 30s, 15m, 12h, 7d).
    #[arg(long)]
    pub older_than: String,
    /// Delete runs that finished less than an hour ago too (asked for when it would).
    #[arg(long)]
    pub yes: bool,
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct QueueArgs {
    /// Queue name.
    pub name: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Most runs of this queue running at once, across all engines.
    #[arg(
        long,
        conflicts_with = "unlimited",
        required_unless_present = "unlimited"
    )]
    pub limit: Option<i64>,
    /// Remove the queue's limit.
    #[arg(long)]
    pub unlimited: bool,
}

pub fn queue(build: BuildRegistry, args: QueueArgs) -> CliResult {
    if args.limit.is_some_and(|n| n < 0) {
        return Err("--limit must be 0 or more".into());
    }
    let limit = args
        .limit
        .map(|n| u32::try_from(n).map_err(|_| format!("--limit {n} is too large")))
        .transpose()?;
    client(build, &args.db)?
        .set_queue_limit(&args.name, limit)
        .map_err(|e| e.to_string())?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct ScheduleArgs {
    /// Schedule name (one run per due time, keyed sched:NAME:DUE).
    pub name: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Cron expression, UTC (5 fields, or 6-7 with seconds first).
    #[arg(long)]
    pub cron: String,
    /// Registered workflow to start.
    #[arg(long)]
    pub workflow: String,
    /// Input as JSON.
    #[arg(long, default_value = "null")]
    pub json: String,
    /// Start one run per due time missed while no engine ran (default: only the latest).
    #[arg(long)]
    pub catch_up: bool,
}

pub fn schedule(build: BuildRegistry, args: ScheduleArgs) -> CliResult {
    let registry = build();
    let (version, input) = super::serve::encode_input(&registry, &args.workflow, None, &args.json)?;
    // A schedule may be set up before any engine ran on the file: create it if missing.
    crate::Client::open_with({
        let mut c = crate::ClientConfig::new(&args.db).registry(registry);
        c.create = true;
        c
    })
    .map_err(|e| e.to_string())?
    .put_schedule(crate::ScheduleSpec {
        name: &args.name,
        cron: &args.cron,
        workflow: &args.workflow,
        version: i64::from(version),
        input,
        missed: if args.catch_up {
            crate::Missed::CatchUp
        } else {
            crate::Missed::Skip
        },
    })
    .map_err(|e| e.to_string())?;
    Ok(0)
}

pub fn send(build: BuildRegistry, args: SendArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let Some(json) = args.json else {
        return Err(format!(
            "send needs a payload: --json JSON (e.g. --json true; --json null sends null); nothing was sent to run {id}"
        ));
    };
    let event = client(build, &args.db)?
        .send_event_json(id, &args.name, &json)
        .map_err(|e| e.to_string())?;
    println!("{event}");
    Ok(0)
}

pub fn cancel(build: BuildRegistry, args: CancelArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let status = client(build, &args.db)?
        .cancel(id)
        .map_err(|e| e.to_string())?;
    if matches!(
        status,
        crate::RunStatus::Completed | crate::RunStatus::Failed
    ) {
        return Err(format!(
            "run {id} already finished ({status}); nothing to cancel"
        ));
    }
    println!("{status}");
    Ok(0)
}

pub fn retry(build: BuildRegistry, args: RetryArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let new = client(build, &args.db)?
        .retry(id)
        .map_err(|e| e.to_string())?;
    println!("{new}");
    Ok(0)
}

pub fn restart(build: BuildRegistry, args: RestartArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let new = client(build, &args.db)?
        .restart(id, args.from_step)
        .map_err(|e| e.to_string())?;
    println!("{new}");
    Ok(0)
}

/// Parse `90s`, `15m`, `12h`, `7d`, `500ms` (a bare number is seconds).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad age '{s}': expected e.g. 30s, 15m, 12h, 7d"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad age '{s}': unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

pub fn gc(build: BuildRegistry, args: GcArgs) -> CliResult {
    let age = parse_age(&args.older_than)?;
    let client = client(build, &args.db)?;
    if !args.yes {
        let young = client
            .purge_would_delete_recent(age, Duration::from_secs(3600))
            .map_err(|e| e.to_string())?;
        if young > 0 {
            return Err(format!(
                "gc --older-than {} would delete {young} run(s) that finished less than an hour ago; add --yes to delete them",
                args.older_than
            ));
        }
    }
    let n = client.purge(age).map_err(|e| e.to_string())?;
    println!("{n}");
    Ok(0)
}
