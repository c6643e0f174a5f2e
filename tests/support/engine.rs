//! Engines inside the test process.

use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use waymark::StepOptions;
use waymark::{Config, Registry, Step, StepError};

/// Engine config for library tests: test binaries have no child hook in `main`, so steps run
/// in-process.
pub fn in_process_config(db: &Path) -> Config {
    let mut c = Config::new(db);
    c.isolation = waymark::Isolation::InProcess;
    c
}

/// An engine configuration on `dir/t.db` whose step children are the real `waymark` binary
/// (its main installs the child hook and registers the fixture steps).
pub fn child_config(dir: &Path) -> Config {
    child_config_on(super::Backend::Sqlite, dir)
}

/// [`child_config`] on a fresh database of `backend` (`dir/t.db` for SQLite).
pub fn child_config_on(backend: super::Backend, dir: &Path) -> Config {
    let mut c = Config::new(backend.fresh_db(dir, "t.db")).with_lease_ttl(Duration::from_secs(10));
    c.workers = 4;
    c.child_program = Some(PathBuf::from(super::bin()));
    c.kill_grace = Duration::from_millis(500);
    c
}

/// Register `step` on the engine side only: it runs in a child of the waymark binary,
/// which registers the real function under the same name.
pub fn child_step<I, O>(reg: &mut Registry, step: Step<I, O>) -> &mut StepOptions
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
{
    reg.step(step, |_, _: I| -> Result<O, StepError> {
        Err(StepError::permanent("this step runs in a child process"))
    })
}
