//! Fixture workflows for the kill-and-restart tests of the durable features (sleep, events,
//! children). Registered in `waymark serve`; started with `waymark start NAME --json ...`.

use super::fixtures::{SlowIn, SLEEP, SLOW};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use waymark::{Ctx, Event, Registry, Step, StepCtx, StepError, Workflow, WorkflowError};

/// Input of `fixture.sleeper`: sleep `ms` (or until `until_ms`, ms since the epoch), then
/// one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SleeperIn {
    pub ms: u64,
    #[serde(default)]
    pub until_ms: Option<i64>,
}

/// Input of `fixture.waiter`: wait for event `name` up to `timeout_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaiterIn {
    pub name: String,
    pub timeout_ms: u64,
}

/// Input of `fixture.step_then_wait`: one step, then a wait of kind `wait` ("event": an
/// event with a one-hour timeout, "sleep": one hour, "child": join a child that sleeps one
/// hour), then one more step. The first step sleeps `ms`, or, with `gate`, waits (up to a
/// minute) until the file `gate` exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepWaitIn {
    #[serde(default)]
    pub ms: u64,
    pub wait: String,
    #[serde(default)]
    pub gate: Option<String>,
}

/// Input of `fixture.echo` (bit-rot tests): a step returns `text` + "-OUTPUT" (a
/// distinctive journaled payload to find in the file), then a durable sleep of `ms`, then
/// the run's output is that recorded step output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoIn {
    pub text: String,
    pub ms: u64,
}

pub const ECHO_STEP: Step<String, String> = Step::new("fixture.echo");
pub const ECHO: Workflow<EchoIn, String> = Workflow::new("fixture.echo");
/// Input of `fixture.three`: two marking steps, then `fixture.third`, which fails for good
/// while the file `fail_file` exists (a test flips it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreeIn {
    pub fail_file: String,
}

pub const THIRD: Step<String, u64> = Step::new("fixture.third");
pub const THREE: Workflow<ThreeIn, u64> = Workflow::new("fixture.three");
/// `fixture.approve`: one step, a wait for the typed event `approve` (a bool), one step.
pub const APPROVE_WF: Workflow<(), String> = Workflow::new("fixture.approve");
pub const APPROVE: Event<bool> = Event::new("approve");
pub const MARK: Step<u64, u64> = Step::new("fixture.mark");
pub const GATE: Step<String, u64> = Step::new("fixture.gate");
pub const STEP_THEN_WAIT: Workflow<StepWaitIn, u64> = Workflow::new("fixture.step_then_wait");
pub const SLEEPER: Workflow<SleeperIn, u64> = Workflow::new("fixture.sleeper");
pub const WAITER: Workflow<WaiterIn, String> = Workflow::new("fixture.waiter");
pub const PARENT: Workflow<SlowIn, u64> = Workflow::new("fixture.parent");
pub const PROBE_STEP: Step<u64, u64> = Step::new("fixture.qprobe");
pub const PROBE: Workflow<u64, u64> = Workflow::new("fixture.qprobe");
/// Input of `fixture.parent_then_third`: a child `fixture.slow` run with `child`, then the
/// step `fixture.third` (fails while `fail_file` exists), then the join of the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParentThirdIn {
    pub child: SlowIn,
    pub fail_file: String,
}
/// `fixture.parent_then_third`: start a child, a step that may fail for good, join.
pub const PARENT_THIRD: Workflow<ParentThirdIn, u64> = Workflow::new("fixture.parent_then_third");
/// `fixture.ticks`: `n` times the step `fixture.mark` then a wait for the event "tick"
/// (one hour); returns `n`. Many waits per run, for races between events and waits.
pub const TICKS: Workflow<u64, u64> = Workflow::new("fixture.ticks");
/// `fixture.slow`'s steps, then the workflow fails (permanently) on its own.
pub const SLOW_THEN_FAIL: Workflow<SlowIn, u64> = Workflow::new("fixture.slow_then_fail");

/// Append `run seq step pid` to `$WAYMARK_DEMO_EFFECTS` in one write(2) (O_APPEND), so
/// lines from concurrent workers never interleave.
fn record_effect(ctx: &StepCtx, step: &str) {
    use std::io::Write;
    if let Some(path) = std::env::var_os("WAYMARK_DEMO_EFFECTS") {
        let line = format!(
            "{} {} {step} {}\n",
            ctx.run_id(),
            ctx.seq(),
            std::process::id()
        );
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn mark(ctx: &StepCtx, x: u64) -> Result<u64, StepError> {
    record_effect(ctx, "mark");
    Ok(x + 1)
}

fn sleeper(ctx: &mut Ctx<'_>, input: SleeperIn) -> Result<u64, WorkflowError> {
    match input.until_ms {
        Some(at) => ctx.sleep_until_ms(at)?,
        None => ctx.sleep(Duration::from_millis(input.ms))?,
    }
    ctx.step(MARK, &input.ms)
}

fn waiter(ctx: &mut Ctx<'_>, input: WaiterIn) -> Result<String, WorkflowError> {
    ctx.step(MARK, &0)?;
    let got: Option<serde_json::Value> =
        ctx.wait_event(&input.name, Duration::from_millis(input.timeout_ms))?;
    ctx.step(MARK, &1)?;
    Ok(got.map_or_else(|| "timeout".to_string(), |v| v.to_string()))
}

fn parent(ctx: &mut Ctx<'_>, input: SlowIn) -> Result<u64, WorkflowError> {
    let child = ctx.start_child(SLOW, &input)?;
    ctx.step(MARK, &0)?;
    Ok(ctx.join(&child)? + 1)
}

/// Wait (bounded: one minute) until the file `path` exists.
fn gate(ctx: &StepCtx, path: String) -> Result<u64, StepError> {
    record_effect(ctx, "gate");
    for _ in 0..6000 {
        if std::path::Path::new(&path).exists() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(StepError::permanent(format!("gate {path} never opened")))
}

const HOUR_MS: u64 = 3_600_000;

fn step_then_wait(ctx: &mut Ctx<'_>, input: StepWaitIn) -> Result<u64, WorkflowError> {
    match input.gate {
        Some(path) => ctx.step(GATE, &path)?,
        None => ctx.step(super::fixtures::SLEEP, &input.ms)?,
    };
    match input.wait.as_str() {
        "event" => {
            ctx.wait_event::<serde_json::Value>("go", Duration::from_millis(HOUR_MS))?;
        }
        "sleep" => ctx.sleep(Duration::from_millis(HOUR_MS))?,
        "child" => {
            let child = ctx.start_child(
                SLEEPER,
                &SleeperIn {
                    ms: HOUR_MS,
                    until_ms: None,
                },
            )?;
            ctx.join(&child)?;
        }
        other => return Err(WorkflowError::failed(format!("unknown wait '{other}'"))),
    }
    ctx.step(MARK, &1)
}

/// Concurrency probe (for queue limits across processes): while it runs, a file named after
/// the run exists in `$WAYMARK_PROBE_DIR`; it returns how many such files it saw after
/// creating its own (the most steps running at once, from its point of view).
fn probe(ctx: &StepCtx, ms: u64) -> Result<u64, StepError> {
    let dir = std::env::var_os("WAYMARK_PROBE_DIR")
        .ok_or_else(|| StepError::permanent("WAYMARK_PROBE_DIR is not set"))?;
    let me = std::path::Path::new(&dir).join(format!("{}-{}", ctx.run_id(), ctx.seq()));
    std::fs::write(&me, b"").map_err(|e| StepError::permanent(e.to_string()))?;
    let seen = std::fs::read_dir(&dir)
        .map_err(|e| StepError::permanent(e.to_string()))?
        .count() as u64;
    std::thread::sleep(Duration::from_millis(ms));
    let seen_after = std::fs::read_dir(&dir)
        .map_err(|e| StepError::permanent(e.to_string()))?
        .count() as u64;
    let _ = std::fs::remove_file(&me);
    Ok(seen.max(seen_after))
}

fn third(ctx: &StepCtx, fail_file: String) -> Result<u64, StepError> {
    record_effect(ctx, "third");
    if std::path::Path::new(&fail_file).exists() {
        return Err(StepError::permanent(format!("{fail_file} exists")));
    }
    Ok(3)
}

fn three(ctx: &mut Ctx<'_>, input: ThreeIn) -> Result<u64, WorkflowError> {
    let a = ctx.step(MARK, &1)?;
    let b = ctx.step(MARK, &a)?;
    Ok(b + ctx.step(THIRD, &input.fail_file)?)
}

fn approve(ctx: &mut Ctx<'_>, _: ()) -> Result<String, WorkflowError> {
    ctx.step(MARK, &0)?;
    let got = ctx.wait_event(APPROVE, Duration::from_millis(HOUR_MS))?;
    ctx.step(MARK, &1)?;
    Ok(format!("approved={got:?}"))
}

fn parent_then_third(ctx: &mut Ctx<'_>, input: ParentThirdIn) -> Result<u64, WorkflowError> {
    let child = ctx.start_child(SLOW, &input.child)?;
    let third = ctx.step(THIRD, &input.fail_file)?;
    Ok(ctx.join(&child)? + third)
}

/// Register the feature fixtures (their steps and workflows).
pub fn register(reg: &mut Registry) {
    reg.step(MARK, mark);
    reg.workflow(SLEEPER, sleeper);
    reg.workflow(WAITER, waiter);
    reg.workflow(PARENT, parent);
    reg.step(GATE, gate);
    reg.workflow(STEP_THEN_WAIT, step_then_wait);
    reg.step(PROBE_STEP, probe);
    reg.workflow(PROBE, |ctx, ms: u64| ctx.step(PROBE_STEP, &ms));
    reg.step(ECHO_STEP, |_, text: String| Ok(format!("{text}-OUTPUT")));
    reg.workflow(ECHO, |ctx, input: EchoIn| {
        let out = ctx.step(ECHO_STEP, &input.text)?;
        ctx.sleep(Duration::from_millis(input.ms))?;
        Ok(out)
    });
    reg.workflow(SLOW_THEN_FAIL, |ctx, input: SlowIn| {
        for _ in 0..input.steps {
            ctx.step(SLEEP, &input.ms)?;
        }
        Err(WorkflowError::Failed(
            "fixture.slow_then_fail fails by design".into(),
        ))
    });
    reg.step(THIRD, third);
    reg.workflow(THREE, three);
    reg.workflow(APPROVE_WF, approve);
    reg.workflow(PARENT_THIRD, parent_then_third);
    reg.workflow(TICKS, |ctx, n: u64| {
        for i in 0..n {
            ctx.step(MARK, &i)?;
            ctx.wait_event::<serde_json::Value>("tick", Duration::from_millis(HOUR_MS))?;
        }
        Ok(n)
    });
    reg.event(APPROVE);
}
