//! The durable features in one program: sleep, events, children, cancellation, deadlines,
//! queues, schedules, retention. Run: `cargo run --release --example features`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use waymark::Missed;
use waymark::{
    Config, Ctx, Engine, Registry, StartOptions, Step, StepCtx, StepError, Workflow, WorkflowError,
};

const SEND_MAIL: Step<String, ()> = Step::new("send_mail");
const REMIND: Workflow<String, ()> = Workflow::new("remind");
const APPROVAL: Workflow<String, bool> = Workflow::new("approval");
const BATCH: Workflow<u32, u32> = Workflow::new("batch");
const ITEM: Workflow<u32, u32> = Workflow::new("item");

fn send_mail(_: &StepCtx, to: String) -> Result<(), StepError> {
    log::info!("mail to {to}");
    Ok(())
}

// Durable sleep: the wake-up time is journaled; no thread waits; survives restarts.
fn remind(ctx: &mut Ctx<'_>, who: String) -> Result<(), WorkflowError> {
    ctx.sleep(Duration::from_millis(200))?;
    ctx.step(SEND_MAIL, &who)
}

// Events: wait (suspended) until someone sends "decision", or 1 day passes.
fn approval(ctx: &mut Ctx<'_>, doc: String) -> Result<bool, WorkflowError> {
    ctx.step(SEND_MAIL, &format!("please approve {doc}"))?;
    let decision: Option<bool> = ctx.wait_event("decision", Duration::from_secs(86_400))?;
    Ok(decision.unwrap_or(false))
}

// Child workflows: started and joined durably; cancelling the batch cancels the items.
fn batch(ctx: &mut Ctx<'_>, n: u32) -> Result<u32, WorkflowError> {
    let children = (0..n)
        .map(|i| ctx.start_child(ITEM, &i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sum = 0;
    for child in &children {
        sum += ctx.join(child)?;
    }
    Ok(sum)
}

fn build_registry() -> Registry {
    let mut registry = Registry::new();
    registry.step(SEND_MAIL, send_mail);
    registry.workflow(REMIND, remind);
    registry.workflow(APPROVAL, approval);
    registry.workflow(BATCH, batch);
    registry.workflow(ITEM, |_ctx: &mut Ctx<'_>, i: u32| Ok(i * 10));
    registry
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Steps run in child processes of this binary by default: serve them here.
    waymark::hook(build_registry);
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(build_registry(), Config::new(dir.path().join("app.db")))?;

    let r = engine.start_run(REMIND, &"ada".to_string(), StartOptions::default())?;
    engine.wait_output(REMIND, r, Duration::from_secs(10))?;

    let a = engine.start_run(APPROVAL, &"doc-7".to_string(), StartOptions::default())?;
    engine.send_event(a, "decision", &true)?; // kept even if sent before the run waits
    assert!(engine.wait_output(APPROVAL, a, Duration::from_secs(10))?);

    let b = engine.start_run(BATCH, &4, StartOptions::default())?;
    assert_eq!(engine.wait_output(BATCH, b, Duration::from_secs(10))?, 60);

    // Cancellation: a waiting run ends `cancelled` at once.
    let c = engine.start_run(APPROVAL, &"doc-8".to_string(), StartOptions::default())?;
    std::thread::sleep(Duration::from_millis(300));
    engine.cancel(c)?;

    // Deadlines, queues with a concurrency limit (across processes), priority, not-before.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    engine.set_queue_limit("mail", Some(2))?;
    let opts = StartOptions {
        queue: Some("mail".into()),
        priority: 5,
        not_before_ms: Some(now + 100),
        deadline_ms: Some(now + 60_000),
        ..Default::default()
    };
    let q = engine.start_run(REMIND, &"bob".to_string(), opts)?;
    engine.wait_output(REMIND, q, Duration::from_secs(10))?;

    // Schedules: once per due time across engines and restarts (UTC cron).
    engine.schedule_with(
        "nightly",
        "0 3 * * *",
        REMIND,
        &"ops".to_string(),
        Missed::Skip,
    )?;

    // Retention: delete finished runs older than 7 days and shrink the file.
    let purged = engine.purge(Duration::from_secs(7 * 86_400))?;
    log::info!("purged {purged} runs");
    engine.shutdown()?;
    Ok(())
}
