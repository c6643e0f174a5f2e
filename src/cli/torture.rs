//! `waymark torture`: kill, pause and shut down engines at random (seeded) moments and check
//! that nothing was lost, recorded twice, run twice at once, re-executed without cause, or
//! left running after its engine died.
//!
//! The database is an SQLite file or a PostgreSQL URL (`--db postgres://...`, a database
//! holding no run); the harness reads it through [`db::Reader`] and writes through the
//! store's `Storage` seam, so every check is the same on both stores.
//!
//! The harness owns a work directory (`DB.torture/`, or a temporary one): the effects file
//! every step execution appends to, the per-(run, seq) lock files, and one stderr log per
//! engine process. Steps run in-process, in child processes (cold or on the warm pool), or as command steps whose
//! shell starts its own child (`--isolation`); the (run, seq) lock is taken by the deepest
//! process doing the work (see [`workload`]). For `--cycles` cycles it picks (with an RNG
//! seeded by `--seed`) one of:
//! - SIGKILL a random engine after a random delay (mostly mid-step);
//! - restart an engine armed with a `WAYMARK_FAULT` kill point (before/after commit, in/after
//!   step, after checkpoint, in the reaper between judging an owner dead and reclaiming);
//! - SIGKILL every engine at once;
//! - with `--pauses`: SIGSTOP an engine for longer than the lease TTL while the others
//!   reclaim its runs, then SIGCONT it; in half of them every other engine is first
//!   replaced by one whose reaper is held between judgement and commit
//!   (`WAYMARK_FAULT_PAUSE`), released only after the paused owner resumed and renewed:
//!   reclaims committing late;
//! - with `--shutdowns`: a clean shutdown, by SIGTERM or by the API (`Engine::shutdown`,
//!   which the engine calls when its shutdown flag file appears).
//!
//! A share of runs waits durably between steps (`--wait-share`: a short `ctx.sleep`, an
//! event wait, or both); a driver sends their events and cancels a few runs at seeded
//! moments, racing the waits and the faults (see [`waits`]).
//!
//! Killed and shut-down engines are restarted. One cycle in ten also jumps the engines'
//! shared injected wall clock to +1 h, -1 h or 0. With `--corrupt N`, a third of the way in,
//! the harness corrupts a row of N runs itself (see [`corrupt`]). Orphans are counted from
//! `/proc` (see [`orphans`]). Then it lets everything finish and checks the invariants
//! (see [`check`]).

mod check;
mod corrupt;
mod db;
mod orphans;
mod power;
mod waits;
mod workload;

pub use workload::{engine, register, step_helper, EngineArgs, StepArgs};

use super::CliResult;
use db::Reader;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use waymark::internal::store::{is_postgres, NewRun, Storage, StoreOptions};
use workload::{mix, step_name, RunIn, KIND_CHILD, KIND_COMMAND, KIND_IN_PROCESS, KIND_POOL};

/// Where the workload's steps run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMix {
    /// Every step on the engine's worker threads.
    InProcess,
    /// Child steps (cold children and the warm pool) and command steps (a shell that starts
    /// its own child), no in-process step.
    Child,
    /// All four: in-process, cold child, pooled child and command steps.
    Mixed,
}

#[derive(clap::Args, Debug)]
pub struct TortureArgs {
    /// Database: a file (must not exist yet) or a PostgreSQL URL (`postgres://...`, its
    /// database must hold no run); default: a file in a fresh temporary directory.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Fault cycles (each kills one engine, arms a fault point, kills all, pauses one or
    /// shuts one down).
    #[arg(long, default_value_t = 40)]
    pub cycles: u64,
    /// Engine processes.
    #[arg(long, default_value_t = 3)]
    pub engines: usize,
    /// Runs in the workload.
    #[arg(long, default_value_t = 200)]
    pub runs: u64,
    /// Seed of the workload shape and the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads per engine.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Lease TTL of the engines, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub lease_ttl_ms: u64,
    /// Where steps run: in-process, child (child and command steps) or mixed (all three).
    #[arg(long, value_enum, default_value_t = IsolationMix::Mixed)]
    pub isolation: IsolationMix,
    /// Also SIGSTOP engines for longer than the lease TTL (and hold reapers between
    /// judgement and commit), then SIGCONT them.
    #[arg(long)]
    pub pauses: bool,
    /// Also shut engines down cleanly (SIGTERM, and the API's shutdown).
    #[arg(long)]
    pub shutdowns: bool,
    /// Corrupt a row of this many runs while engines run; exactly those must end `blocked`.
    #[arg(long, default_value_t = 0)]
    pub corrupt: u64,
    /// One run in this many waits durably between steps (sleeps, events the harness sends);
    /// a quarter of those, and a few others, are cancelled by the harness. 0: no waits.
    #[arg(long, default_value_t = 4)]
    pub wait_share: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub power: power::PowerArgs,
}

/// Seeded RNG (splitmix64 stream).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const FAULT_POINTS: [&str; 6] = [
    "before_commit",
    "after_commit",
    "after_checkpoint",
    "in_step",
    "after_step",
    "reaper_before_reclaim",
];

/// How an engine is armed when it starts.
enum Fault {
    /// `WAYMARK_FAULT=POINT=N`: SIGKILL itself the N-th time it passes POINT.
    Kill(String),
    /// `WAYMARK_FAULT_PAUSE=reaper_before_reclaim:FILE`: hold the reaper until FILE exists.
    HoldReaper(PathBuf),
}

struct Slot {
    child: Option<Child>,
    label: String,
    generation: u32,
}

pub(super) struct Harness {
    exe: PathBuf,
    db: PathBuf,
    dir: PathBuf,
    workers: usize,
    lease_ttl_ms: u64,
    /// Names this harness run in the tag of every process it starts.
    unique: String,
    rng: Rng,
    slots: Vec<Slot>,
    /// Engines shutting down cleanly (label, process), reaped as they exit.
    stopping: Vec<(String, Child)>,
    /// Engine labels that died by SIGKILL (ours or their own fault point).
    killed: HashSet<String>,
    /// Engine labels that were SIGSTOPped at some point.
    paused: HashSet<String>,
    /// Engine labels that were shut down cleanly by the harness.
    shut_down: HashSet<String>,
    /// Every engine's label and log file.
    logs: Vec<(String, PathBuf)>,
    /// Workload indexes of the runs whose rows the harness corrupted.
    corrupted: HashSet<u64>,
    kills: u64,
    pauses: u64,
    reaper_holds: u64,
    shutdowns: u64,
    clock_jumps: u64,
    violations: Vec<String>,
    orphans: Option<orphans::OrphanWatch>,
    /// Sends events and cancels runs (see [`waits`]).
    driver: Option<waits::Driver>,
}

impl Harness {
    /// Engine `label` died now: its step trees must be gone a second later.
    fn died(&self, label: &str) {
        if let Some(w) = &self.orphans {
            w.died(label);
        }
    }

    fn spawn(&mut self, slot: usize, fault: Option<Fault>) -> Result<(), String> {
        let grace_ms = self.rng.below(400);
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.label = format!("{slot}.{}", s.generation);
        let log = self.dir.join(format!("engine-{}.log", s.label));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("torture-engine")
            .arg("--db")
            .arg(&self.db)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--workers")
            .arg(self.workers.to_string())
            .arg("--lease-ttl-ms")
            .arg(self.lease_ttl_ms.to_string())
            .arg("--shutdown-grace-ms")
            .arg(grace_ms.to_string())
            .env("RUST_LOG", "warn")
            .env(
                "WAYMARK_TEST_CLOCK_OFFSET_FILE",
                self.dir.join("clock-offset"),
            )
            .env(workload::ENV_TAG, format!("{}/{}", self.unique, s.label))
            .env(workload::ENV_DIR, &self.dir)
            .env_remove("WAYMARK_FAULT")
            .env_remove("WAYMARK_FAULT_PAUSE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        match fault {
            Some(Fault::Kill(f)) => {
                cmd.env("WAYMARK_FAULT", f);
            }
            Some(Fault::HoldReaper(file)) => {
                let mut v = std::ffi::OsString::from("reaper_before_reclaim:");
                v.push(file);
                cmd.env("WAYMARK_FAULT_PAUSE", v);
            }
            None => {}
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        // Which pid each label had (engine logs name owners by pid).
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("engines"))
        {
            let _ = std::io::Write::write_all(
                &mut f,
                format!("{} {}\n", s.label, child.id()).as_bytes(),
            );
        }
        self.logs.push((s.label.clone(), log));
        s.child = Some(child);
        Ok(())
    }

    /// The engine process `pid` is being killed, paused or shut down: the driver's moment
    /// for events and cancels of the runs it owns.
    fn owner_down(&mut self, pid: u32) {
        if let Some(d) = self.driver.as_mut() {
            d.owner_down(pid);
        }
    }

    /// SIGKILL the engine in `slot` (if alive) and reap it.
    fn kill(&mut self, slot: usize) {
        let label = self.slots[slot].label.clone();
        if let Some(mut child) = self.slots[slot].child.take() {
            match child.try_wait() {
                Ok(Some(status)) => self.note_exit(&label, child.id(), status),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.owner_down(child.id());
                    self.died(&label);
                    self.killed.insert(label);
                    self.kills += 1;
                }
            }
        }
    }

    fn note_exit(&mut self, label: &str, pid: u32, status: std::process::ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        self.died(label);
        if status.signal() == Some(libc::SIGKILL) {
            // A fault point fired: the engine killed itself.
            self.killed.insert(label.to_string());
            self.kills += 1;
        } else if !status.success() {
            self.violations.push(format!(
                "engine {label} (pid {pid}) exited with {status}; see its log in {}",
                self.dir.display()
            ));
        }
    }

    /// Reap engines that died on their own (fault points) and engines whose clean shutdown
    /// ended; returns the slots to refill.
    fn reap(&mut self) -> Vec<usize> {
        let mut dead = Vec::new();
        for slot in 0..self.slots.len() {
            let exited = match self.slots[slot].child.as_mut() {
                Some(c) => c.try_wait().ok().flatten().map(|st| (c.id(), st)),
                None => None,
            };
            if let Some((pid, status)) = exited {
                self.slots[slot].child = None;
                let label = self.slots[slot].label.clone();
                self.note_exit(&label, pid, status);
                dead.push(slot);
            }
        }
        let mut i = 0;
        while i < self.stopping.len() {
            let exited = self.stopping[i].1.try_wait().ok().flatten();
            if let Some(status) = exited {
                let (label, child) = self.stopping.swap_remove(i);
                self.note_exit(&label, child.id(), status);
            } else {
                i += 1;
            }
        }
        dead
    }

    /// A clean shutdown of the engine in `slot` (SIGTERM or the API's), replaced at once
    /// by one armed with `then`; the stopping engine is reaped when it exits.
    fn shut_down(
        &mut self,
        slot: usize,
        by_signal: bool,
        then: Option<Fault>,
    ) -> Result<(), String> {
        let label = self.slots[slot].label.clone();
        let Some(mut child) = self.slots[slot].child.take() else {
            return self.spawn(slot, then);
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.note_exit(&label, child.id(), status);
            return self.spawn(slot, then);
        }
        if by_signal {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        } else {
            std::fs::write(self.dir.join(format!("shutdown-{label}")), b"")
                .map_err(|e| format!("cannot write the shutdown flag: {e}"))?;
        }
        self.owner_down(child.id());
        self.shutdowns += 1;
        self.shut_down.insert(label.clone());
        self.stopping.push((label, child));
        self.spawn(slot, then)
    }

    /// SIGSTOP the engine in `slot` for longer than the lease TTL, then SIGCONT it.
    ///
    /// With `hold_reapers`, every other engine is first shut down cleanly (so it leaves no
    /// run to reclaim) and replaced by one whose reaper stops between judgement and commit;
    /// the paused engine is resumed once they have judged it dead (or after a bound), and
    /// their reclaims are let go only after it has renewed: each reclaim then commits, if the
    /// write path lets it, after its owner came back.
    fn pause(&mut self, slot: usize, hold_reapers: bool) -> Result<(), String> {
        let engines = self.slots.len();
        let pid = match self.slots[slot].child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(None) => c.id(),
                _ => return Ok(()),
            },
            None => return Ok(()),
        };
        let mut held = Vec::new();
        if hold_reapers && engines > 1 {
            for other in (0..engines).filter(|o| *o != slot) {
                let go = self.dir.join(format!(
                    "reaper-go-{other}.{}",
                    self.slots[other].generation + 1
                ));
                self.shut_down(other, false, Some(Fault::HoldReaper(go.clone())))?;
                held.push((self.slots[other].label.clone(), go));
            }
            self.reaper_holds += 1;
        }
        let label = self.slots[slot].label.clone();
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        self.owner_down(pid);
        self.paused.insert(label);
        self.pauses += 1;
        let ttl = Duration::from_millis(self.lease_ttl_ms);
        std::thread::sleep(ttl + Duration::from_millis(300 + self.rng.below(700)));
        if !held.is_empty() {
            // Wait for the held reapers to have judged and stopped before their commits.
            let until = Instant::now() + ttl * 2 + Duration::from_secs(2);
            for (label, _) in &held {
                let log = self.dir.join(format!("engine-{label}.log"));
                while Instant::now() < until {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("paused at reaper_before_reclaim") {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
            // Let the resumed owner renew (heartbeat: TTL / 5) before the reclaims commit.
            std::thread::sleep(ttl / 2);
            for (_, go) in &held {
                std::fs::write(go, b"").map_err(|e| format!("cannot release a reaper: {e}"))?;
            }
        } else {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
        Ok(())
    }
}

/// The workload: run `i` has 3..=7 steps, every 16th fails at a middle step; where each step
/// runs follows `isolation` (a failing step is never a command step). One child or command
/// step in twelve lasts `long_ms` longer. One run in `wait_share` waits between steps.
fn workload(
    runs: u64,
    seed: u64,
    step_ms: u64,
    long_ms: u64,
    isolation: IsolationMix,
    wait_share: u64,
) -> Vec<RunIn> {
    (1..=runs)
        .map(|i| {
            let h = mix(seed ^ mix(i));
            let steps = 3 + (h % 5) as u32;
            let fail_at = (h >> 8)
                .is_multiple_of(16)
                .then_some(1 + ((h >> 16) as u32 % (steps - 1)));
            let (kinds, extra_ms) = (0..steps)
                .map(|seq| {
                    let k = mix(h ^ u64::from(seq));
                    let kind = match isolation {
                        IsolationMix::InProcess => KIND_IN_PROCESS,
                        IsolationMix::Child => {
                            [KIND_CHILD, KIND_COMMAND, KIND_POOL][(k % 3) as usize]
                        }
                        IsolationMix::Mixed => {
                            [KIND_IN_PROCESS, KIND_CHILD, KIND_COMMAND, KIND_POOL][(k % 4) as usize]
                        }
                    };
                    let kind = match (fail_at == Some(seq), kind, isolation) {
                        (true, KIND_COMMAND, IsolationMix::Mixed) => KIND_IN_PROCESS,
                        (true, KIND_COMMAND, _) => KIND_CHILD,
                        _ => kind,
                    };
                    let long = kind != KIND_IN_PROCESS && (k >> 8).is_multiple_of(12);
                    (kind, if long { long_ms } else { 0 })
                })
                .unzip();
            RunIn {
                index: i,
                steps,
                fail_at,
                step_ms: step_ms + (h >> 24) % (step_ms + 1),
                kinds,
                extra_ms,
                waits: waits::plan_waits(seed, i, steps, wait_share),
            }
        })
        .collect()
}

/// The summary: the line's fields, then the JSON's extras.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub cycles: u64,
    pub kills: u64,
    pub runs: u64,
    pub completed: u64,
    pub failed_expected: u64,
    pub lost: u64,
    pub duplicate_results: u64,
    pub concurrent_executions: u64,
    pub reexecutions: u64,
    pub max_reexecutions_bound: u64,
    pub pauses: u64,
    pub shutdowns: u64,
    pub orphans: u64,
    pub blocked_expected: u64,
    pub inprocess_pause_overlaps: u64,
    pub waits: u64,
    pub events: u64,
    pub cancels: u64,
    /// Events refused because their run had ended (cancelled, or failed before its wait).
    pub events_refused: u64,
    /// Cancels answered for a run that had already completed or failed.
    pub cancels_late: u64,
    /// Runs left suspended with nothing to wake them (a lost event or cancel).
    pub stalled: u64,
    /// Events sent (accepted or refused) per moment of the driver.
    pub events_at: std::collections::BTreeMap<String, u64>,
    /// Cancels requested per moment of the driver.
    pub cancels_at: std::collections::BTreeMap<String, u64>,
    pub reaper_holds: u64,
    pub isolation: Option<IsolationMix>,
    pub seed: u64,
    pub clock_jumps: u64,
    pub elapsed_ms: u64,
    pub violations: Vec<String>,
}

impl Summary {
    fn line(&self) -> String {
        format!(
            "cycles={} kills={} runs={} completed={} failed_expected={} lost={} duplicate_results={} concurrent_executions={} reexecutions={} max_reexecutions_bound={} pauses={} shutdowns={} orphans={} blocked_expected={} inprocess_pause_overlaps={} waits={} events={} cancels={} stalled={}",
            self.cycles, self.kills, self.runs, self.completed, self.failed_expected, self.lost,
            self.duplicate_results, self.concurrent_executions, self.reexecutions, self.max_reexecutions_bound,
            self.pauses, self.shutdowns, self.orphans, self.blocked_expected, self.inprocess_pause_overlaps,
            self.waits, self.events, self.cancels, self.stalled
        )
    }
}

pub fn run(args: TortureArgs) -> CliResult {
    let url = args.db.as_deref().filter(|db| is_postgres(db));
    if args.power.power_loss {
        if url.is_some() {
            return Err(
                "--power-loss simulates power cuts under SQLite's file I/O: it needs a database file, not a PostgreSQL URL"
                    .into(),
            );
        }
        return power::run(&args.power, args.cycles, args.seed, args.json, args.db);
    }
    let started = Instant::now();
    let (dir, db, _tmp) = match &args.db {
        // PostgreSQL: the work directory is a temporary one (kept on a violation).
        Some(db) if url.is_some() => {
            let tmp = tempfile::Builder::new()
                .prefix("waymark-torture-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            (tmp.path().join("work"), db.clone(), Some(tmp))
        }
        Some(db) => {
            if std::fs::metadata(db).is_ok() {
                return Err(format!(
                    "{} exists: torture needs a fresh database path",
                    db.display()
                ));
            }
            let mut d = db.as_os_str().to_owned();
            d.push(".torture");
            let dir = PathBuf::from(d);
            (dir, db.clone(), None)
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("waymark-torture-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            let dir = tmp.path().join("work");
            let db = tmp.path().join("torture.db");
            (dir, db, Some(tmp))
        }
    };
    std::fs::create_dir_all(dir.join("locks"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let engines = args.engines.max(1);
    // Size steps so the workload lasts about as long as the fault schedule (~200 ms a cycle).
    let parallel = (engines * args.workers.max(1)) as u64;
    let work_ms = args.cycles.max(1) * 200 * parallel;
    let step_ms = (work_ms / (args.runs.max(1) * 5)).clamp(2, 60);
    // Long steps outlive the lease TTL (and the orphan delay): a paused owner's long child
    // step is still running when another engine re-runs it.
    let long_ms = args
        .lease_ttl_ms
        .max(orphans::ORPHAN_AFTER.as_millis() as u64)
        + 1000;
    let runs = workload(
        args.runs,
        args.seed,
        step_ms,
        long_ms,
        args.isolation,
        args.wait_share,
    );
    // Corruption targets: spread over the workload, parked until corrupted.
    let targets: Vec<&RunIn> = (0..args.corrupt.min(args.runs))
        .map(|k| &runs[(mix(args.seed ^ 0xc0ff ^ k) % args.runs) as usize])
        .collect::<Vec<_>>();
    let parked: HashSet<u64> = targets.iter().map(|r| r.index).collect();
    // The driver's writes read the engines' injected clock: a run woken by an event is due
    // on the engines' clock, not an hour later. Set before any thread of ours starts.
    std::env::set_var("WAYMARK_TEST_CLOCK_OFFSET_FILE", dir.join("clock-offset"));
    let store = db::open(&db, &StoreOptions::default())?;
    if url.is_some() {
        let n = Reader::open(&db)?.run_count()?;
        if n > 0 {
            return Err(format!(
                "{} holds {n} runs: torture needs a fresh database (one without runs)",
                db::name(&db)
            ));
        }
    }
    let ids = enqueue(&*store, &runs, &parked)?;
    drop(store);
    let mut reader = Reader::open(&db)?;
    let mut driver = waits::Driver::new(&db, &runs, &ids, args.seed, &parked)?;
    driver.early();

    let unique = format!(
        "{}-{:x}",
        std::process::id(),
        waymark::internal::host::random_u64()
    );
    let mut h = Harness {
        exe,
        db: db.clone(),
        dir: dir.clone(),
        workers: args.workers.max(1),
        lease_ttl_ms: args.lease_ttl_ms,
        orphans: Some(orphans::OrphanWatch::start(unique.clone())),
        unique,
        rng: Rng(args.seed),
        slots: (0..engines)
            .map(|_| Slot {
                child: None,
                label: String::new(),
                generation: 0,
            })
            .collect(),
        stopping: Vec::new(),
        killed: HashSet::new(),
        paused: HashSet::new(),
        shut_down: HashSet::new(),
        logs: Vec::new(),
        corrupted: HashSet::new(),
        kills: 0,
        pauses: 0,
        reaper_holds: 0,
        shutdowns: 0,
        clock_jumps: 0,
        violations: Vec::new(),
        driver: Some(driver),
    };
    let mut corrupt_targets: Vec<(u64, &str)> = parked
        .iter()
        .map(|i| {
            let r = &runs[*i as usize - 1];
            (*i, step_name(r.kinds[0]))
        })
        .collect();
    corrupt_targets.sort();
    let corrupt_at = args.cycles / 3;
    let mut sched = Rng(args.seed ^ 0x5eed);
    for slot in 0..engines {
        h.spawn(slot, None)?;
    }
    for cycle in 0..args.cycles {
        if cycle == corrupt_at && !corrupt_targets.is_empty() {
            corrupt::corrupt(&db, &corrupt_targets)?;
            h.corrupted
                .extend(corrupt_targets.drain(..).map(|(i, _)| i));
        }
        for slot in h.reap() {
            h.spawn(slot, None)?;
        }
        if let Some(d) = h.driver.as_mut() {
            d.tick();
        }
        std::thread::sleep(Duration::from_millis(20 + sched.below(300)));
        if sched.below(10) == 0 {
            // The host's wall clock jumps (every engine reads the same offset file).
            let offset = [3_600_000i64, -3_600_000, 0][sched.below(3) as usize];
            std::fs::write(dir.join("clock-offset"), offset.to_string())
                .map_err(|e| format!("cannot move the injected clock: {e}"))?;
            h.clock_jumps += 1;
        }
        let roll = sched.below(100);
        let slot = sched.below(engines as u64) as usize;
        if args.pauses && roll < 12 {
            h.pause(slot, roll < 6)?;
        } else if args.shutdowns && (12..24).contains(&roll) {
            h.shut_down(slot, roll < 18, None)?;
        } else if roll.is_multiple_of(7) {
            // Every engine at once.
            for slot in 0..engines {
                h.kill(slot);
            }
            for slot in 0..engines {
                h.spawn(slot, None)?;
            }
        } else if roll % 7 < 3 {
            // Restart one engine armed with a fault point: it dies mid-commit, mid-step, or
            // in its reaper between judging an owner dead and reclaiming.
            h.kill(slot);
            let point = FAULT_POINTS[sched.below(FAULT_POINTS.len() as u64) as usize];
            let n = 1 + sched.below(30);
            h.spawn(slot, Some(Fault::Kill(format!("{point}={n}"))))?;
        } else {
            h.kill(slot);
            h.spawn(slot, None)?;
        }
    }
    if !corrupt_targets.is_empty() {
        corrupt::corrupt(&db, &corrupt_targets)?;
        h.corrupted
            .extend(corrupt_targets.drain(..).map(|(i, _)| i));
    }
    // Finish: no more faults. Replace armed engines, let everything complete.
    for slot in h.reap() {
        h.spawn(slot, None)?;
    }
    if h.clock_jumps > 0 {
        // A timer journaled under a later clock offset than the last one would wait out the
        // difference (up to two hours): move the clock past every offset used.
        std::fs::write(dir.join("clock-offset"), "7200000")
            .map_err(|e| format!("cannot move the injected clock: {e}"))?;
    }
    std::fs::write(dir.join("finish"), b"")
        .map_err(|e| format!("cannot write the finish flag: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(120 + args.runs / 2);
    // Since when every active run has been parked with nothing due to wake it.
    let mut stuck_since: Option<(Instant, i64)> = None;
    let mut looked = Instant::now();
    loop {
        for slot in h.reap() {
            // A fault armed before the finish may still fire: restart it unarmed.
            if reader.active_runs()? > 0 {
                h.spawn(slot, None)?;
            }
        }
        if h.slots.iter().all(|s| s.child.is_none()) && h.stopping.is_empty() {
            break;
        }
        if looked.elapsed() >= Duration::from_secs(1) {
            looked = Instant::now();
            let stuck = waits::stuck_runs(&mut reader)?;
            match h.driver.as_mut() {
                // Waiting for the harness: send every event, request every cancel left.
                Some(d) if d.pending() && stuck > 0 => d.finish()?,
                Some(d) => d.tick(),
                None => {}
            }
            stuck_since = match stuck {
                0 => None,
                _ if h.driver.as_ref().is_some_and(|d| d.pending()) => None,
                n => Some((stuck_since.map_or(Instant::now(), |(t, _)| t), n)),
            };
        }
        let stuck = stuck_since.filter(|(t, _)| t.elapsed() >= waits::STUCK_AFTER);
        if let Some((_, n)) = stuck {
            h.violations.push(format!(
                "{n} runs stalled: parked with nothing due to wake them for {} s after every \
                 event was sent and every cancel requested",
                waits::STUCK_AFTER.as_secs()
            ));
        }
        if stuck.is_some() || Instant::now() > deadline {
            if stuck.is_none() {
                h.violations.push(format!(
                    "engines did not finish the workload before the deadline ({} runs still active)",
                    reader.active_runs().unwrap_or(-1)
                ));
            }
            for slot in 0..engines {
                h.kill(slot);
            }
            for (label, mut child) in std::mem::take(&mut h.stopping) {
                let _ = child.kill();
                let _ = child.wait();
                h.died(&label);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let orphans = h.orphans.take().map(|w| w.finish()).unwrap_or_default();
    let mut summary = check::check(&h, &runs)?;
    summary.orphans = orphans.len() as u64;
    summary.cycles = args.cycles;
    summary.kills = h.kills;
    summary.pauses = h.pauses;
    summary.reaper_holds = h.reaper_holds;
    summary.shutdowns = h.shutdowns;
    summary.isolation = Some(args.isolation);
    summary.seed = args.seed;
    summary.clock_jumps = h.clock_jumps;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    summary.violations.splice(
        0..0,
        h.violations.iter().cloned().chain(orphans.iter().cloned()),
    );
    let ok = summary.violations.is_empty();
    for v in &summary.violations {
        eprintln!("violation: {v}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", summary.line());
    }
    if ok {
        Ok(0)
    } else {
        if let Some(tmp) = _tmp {
            let kept = tmp.keep();
            eprintln!("torture: evidence kept in {}", kept.display());
        } else {
            eprintln!("torture: evidence in {}", dir.display());
        }
        eprintln!("torture: reproduce with --seed {}", args.seed);
        Ok(1)
    }
}

/// Enqueue the workload; returns the run id of each workload index.
fn enqueue(
    store: &dyn Storage,
    runs: &[RunIn],
    parked: &HashSet<u64>,
) -> Result<HashMap<u64, i64>, String> {
    let mut batch = Vec::with_capacity(runs.len());
    for r in runs {
        batch.push(NewRun {
            workflow: workload::WORKFLOW.name().into(),
            version: 1,
            input: waymark::internal::codec::encode(r, waymark::internal::codec::PAYLOAD_BYTES_MAX)
                .map_err(|e| e.to_string())?,
            idempotency_key: Some(format!("torture-{}", r.index)),
            queue: "default".into(),
            priority: 0,
            ready_at: parked
                .contains(&r.index)
                .then_some(corrupt::PARKED_UNTIL_MS),
            parent_id: None,
            deadline_at: None,
        });
    }
    let started = store.enqueue_many(batch).map_err(|e| e.to_string())?;
    if started.len() != runs.len() {
        return Err(format!(
            "the enqueue answered {} runs for {}",
            started.len(),
            runs.len()
        ));
    }
    Ok(runs
        .iter()
        .zip(started)
        .map(|(r, s)| (r.index, s.id))
        .collect())
}
