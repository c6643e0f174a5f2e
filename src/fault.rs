//! Fault-injection points for kill-and-restart tests.
//!
//! The environment variable `WAYMARK_FAULT` (read once) arms at most one point:
//! `POINT=N` makes the process SIGKILL itself the N-th time it passes `POINT`.
//! Points: `before_commit`, `after_commit`, `after_checkpoint`, `in_step`,
//! `before_close` (a child step returned, its successful attempt not closed yet),
//! `after_step` (step finished, result not yet committed). Unset, a point costs one
//! relaxed atomic load. `WAYMARK_FAULT_PAUSE=POINT:FILE` instead blocks at `POINT`
//! until FILE exists (deterministic race tests), e.g. `reaper_before_reclaim:/tmp/go`;
//! `POINT@N:FILE` blocks only from the N-th pass on.
//! `WAYMARK_FAULT_FAIL=POINT=N` makes the N-th pass of a failure point ([`fails`]) report a
//! failure instead: `commit_claim` = a batch that claimed runs behaves as if its COMMIT
//! and then its ROLLBACK returned an error (the connection stays inside the transaction).

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::OnceLock;

/// A place in the engine where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Before the writer commits a batch.
    BeforeCommit,
    /// After the writer committed a batch.
    AfterCommit,
    /// After a step's checkpoint was recorded.
    AfterCheckpoint,
    /// While a step runs.
    InStep,
    /// A child step returned (a pooled child's group emptied), before its successful
    /// attempt is closed (`Attempts::succeeded`).
    BeforeClose,
    /// After a step returned, before its result is recorded.
    AfterStep,
    /// In the reaper, between judging an owner dead and reclaiming its runs.
    ReaperBeforeReclaim,
    /// A failure point (see [`fails`]): COMMIT and ROLLBACK of a batch that claimed runs.
    CommitClaim,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::BeforeCommit => "before_commit",
            Point::AfterCommit => "after_commit",
            Point::AfterCheckpoint => "after_checkpoint",
            Point::InStep => "in_step",
            Point::BeforeClose => "before_close",
            Point::AfterStep => "after_step",
            Point::ReaperBeforeReclaim => "reaper_before_reclaim",
            Point::CommitClaim => "commit_claim",
        }
    }
}

struct Armed {
    kill: Option<(String, i64)>,
    fail: Option<(String, i64)>,
    /// `(point, from pass N, file)`.
    pause: Option<(String, i64, std::path::PathBuf)>,
}

static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 disarmed, 2 armed
static ARMED: OnceLock<Armed> = OnceLock::new();
static COUNT: AtomicI64 = AtomicI64::new(0);
static FAIL_COUNT: AtomicI64 = AtomicI64::new(0);
static PAUSE_COUNT: AtomicI64 = AtomicI64::new(0);

fn armed() -> Option<&'static Armed> {
    match STATE.load(Ordering::Relaxed) {
        1 => None,
        2 => ARMED.get(),
        _ => {
            let counted = |var: &str| {
                std::env::var(var).ok().and_then(|v| {
                    let (p, n) = v.split_once('=')?;
                    Some((p.trim().to_string(), n.trim().parse().ok()?))
                })
            };
            let kill = counted("WAYMARK_FAULT");
            let fail = counted("WAYMARK_FAULT_FAIL");
            let pause = std::env::var("WAYMARK_FAULT_PAUSE").ok().and_then(|v| {
                let (p, f) = v.split_once(':')?;
                let (p, from) = match p.split_once('@') {
                    Some((p, n)) => (p, n.trim().parse().ok()?),
                    None => (p, 1),
                };
                Some((p.to_string(), from, f.into()))
            });
            if kill.is_none() && pause.is_none() && fail.is_none() {
                STATE.store(1, Ordering::Relaxed);
                return None;
            }
            let a = ARMED.get_or_init(|| Armed { kill, pause, fail });
            STATE.store(2, Ordering::Relaxed);
            Some(a)
        }
    }
}

/// Pass a fault point: may kill this process or block, if armed for `point`.
pub fn point(point: Point) {
    let Some(a) = armed() else { return };
    if let Some((name, n)) = &a.kill {
        if name == point.name() && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            log::warn!("fault injection: SIGKILL at {name} #{n}");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
    if let Some((name, from, file)) = &a.pause {
        if name == point.name()
            && PAUSE_COUNT.fetch_add(1, Ordering::SeqCst) + 1 >= *from
            && !file.exists()
        {
            log::warn!(
                "fault injection: paused at {name} until {} exists",
                file.display()
            );
            while !file.exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// Pass a failure point: true if armed (`WAYMARK_FAULT_FAIL=POINT=N`) and this is the N-th
/// pass of `point`; the caller then behaves as if the operation had failed.
pub fn fails(point: Point) -> bool {
    let Some(a) = armed() else { return false };
    match &a.fail {
        Some((name, n)) if name == point.name() => {
            let hit = FAIL_COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n;
            if hit {
                log::warn!("fault injection: {name} #{n} fails");
            }
            hit
        }
        _ => false,
    }
}
