//! The `waymark` binary's own commands (the demo, the bench, the torture harness and test
//! support), added to the library's admin CLI ([`waymark::cli`]) over the built-in workflows.

mod bench;
mod demo;
mod fixtures;
mod fixtures_durable;
mod fixtures_logs;
mod progress;
mod serve;
mod torture;

use clap::Subcommand;

/// Commands only the `waymark` binary has.
#[derive(Subcommand, Debug)]
pub enum Extra {
    /// Run the sample workflow: N runs of generate -> transform -> write.
    Demo(demo::DemoArgs),
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
}

impl waymark::cli::ExtraCommands for Extra {
    fn run(self) -> CliResult {
        match self {
            Extra::Demo(args) => demo::run(args),
            Extra::Bench(args) => bench::run(args),
            Extra::ProbeThreads { rlimit, mib, max } => serve::probe_threads(&rlimit, mib, max),
            Extra::Torture(args) => torture::run(args),
            Extra::TortureEngine(args) => torture::engine(args),
            Extra::TortureStep(args) => torture::step_helper(args),
        }
    }
}

/// Parse arguments, run the command, return the exit code.
pub fn main() -> i32 {
    waymark::cli::main_with::<Extra>(registry)
}

/// CLI results carry a one-line message.
pub(crate) type CliResult = Result<i32, String>;

/// A flag set when this process receives SIGTERM.
pub(crate) fn on_sigterm() -> &'static std::sync::atomic::AtomicBool {
    waymark::cli::on_sigterm()
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
