//! Resource limits of a step child, applied by the child itself as its first act.
//!
//! The memory cap is an rlimit the child sets on itself (RLIMIT_DATA by default, RLIMIT_AS on
//! request): no `pre_exec` in the engine, so std keeps the posix_spawn path whose cost does
//! not grow with the engine's resident memory. Why RLIMIT_DATA: see ARCHITECTURE.md
//! ("Memory cap"): it counts private writable memory (heap, mmap'd buffers, thread stacks)
//! but not address-space *reservations* (glibc arenas reserve 64 MiB PROT_NONE each), so a
//! multi-threaded step is not refused threads long before it uses its memory.
//!
//! A writable cgroup v2 with the memory controller is detected ([`cgroup_v2_memory`]) and
//! reported; it limits resident memory rather than mappings.

use std::path::PathBuf;

pub use crate::config::MemoryRlimit;

impl MemoryRlimit {
    pub(crate) fn env_value(self) -> &'static str {
        match self {
            MemoryRlimit::Data => "data",
            MemoryRlimit::AddressSpace => "as",
        }
    }
    fn resource(self) -> libc::__rlimit_resource_t {
        match self {
            MemoryRlimit::Data => libc::RLIMIT_DATA,
            MemoryRlimit::AddressSpace => libc::RLIMIT_AS,
        }
    }
}

/// What the child must apply to itself, read from its environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChildLimits {
    pub memory_bytes: Option<u64>,
    pub memory_rlimit: MemoryRlimit,
    pub cpu_seconds: Option<u64>,
    /// The step's own memory cgroup (see [`super::cgroup`]): the child enters it, and then
    /// sets no memory rlimit.
    pub cgroup: Option<PathBuf>,
}

impl ChildLimits {
    /// Environment variables that carry these limits to the child.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(
            super::ENV_RLIMIT,
            self.memory_rlimit.env_value().to_string(),
        )];
        if let Some(m) = self.memory_bytes {
            env.push((super::ENV_MEMORY, m.to_string()));
        }
        if let Some(c) = self.cpu_seconds {
            env.push((super::ENV_CPU, c.to_string()));
        }
        if let Some(cg) = &self.cgroup {
            env.push((super::ENV_CGROUP, cg.display().to_string()));
        }
        env
    }

    pub fn from_env() -> Self {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        ChildLimits {
            memory_bytes: num(super::ENV_MEMORY),
            memory_rlimit: match std::env::var(super::ENV_RLIMIT).as_deref() {
                Ok("as") => MemoryRlimit::AddressSpace,
                _ => MemoryRlimit::Data,
            },
            cpu_seconds: num(super::ENV_CPU),
            cgroup: std::env::var_os(super::ENV_CGROUP).map(PathBuf::from),
        }
    }
}

fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; it affects only this process.
    if unsafe { libc::setrlimit(resource, &lim) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Apply `limits` to this process: memory cap, CPU cap (SIGXCPU at the cap, SIGKILL one
/// second later), and no core dumps (an aborting child must die fast).
///
/// A pooled child (`pooled`) serves many executions, and RLIMIT_CPU counts the whole
/// process's life: its hard limit stays unlimited and [`rearm_cpu`] moves the soft limit
/// before each execution (SIGXCPU's default action ends the process just the same).
pub(crate) fn apply(limits: &ChildLimits, pooled: bool) -> std::io::Result<()> {
    set(libc::RLIMIT_CORE, 0, 0)?;
    if let Some(cg) = &limits.cgroup {
        super::cgroup::enter(cg).map_err(|e| {
            std::io::Error::new(e.kind(), format!("entering cgroup {}: {e}", cg.display()))
        })?;
    } else if let Some(m) = limits.memory_bytes {
        set(limits.memory_rlimit.resource(), m, m)?;
    }
    if let Some(c) = limits.cpu_seconds {
        let hard = if pooled {
            libc::RLIM_INFINITY
        } else {
            c.max(1) + 1
        };
        set(libc::RLIMIT_CPU, c.max(1), hard)?;
    }
    Ok(())
}

/// CPU time this process has used so far (user + system).
pub fn process_cpu_time() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    std::time::Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.max(0) as u32)
}

/// CPU seconds this process has used so far (user + system), rounded up.
fn cpu_used_seconds() -> u64 {
    // SAFETY: getrusage writes a plain struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0;
    }
    let us = (u.ru_utime.tv_sec + u.ru_stime.tv_sec) as u64 * 1_000_000
        + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) as u64;
    us.div_ceil(1_000_000)
}

/// Pooled child, before each execution: allow `limits.cpu_seconds` more CPU seconds.
pub(crate) fn rearm_cpu(limits: &ChildLimits) {
    if let Some(c) = limits.cpu_seconds {
        let _ = set(
            libc::RLIMIT_CPU,
            cpu_used_seconds() + c.max(1),
            libc::RLIM_INFINITY,
        );
    }
}

/// Set `rlimit` to `bytes` in this process (used by the `probe-threads` measurement).
pub fn apply_memory_rlimit(rlimit: MemoryRlimit, bytes: u64) -> std::io::Result<()> {
    set(rlimit.resource(), bytes, bytes)
}

/// Human form of a byte count: "256 MiB", "1.5 GiB", "4096 bytes".
pub fn human_bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;
    if n >= GIB && n.is_multiple_of(GIB / 2) {
        if n.is_multiple_of(GIB) {
            format!("{} GiB", n / GIB)
        } else {
            format!("{:.1} GiB", n as f64 / GIB as f64)
        }
    } else if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// The cgroup v2 directory of this process if it is writable and has the memory
/// controller available (so per-step `memory.max` groups could be made below it).
pub fn cgroup_v2_memory() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2 only: a single "0::/path" line and a unified mount.
    if text.lines().count() != 1 {
        return None;
    }
    let rel = text.lines().next()?.strip_prefix("0::")?;
    let dir = PathBuf::from("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return None;
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: access(2) reads a valid NUL-terminated path.
    let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
    writable.then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(256 * 1024 * 1024), "256 MiB");
        assert_eq!(human_bytes(1024 * 1024 * 1024), "1 GiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
