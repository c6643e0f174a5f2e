//! A photo-import application with its own admin command line (`waymark::cli`).
//!
//! ```text
//! cargo run --example operate -- serve --db photos.db &
//! cargo run --example operate -- start import --db photos.db --json '{"album":"trip","photos":["a.jpg","b.jpg"]}'
//! cargo run --example operate -- send 1 approve --db photos.db --json '{"ok":true,"by":"ann"}'
//! cargo run --example operate -- show 1 --db photos.db --json
//! ```
//!
//! `publish` fails while the environment variable `OPERATE_PUBLISH_FAILS` is set in the
//! serving process: serve with it, see the run fail, serve without it and `retry` the run.
//! Without arguments it prints its help and exits 0.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use waymark::{Ctx, Event, Registry, Step, StepCtx, StepError, Workflow, WorkflowError};

#[derive(Debug, Serialize, Deserialize)]
struct Import {
    album: String,
    photos: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Thumb {
    photo: String,
    width: u32,
    height: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Approval {
    ok: bool,
    by: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Published {
    album: String,
    thumbs: usize,
    approved_by: String,
}

const THUMBNAIL: Step<String, Thumb> = Step::new("thumbnail");
const PUBLISH: Step<(String, usize), String> = Step::new("publish");
const APPROVE: Event<Approval> = Event::new("approve");
const IMPORT: Workflow<Import, Published> = Workflow::new("import");

fn thumbnail(_: &StepCtx, photo: String) -> Result<Thumb, StepError> {
    log::info!("thumbnail of {photo}");
    Ok(Thumb {
        width: 160,
        height: 120,
        photo,
    })
}

fn publish(_: &StepCtx, (album, n): (String, usize)) -> Result<String, StepError> {
    if std::env::var_os("OPERATE_PUBLISH_FAILS").is_some() {
        return Err(StepError::permanent("the album server refused the upload"));
    }
    log::info!("published {album} ({n} thumbnails)");
    Ok(format!("https://photos.example/{album}"))
}

fn import(ctx: &mut Ctx<'_>, input: Import) -> Result<Published, WorkflowError> {
    let mut thumbs = Vec::new();
    for photo in &input.photos {
        thumbs.push(ctx.step(THUMBNAIL, photo)?);
    }
    // `None`: no approval within a day.
    let Some(approval) = ctx.wait_event(APPROVE, Duration::from_secs(24 * 3600))? else {
        return Err(WorkflowError::failed("no approval within a day"));
    };
    if !approval.ok {
        return Err(WorkflowError::failed(format!(
            "rejected by {}",
            approval.by
        )));
    }
    ctx.step(PUBLISH, &(input.album.clone(), thumbs.len()))?;
    Ok(Published {
        album: input.album,
        thumbs: thumbs.len(),
        approved_by: approval.by,
    })
}

fn build_registry() -> Registry {
    let mut registry = Registry::new();
    registry.step(THUMBNAIL, thumbnail);
    registry.step(PUBLISH, publish);
    registry.event(APPROVE);
    registry.workflow(IMPORT, import);
    registry
}

fn main() {
    // Steps run in child processes of this binary.
    waymark::hook(build_registry);
    std::process::exit(waymark::cli::main(build_registry));
}
