//! `serve` and `start`: an engine with the binary's workflows, and a way to start their
//! runs from scripts with the input as JSON.

use super::{BuildRegistry, CliResult};
use crate::{Config, Engine, PayloadOf, Registry, RunStatus, StartOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct ServeArgs {
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Lease TTL in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub lease_ttl_ms: u64,
    /// Exit 0 once no run is pending, running or suspended.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// `synchronous=NORMAL` (documented opt-in: may lose the last commits on power loss).
    #[arg(long)]
    pub sync_normal: bool,
    /// Run every step on the engine's worker threads (no child processes).
    #[arg(long)]
    pub in_process: bool,
    /// Run Rust steps on warm pooled children (`Isolation::Pool`).
    #[arg(long)]
    pub pool: bool,
    /// Shutdown grace in milliseconds (SIGTERM shuts the engine down cleanly).
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    /// `Config::poll_interval` in milliseconds: how often an idle dispatcher looks for work
    /// and the feature poller looks for cancellations and deadlines.
    #[arg(long)]
    pub poll_interval_ms: Option<u64>,
    /// Test support: set SIGCHLD to SIG_IGN in this host process `before` or `after` the
    /// engine starts (a host that ignores SIGCHLD must not turn failed steps into successes).
    #[arg(long, hide = true)]
    pub ignore_sigchld: Option<String>,
    /// Serve the web console in this engine's process on this address (its URL is the
    /// first line of stdout); its `/metrics` adds this engine's own counters.
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<std::net::SocketAddr>,
    /// A token every console request must carry (needed for a non-loopback --ui).
    #[arg(long, requires = "ui")]
    pub ui_token: Option<String>,
}

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct StartArgs {
    /// Registered workflow name.
    pub workflow: String,
    #[arg(long)]
    pub db: PathBuf,
    /// Input as JSON.
    #[arg(long, default_value = "null")]
    pub json: String,
    /// Idempotency key (with --count, the prefix of KEY-1..KEY-N).
    #[arg(long)]
    pub key: Option<String>,
    /// Start this many runs with the same input.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Queue of the runs.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Priority of the runs (higher first).
    #[arg(long, default_value_t = 0)]
    pub priority: i64,
    /// Do not start before this time (ms since the Unix epoch).
    #[arg(long)]
    pub not_before_ms: Option<i64>,
    /// Fail the runs if not finished by this time (ms since the Unix epoch).
    #[arg(long)]
    pub deadline_ms: Option<i64>,
    /// Workflow version the runs are started under (default: 1 if registered, else the
    /// highest registered). A version this binary does not register is started for another
    /// build, its input read as the nearest registered version's.
    #[arg(long)]
    pub workflow_version: Option<u32>,
}

/// `serve`: an engine with the binary's workflows until SIGTERM (or idle).
pub fn serve(build: BuildRegistry, args: ServeArgs) -> CliResult {
    let mut config = Config::new(&args.db).with_lease_ttl(Duration::from_millis(args.lease_ttl_ms));
    config.workers = args.workers.max(1);
    if args.sync_normal {
        config.synchronous = crate::Synchronous::Normal;
    }
    if args.in_process {
        config.isolation = crate::Isolation::InProcess;
    }
    if args.pool {
        config.isolation = crate::Isolation::Pool;
    }
    if let Some(ms) = args.shutdown_grace_ms {
        config.shutdown_grace = Duration::from_millis(ms);
    }
    if let Some(ms) = args.poll_interval_ms {
        config.poll_interval = Duration::from_millis(ms);
    }
    let ignore_sigchld = || {
        // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    };
    if args.ignore_sigchld.as_deref() == Some("before") {
        ignore_sigchld();
    }
    let engine = Engine::start(build(), config).map_err(|e| e.to_string())?;
    if args.ignore_sigchld.as_deref() == Some("after") {
        ignore_sigchld();
    }
    let console = match args.ui {
        Some(addr) => {
            let console = crate::console::serve_engine(
                &engine,
                super::ui::options(addr, false, args.ui_token.clone()),
            )
            .map_err(|e| e.to_string())?;
            super::ui::announce(&console);
            Some(console)
        }
        None => None,
    };
    let terminate = super::on_sigterm();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if terminate.load(std::sync::atomic::Ordering::SeqCst) {
            log::info!("SIGTERM: shutting down cleanly");
            drop(console);
            engine.shutdown().map_err(|e| e.to_string())?;
            return Ok(0);
        }
        if args.exit_when_idle {
            let counts = engine.stats().map_err(|e| e.to_string())?;
            let active = counts
                .iter()
                .filter(|(s, _)| {
                    matches!(
                        s,
                        RunStatus::Pending | RunStatus::Running | RunStatus::Suspended
                    )
                })
                .map(|(_, n)| n)
                .sum::<u64>();
            if active == 0 {
                drop(console);
                engine.shutdown().map_err(|e| e.to_string())?;
                return Ok(0);
            }
        }
    }
}

/// Encode `json` as the input of `workflow` through `registry`: `(version to start,
/// bytes)`. A version not registered here borrows the input type of the nearest registered
/// version of the same name (the run is meant for another build).
pub(super) fn encode_input(
    registry: &Registry,
    workflow: &str,
    version: Option<u32>,
    json: &str,
) -> Result<(u32, Vec<u8>), String> {
    let versions: Vec<u32> = registry
        .workflows()
        .into_iter()
        .filter(|(n, _)| n == workflow)
        .map(|(_, v)| v)
        .collect();
    let Some(&highest) = versions.iter().max() else {
        let names: Vec<String> = registry
            .workflows()
            .into_iter()
            .map(|(n, v)| if v == 1 { n } else { format!("{n}@{v}") })
            .collect();
        return Err(format!(
            "unknown workflow '{workflow}': registered workflows are {}",
            names.join(", ")
        ));
    };
    let version = version.unwrap_or(if versions.contains(&1) { 1 } else { highest });
    let typed = if versions.contains(&version) {
        version
    } else {
        versions
            .iter()
            .copied()
            .filter(|&v| v <= version)
            .max()
            .unwrap_or(highest)
    };
    let of = PayloadOf::WorkflowInput {
        name: workflow,
        version: typed,
    };
    match registry.payload_from_json(of, json) {
        Some(Ok(bytes)) => Ok((version, bytes)),
        Some(Err(why)) => Err(format!("bad --json input for '{workflow}': {why}")),
        None => Err(format!("unknown workflow '{workflow}'")),
    }
}

/// `start`: runs of any registered workflow, the input given as JSON.
pub fn start(build: BuildRegistry, args: StartArgs) -> CliResult {
    let registry = build();
    let (version, input) =
        encode_input(&registry, &args.workflow, args.workflow_version, &args.json)?;
    let other_build = !registry
        .workflows()
        .contains(&(args.workflow.clone(), version));
    let client = crate::Client::open_with({
        let mut c = crate::ClientConfig::new(&args.db).registry(registry);
        c.create = true;
        c
    })
    .map_err(|e| e.to_string())?;
    let runs: Vec<(Vec<u8>, StartOptions)> = (1..=args.count)
        .map(|i| {
            let mut o = StartOptions {
                idempotency_key: args.key.as_ref().map(|k| {
                    if args.count == 1 {
                        k.clone()
                    } else {
                        format!("{k}-{i}")
                    }
                }),
                queue: Some(args.queue.clone()),
                priority: args.priority,
                not_before_ms: args.not_before_ms,
                deadline_ms: args.deadline_ms,
                ..StartOptions::default()
            };
            if other_build {
                o = o.for_other_build();
            }
            (input.clone(), o)
        })
        .collect();
    let ids = client
        .start_many_encoded(&args.workflow, version, runs)
        .map_err(|e| e.to_string())?;
    for id in ids {
        println!("{id}");
    }
    Ok(0)
}
