//! The `waymark` command line: the only place that prints and chooses exit codes.

mod admin;
mod bench;
mod demo;
mod fixtures;
mod fixtures_durable;
mod fixtures_logs;
mod inspect;
mod serve;
mod torture;
mod ui;
mod when;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "waymark",
    version,
    about = "Durable workflows on one SQLite file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sample workflow: N runs of generate -> transform -> write.
    Demo(demo::DemoArgs),
    /// List runs, one a line.
    Runs {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one run and its journal.
    Show {
        run_id: String,
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Count runs by status.
    Stats {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Retry a run parked as `blocked` (after deploying a build that can read its data).
    Resume {
        run_id: String,
        #[arg(long)]
        db: PathBuf,
    },
    /// Run an engine with the built-in workflows (demo and test fixtures) until killed.
    Serve(serve::ServeArgs),
    /// Start one run of a built-in workflow.
    Start(serve::StartArgs),
    /// Measure the standard workloads against this machine's own limits.
    Bench(bench::BenchArgs),
    /// Measure how many threads start under a memory rlimit (for the memory-cap default).
    #[command(hide = true)]
    ProbeThreads {
        /// `data` (RLIMIT_DATA) or `as` (RLIMIT_AS).
        #[arg(long, default_value = "data")]
        rlimit: String,
        #[arg(long, default_value_t = 256)]
        mib: u64,
        #[arg(long, default_value_t = 1000)]
        max: u32,
    },
    /// Kill engines at random moments on one database and check nothing is lost or run twice.
    Torture(torture::TortureArgs),
    /// An engine process of `waymark torture` (started by the harness).
    #[command(hide = true)]
    TortureEngine(torture::EngineArgs),
    /// A command step's work in `waymark torture` (the grandchild that holds the step's lock).
    #[command(hide = true)]
    TortureStep(torture::StepArgs),
    /// Send an event to a run (kept until the run waits for it).
    Send(admin::SendArgs),
    /// Retry a finished run as a new run (its successful steps copied, not run again).
    Retry(admin::RetryArgs),
    /// Restart a finished run as a new run from a given step.
    Restart(admin::RestartArgs),
    /// Cancel a run and its descendants.
    Cancel(admin::CancelArgs),
    /// Delete finished runs older than a given age and shrink the file.
    Gc(admin::GcArgs),
    /// Set or remove a queue's concurrency limit (honoured by every engine on the file).
    Queue(admin::QueueArgs),
    /// Create or replace a cron schedule of a built-in workflow.
    Schedule(admin::ScheduleArgs),
    /// Serve the web console over a database (prints its URL).
    Ui(ui::UiArgs),
}

/// Parse arguments, run the command, return the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return 0;
            }
            let text = e.to_string();
            let line = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("waymark: {line} (see waymark --help)");
            return 2;
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Runs { db, status, json } => inspect::runs(&db, status.as_deref(), json),
        Command::Show { run_id, db, json } => inspect::show(&db, &run_id, json),
        Command::Stats { db, json } => inspect::stats(&db, json),
        Command::Resume { run_id, db } => inspect::resume(&db, &run_id),
        Command::Serve(args) => serve::serve(args),
        Command::Start(args) => serve::start(args),
        Command::Bench(args) => bench::run(args),
        Command::ProbeThreads { rlimit, mib, max } => serve::probe_threads(&rlimit, mib, max),
        Command::Torture(args) => torture::run(args),
        Command::TortureEngine(args) => torture::engine(args),
        Command::TortureStep(args) => torture::step_helper(args),
        Command::Send(args) => admin::send(args),
        Command::Cancel(args) => admin::cancel(args),
        Command::Retry(args) => admin::retry(args),
        Command::Restart(args) => admin::restart(args),
        Command::Gc(args) => admin::gc(args),
        Command::Queue(args) => admin::queue(args),
        Command::Schedule(args) => admin::schedule(args),
        Command::Ui(args) => ui::ui(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("waymark: {}", e.lines().next().unwrap_or("error"));
            1
        }
    }
}

/// CLI results carry a one-line message.
pub(crate) type CliResult = Result<i32, String>;

pub(crate) fn parse_run_id(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad run id '{s}': expected a positive integer"))
}

/// A flag set when this process receives SIGTERM (installed once; later calls share it).
pub(crate) fn on_sigterm() -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::AtomicBool;
    static TERM: AtomicBool = AtomicBool::new(false);
    static INSTALL: std::sync::Once = std::sync::Once::new();
    extern "C" fn handler(_: libc::c_int) {
        // Async-signal-safe: one atomic store.
        TERM.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    INSTALL.call_once(|| {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            libc::signal(
                libc::SIGTERM,
                handler as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    });
    &TERM
}

/// Every built-in workflow and step (the demo's, the fixtures', the bench and torture
/// workloads): what `serve`, `demo` and step children of this binary register.
pub fn registry() -> waymark::Registry {
    let mut reg = waymark::Registry::new();
    demo::register(&mut reg);
    fixtures::register(&mut reg);
    fixtures_logs::register(&mut reg);
    bench::register(&mut reg);
    fixtures_durable::register(&mut reg);
    // The torture engine's child steps run in children of this binary.
    torture::register(&mut reg);
    reg
}
