//! The power-loss workload, and one *segment*: a process whose engines (threads) run on the
//! simulating VFS until the power is cut, which then writes the drawn crash image and the
//! acknowledgements it saw, and exits without any clean-up (`_exit`).
//!
//! Acknowledgements are what the API told a caller, recorded only while the power is on:
//! - `Started`: `start_run` returned the run's id;
//! - `Step`: step `seq` of a run began executing, so the workflow got step `seq - 1`'s result
//!   back from `Ctx::step`, which answers only after the journal entry was committed;
//! - `Completed`: `Engine::run` showed the run completed, with its output.

use super::vfs;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use waymark::{
    Config, Ctx, Engine, Registry, StartOptions, Step, StepCtx, StepError, Synchronous, Workflow,
    WorkflowError,
};

/// Input of one run: the index names it (key `p-INDEX`) and fixes everything it computes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PIn {
    pub index: u64,
    pub steps: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PStepIn {
    pub index: u64,
    pub prev: u64,
    /// Nonce of the previous step's recorded output (none for the first step).
    pub prev_nonce: Option<u64>,
}

/// A step's output: the deterministic value, and the nonce of the execution that made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PStepOut {
    pub value: u64,
    pub nonce: u64,
}

pub const STEP: Step<PStepIn, PStepOut> = Step::new("power.step");
pub const WORKFLOW: Workflow<PIn, u64> = Workflow::new("power");

pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn input(index: u64) -> PIn {
    PIn {
        index,
        steps: 2 + (mix(index ^ 0x5eed) % 5) as u32,
    }
}

pub fn key(index: u64) -> String {
    format!("p-{index}")
}

/// Whether the run waits for the event `go` after its steps (one run in three).
pub fn waits_event(index: u64) -> bool {
    index.is_multiple_of(3)
}

/// Payload of the run's event `go`.
pub fn event_payload(index: u64) -> u64 {
    mix(index ^ 0xe7e7)
}

/// The run's fault-free output.
pub fn expected_output(index: u64) -> u64 {
    let last = expected_values(&input(index))
        .last()
        .copied()
        .unwrap_or(index);
    if waits_event(index) {
        last ^ event_payload(index)
    } else {
        last
    }
}

/// The values the run's steps record, in order.
pub fn expected_values(input: &PIn) -> Vec<u64> {
    let mut prev = input.index;
    (0..input.steps)
        .map(|seq| {
            prev = mix(prev ^ mix(input.index.wrapping_mul(1_000_003) + seq as u64));
            prev
        })
        .collect()
}

/// One acknowledgement the API gave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Ack {
    Started {
        index: u64,
        id: i64,
    },
    Step {
        id: i64,
        seq: i64,
        value: u64,
        nonce: u64,
    },
    Completed {
        id: i64,
        output: u64,
    },
    /// `send_event` accepted event `event_id` for run `id`.
    Event {
        id: i64,
        event_id: i64,
    },
}

static ACKS: parking_lot::Mutex<Vec<Ack>> = parking_lot::Mutex::new(Vec::new());
static NONCES: parking_lot::Mutex<Vec<u64>> = parking_lot::Mutex::new(Vec::new());
/// Record acknowledgements (only in a segment: the harness's own engine records none).
static RECORD: AtomicBool = AtomicBool::new(false);

fn ack(a: Ack) {
    let mut g = ACKS.lock();
    // Only while the power is on: an answer the API gave before the cut.
    if RECORD.load(Ordering::SeqCst) && !vfs::is_cut() {
        g.push(a);
    }
}

/// Nonces of every step execution of this process so far.
pub fn nonces() -> Vec<u64> {
    NONCES.lock().clone()
}

fn power_step(ctx: &StepCtx, input: PStepIn) -> Result<PStepOut, StepError> {
    let seq = ctx.seq();
    if let (Some(nonce), true) = (input.prev_nonce, seq > 0) {
        ack(Ack::Step {
            id: ctx.run_id(),
            seq: seq - 1,
            value: input.prev,
            nonce,
        });
    }
    let nonce = waymark::internal::host::random_u64();
    NONCES.lock().push(nonce);
    std::thread::sleep(Duration::from_millis(mix(input.index ^ seq as u64) % 4));
    let value = mix(input.prev ^ mix(input.index.wrapping_mul(1_000_003) + seq as u64));
    Ok(PStepOut { value, nonce })
}

fn power_workflow(ctx: &mut Ctx<'_>, input: PIn) -> Result<u64, WorkflowError> {
    let (mut prev, mut prev_nonce) = (input.index, None);
    for _ in 0..input.steps {
        let out = ctx.step(
            STEP,
            &PStepIn {
                index: input.index,
                prev,
                prev_nonce,
            },
        )?;
        prev = out.value;
        prev_nonce = Some(out.nonce);
    }
    if waits_event(input.index) {
        let v: Option<u64> = ctx.wait_event("go", Duration::from_secs(3600))?;
        prev ^= v.unwrap_or(0);
    }
    Ok(prev)
}

pub fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.step(STEP, power_step);
    reg.workflow(WORKFLOW, power_workflow);
    reg
}

/// The engines' configuration (in a segment with `vfs`, in the harness without).
pub fn config(db: PathBuf, sync: Synchronous, vfs: Option<&str>) -> Config {
    let mut c = Config::new(db).with_lease_ttl(Duration::from_millis(1000));
    c.workers = 3;
    c.isolation = waymark::Isolation::InProcess;
    c.interruptions_max = i64::MAX / 2;
    c.synchronous = sync;
    c.poll_interval = Duration::from_millis(10);
    // Segments die with their engines: the next process reclaims their runs as soon as the
    // reaper looks (the owner's pid is gone), so it looks often.
    c.reap_interval = Duration::from_millis(50);
    c.shutdown_grace = Duration::from_secs(5);
    c.vfs = vfs.map(str::to_string);
    c
}

/// What the harness asks of one segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Directory holding the files the disk holds at start (adopted as durable).
    pub dir: PathBuf,
    /// Where the crash image is written.
    pub out: PathBuf,
    /// Where the report is written.
    pub report: PathBuf,
    pub seed: u64,
    pub normal: bool,
    pub drop_wal_sync: bool,
    /// Runs to (re)submit, by index.
    pub submit: Vec<u64>,
    /// Run ids to watch for completion.
    pub watch: Vec<i64>,
    /// Recorded VFS operation that cuts the power (`u64::MAX`: none).
    pub cut_at: u64,
    /// Sync that cuts the power (`u64::MAX`: none).
    pub cut_at_sync: u64,
    /// Cut the power after this long in any case.
    pub cut_after_ms: u64,
    pub engines: usize,
}

/// What a segment reports.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Report {
    pub acks: Vec<Ack>,
    pub nonces: Vec<u64>,
    pub ops: u64,
    pub syncs: u64,
    pub syncs_dropped: u64,
    /// Per file: (name, choice, pending ops, torn, present).
    pub files: Vec<(String, String, usize, bool, bool)>,
    pub engines_started: usize,
}

pub const DB_NAME: &str = "power.db";

/// Run one segment; never returns (the process ends as a power cut ends it: abruptly).
pub fn run(spec: &Spec) -> Result<i32, String> {
    vfs::register(spec.cut_at, spec.cut_at_sync, spec.drop_wal_sync)?;
    // The files are the disk at boot: the simulation is void if another process can still
    // change them (the harness's own engines must have closed them).
    // SAFETY: getppid has no preconditions.
    let harness = unsafe { libc::getppid() };
    let held = held_by(harness, &spec.dir);
    if !held.is_empty() {
        return Err(format!(
            "the harness (pid {harness}) still holds {held:?}: a segment must not start on files another process can change"
        ));
    }
    vfs::adopt_dir(&spec.dir, DB_NAME)?;
    RECORD.store(true, Ordering::SeqCst);
    let sync = if spec.normal {
        Synchronous::Normal
    } else {
        Synchronous::Full
    };
    let deadline = Instant::now() + Duration::from_millis(spec.cut_after_ms);
    let db = spec.dir.join(DB_NAME);
    let mut engines = Vec::new();
    for _ in 0..spec.engines.max(1) {
        if vfs::is_cut() {
            break;
        }
        match Engine::start(registry(), config(db.clone(), sync, Some(vfs::VFS_NAME))) {
            Ok(e) => engines.push(Arc::new(e)),
            Err(e) => log::info!("engine start during the segment: {e}"),
        }
    }
    let started = engines.len();
    if !engines.is_empty() {
        let (subs, watch) = (spec.submit.clone(), spec.watch.clone());
        let es = engines.clone();
        std::thread::spawn(move || submit_and_watch(&es, &subs, watch));
    }
    while !vfs::is_cut() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    vfs::cut_now();
    let mut rng = vfs::Rng(spec.seed ^ 0xc0ff_ee00);
    let images = vfs::crash_images(&mut rng);
    std::fs::create_dir_all(&spec.out).map_err(|e| format!("{}: {e}", spec.out.display()))?;
    let mut report = Report {
        acks: ACKS.lock().clone(),
        nonces: nonces(),
        engines_started: started,
        ..Default::default()
    };
    (report.ops, report.syncs, report.syncs_dropped) = vfs::counters();
    // Post-mortem trace of this segment: every recorded operation, then the draw per file.
    let mut trace = vfs::trace();
    trace.extend(images.iter().map(|i| i.trace.clone()));
    let trace_path = spec.out.join("trace.txt");
    std::fs::write(&trace_path, trace.join("\n"))
        .map_err(|e| format!("{}: {e}", trace_path.display()))?;
    for img in images {
        let Some(name) = img.path.file_name() else {
            continue;
        };
        if img.path.parent() != Some(spec.dir.as_path()) {
            continue;
        }
        if let Some(data) = &img.data {
            let to = spec.out.join(name);
            std::fs::write(&to, data).map_err(|e| format!("{}: {e}", to.display()))?;
        }
        report.files.push((
            name.to_string_lossy().into_owned(),
            format!("{:?}", img.choice),
            img.pending,
            img.torn,
            img.data.is_some(),
        ));
    }
    let text = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
    std::fs::write(&spec.report, text).map_err(|e| format!("{}: {e}", spec.report.display()))?;
    // SAFETY: ends the process at once, as a power cut does: no destructor, no clean-up.
    unsafe { libc::_exit(0) }
}

/// Files in `dir` that a descriptor of process `pid` refers to.
fn held_by(pid: i32, dir: &std::path::Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.starts_with(&dir))
        .collect()
}

fn submit_and_watch(engines: &[Arc<Engine>], submit: &[u64], mut watch: Vec<i64>) {
    for (i, &index) in submit.iter().enumerate() {
        if vfs::is_cut() {
            return;
        }
        let e = &engines[i % engines.len()];
        if let Ok(id) = e.start_run(WORKFLOW, &input(index), StartOptions::key(key(index))) {
            ack(Ack::Started { index, id });
            watch.push(id);
            if waits_event(index) {
                if let Ok(event_id) = e.send_event(id, "go", &event_payload(index)) {
                    ack(Ack::Event { id, event_id });
                }
            }
        }
    }
    while !vfs::is_cut() && !watch.is_empty() {
        watch.retain(|&id| match engines[0].run(id) {
            Ok(row) if row.status == "completed" => {
                let out = row.output.as_deref().and_then(|b| {
                    waymark::internal::codec::decode::<u64>(
                        b,
                        waymark::internal::codec::PAYLOAD_BYTES_MAX,
                    )
                    .ok()
                });
                if let Some(output) = out {
                    ack(Ack::Completed { id, output });
                }
                false
            }
            _ => true,
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}
