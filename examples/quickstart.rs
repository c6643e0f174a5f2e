//! The README quickstart: two typed steps, one workflow, one durable run.
use std::time::Duration;
use waymark::{
    Config, Ctx, Engine, Registry, StartOptions, Step, StepCtx, StepError, Workflow, WorkflowError,
};

const FETCH: Step<u32, String> = Step::new("fetch");
const SHOUT: Step<String, String> = Step::new("shout");
const GREET: Workflow<u32, String> = Workflow::new("greet");

fn fetch(ctx: &StepCtx, id: u32) -> Result<String, StepError> {
    Ok(format!("user-{id} ({})", ctx.idempotency_key())) // stable across re-executions
}

fn greet(ctx: &mut Ctx<'_>, id: u32) -> Result<String, WorkflowError> {
    let name = ctx.step(FETCH, &id)?; // journaled: never re-run once recorded
    ctx.step(SHOUT, &format!("hello, {name}"))
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.step(FETCH, fetch);
    registry.step(SHOUT, |_, s: String| Ok(s.to_uppercase()));
    registry.workflow(GREET, greet);
    registry
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    waymark::hook(registry); // first line: steps run in child processes of this binary
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(registry(), Config::new(dir.path().join("quickstart.db")))?;
    let run = engine.start_run(GREET, &7, StartOptions::key("greet-7"))?;
    println!(
        "{}",
        engine.wait_output(GREET, run, Duration::from_secs(30))?
    );
    engine.shutdown()?;
    Ok(())
}
