//! The engine's side of the seams below it: [`Attempts`] (where executors record the
//! attempts they start) and [`RunEnv`] (what a workflow's context needs).

use super::Inner;
use crate::exec::{Attempts, EarlierAttempt, ExecRequest};
use crate::store::{Storage, StoreError};
use crate::workflow::ctx::RunEnv;
use std::sync::Arc;

impl Attempts for Inner {
    fn started(
        &self,
        req: &ExecRequest<'_>,
        pid: Option<u32>,
        pid_start: Option<u64>,
    ) -> Result<(), StoreError> {
        self.store.attempt_start(
            req.fence,
            req.seq,
            req.attempt,
            req.step.name().to_string(),
            pid,
            pid_start,
        )
    }

    fn succeeded(
        &self,
        req: &ExecRequest<'_>,
        reason: String,
        logs: String,
        memory_cap: Option<String>,
    ) -> Result<(), StoreError> {
        self.store.attempt_close(
            req.fence,
            req.seq,
            req.attempt,
            "success",
            reason,
            logs,
            memory_cap,
        )
    }

    fn detail(
        &self,
        req: &ExecRequest<'_>,
        logs: String,
        memory_cap: Option<String>,
    ) -> Result<(), StoreError> {
        self.store
            .attempt_detail(req.fence, req.seq, req.attempt, logs, memory_cap)
    }

    fn log_bounds(&self) -> (u64, u64) {
        (
            self.config.step_log_head_bytes,
            self.config.step_log_tail_bytes,
        )
    }

    fn earlier(&self, req: &ExecRequest<'_>) -> Result<Vec<EarlierAttempt>, StoreError> {
        let run_id = req.fence.run_id;
        let open = self.store.open_attempts(run_id)?;
        let mut out = Vec::new();
        for row in open.into_iter().filter(|a| a.seq == req.seq) {
            if *row.owner == *req.fence.owner && row.epoch == req.fence.epoch {
                continue;
            }
            let host = self.store.engine_host(&row.owner).unwrap_or(None);
            let elsewhere = host.filter(|h| {
                crate::host::place(&self.boot_id, h, self.hosts_shared)
                    != crate::host::Place::SameNamespace
            });
            out.push(EarlierAttempt { row, elsewhere });
        }
        Ok(out)
    }
}

impl RunEnv for Inner {
    fn config(&self) -> &crate::config::Config {
        &self.config
    }
    fn store(&self) -> &dyn Storage {
        &*self.store
    }
    fn registry(&self) -> &Arc<crate::workflow::registry::Registry> {
        &self.registry
    }
    fn executor(&self, isolation: crate::config::Isolation) -> &dyn crate::exec::Executor {
        Inner::executor(self, isolation)
    }
    fn lease_valid_for(&self, owner: &str) -> bool {
        self.lease.valid_for(owner)
    }
    fn lapsed(&self, run_id: i64, epoch: i64) -> bool {
        self.control.lapsed(run_id, epoch)
    }
    fn shutting_down(&self) -> bool {
        Inner::shutting_down(self)
    }
    fn steps_aborted(&self) -> bool {
        Inner::steps_aborted(self)
    }
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
    fn wake_dispatcher(&self) {
        Inner::wake_dispatcher(self)
    }
}
