//! `copy`: move a waymark SQLite file into an empty PostgreSQL database (runs with their
//! journals, attempts and events, queue limits, schedules; run and event ids kept), then
//! run engines on the PostgreSQL URL. The work is the library's ([`crate::CopyOptions`]);
//! this module parses and prints.

use super::CliResult;
use crate::CopyOptions;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct CopyArgs {
    /// The SQLite file to copy (read only; no engine may run on it).
    #[arg(long)]
    pub from: PathBuf,
    /// The PostgreSQL database to copy into (postgres://...; it must hold no runs).
    #[arg(long)]
    pub to: String,
    /// How long to watch the heartbeat of an engine whose process cannot be checked from
    /// here (another PID namespace) before taking it as gone (e.g. 15s).
    #[arg(long)]
    pub heartbeat_wait: Option<String>,
    /// A run that was `running` under a gone engine arrives `failed` once interrupted more
    /// than this many times (the engine's `interruptions_max`).
    #[arg(long)]
    pub interruptions_max: Option<i64>,
}

pub fn copy(args: CopyArgs) -> CliResult {
    let mut opts = CopyOptions::default();
    if let Some(w) = &args.heartbeat_wait {
        opts.heartbeat_wait = super::admin::parse_age(w)?;
    }
    if let Some(n) = args.interruptions_max {
        if n < 1 {
            return Err("--interruptions-max must be at least 1".into());
        }
        opts.interruptions_max = n;
    }
    let report = opts.copy(&args.from, &args.to).map_err(|e| e.to_string())?;
    println!(
        "copied {} runs ({} running under a gone engine, now claimable), {} journal entries, {} attempts, {} events, {} queue limits, {} schedules from {} to {}",
        report.runs,
        report.running_recovered,
        report.steps,
        report.attempts,
        report.events,
        report.queues,
        report.schedules,
        args.from.display(),
        report.target
    );
    Ok(0)
}
