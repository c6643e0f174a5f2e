//! `waymark demo`: the main job. A three-step workflow that does real work:
//! generate data, transform it, write a result file.

use super::CliResult;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use waymark::{
    Config, Ctx, Engine, Registry, StartOptions, Step, StepCtx, StepError, Workflow, WorkflowError,
};

/// Silence on the change subscription after which the demo re-reads its runs' statuses.
const PROGRESS_BACKSTOP: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Database file (created if missing).
    #[arg(long, default_value = "waymark-demo.db")]
    pub db: PathBuf,
    /// Number of runs (idempotency keys demo-1..demo-N).
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Lease TTL in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub lease_ttl_ms: u64,
    /// Every K-th run gets a step that tries to allocate four times its memory cap; those
    /// runs must end failed with "memory limit exceeded" (0: none).
    #[arg(long, default_value_t = 0)]
    pub hog_every: u64,
    /// Memory cap of each step's child process, in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u64,
}

/// Input of one demo run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoInput {
    pub index: u64,
    pub out_dir: String,
    /// If non-zero, the run first calls `demo.hog` to allocate this many bytes.
    #[serde(default)]
    pub hog_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenIn {
    pub seed: u64,
    pub count: u32,
}

/// Summary statistics of a generated series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub sum: u64,
    pub min: u64,
    pub max: u64,
    pub median: u64,
    pub checksum: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteIn {
    pub path: String,
    pub summary: Summary,
}

pub const GENERATE: Step<GenIn, Vec<u64>> = Step::new("demo.generate");
pub const TRANSFORM: Step<Vec<u64>, Summary> = Step::new("demo.transform");
pub const WRITE: Step<WriteIn, String> = Step::new("demo.write");
pub const HOG: Step<u64, u64> = Step::new("demo.hog");
pub const DEMO: Workflow<DemoInput, Summary> = Workflow::new("demo");

/// Append one line `run seq step engine_pid` per step execution to `$WAYMARK_DEMO_EFFECTS`, if
/// set (tests read it). `engine_pid` is the engine that executed the step: this process for an
/// in-process step, the parent for a step child.
pub fn record_effect(ctx: &StepCtx, step: &str) {
    if let Some(path) = std::env::var_os("WAYMARK_DEMO_EFFECTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let engine_pid = if std::env::var_os(waymark::internal::isolation::ENV_MODE).is_some() {
                // SAFETY: getppid(2) has no preconditions.
                unsafe { libc::getppid() as u32 }
            } else {
                std::process::id()
            };
            // One write(2) per line: O_APPEND keeps lines from several processes whole.
            let line = format!("{} {} {} {engine_pid}\n", ctx.run_id(), ctx.seq(), step);
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn generate(ctx: &StepCtx, input: GenIn) -> Result<Vec<u64>, StepError> {
    record_effect(ctx, "generate");
    log::info!(
        "generating {} numbers from seed {}",
        input.count,
        input.seed
    );
    let mut x = input
        .seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Ok((0..input.count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 1_000_000
        })
        .collect())
}

fn transform(ctx: &StepCtx, mut data: Vec<u64>) -> Result<Summary, StepError> {
    record_effect(ctx, "transform");
    log::info!("transforming {} numbers", data.len());
    if data.is_empty() {
        return Err(StepError::permanent("no data to transform"));
    }
    data.sort_unstable();
    let checksum = data.iter().fold(0xcbf29ce484222325u64, |h, v| {
        (h ^ v).wrapping_mul(0x100000001b3)
    });
    Ok(Summary {
        count: data.len() as u64,
        sum: data.iter().sum(),
        min: data[0],
        max: data[data.len() - 1],
        median: data[data.len() / 2],
        checksum,
    })
}

fn write(ctx: &StepCtx, input: WriteIn) -> Result<String, StepError> {
    record_effect(ctx, "write");
    log::info!("writing the summary to {}", input.path);
    let path = Path::new(&input.path);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, &serde_json::json!({
        "idempotency_key": ctx.idempotency_key(),
        "count": input.summary.count, "sum": input.summary.sum, "min": input.summary.min,
        "max": input.summary.max, "median": input.summary.median, "checksum": input.summary.checksum,
    }))
    .map_err(StepError::retryable)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| StepError::retryable(e.error))?;
    Ok(input.path)
}

/// Allocate `bytes` in 16 MiB chunks, touching every page (meant to exceed its cap).
fn hog(ctx: &StepCtx, bytes: u64) -> Result<u64, StepError> {
    record_effect(ctx, "hog");
    log::info!("allocating {bytes} bytes");
    let chunk = 16 * 1024 * 1024usize;
    let mut held: Vec<Vec<u8>> = Vec::new();
    while (held.len() * chunk) < bytes as usize {
        let mut v = vec![0u8; chunk];
        for i in (0..chunk).step_by(4096) {
            v[i] = 1;
        }
        held.push(std::hint::black_box(v));
    }
    Ok(held.len() as u64)
}

fn demo(ctx: &mut Ctx<'_>, input: DemoInput) -> Result<Summary, WorkflowError> {
    if input.hog_bytes > 0 {
        ctx.step(HOG, &input.hog_bytes)?;
    }
    let data = ctx.step(
        GENERATE,
        &GenIn {
            seed: input.index,
            count: 5_000,
        },
    )?;
    let summary = ctx.step(TRANSFORM, &data)?;
    let path = format!("{}/run-{}.json", input.out_dir, input.index);
    ctx.step(
        WRITE,
        &WriteIn {
            path,
            summary: summary.clone(),
        },
    )?;
    Ok(summary)
}

/// Register the demo workflow and its steps.
pub fn register(reg: &mut Registry) {
    reg.step(GENERATE, generate);
    reg.step(TRANSFORM, transform);
    reg.step(WRITE, write);
    reg.step(HOG, hog).retry = Some(waymark::RetryPolicy::never());
    reg.workflow(DEMO, demo);
}

/// Where the demo writes result files for a database: beside an SQLite file; for a
/// PostgreSQL URL, in the temp dir under the database's name (the same directory at every
/// run on one database, as the runs' inputs name it).
pub fn out_dir(db: &Path) -> PathBuf {
    if waymark::internal::store::is_postgres(db) {
        let url = db.to_string_lossy();
        let name: String = url
            .rsplit('/')
            .next()
            .unwrap_or("db")
            .split('?')
            .next()
            .unwrap_or("db")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        return std::env::temp_dir().join(format!("waymark-demo-{name}.out"));
    }
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".out");
    db.with_file_name(name)
}

pub fn run(args: DemoArgs) -> CliResult {
    let reg = super::registry();
    let mut config = Config::new(&args.db).with_lease_ttl(Duration::from_millis(args.lease_ttl_ms));
    config.workers = args.workers.max(1);
    // Every step runs in a child process of this binary under this memory cap.
    config.isolation = waymark::Isolation::Child;
    let cap = args.memory_mib.max(16) * 1024 * 1024;
    config.limits.memory_bytes = Some(cap);
    let is_hog = |i: u64| args.hog_every > 0 && i.is_multiple_of(args.hog_every);
    let engine = Engine::start(reg, config).map_err(|e| e.to_string())?;
    let out = out_dir(&args.db).to_string_lossy().into_owned();
    let inputs: Vec<(DemoInput, StartOptions)> = (1..=args.runs as u64)
        .map(|i| {
            (
                DemoInput {
                    index: i,
                    out_dir: out.clone(),
                    hog_bytes: if is_hog(i) { 4 * cap } else { 0 },
                },
                StartOptions::key(format!("demo-{i}")),
            )
        })
        .collect();
    let changes = engine.subscribe().map_err(|e| e.to_string())?;
    let mut ids = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(1000) {
        ids.extend(engine.start_many(DEMO, chunk).map_err(|e| e.to_string())?);
    }
    eprintln!(
        "demo: {} runs on {} (results in {out})",
        ids.len(),
        args.db.display()
    );
    // Progress from the engine's own run state changes (subscribed before the runs were
    // started, so none is missed); a snapshot first, since runs of an earlier demo on this
    // file may have finished already.
    let mut progress =
        super::progress::Progress::new("demo", &ids, std::io::stderr().is_terminal());
    progress.snapshot(&engine)?;
    progress.draw(true);
    let mut quiet_since = Instant::now();
    while !progress.all_done() {
        match changes.recv_timeout(Duration::from_secs(1)) {
            Some(first) => {
                progress.apply(first.run_id, first.status);
                for ev in changes.drain() {
                    progress.apply(ev.run_id, ev.status);
                }
                quiet_since = Instant::now();
            }
            // Backstop: the change log drops its oldest entries when it grows long, so a
            // long silence re-reads the runs once instead of trusting it.
            None if quiet_since.elapsed() >= PROGRESS_BACKSTOP => {
                progress.snapshot(&engine)?;
                quiet_since = Instant::now();
            }
            None => {}
        }
        progress.draw(false);
    }
    progress.finish();
    drop(changes);
    let mut failed = Vec::new();
    let mut unexpected = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let row = engine.run(*id).map_err(|e| e.to_string())?;
        let hog_run = is_hog(n as u64 + 1);
        let error = row.error.clone().unwrap_or_default();
        let expected = if hog_run {
            row.status == "failed" && error.contains("memory limit exceeded")
        } else {
            row.status == "completed"
        };
        if row.status != "completed" {
            failed.push(format!("run {id}: {} {error}", row.status));
        }
        if !expected {
            unexpected.push(format!(
                "run {id} (demo-{}): {} {error} (expected {})",
                n + 1,
                row.status,
                if hog_run {
                    "failed with memory limit exceeded"
                } else {
                    "completed"
                }
            ));
        }
    }
    engine.shutdown().map_err(|e| e.to_string())?;
    eprintln!(
        "demo: {}/{} completed, {} failed, {} not as expected",
        ids.len() - failed.len(),
        ids.len(),
        failed.len(),
        unexpected.len()
    );
    for f in failed.iter().take(5) {
        eprintln!("demo: {f}");
    }
    for u in unexpected.iter().take(10) {
        eprintln!("demo: unexpected: {u}");
    }
    Ok(if unexpected.is_empty() { 0 } else { 1 })
}
