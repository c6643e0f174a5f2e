//! The admin command line an application embeds in its own binary:
//! `std::process::exit(waymark::cli::main(build_registry))` gives it `runs`, `show`,
//! `stats`, `start`, `send`, `cancel`, `retry`, `restart`, `resume`, `gc`, `queue`,
//! `schedule`, `serve`, `ui` (the web console) and `copy` (into PostgreSQL), with payloads shown and accepted as JSON through the types the
//! application registered ([`crate::Registry::payload_to_json`]).
//!
//! ```no_run
//! # fn build_registry() -> waymark::Registry { waymark::Registry::new() }
//! fn main() {
//!     waymark::hook(build_registry); // steps run in children of this binary
//!     std::process::exit(waymark::cli::main(build_registry));
//! }
//! ```
//!
//! Boundary: this module is the only code of the library that prints (to stdout and
//! stderr) and chooses exit codes, and it goes through the public API only ([`crate::Client`],
//! [`crate::Engine`], [`crate::Registry`]): no storage internals. Compiled with the `cli`
//! feature (a default feature).

#[doc(hidden)]
pub mod admin;
#[doc(hidden)]
pub mod copy;
#[doc(hidden)]
pub mod inspect;
#[doc(hidden)]
pub mod serve;
#[doc(hidden)]
pub mod ui;
mod when;

use crate::Registry;
use clap::{FromArgMatches, Subcommand};
use std::path::PathBuf;

/// What builds the application's registry (the function also given to [`crate::hook`]).
pub type BuildRegistry = fn() -> Registry;

/// The user-facing commands (another module, e.g. a console's `ui`, adds a variant here).
#[derive(Subcommand, Debug)]
#[non_exhaustive]
pub enum Command {
    /// List runs, one a line.
    Runs(inspect::RunsArgs),
    /// Show one run: its journal, its attempts, and (with --json) its payloads as JSON.
    Show {
        /// The run's id.
        run_id: String,
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// JSON, with the input, the output, step outputs and event payloads decoded.
        #[arg(long)]
        json: bool,
    },
    /// Count runs by status.
    Stats {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Retry a run parked as `blocked` (after deploying a build that can read its data).
    Resume {
        /// The run's id.
        run_id: String,
        /// Database file.
        #[arg(long)]
        db: PathBuf,
    },
    /// Run an engine with this binary's workflows until SIGTERM.
    Serve(serve::ServeArgs),
    /// Start runs of a registered workflow, the input given as JSON.
    Start(serve::StartArgs),
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
    /// Create or replace a cron schedule of a registered workflow.
    Schedule(admin::ScheduleArgs),
    /// Serve the web console over a database (prints its URL).
    Ui(ui::UiArgs),
    /// Copy an SQLite file into an empty PostgreSQL database (ids kept; no engine may run).
    Copy(copy::CopyArgs),
}

impl Command {
    /// Run the command against the application's registry; the exit code.
    fn run(self, build: BuildRegistry) -> CliResult {
        match self {
            Command::Runs(args) => inspect::runs(args),
            Command::Show { run_id, db, json } => inspect::show(build, &db, &run_id, json),
            Command::Stats { db, json } => inspect::stats(&db, json),
            Command::Resume { run_id, db } => inspect::resume(&db, &run_id),
            Command::Serve(args) => serve::serve(build, args),
            Command::Start(args) => serve::start(build, args),
            Command::Send(args) => admin::send(build, args),
            Command::Cancel(args) => admin::cancel(build, args),
            Command::Retry(args) => admin::retry(build, args),
            Command::Restart(args) => admin::restart(build, args),
            Command::Gc(args) => admin::gc(build, args),
            Command::Queue(args) => admin::queue(build, args),
            Command::Schedule(args) => admin::schedule(build, args),
            Command::Ui(args) => ui::ui(build, args),
            Command::Copy(args) => copy::copy(args),
        }
    }
}

/// Commands a binary adds to the admin CLI (the `waymark` binary's demo, bench and test
/// commands): a clap [`Subcommand`] whose variants do not clash with [`Command`]'s.
pub trait ExtraCommands: Subcommand {
    /// Run the command; `Ok(exit code)` or a one-line error.
    fn run(self) -> Result<i32, String>;
}

/// No extra commands.
#[derive(Debug)]
pub enum NoExtraCommands {}

impl FromArgMatches for NoExtraCommands {
    fn from_arg_matches(_: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))
    }
    fn update_from_arg_matches(&mut self, _: &clap::ArgMatches) -> Result<(), clap::Error> {
        match *self {}
    }
}

impl Subcommand for NoExtraCommands {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        cmd
    }
    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        cmd
    }
    fn has_subcommand(_: &str) -> bool {
        false
    }
}

impl ExtraCommands for NoExtraCommands {
    fn run(self) -> Result<i32, String> {
        match self {}
    }
}

/// Parse this process's arguments, run the admin command, return the exit code
/// (0 success, 1 failure, 2 bad arguments). Prints results to stdout, errors to stderr.
pub fn main(build_registry: BuildRegistry) -> i32 {
    main_with::<NoExtraCommands>(build_registry)
}

/// [`main`] with the binary's own extra commands `E`.
pub fn main_with<E: ExtraCommands>(build_registry: BuildRegistry) -> i32 {
    let name = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "waymark".into());
    // Once per process: clap takes a 'static name.
    let name: &'static str = Box::leak(name.into_boxed_str());
    let cmd = clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about("Durable workflows on one SQLite file")
        .subcommand_required(true)
        .arg_required_else_help(true);
    let cmd = E::augment_subcommands(Command::augment_subcommands(cmd));
    let matches = match cmd.try_get_matches() {
        Ok(m) => m,
        Err(e) => return argument_error(name, e),
    };
    let extra = matches
        .subcommand_name()
        .is_some_and(|sub| E::has_subcommand(sub) && !Command::has_subcommand(sub));
    init_logger();
    let result = if extra {
        match E::from_arg_matches(&matches) {
            Ok(c) => c.run(),
            Err(e) => return argument_error(name, e),
        }
    } else {
        match Command::from_arg_matches(&matches) {
            Ok(c) => c.run(build_registry),
            Err(e) => return argument_error(name, e),
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {}", e.lines().next().unwrap_or("error"));
            1
        }
    }
}

fn argument_error(name: &str, e: clap::Error) -> i32 {
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
    eprintln!("{name}: {line} (see {name} --help)");
    2
}

fn init_logger() {
    // A second call (a test harness that set one up) keeps the first logger.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .try_init();
}

/// CLI results carry a one-line message.
type CliResult = Result<i32, String>;

fn parse_run_id(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad run id '{s}': expected a positive integer"))
}

/// A flag set when this process receives SIGTERM (installed once; later calls share it).
#[doc(hidden)]
pub fn on_sigterm() -> &'static std::sync::atomic::AtomicBool {
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

/// A client on an existing file, decoding and checking payloads through `build`'s registry.
fn client(build: BuildRegistry, db: &std::path::Path) -> Result<crate::Client, String> {
    crate::Client::open_with(crate::ClientConfig::new(db).registry(build()))
        .map_err(|e| e.to_string())
}

/// A client without a registry (reads that decode nothing).
fn plain_client(db: &std::path::Path) -> Result<crate::Client, String> {
    crate::Client::open(db).map_err(|e| e.to_string())
}
