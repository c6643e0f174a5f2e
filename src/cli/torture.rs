//! `waymark torture`: kill engines at random (seeded) moments and check that nothing was
//! lost, recorded twice, run twice at once, or re-executed without cause.
//!
//! The harness owns a work directory (`DB.torture/`, or a temporary one): the effects file
//! every step execution appends to, the per-(run, seq) lock files, and one stderr log per
//! engine process. For `--cycles` cycles it picks (with an RNG seeded by `--seed`) one of:
//! SIGKILL a random engine after a random delay (mostly mid-step), restart an engine armed
//! with a `WAYMARK_FAULT` point (before/after commit, in/after step, after checkpoint) so it
//! kills itself mid-commit, or SIGKILL every engine at once; killed engines are restarted.
//! One cycle in ten also jumps the engines' shared injected wall clock to +1 h, -1 h or 0.
//! Then it lets everything finish and checks the invariants (see [`check`]).

mod power;
mod workload;

pub use workload::{engine, EngineArgs};

use super::CliResult;
use rusqlite::{Connection, OpenFlags};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use waymark::clock::SystemClock;
use waymark::store::{Done, NewRun, Op, Store, StoreOptions};
use workload::{expected, expected_values, mix, RunIn, StepOut};

#[derive(clap::Args, Debug)]
pub struct TortureArgs {
    /// Database file (must not exist yet); default: a fresh temporary directory.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Fault cycles (each kills one engine, arms a fault point, or kills all).
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

const FAULT_POINTS: [&str; 5] = [
    "before_commit",
    "after_commit",
    "after_checkpoint",
    "in_step",
    "after_step",
];

struct Slot {
    child: Option<Child>,
    generation: u32,
}

struct Harness {
    exe: PathBuf,
    db: PathBuf,
    dir: PathBuf,
    workers: usize,
    lease_ttl_ms: u64,
    slots: Vec<Slot>,
    /// Pids that died by SIGKILL (ours or their own fault point).
    killed: HashSet<u32>,
    /// Every engine pid and its log file.
    logs: Vec<(u32, PathBuf)>,
    kills: u64,
    clock_jumps: u64,
    violations: Vec<String>,
}

impl Harness {
    fn spawn(&mut self, slot: usize, fault: Option<String>) -> Result<(), String> {
        let s = &mut self.slots[slot];
        s.generation += 1;
        let log = self.dir.join(format!("engine-{slot}-{}.log", s.generation));
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
            .env("RUST_LOG", "warn")
            .env(
                "WAYMARK_TEST_CLOCK_OFFSET_FILE",
                self.dir.join("clock-offset"),
            )
            .env_remove("WAYMARK_FAULT")
            .env_remove("WAYMARK_FAULT_PAUSE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(f) = fault {
            cmd.env("WAYMARK_FAULT", f);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        self.logs.push((child.id(), log));
        s.child = Some(child);
        Ok(())
    }

    /// SIGKILL the engine in `slot` (if alive) and reap it.
    fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.slots[slot].child.take() {
            let pid = child.id();
            match child.try_wait() {
                Ok(Some(status)) => self.note_exit(slot, pid, status),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.killed.insert(pid);
                    self.kills += 1;
                }
            }
        }
    }

    fn note_exit(&mut self, slot: usize, pid: u32, status: std::process::ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(libc::SIGKILL) {
            // A fault point fired: the engine killed itself.
            self.killed.insert(pid);
            self.kills += 1;
        } else if !status.success() {
            self.violations.push(format!(
                "engine {slot} (pid {pid}) exited with {status}; see its log in {}",
                self.dir.display()
            ));
        }
    }

    /// Reap engines that died on their own (fault points); returns their slots.
    fn reap(&mut self) -> Vec<usize> {
        let mut dead = Vec::new();
        for slot in 0..self.slots.len() {
            let exited = match self.slots[slot].child.as_mut() {
                Some(c) => c.try_wait().ok().flatten().map(|st| (c.id(), st)),
                None => None,
            };
            if let Some((pid, status)) = exited {
                self.slots[slot].child = None;
                self.note_exit(slot, pid, status);
                dead.push(slot);
            }
        }
        dead
    }
}

fn active_runs(db: &Path) -> Result<i64, String> {
    let conn = read_conn(db)?;
    conn.query_row(
        "SELECT count(*) FROM runs WHERE status IN ('pending', 'running', 'suspended')",
        [],
        |r| r.get(0),
    )
    .map_err(|e| format!("reading {}: {e}", db.display()))
}

fn read_conn(db: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {}: {e}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// The workload: run `i` has 3..=7 steps, every 16th fails at a middle step.
fn workload(runs: u64, seed: u64, step_ms: u64) -> Vec<RunIn> {
    (1..=runs)
        .map(|i| {
            let h = mix(seed ^ mix(i));
            let steps = 3 + (h % 5) as u32;
            RunIn {
                index: i,
                steps,
                fail_at: (h >> 8)
                    .is_multiple_of(16)
                    .then_some(1 + ((h >> 16) as u32 % (steps - 1))),
                step_ms: step_ms + (h >> 24) % (step_ms + 1),
            }
        })
        .collect()
}

/// Parse error of the summary-line numbers.
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
    pub seed: u64,
    pub clock_jumps: u64,
    pub elapsed_ms: u64,
    pub violations: Vec<String>,
}

impl Summary {
    fn line(&self) -> String {
        format!(
            "cycles={} kills={} runs={} completed={} failed_expected={} lost={} duplicate_results={} concurrent_executions={} reexecutions={} max_reexecutions_bound={}",
            self.cycles, self.kills, self.runs, self.completed, self.failed_expected, self.lost,
            self.duplicate_results, self.concurrent_executions, self.reexecutions, self.max_reexecutions_bound
        )
    }
}

pub fn run(args: TortureArgs) -> CliResult {
    if args.power.power_loss {
        return power::run(&args.power, args.cycles, args.seed, args.json, args.db);
    }
    let started = Instant::now();
    let (dir, db, _tmp) = match &args.db {
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
    let runs = workload(args.runs, args.seed, step_ms);
    enqueue(&db, &runs)?;

    let mut h = Harness {
        exe,
        db: db.clone(),
        dir: dir.clone(),
        workers: args.workers.max(1),
        lease_ttl_ms: args.lease_ttl_ms,
        slots: (0..engines)
            .map(|_| Slot {
                child: None,
                generation: 0,
            })
            .collect(),
        killed: HashSet::new(),
        logs: Vec::new(),
        kills: 0,
        clock_jumps: 0,
        violations: Vec::new(),
    };
    let mut rng = Rng(args.seed);
    for slot in 0..engines {
        h.spawn(slot, None)?;
    }
    for _ in 0..args.cycles {
        for slot in h.reap() {
            h.spawn(slot, None)?;
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        if rng.below(10) == 0 {
            // The host's wall clock jumps (every engine reads the same offset file).
            let offset = [3_600_000i64, -3_600_000, 0][rng.below(3) as usize];
            std::fs::write(dir.join("clock-offset"), offset.to_string())
                .map_err(|e| format!("cannot move the injected clock: {e}"))?;
            h.clock_jumps += 1;
        }
        let roll = rng.below(100);
        if roll < 15 {
            // Every engine at once.
            for slot in 0..engines {
                h.kill(slot);
            }
            for slot in 0..engines {
                h.spawn(slot, None)?;
            }
        } else if roll < 40 {
            // Restart one engine armed with a fault point: it dies mid-commit or mid-step.
            let slot = rng.below(engines as u64) as usize;
            h.kill(slot);
            let point = FAULT_POINTS[rng.below(FAULT_POINTS.len() as u64) as usize];
            let n = 1 + rng.below(30);
            h.spawn(slot, Some(format!("{point}={n}")))?;
        } else {
            let slot = rng.below(engines as u64) as usize;
            h.kill(slot);
            h.spawn(slot, None)?;
        }
    }
    // Finish: no more faults. Replace armed engines, let everything complete.
    for slot in h.reap() {
        h.spawn(slot, None)?;
    }
    std::fs::write(dir.join("finish"), b"")
        .map_err(|e| format!("cannot write the finish flag: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(120 + args.runs / 2);
    loop {
        for slot in h.reap() {
            // A fault armed before the finish may still fire: restart it unarmed.
            if active_runs(&db)? > 0 {
                h.spawn(slot, None)?;
            }
        }
        if h.slots.iter().all(|s| s.child.is_none()) {
            break;
        }
        if Instant::now() > deadline {
            h.violations
                .push("engines did not finish the workload before the deadline".into());
            for slot in 0..engines {
                h.kill(slot);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut summary = check(&h, &runs)?;
    summary.cycles = args.cycles;
    summary.kills = h.kills;
    summary.seed = args.seed;
    summary.clock_jumps = h.clock_jumps;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    summary
        .violations
        .splice(0..0, h.violations.iter().cloned());
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

fn enqueue(db: &Path, runs: &[RunIn]) -> Result<(), String> {
    let store = Store::open(
        db,
        &StoreOptions::default(),
        Arc::new(SystemClock::from_env()),
    )
    .map_err(|e| e.to_string())?;
    let mut batch = Vec::with_capacity(runs.len());
    for r in runs {
        batch.push(NewRun {
            workflow: workload::WORKFLOW.name().into(),
            version: 1,
            input: waymark::codec::encode(r, waymark::codec::PAYLOAD_BYTES_MAX)
                .map_err(|e| e.to_string())?,
            idempotency_key: Some(format!("torture-{}", r.index)),
            queue: "default".into(),
            priority: 0,
            ready_at: None,
            parent_id: None,
            deadline_at: None,
        });
    }
    match store
        .call(Op::EnqueueMany(batch))
        .map_err(|e| e.to_string())?
    {
        Done::Runs(ids) if ids.len() == runs.len() => Ok(()),
        other => Err(format!("unexpected answer to the enqueue: {other:?}")),
    }
}

/// A run as the harness reads it: id, status, output, error.
type RunRecord = (i64, String, Option<Vec<u8>>, Option<String>);

/// One step execution seen in the effects file.
#[derive(Debug, Default)]
struct Exec {
    pid: u32,
    ended: bool,
}

/// Check every invariant against the database, the effects file and the engine logs.
fn check(h: &Harness, runs: &[RunIn]) -> Result<Summary, String> {
    let mut s = Summary {
        runs: runs.len() as u64,
        ..Default::default()
    };
    let v = &mut s.violations;
    // Effects: executions per (run, seq), keyed by nonce.
    let text = std::fs::read_to_string(h.dir.join("effects")).unwrap_or_default();
    let mut execs: HashMap<(i64, i64), HashMap<u64, Exec>> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let parsed = (|| -> Option<(char, i64, i64, u32, u64)> {
            Some((
                f.first()?.chars().next()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(4)?.parse().ok()?,
            ))
        })();
        let Some((kind, run, seq, pid, nonce)) = parsed else {
            v.push(format!("unparsable effects record: {line:?}"));
            continue;
        };
        let e = execs
            .entry((run, seq))
            .or_default()
            .entry(nonce)
            .or_default();
        e.pid = pid;
        match kind {
            'C' => {
                s.concurrent_executions += 1;
                v.push(format!(
                    "run {run} seq {seq}: executed by pid {pid} while another execution held its lock"
                ));
            }
            'E' | 'F' => e.ended = true,
            _ => {}
        }
    }
    // Lease losses logged by each engine: (pid, run) pairs whose abandonment explains a
    // re-execution without a kill.
    let mut lease_lost: HashSet<(u32, i64)> = HashSet::new();
    for (pid, log) in &h.logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.split("run ").nth(1) {
                if line.contains("lease lost") || line.contains("lease guard expired") {
                    if let Some(run) = rest.split(':').next().and_then(|r| r.parse().ok()) {
                        lease_lost.insert((*pid, run));
                    }
                }
            }
        }
    }
    let conn = read_conn(&h.db)?;
    let db_err = |e: rusqlite::Error| format!("reading {}: {e}", h.db.display());
    let dups: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT run_id, seq FROM steps GROUP BY run_id, seq HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    s.duplicate_results = dups as u64;
    let mut by_key: HashMap<String, RunRecord> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT id, idempotency_key, status, output, error FROM runs")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (id, key, status, output, error) = row.map_err(db_err)?;
            if let Some(key) = key {
                by_key.insert(key, (id, status, output, error));
            }
        }
    }
    let mut journal_stmt = conn
        .prepare("SELECT seq, status, output FROM steps WHERE run_id = ?1 ORDER BY seq")
        .map_err(db_err)?;
    for input in runs {
        let key = format!("torture-{}", input.index);
        let Some((id, status, output, error)) = by_key.get(&key) else {
            s.lost += 1;
            v.push(format!("run {key} is missing from the database"));
            continue;
        };
        let id = *id;
        let journal: Vec<(i64, String, Option<Vec<u8>>)> = journal_stmt
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|it| it.collect())
            .map_err(db_err)?;
        let want = expected(input);
        let values = expected_values(input);
        let mut run_ok = true;
        match (&want, status.as_str()) {
            (Ok(out), "completed") => {
                let got = output
                    .as_deref()
                    .and_then(|b| waymark::codec::decode::<u64>(b, 1024).ok());
                if got != Some(*out) {
                    run_ok = false;
                    v.push(format!(
                        "run {id} ({key}): output {got:?} differs from the fault-free {out}"
                    ));
                }
            }
            (Err(seq), "failed") => {
                let last = journal.last();
                if !matches!(last, Some((s, st, _)) if *s == *seq as i64 && st == "failed") {
                    run_ok = false;
                    v.push(format!(
                        "run {id} ({key}): failed ({error:?}) but not at its failing seq {seq}"
                    ));
                }
            }
            (_, st) => {
                run_ok = false;
                v.push(format!(
                    "run {id} ({key}): status {st} ({error:?}), expected {}",
                    if want.is_ok() { "completed" } else { "failed" }
                ));
            }
        }
        let expected_len = values.len() + usize::from(want.is_err());
        if journal.len() != expected_len {
            run_ok = false;
            v.push(format!(
                "run {id}: journal has {} entries, the fault-free run records {expected_len}",
                journal.len()
            ));
        }
        for (i, (seq, st, out)) in journal.iter().enumerate() {
            if *seq != i as i64 {
                run_ok = false;
                v.push(format!("run {id}: journal seq {seq} at position {i}"));
                continue;
            }
            let runs_of_step = execs.get(&(id, *seq));
            let committed_nonce = if st == "completed" {
                let decoded = out
                    .as_deref()
                    .and_then(|b| waymark::codec::decode::<StepOut>(b, 1024).ok());
                match decoded {
                    Some(o) => {
                        if values.get(i) != Some(&o.value) {
                            run_ok = false;
                            v.push(format!("run {id} seq {seq}: recorded value differs from the fault-free one"));
                        }
                        let ended = runs_of_step
                            .and_then(|m| m.get(&o.nonce))
                            .is_some_and(|e| e.ended);
                        if !ended {
                            run_ok = false;
                            v.push(format!("run {id} seq {seq}: recorded result is not the output of any execution"));
                        }
                        Some(o.nonce)
                    }
                    None => {
                        run_ok = false;
                        v.push(format!(
                            "run {id} seq {seq}: recorded output does not decode"
                        ));
                        None
                    }
                }
            } else {
                None
            };
            // Every execution whose result was not recorded must have been interrupted.
            let Some(all) = runs_of_step else {
                run_ok = false;
                v.push(format!(
                    "run {id} seq {seq}: recorded without any execution"
                ));
                continue;
            };
            let mut uncommitted = 0u64;
            for (nonce, e) in all {
                let is_committed = match committed_nonce {
                    Some(n) => n == *nonce,
                    // A failed entry records the one execution that failed for good.
                    None => failed_recorded(all, &h.killed) == Some(*nonce),
                };
                if is_committed {
                    continue;
                }
                uncommitted += 1;
                if h.killed.contains(&e.pid) || lease_lost.contains(&(e.pid, id)) {
                    s.max_reexecutions_bound += 1;
                } else {
                    v.push(format!(
                        "run {id} seq {seq}: re-executed although execution {nonce:x} (pid {}) was neither killed nor lost its lease",
                        e.pid
                    ));
                }
            }
            s.reexecutions += uncommitted;
        }
        if run_ok {
            match want {
                Ok(_) => s.completed += 1,
                Err(_) => s.failed_expected += 1,
            }
        } else {
            s.lost += 1;
        }
    }
    if s.reexecutions > s.max_reexecutions_bound {
        v.push(format!(
            "{} re-executions exceed the {} interrupted executions",
            s.reexecutions, s.max_reexecutions_bound
        ));
    }
    if s.duplicate_results > 0 {
        v.push(format!(
            "{} journal sequence numbers hold more than one result",
            s.duplicate_results
        ));
    }
    Ok(s)
}

/// For a step recorded as failed (no nonce in the journal), the recorded execution is an
/// ended one, preferably from a process that was not killed (a stable choice: smallest nonce).
fn failed_recorded(all: &HashMap<u64, Exec>, killed: &HashSet<u32>) -> Option<u64> {
    let ended = || all.iter().filter(|(_, e)| e.ended);
    ended()
        .filter(|(_, e)| !killed.contains(&e.pid))
        .map(|(n, _)| *n)
        .min()
        .or_else(|| ended().map(|(n, _)| *n).min())
}
