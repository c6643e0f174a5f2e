//! The warm child pool: long-lived step children serving many executions over the same
//! pipes, one set per step name (so each is started with its step's limits).
//!
//! Invariants:
//! - A child is checked out by one execution at a time; idle children sit in the pool.
//! - A child is recycled (stdin closed, reaped) after `runs_max` executions, after any
//!   execution that did not return a result, and when its resident memory passes `rss_max`.
//!   A crash, OOM, timeout or protocol error ends only that child and fails only the step it
//!   was running; the next execution gets a fresh child.
//! - Each execution records its attempt with the pooled child's pid and start time before
//!   the input is sent, exactly like a cold child; classification is the same.
//! - A child goes back to the pool only after its attempt was closed (`AttemptEnd`
//!   committed): an open attempt never names a pooled child, so no survivor kill of a
//!   reclaiming engine can hit a child that serves another run. A child whose attempt could
//!   not be closed (the run's lease was lost) is killed instead.
//! - A child goes back to the pool alone: whatever the step left running in its process
//!   group (a background process) is killed when the step returns, as it is when a cold
//!   child exits.
//! - Where the host offers memory cgroups, each pooled child lives in a cgroup of its own
//!   for its whole life (made before it is spawned, entered by the child before it serves
//!   anything, removed when the child is recycled, dies or is dropped; one left by a dead
//!   engine is removed by the next engine's sweep), so its OOM kill is classified
//!   `memory_limit` from the cgroup's counter, as for cold children.
//! - Dropping the pool kills and reaps every idle child.

use super::cgroup::StepCgroup;
use super::classify::classify_response;
use super::executor::{oom_from_cgroup, outcome_of, prepare, spawn_failure, ChildExecutor};
use super::spawn::{self, HeadTail, Running};
use crate::exec::{record_start, Attempts, ExecRequest, Executor};
use crate::outcome::Outcome;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug)]
struct Pooled {
    /// Dropped first: stdin closed, the group killed, the child reaped.
    running: Running,
    served: u64,
    /// The child's own memory cgroup for its lifetime (removed when it drops, after the
    /// child): `None` where the host offers none or the step has no memory cap.
    cgroup: Option<StepCgroup>,
    /// How the child's memory cap is enforced, for the attempt record.
    memory_cap: Option<String>,
}

/// Runs steps on warm pooled children (see module docs).
#[derive(Debug)]
pub struct PoolExecutor {
    cold: ChildExecutor,
    runs_max: u64,
    rss_max: u64,
    idle_max: usize,
    idle: Mutex<HashMap<String, Vec<Pooled>>>,
}

impl PoolExecutor {
    /// A pool starting children like `cold`, recycling them after `runs_max` executions or
    /// past `rss_max` resident bytes, keeping at most `idle_max` idle children per step.
    pub fn new(cold: ChildExecutor, runs_max: u64, rss_max: u64, idle_max: usize) -> Self {
        PoolExecutor {
            cold,
            runs_max: runs_max.max(1),
            rss_max,
            idle_max: idle_max.max(1),
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Idle children of `step` right now.
    pub fn idle_count(&self, step: &str) -> usize {
        self.idle.lock().get(step).map_or(0, Vec::len)
    }

    fn checkout(&self, step: &str) -> Option<Pooled> {
        loop {
            let p = self.idle.lock().get_mut(step)?.pop()?;
            if p.running.usable() {
                return Some(p);
            }
            // Died while idle (killed from outside): dropping it reaps it.
            log::debug!(
                "pooled child {} of step '{step}' died while idle",
                p.running.pid
            );
        }
    }

    fn checkin(&self, step: &str, p: Pooled) {
        let mut idle = self.idle.lock();
        let v = idle.entry(step.to_string()).or_default();
        if v.len() < self.idle_max {
            v.push(p);
        }
        // Else `p` drops here: stdin closes, the group is killed, the child is reaped.
    }
}

/// `step` as part of a cgroup directory name: no `/`, nothing but `[A-Za-z0-9._]`.
fn cgroup_label(step: &str) -> String {
    step.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Executor for PoolExecutor {
    fn execute(&self, attempts: &dyn Attempts, req: &ExecRequest<'_>) -> Outcome {
        if req.step.is_command() {
            return self.cold.execute(attempts, req);
        }
        let step = req.step.name();
        if req.attempt > 1 {
            self.cold.kill_survivors(attempts, req)?;
        }
        let mut cwd = None;
        let program = self.cold.program().to_path_buf();
        let mut p = prepare(
            &program,
            self.cold.memory_rlimit,
            self.cold.grace,
            step,
            false,
            (req.fence.run_id, req.seq, req.attempt as u32),
            req.input,
            req.limits,
            req.payload_limit,
            req.cancel.clone(),
            &mut cwd,
        )?;
        p.exchange.log = Some(super::executor::step_log(attempts, req));
        let mut pooled = match self.checkout(step) {
            Some(p) => p,
            None => {
                p.spec.mode = "pool";
                p.spec
                    .env
                    .push((super::ENV_POOL_RUNS.to_string(), self.runs_max.to_string()));
                let label = format!("pool-{}", cgroup_label(step));
                let (cgroup, memory_cap) = self.cold.child_cgroup(&mut p.spec, &label, req.limits);
                let running = spawn::spawn(&p.spec).map_err(|e| spawn_failure(&program, e))?;
                Pooled {
                    running,
                    served: 0,
                    cgroup,
                    memory_cap,
                }
            }
        };
        let memory_cap = pooled.memory_cap.clone();
        // OOM kills counted before this execution (an earlier one may have lost a
        // grandchild to the OOM killer and still returned).
        let oom_before = pooled.cgroup.as_ref().map_or(0, StepCgroup::oom_kills);
        let pid = pooled.running.pid;
        if let Err(f) = record_start(attempts, req, pid) {
            // The child may be fine, but it has no input yet: put it back.
            self.checkin(step, pooled);
            return Err(f);
        }
        crate::fault::point(crate::fault::Point::InStep);
        let started = Instant::now();
        let mut stderr = HeadTail::new(req.limits.stderr_bytes_max);
        let talk = pooled.running.talk(&mut p.exchange, &mut stderr);
        pooled.served += 1;
        match (&talk.intent, &talk.response) {
            (None, Some(resp)) => {
                let outcome = classify_response(resp, req.limits);
                let log = p.exchange.log.take();
                // The step returned, but what it started in its group (a background
                // process) is still running: it ends with the step, as it does when a cold
                // child exits. A child whose group cannot be emptied is not reused.
                let wait = std::time::Duration::from_secs(1);
                let emptied = outcome.is_ok()
                    && match pooled
                        .cgroup
                        .as_ref()
                        .and_then(|c| c.kill_all_but(pid, wait))
                    {
                        Some(emptied) => emptied,
                        None => pooled.running.start_time().is_some_and(|start| {
                            super::group::kill_group_except_leader(pid, start, wait)
                        }),
                    };
                // Close the attempt (with its logs, one commit) while the child is still
                // checked out. An attempt left open names a live pid; a later reclaimer's
                // survivor kill would hit that child while it serves another run. So a
                // child whose attempt could not be closed (lease lost) is never returned to
                // the pool.
                let closed = if emptied {
                    let reason = format!(
                        "completed in pooled pid {pid} after {} ms",
                        started.elapsed().as_millis()
                    );
                    super::executor::close_success(attempts, req, reason, log, memory_cap)
                        .map_err(|e| {
                            log::warn!(
                                "run {}: step '{step}' attempt {} in pooled child {pid} not closed ({e}); the child is not returned to the pool",
                                req.fence.run_id,
                                req.attempt
                            )
                        })
                        .is_ok()
                } else {
                    super::executor::record_detail(attempts, req, log, memory_cap);
                    false
                };
                let keep = closed
                    && pooled.served < self.runs_max
                    && pooled.running.rss_bytes() <= self.rss_max
                    && pooled.running.usable();
                if keep {
                    self.checkin(step, pooled);
                } else {
                    log::debug!(
                        "recycling pooled child {pid} of step '{step}' after {} executions",
                        pooled.served
                    );
                    pooled.running.finish(p.exchange, talk, stderr, started);
                }
                outcome
            }
            _ => {
                let mut finished = pooled.running.finish(p.exchange, talk, stderr, started);
                let mut outcome = outcome_of(&finished, req.limits, step, false, req.payload_limit);
                if let Some(cg) = pooled.cgroup.take() {
                    oom_from_cgroup(&mut outcome, &finished, &cg, oom_before, req.limits);
                    cg.remove();
                }
                super::executor::record_detail(attempts, req, finished.log.take(), memory_cap);
                outcome
            }
        }
    }
}
