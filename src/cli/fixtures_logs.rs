//! Fixtures of the step-log tests (tests/step_logs.rs): a step that writes to stdout and
//! stderr and logs through `log`, optionally floods stdout, and optionally fails once; and
//! the workflow `fixture.chatty` (that one step; the console's tests show its logs).

use serde::{Deserialize, Serialize};
use std::io::Write;
use waymark::{Registry, Step, StepError, Workflow};

/// Input of `fixture.chatty`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChattyIn {
    /// Extra bytes written to stdout (lines of 'x') after the fixed lines.
    pub flood_bytes: u64,
    /// If set: the first execution that creates this file fails (retryable).
    pub fail_marker: Option<String>,
}

pub const CHATTY: Step<ChattyIn, u32> = Step::new("fixture.chatty");
/// `fixture.chatty`: the `fixture.chatty` step once; its output is the attempt that succeeded.
pub const CHATTY_WF: Workflow<ChattyIn, u32> = Workflow::new("fixture.chatty");

fn chatty(ctx: &waymark::StepCtx, input: ChattyIn) -> Result<u32, StepError> {
    let attempt = ctx.attempt();
    for i in 1..=3 {
        eprintln!("chatty stderr {i} (attempt {attempt})");
    }
    for i in 1..=2 {
        println!("chatty stdout {i} (attempt {attempt})");
    }
    for i in 1..=3 {
        log::info!("chatty log {i} (attempt {attempt})");
    }
    if input.flood_bytes > 0 {
        let line = [b'x'; 1023];
        let mut out = std::io::stdout().lock();
        let mut left = input.flood_bytes;
        while left > 0 {
            let n = left.min(1024) as usize;
            if n > 1 {
                out.write_all(&line[..n - 1])?;
            }
            out.write_all(b"\n")?;
            left -= n as u64;
        }
        out.write_all(b"chatty flood end\n")?;
        out.flush()?;
    }
    if let Some(marker) = &input.fail_marker {
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok()
        {
            log::warn!("chatty fails this attempt ({attempt})");
            return Err(StepError::retryable("chatty fails its first attempt"));
        }
    }
    Ok(attempt)
}

pub fn register(reg: &mut Registry) {
    reg.step(CHATTY, chatty);
    reg.workflow(CHATTY_WF, |ctx, input: ChattyIn| ctx.step(CHATTY, &input));
}
