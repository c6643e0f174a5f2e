//! What a workload costs the machine, per unit of work: context switches and CPU time
//! (getrusage of this process and of its waited-for children, before and after), and
//! SQLite commits where the workload's writers count them.
//!
//! RUSAGE_SELF counts every thread of the bench process (the engine's and the bench's own
//! progress polling, a few per millisecond); RUSAGE_CHILDREN counts only children that were
//! waited for, so a meter is read after the workload's children were reaped.
//!
//! Per thread, `/proc/self/task/*/schedstat` gives the time each thread of this process spent
//! on a CPU and waiting in a run queue for one. The single writer thread's on-CPU time per
//! unit says how many units a second the writer alone could do (its bound, fsync aside), and
//! the run-queue time says how much the workload waited for the machine's CPUs. Threads are
//! read while the engine still runs (`Meter::lap`): an exited thread's times are gone.

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

/// On-CPU and run-queue wait time of one thread, nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    cpu_ns: u64,
    wait_ns: u64,
}

/// A snapshot of this process's threads: (thread id, name, times).
type Threads = Vec<(u64, String, Sched)>;

/// The name of the engine's writer thread (`store/writer.rs`).
const WRITER: &str = "waymark-writer";

/// Every live thread of this process: (thread id, name, times). Empty where /proc has no
/// schedstat (then the per-thread figures are absent, not zero).
fn threads() -> Threads {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u64 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
        let mut f = stat.split_whitespace().map(|x| x.parse::<u64>().ok());
        let (cpu_ns, wait_ns) = (f.next()??, f.next()??);
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        Some((tid, name.trim_end().to_string(), Sched { cpu_ns, wait_ns }))
    })
    .collect()
}

/// This process's writer thread(s): on-CPU nanoseconds so far (`None` without one).
pub fn writer_cpu_ns() -> Option<u64> {
    thread_delta(&[], &threads()).0
}

/// What the threads did between two snapshots: (writer on-CPU ns, if a writer thread ran;
/// run-queue wait ns of all threads). A thread born in between counts from zero.
fn thread_delta(
    before: &[(u64, String, Sched)],
    after: &[(u64, String, Sched)],
) -> (Option<u64>, u64) {
    let mut writer = None;
    let mut wait = 0;
    for (tid, name, now) in after {
        let then = before
            .iter()
            .find(|(t, n, _)| t == tid && n == name)
            .map(|(_, _, s)| *s)
            .unwrap_or_default();
        wait += now.wait_ns.saturating_sub(then.wait_ns);
        if name == WRITER {
            *writer.get_or_insert(0) += now.cpu_ns.saturating_sub(then.cpu_ns);
        }
    }
    (writer.filter(|w| *w > 0), wait)
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
    /// The writer thread's on-CPU microseconds per unit, where the workload's engine runs
    /// in this process with a writer thread.
    pub writer_cpu_us: Option<f64>,
    /// The writer thread's on-CPU time as a share of the workload's wall time (1.0: it
    /// never left a CPU).
    pub writer_busy: Option<f64>,
    /// Microseconds per unit that this process's threads were runnable but waited for a
    /// CPU (the machine's CPUs, not the engine, were the limit for that long).
    pub runq_us: Option<f64>,
}

impl Cost {
    /// Units a second the machine's CPUs allow at this CPU cost per unit, if every CPU did
    /// nothing else.
    pub fn cpu_bound(&self) -> Option<f64> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        (self.cpu_us > 0.0).then(|| cpus * 1e6 / self.cpu_us)
    }

    /// Units a second the single writer thread allows at its CPU cost per unit (fsync
    /// waits aside: the real bound is lower).
    pub fn writer_bound(&self) -> Option<f64> {
        self.writer_cpu_us.filter(|w| *w > 0.0).map(|w| 1e6 / w)
    }
}

/// getrusage and per-thread snapshots taken when a workload starts.
#[derive(Debug, Clone)]
pub struct Meter {
    own: Usage,
    children: Usage,
    commits: Option<u64>,
    threads: Threads,
    started: std::time::Instant,
    /// The threads' snapshot and the wall time when the work was done (`lap`).
    lap: Option<(Threads, std::time::Duration)>,
}

impl Meter {
    /// Start measuring; `commits` is the writer's commit count now, if the workload has one.
    pub fn start(commits: Option<u64>) -> Meter {
        Meter {
            own: usage(libc::RUSAGE_SELF),
            children: usage(libc::RUSAGE_CHILDREN),
            commits,
            threads: threads(),
            started: std::time::Instant::now(),
            lap: None,
        }
    }

    /// The work is done: read the threads now, while the engine's threads still live (the
    /// getrusage figures are read at `finish`, after its children were reaped).
    pub fn lap(&mut self) {
        self.lap = Some((threads(), self.started.elapsed()));
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
        let (after, wall) = self
            .lap
            .clone()
            .unwrap_or_else(|| (threads(), self.started.elapsed()));
        let (writer_ns, wait_ns) = thread_delta(&self.threads, &after);
        let seen = !after.is_empty();
        Cost {
            per,
            units,
            commits,
            switches: switches as f64 / n,
            cpu_us: cpu_us as f64 / n,
            writer_cpu_us: writer_ns.map(|w| w as f64 / 1e3 / n),
            writer_busy: writer_ns.map(|w| w as f64 / wall.as_nanos().max(1) as f64),
            runq_us: seen.then(|| wait_ns as f64 / 1e3 / n),
        }
    }
}
