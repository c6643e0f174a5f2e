//! `waymark send`, `waymark cancel`, `waymark gc`: act on a database from scripts, with or
//! without an engine running on it (the engines see the change through the database).

use super::{parse_run_id, CliResult};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use waymark::internal::clock::{Clock, SystemClock};
use waymark::internal::store::{Store, StoreOptions};

#[derive(clap::Args, Debug)]
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
pub struct RetryArgs {
    pub run_id: String,
    #[arg(long)]
    pub db: PathBuf,
}

#[derive(clap::Args, Debug)]
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
pub struct CancelArgs {
    pub run_id: String,
    #[arg(long)]
    pub db: PathBuf,
}

#[derive(clap::Args, Debug)]
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

pub fn queue(args: QueueArgs) -> CliResult {
    if args.limit.is_some_and(|n| n < 0) {
        return Err("--limit must be 0 or more".into());
    }
    let limit = args
        .limit
        .map(|n| u32::try_from(n).map_err(|_| format!("--limit {n} is too large")))
        .transpose()?;
    client(&args.db)?
        .set_queue_limit(&args.name, limit)
        .map_err(|e| e.to_string())?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct ScheduleArgs {
    /// Schedule name (one run per due time, keyed sched:NAME:DUE).
    pub name: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Cron expression, UTC (5 fields, or 6-7 with seconds first).
    #[arg(long)]
    pub cron: String,
    /// Built-in workflow to start.
    #[arg(long)]
    pub workflow: String,
    /// Input as JSON.
    #[arg(long, default_value = "null")]
    pub json: String,
    /// Start one run per due time missed while no engine ran (default: only the latest).
    #[arg(long)]
    pub catch_up: bool,
}

pub fn schedule(args: ScheduleArgs) -> CliResult {
    let input = super::fixtures_durable::encode_any(&args.workflow, &args.json)?;
    let (store, clock) = open_with(&args.db, true)?;
    waymark::internal::engine::schedule::put_schedule(
        &store,
        clock.now_ms(),
        waymark::ScheduleSpec {
            name: &args.name,
            cron: &args.cron,
            workflow: &args.workflow,
            version: 1,
            input,
            missed: if args.catch_up {
                waymark::Missed::CatchUp
            } else {
                waymark::Missed::Skip
            },
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(0)
}

fn open_with(db: &Path, create: bool) -> Result<(Store, Arc<SystemClock>), String> {
    let opts = StoreOptions {
        create,
        readers_max: 1,
        ..Default::default()
    };
    let clock = Arc::new(SystemClock::from_env());
    let store = Store::open(db, &opts, clock.clone()).map_err(|e| e.to_string())?;
    Ok((store, clock))
}

/// A client on an existing file, checking sends against the built-in registry.
fn client(db: &Path) -> Result<waymark::Client, String> {
    waymark::Client::open_with(waymark::ClientConfig::new(db).registry(super::registry()))
        .map_err(|e| e.to_string())
}

pub fn send(args: SendArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let Some(json) = args.json else {
        return Err(format!(
            "send needs a payload: --json JSON (e.g. --json true; --json null sends null); nothing was sent to run {id}"
        ));
    };
    let event = client(&args.db)?
        .send_event_json(id, &args.name, &json)
        .map_err(|e| e.to_string())?;
    println!("{event}");
    Ok(0)
}

pub fn cancel(args: CancelArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let status = client(&args.db)?.cancel(id).map_err(|e| e.to_string())?;
    if matches!(
        status,
        waymark::RunStatus::Completed | waymark::RunStatus::Failed
    ) {
        return Err(format!(
            "run {id} already finished ({status}); nothing to cancel"
        ));
    }
    println!("{status}");
    Ok(0)
}

pub fn retry(args: RetryArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let new = client(&args.db)?.retry(id).map_err(|e| e.to_string())?;
    println!("{new}");
    Ok(0)
}

pub fn restart(args: RestartArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let new = client(&args.db)?
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

pub fn gc(args: GcArgs) -> CliResult {
    let age = parse_age(&args.older_than)?;
    let client = client(&args.db)?;
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
