//! Memory caps by cgroup: where this process may create memory cgroups (cgroup v2 with
//! the memory controller, or the v1 memory controller), each cold child step runs in a
//! cgroup of its own, and each pooled child in one of its own for its whole life (label
//! `pool-<step>`), created below `<our cgroup>/waymark` with the step's cap, and an
//! out-of-memory kill is read from the cgroup's own counter (`oom_kill` in v1
//! `memory.oom_control` / v2 `memory.events`), whatever the program is.
//!
//! Invariants:
//! - The child moves itself into its cgroup as one of its first acts (before it starts a
//!   command's program or reads its input), so every process of the step is in it.
//! - A step cgroup is removed after its attempt, a pooled child's when the child is
//!   recycled or dies (what is left in it is killed first);
//!   one left by a killed engine is removed by the next engine that starts (a cgroup named
//!   after a creator pid that is gone, and holding no process).
//! - Under a cgroup the child sets no memory rlimit: RLIMIT_DATA would make a Python or
//!   C program fail its own allocation (MemoryError, exit 1) before the cgroup's limit is
//!   reached, and that exit cannot be told from any other error. The cgroup alone caps the
//!   step, and its counter names the cause.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which cgroup interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }
}

/// `<our memory cgroup>/waymark`: where step cgroups are made.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    dir: PathBuf,
    version: Version,
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Our own cgroup directory for the memory controller, and its interface.
fn own_memory_cgroup() -> Option<(PathBuf, Version)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let root = Path::new("/sys/fs/cgroup/memory");
            let dir = root.join(path.trim_start_matches('/'));
            if dir.join("memory.limit_in_bytes").exists() {
                return Some((dir, Version::V1));
            }
        }
    }
    let v2 = super::limits::cgroup_v2_memory()?;
    Some((v2, Version::V2))
}

impl CgroupParent {
    /// The parent of step cgroups, created if needed; `None` where no memory cgroup can
    /// be made (not root, no controller, read-only mount).
    pub fn detect() -> Option<Self> {
        let (own, version) = own_memory_cgroup()?;
        let dir = own.join("waymark");
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                log::debug!("no memory cgroups for steps: {}: {e}", dir.display());
                return None;
            }
        }
        if version == Version::V2 {
            // Children of `waymark` need the memory controller enabled for them.
            if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), "+memory") {
                log::debug!(
                    "no memory cgroups for steps: enabling memory below {}: {e}",
                    dir.display()
                );
                return None;
            }
        }
        let parent = CgroupParent { dir, version };
        // Prove it: make and remove one step cgroup.
        let probe = parent.create("probe", 64 * 1024 * 1024).ok()?;
        probe.remove();
        Some(parent)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh step cgroup named `p<our pid>-<label>` with a memory cap of `bytes` (swap
    /// included where the kernel accounts it).
    pub fn create(&self, label: &str, bytes: u64) -> std::io::Result<StepCgroup> {
        // The creator as (pid, start time): a bare pid is ambiguous across PID namespaces
        // (an engine that is pid 1 in its namespace would look alive forever from outside).
        let me = std::process::id();
        let name = format!(
            "p{me}.{}-{label}-{:x}",
            crate::host::pid_start_time(me).unwrap_or(0),
            crate::host::random_u64() & 0xffff_ffff
        );
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir)?;
        let cg = StepCgroup {
            dir,
            version: self.version,
            removed: false,
        };
        let limit = bytes.to_string();
        match self.version {
            Version::V1 => {
                write_file(&cg.dir.join("memory.limit_in_bytes"), &limit)?;
                // Without swap accounting the file is absent: RAM is capped all the same.
                let _ = write_file(&cg.dir.join("memory.memsw.limit_in_bytes"), &limit);
            }
            Version::V2 => {
                write_file(&cg.dir.join("memory.max"), &limit)?;
                let _ = write_file(&cg.dir.join("memory.swap.max"), "0");
            }
        }
        Ok(cg)
    }

    /// Remove step cgroups left by engines that are gone (a killed engine cannot clean
    /// up): named after a creator pid that is not alive, and holding no process.
    pub fn sweep_stale(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(creator) = name.strip_prefix('p').and_then(|r| r.split('-').next()) else {
                continue;
            };
            let (pid, start) = match creator.split_once('.') {
                Some((p, s)) => (p.parse::<u32>().ok(), s.parse::<u64>().ok()),
                None => (creator.parse::<u32>().ok(), None),
            };
            let Some(pid) = pid else { continue };
            if pid == std::process::id() {
                continue;
            }
            // Young cgroups may belong to an attempt being set up: leave them a minute.
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < std::time::Duration::from_secs(60));
            let creator_alive = match start {
                Some(start) => crate::host::liveness(pid, start) != crate::host::Liveness::Dead,
                None => crate::host::pid_start_time(pid).is_some(),
            };
            if creator_alive && young {
                continue;
            }
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() && std::fs::remove_dir(e.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            log::info!(
                "removed {removed} step cgroup(s) left in {} by engines that are gone",
                self.dir.display()
            );
        }
        removed
    }
}

/// One attempt's cgroup.
#[derive(Debug)]
pub struct StepCgroup {
    dir: PathBuf,
    version: Version,
    removed: bool,
}

impl StepCgroup {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Processes the kernel's OOM killer killed in this cgroup (v1 `memory.oom_control`,
    /// v2 `memory.events`: `oom_kill N`).
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kill every process in this cgroup but `keep` (the step's own leader) and wait until
    /// none is left, at most `wait`: true when only `keep` (or nothing) is left. `None` when
    /// the cgroup cannot be read (then the caller falls back to the process-group scan).
    /// Only the child and its descendants ever enter a step's cgroup, so this reaches what
    /// the step started, `setsid` escapes included, in O(members) instead of a scan of /proc
    /// (measured: the /proc scan after every pooled execution was most of the workers' CPU
    /// in `bench --only W5`).
    pub fn kill_all_but(&self, keep: u32, wait: Duration) -> Option<bool> {
        let end = Instant::now() + wait;
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).ok()?;
            let others: Vec<i32> = procs
                .lines()
                .filter_map(|p| p.trim().parse::<i32>().ok())
                .filter(|&p| p != keep as i32 && p > 1)
                .collect();
            if others.is_empty() {
                return Some(true);
            }
            if Instant::now() >= end {
                return Some(false);
            }
            for pid in others {
                // SAFETY: kill(2) of a process listed in our step's own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kill what is left in it, then remove it (retrying while the kernel finishes the
    /// kills, up to 2 s). Idempotent.
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) of a process listed in our step's own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= end => {
                    log::warn!(
                        "step cgroup {} not removed: {e}; the next engine start removes it",
                        self.dir.display()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        self.remove_now();
    }
}

/// Child side: move this process into the cgroup at `path`.
pub(crate) fn enter(path: &Path) -> std::io::Result<()> {
    write_file(&path.join("cgroup.procs"), &std::process::id().to_string())
}
