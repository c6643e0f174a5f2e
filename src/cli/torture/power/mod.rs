//! `waymark torture --power-loss`: cut the power at seeded moments and check that everything
//! the API acknowledged survives, nothing appears that no process wrote, and the database is
//! never corrupt.
//!
//! A VFS sees the I/O of its own process only, so in this mode the engines are threads of one
//! process: a *segment* (`waymark torture --power-loss --power-segment SPEC`, started by the
//! harness) runs them on the crash-simulating VFS ([`vfs`]) until the seeded cut (a VFS
//! operation number or a time), then writes one crash image drawn from the recorded writes
//! and the acknowledgements it saw, and `_exit`s. Each cycle (re)submits a few runs and cuts
//! the power 1 to 3 times in a row (the next segment starts from the previous crash image, so
//! recovery itself is cut). After every cut the harness checks a copy of the image with the
//! ordinary VFS ([`check`]); after the last cut of a cycle it opens the image with a fresh
//! engine (ordinary VFS), resubmits the cycle's runs by key, waits for every run and compares
//! its output with the fault-free one. The summary line:
//! `cycles=N cuts=N acknowledged_lost=0 corrupt=0 lost=0 duplicate_results=0 ...`.

mod check;
mod segment;
mod vfs;

use check::{Acked, Counts};
use segment::{event_payload, expected_output, input, key, waits_event, Spec, DB_NAME, WORKFLOW};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use waymark::{Engine, StartOptions, Synchronous};

/// Options of the power-loss mode (flattened into `waymark torture`).
#[derive(clap::Args, Debug, Clone)]
pub struct PowerArgs {
    /// Simulate power cuts (engines as threads of one process on a crash-simulating VFS)
    /// instead of killing engine processes. Uses --cycles, --seed, --json and --db's directory.
    #[arg(long)]
    pub power_loss: bool,
    /// `synchronous` of the engines under --power-loss: `full` (default) or `normal`.
    #[arg(long, default_value = "full")]
    pub sync: String,
    /// Test-only mutation: the simulator ignores syncs of the WAL (acknowledgements must then
    /// be reported lost).
    #[arg(long, hide = true)]
    pub sim_drop_wal_sync: bool,
    /// Internal: run one segment described by this JSON file (started by the harness).
    #[arg(long, hide = true)]
    pub power_segment: Option<PathBuf>,
}

/// Entry from `waymark torture`.
pub fn run(
    args: &PowerArgs,
    cycles: u64,
    seed: u64,
    json: bool,
    db: Option<PathBuf>,
) -> super::CliResult {
    if let Some(spec) = &args.power_segment {
        let text = std::fs::read(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
        let spec: Spec = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        return segment::run(&spec);
    }
    let normal = match args.sync.as_str() {
        "full" => false,
        "normal" => true,
        other => return Err(format!("--sync {other}: expected full or normal")),
    };
    let (_tmp, work) = match db {
        Some(db) => {
            let mut d = db.into_os_string();
            d.push(".power");
            let d = PathBuf::from(d);
            if d.exists() {
                return Err(format!("{} exists: use a fresh --db path", d.display()));
            }
            (None, d)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("waymark-power-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            let w = t.path().to_path_buf();
            (Some(t), w)
        }
    };
    let mut h = Harness {
        exe: std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
        work,
        normal,
        drop_wal_sync: args.sim_drop_wal_sync,
        acked: Acked::default(),
        counts: Counts::default(),
        dirs: 0,
    };
    let started = Instant::now();
    let result = h.cycles(cycles, seed);
    let c = &h.counts;
    let line = format!(
        "cycles={} cuts={} acknowledged_lost={} corrupt={} lost={} duplicate_results={} foreign={} runs={} acks_started={} acks_steps={} acks_completed={} acks_events={} cuts_losing_acks={} empty_images={} refused_zero_length={} unsynced_at_cut={} torn_writes={} sync={} secs={:.1}",
        c.cycles, c.cuts, c.acknowledged_lost, c.corrupt, c.lost, c.duplicate_results, c.foreign,
        c.runs, c.acks_started, c.acks_steps, c.acks_completed, c.acks_events, c.cuts_losing_acks, c.empty_images, c.refused_zero_length, c.unsynced_at_cut, c.torn_writes,
        if normal { "normal" } else { "full" }, started.elapsed().as_secs_f64()
    );
    for v in c.violations.iter().take(20) {
        eprintln!("violation: {v}");
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "cycles": c.cycles, "cuts": c.cuts, "acknowledged_lost": c.acknowledged_lost,
                "corrupt": c.corrupt, "lost": c.lost, "duplicate_results": c.duplicate_results,
                "foreign": c.foreign, "runs": c.runs, "acks_started": c.acks_started,
                "acks_steps": c.acks_steps, "acks_completed": c.acks_completed,
                "acks_events": c.acks_events, "cuts_losing_acks": c.cuts_losing_acks,
                "empty_images": c.empty_images, "refused_zero_length": c.refused_zero_length, "unsynced_at_cut": c.unsynced_at_cut, "torn_writes": c.torn_writes,
                "sync": if normal { "normal" } else { "full" },
                "violations": c.violations.iter().take(20).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("{line}");
    }
    result?;
    let bad = c.corrupt + c.lost + c.foreign + c.duplicate_results;
    // At NORMAL, lost acknowledgements are the figure being measured, not a failure.
    let bad = bad + if normal { 0 } else { c.acknowledged_lost };
    Ok(if bad == 0 { 0 } else { 1 })
}

struct Harness {
    exe: PathBuf,
    work: PathBuf,
    normal: bool,
    drop_wal_sync: bool,
    acked: Acked,
    counts: Counts,
    dirs: u64,
}

/// Most recorded VFS operations before a cut drawn by operation number.
const CUT_OPS_SPAN: u64 = 200;
/// Most syncs before a cut drawn by sync number.
const CUT_SYNCS_SPAN: u64 = 30;
/// Longest a segment runs before its cut.
const CUT_AFTER_MS_MAX: u64 = 400;
/// Longest the harness waits for a segment process.
const SEGMENT_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest the final engine of a cycle waits for one run.
const RUN_WAIT_MAX: Duration = Duration::from_secs(60);

impl Harness {
    fn fresh_dir(&mut self, tag: &str) -> Result<PathBuf, String> {
        self.dirs += 1;
        let d = self.work.join(format!("{tag}-{}", self.dirs));
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(d)
    }

    fn cycles(&mut self, cycles: u64, seed: u64) -> Result<(), String> {
        let mut rng = vfs::Rng(seed);
        let mut base = self.fresh_dir("base")?;
        let mut next_index = 0u64;
        for cycle in 0..cycles {
            let k = 1 + rng.below(6);
            let indices: Vec<u64> = (next_index..next_index + k).collect();
            next_index += k;
            self.acked.submitted.extend(indices.iter().copied());
            let cuts = 1 + rng.below(3);
            let mut dir = base.clone();
            for c in 0..cuts {
                let out = self.fresh_dir("cut")?;
                let watch = indices
                    .iter()
                    .filter_map(|i| self.acked.started.get(i).copied())
                    .collect();
                // Half the cuts at a recorded VFS operation (often mid-commit), a quarter at a
                // sync (a commit written, not yet durable), a quarter at a time (mostly
                // between commits).
                let (mut cut_at, mut cut_at_sync) = (u64::MAX, u64::MAX);
                let mut cut_after_ms = CUT_AFTER_MS_MAX * 2;
                match rng.below(4) {
                    0 | 1 => cut_at = 1 + rng.below(CUT_OPS_SPAN),
                    2 => cut_at_sync = 1 + rng.below(CUT_SYNCS_SPAN),
                    _ => cut_after_ms = 5 + rng.below(CUT_AFTER_MS_MAX),
                }
                let spec = Spec {
                    dir: dir.clone(),
                    out: out.clone(),
                    report: self.work.join("report.json"),
                    seed: rng.next(),
                    normal: self.normal,
                    drop_wal_sync: self.drop_wal_sync,
                    submit: if c == 0 || rng.below(2) == 0 {
                        indices.clone()
                    } else {
                        Vec::new()
                    },
                    watch,
                    cut_at,
                    cut_at_sync,
                    cut_after_ms,
                    engines: 1 + rng.below(2) as usize,
                };
                // The state the segment starts from, kept until the next cut (post-mortems).
                let pre = self.work.join("pre");
                let _ = std::fs::remove_dir_all(&pre);
                std::fs::create_dir_all(&pre).map_err(|e| format!("{}: {e}", pre.display()))?;
                copy_db_files(&dir, &pre)?;
                let report = self.segment(&spec)?;
                self.counts.cuts += 1;
                if self.counts.cuts.is_multiple_of(250) {
                    let c = &self.counts;
                    eprintln!(
                        "progress: cuts={} acknowledged_lost={} corrupt={} lost={} duplicate_results={} foreign={}",
                        c.cuts, c.acknowledged_lost, c.corrupt, c.lost, c.duplicate_results, c.foreign
                    );
                }
                self.counts.torn_writes += report.files.iter().filter(|f| f.3).count() as u64;
                if report.files.iter().any(|f| f.2 > 0) {
                    self.counts.unsynced_at_cut += 1;
                }
                if std::env::var_os("WAYMARK_POWER_TRACE").is_some() {
                    eprintln!(
                        "cycle {cycle} cut {c}: ops={} syncs={} acks={} engines={} files={:?}",
                        report.ops,
                        report.syncs,
                        report.acks.len(),
                        report.engines_started,
                        report.files
                    );
                }
                self.acked.merge(&report, &mut self.counts);
                let check_dir = self.fresh_dir("check")?;
                copy_db_files(&out, &check_dir)?;
                let (lost_before, corrupt_before) =
                    (self.counts.acknowledged_lost, self.counts.corrupt);
                check::check_image(
                    &check_dir,
                    &mut self.acked,
                    &mut self.counts,
                    &format!("cycle {cycle} cut {c}"),
                );
                if self.counts.acknowledged_lost > lost_before {
                    self.counts.cuts_losing_acks += 1;
                }
                if self.counts.corrupt > corrupt_before {
                    // Keep the first few corrupt images (and the state they were cut from)
                    // for a post-mortem, and say so at once.
                    if self.counts.corrupt <= 3 {
                        let keep = self.work.join(format!("corrupt-{}", self.counts.cuts));
                        let _ = std::fs::create_dir_all(keep.join("from"));
                        let _ = copy_db_files(&out, &keep);
                        let _ = copy_db_files(&pre, &keep.join("from"));
                        let _ = std::fs::copy(out.join("trace.txt"), keep.join("trace.txt"));
                        let _ = std::fs::write(
                            keep.join("report.txt"),
                            format!("{spec:#?}\n{:#?}\n", report.files),
                        );
                        eprintln!(
                            "corrupt image kept in {}: {}",
                            keep.display(),
                            self.counts
                                .violations
                                .last()
                                .map(String::as_str)
                                .unwrap_or("")
                        );
                    }
                }
                let _ = std::fs::remove_dir_all(&check_dir);
                if dir != base {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                dir = out;
            }
            let fin = self.fresh_dir("final")?;
            copy_db_files(&dir, &fin)?;
            let _ = std::fs::remove_dir_all(&dir);
            self.finish(&fin, &indices, cycle)?;
            let _ = std::fs::remove_dir_all(&base);
            base = fin;
            self.counts.cycles += 1;
        }
        Ok(())
    }

    fn segment(&mut self, spec: &Spec) -> Result<segment::Report, String> {
        let spec_path = self.work.join("spec.json");
        std::fs::write(
            &spec_path,
            serde_json::to_vec(spec).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", spec_path.display()))?;
        let _ = std::fs::remove_file(&spec.report);
        let log =
            std::fs::File::create(self.work.join("segment.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.exe)
            .arg("torture")
            .arg("--power-loss")
            .arg("--power-segment")
            .arg(&spec_path)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a segment: {e}"))?;
        let deadline = Instant::now() + SEGMENT_WAIT_MAX;
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("a segment did not end within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let text = std::fs::read(&spec.report).map_err(|e| {
            let log = std::fs::read_to_string(self.work.join("segment.log")).unwrap_or_default();
            format!(
                "segment ended ({status}) without a report: {e}; its log: {}",
                log.trim()
            )
        })?;
        serde_json::from_slice(&text).map_err(|e| e.to_string())
    }

    /// Open the last image with a fresh engine (ordinary VFS), resubmit the cycle's runs by
    /// key and check each ends with its fault-free output.
    fn finish(&mut self, dir: &Path, indices: &[u64], cycle: u64) -> Result<(), String> {
        let sync = if self.normal {
            Synchronous::Normal
        } else {
            Synchronous::Full
        };
        let db = dir.join(DB_NAME);
        let config = || segment::config(db.clone(), sync, None);
        let engine = match Engine::start(segment::registry(), config()) {
            Ok(e) => e,
            // A cut while the file was being created can leave it zero-length (its directory
            // entry reached the disk, no data did). Waymark refuses such a file (it may be
            // another process's file being created); no acknowledgement can have been given
            // on it, so do what the operator must: delete it, and count the refusal.
            Err(e) if std::fs::metadata(&db).is_ok_and(|m| m.len() == 0) => {
                self.counts.refused_zero_length += 1;
                log::warn!("cycle {cycle}: {e}; deleting the zero-length file");
                std::fs::remove_file(&db).map_err(|e| format!("{}: {e}", db.display()))?;
                Engine::start(segment::registry(), config())
                    .map_err(|e| format!("cycle {cycle}: the engine cannot open the image: {e}"))?
            }
            Err(e) => {
                return Err(format!(
                    "cycle {cycle}: the engine cannot open the image: {e}"
                ))
            }
        };
        for &index in indices {
            let id = match engine.start_run(WORKFLOW, &input(index), StartOptions::key(key(index)))
            {
                Ok(id) => id,
                Err(e) => {
                    self.counts.lost += 1;
                    self.counts.violations.push(format!(
                        "cycle {cycle}: run {} cannot be started: {e}",
                        key(index)
                    ));
                    continue;
                }
            };
            if let Some(&was) = self.acked.started.get(&index) {
                if was != id {
                    self.counts.duplicate_results += 1;
                    self.counts.violations.push(format!(
                        "cycle {cycle}: {} acknowledged as run {was}, now run {id}",
                        key(index)
                    ));
                }
            }
            self.acked.started.insert(index, id);
            self.counts.runs += 1;
            // The event, unless one sent to this run was acknowledged (and is still there).
            if waits_event(index) && !self.acked.events.values().any(|&r| r == id) {
                match engine.send_event(id, "go", &event_payload(index)) {
                    Ok(event_id) => {
                        self.acked.events.insert(event_id, id);
                    }
                    Err(e) => self
                        .counts
                        .violations
                        .push(format!("cycle {cycle}: event to run {id} refused: {e}")),
                }
            }
            let want = expected_output(index);
            match engine.wait_output(WORKFLOW, id, RUN_WAIT_MAX) {
                Ok(out) if out == want => {
                    self.acked.completed.insert(id, out);
                }
                other => {
                    self.counts.lost += 1;
                    self.counts.violations.push(format!(
                        "cycle {cycle}: run {id} ({}) ended {other:?}, its fault-free output is {want}",
                        key(index)
                    ));
                }
            }
        }
        self.acked.nonces.extend(segment::nonces());
        engine
            .shutdown()
            .map_err(|e| format!("cycle {cycle}: shutdown: {e}"))?;
        // The next segment adopts these files as what the disk holds at boot: nothing else
        // may change them afterwards. `shutdown` can return while the engine's store is
        // still held for up to the client watch's backstop (500 ms); its last connection
        // then checkpoints the WAL into the database and deletes the WAL. Had a segment
        // adopted the files before that, its images put new WAL frames (written against the
        // checkpointed database) over the old database: `row missing from index`.
        wait_closed(dir, cycle)
    }
}

/// Longest the harness waits for its own descriptors on a directory's files to close.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Wait until no descriptor of this process refers to a file in `dir`.
fn wait_closed(dir: &Path, cycle: u64) -> Result<(), String> {
    // Descriptors name absolute, resolved paths.
    let dir = &dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let open = || -> Vec<PathBuf> {
        std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|t| t.starts_with(dir))
            .collect()
    };
    let deadline = Instant::now() + CLOSE_WAIT_MAX;
    loop {
        let still = open();
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cycle {cycle}: the final engine still holds {still:?} {CLOSE_WAIT_MAX:?} after its shutdown"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Copy the database, WAL and journal (never the shared-memory index) from one directory to
/// another.
fn copy_db_files(from: &Path, to: &Path) -> Result<(), String> {
    for suffix in ["", "-wal", "-journal"] {
        let name = format!("{DB_NAME}{suffix}");
        let src = from.join(&name);
        if src.exists() {
            std::fs::copy(&src, to.join(&name)).map_err(|e| format!("{}: {e}", src.display()))?;
        }
    }
    Ok(())
}
