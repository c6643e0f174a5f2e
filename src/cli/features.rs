//! `waymark send`, `waymark cancel`, `waymark gc`: act on a database from scripts, with or
//! without an engine running on it (the engines see the change through the database).

use super::{parse_run_id, CliResult};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use waymark::clock::{Clock, SystemClock};
use waymark::engine::features;
use waymark::store::{Done, Op, Store, StoreOptions};

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    pub run_id: String,
    /// Event name.
    pub name: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Payload as JSON.
    #[arg(long, default_value = "null")]
    pub json: String,
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
    let (store, _) = open(&args.db)?;
    store
        .call(Op::SetQueueLimit {
            queue: args.name,
            concurrency: args.limit,
        })
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
    let input = super::fixtures_features::encode_any(&args.workflow, &args.json)?;
    let (store, clock) = open_with(&args.db, true)?;
    waymark::engine::schedule::put_schedule(
        &store,
        clock.now_ms(),
        waymark::engine::schedule::ScheduleSpec {
            name: &args.name,
            cron: &args.cron,
            workflow: &args.workflow,
            version: 1,
            input,
            missed: if args.catch_up {
                waymark::engine::schedule::Missed::CatchUp
            } else {
                waymark::engine::schedule::Missed::Skip
            },
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(0)
}

fn open(db: &Path) -> Result<(Store, Arc<SystemClock>), String> {
    open_with(db, false)
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

pub fn send(args: SendArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let value: serde_json::Value =
        serde_json::from_str(&args.json).map_err(|e| format!("bad --json payload: {e}"))?;
    let payload = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    let (store, _) = open(&args.db)?;
    let event = features::send_event_bytes(
        &store,
        id,
        &args.name,
        payload,
        waymark::codec::PAYLOAD_BYTES_MAX,
    )
    .map_err(|e| e.to_string())?;
    println!("{event}");
    Ok(0)
}

pub fn cancel(args: CancelArgs) -> CliResult {
    let id = parse_run_id(&args.run_id)?;
    let (store, _) = open(&args.db)?;
    match store
        .call(Op::Cancel { run_id: id })
        .map_err(|e| e.to_string())?
    {
        Done::Cancel { status } if matches!(status.as_str(), "completed" | "failed") => Err(
            format!("run {id} already finished ({status}); nothing to cancel"),
        ),
        Done::Cancel { status } => {
            println!("{status}");
            Ok(0)
        }
        _ => Err("unexpected answer from the writer".into()),
    }
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
    let (store, clock) = open(&args.db)?;
    let now = clock.now_ms();
    let before = now - i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2);
    let hour_ago = now - 3_600_000;
    if before > hour_ago && !args.yes {
        let young = store
            .read(|c| waymark::store::queries::finished_between(c, hour_ago, before))
            .map_err(|e| e.to_string())?;
        if young > 0 {
            return Err(format!(
                "gc --older-than {} would delete {young} run(s) that finished less than an hour ago; add --yes to delete them",
                args.older_than
            ));
        }
    }
    let n = features::purge(&store, before).map_err(|e| e.to_string())?;
    println!("{n}");
    Ok(0)
}
