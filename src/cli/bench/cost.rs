//! What a workload costs the machine, per unit of work: context switches and CPU time
//! (getrusage of this process and of its waited-for children, before and after), and
//! SQLite commits where the workload's writers count them.
//!
//! RUSAGE_SELF counts every thread of the bench process (the engine's and the bench's own
//! progress polling, a few per millisecond); RUSAGE_CHILDREN counts only children that were
//! waited for, so a meter is read after the workload's children were reaped.

/// Context switches (voluntary + involuntary) and CPU time (user + system, µs) so far.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    switches: u64,
    cpu_us: u64,
}

fn usage(who: libc::c_int) -> Usage {
    // SAFETY: getrusage only writes into the struct we own; an all-zero rusage is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `who` is RUSAGE_SELF or RUSAGE_CHILDREN.
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return Usage::default();
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Usage {
        switches: (u.ru_nvcsw + u.ru_nivcsw) as u64,
        cpu_us: us(u.ru_utime) + us(u.ru_stime),
    }
}

/// The cost of one workload per unit of work (a run, a start, a commit, a spawn ...).
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// What one unit is ("run", "start", "commit" ...).
    pub per: &'static str,
    /// How many units the workload did.
    pub units: u64,
    /// SQLite commits per unit, where the workload's writers count them.
    pub commits: Option<f64>,
    /// Context switches per unit (this process and its reaped children).
    pub switches: f64,
    /// CPU microseconds per unit (user + system, this process and its reaped children).
    pub cpu_us: f64,
}

/// getrusage snapshots taken when a workload starts.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    own: Usage,
    children: Usage,
    commits: Option<u64>,
}

impl Meter {
    /// Start measuring; `commits` is the writer's commit count now, if the workload has one.
    pub fn start(commits: Option<u64>) -> Meter {
        Meter {
            own: usage(libc::RUSAGE_SELF),
            children: usage(libc::RUSAGE_CHILDREN),
            commits,
        }
    }

    /// The cost since `start`, per unit. `commits` is the commit count now (same counter as
    /// at the start), or the commits made elsewhere (by children) when the start had none.
    pub fn finish(&self, per: &'static str, units: u64, commits: Option<u64>) -> Cost {
        let own = usage(libc::RUSAGE_SELF);
        let children = usage(libc::RUSAGE_CHILDREN);
        let n = units.max(1) as f64;
        let switches = (own.switches - self.own.switches)
            + children.switches.saturating_sub(self.children.switches);
        let cpu_us =
            (own.cpu_us - self.own.cpu_us) + children.cpu_us.saturating_sub(self.children.cpu_us);
        let commits = commits.map(|c| c.saturating_sub(self.commits.unwrap_or(0)) as f64 / n);
        Cost {
            per,
            units,
            commits,
            switches: switches as f64 / n,
            cpu_us: cpu_us as f64 / n,
        }
    }
}
