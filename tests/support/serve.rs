//! Engines as real `waymark serve` processes, and the other subcommands that drive them.

use super::{bin, cmd, kill9, run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A spawned engine process, SIGCONTed and SIGKILLed when dropped (also when a test panics).
pub struct Proc {
    pub child: Child,
    /// Where its stderr goes (None: inherited).
    pub log: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }
    pub fn kill(&mut self) {
        kill9(&mut self.child);
    }
    /// Wait for the process to exit; panics with its log after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "engine did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// `waymark serve --db DB --workers W --lease-ttl-ms TTL` with `envs`; stderr to
/// `dir/NAME.log`, effects to `dir/effects`.
pub fn serve(
    dir: &Path,
    name: &str,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    envs: &[(&str, String)],
) -> Proc {
    serve_with(dir, name, db, workers, ttl_ms, envs, &[])
}

/// `waymark serve --db DB --workers W --lease-ttl-ms TTL EXTRA...` with RUST_LOG=info, the
/// effects file in `dir`, no stdin, stderr to `dir/NAME.log` (returned); stdout is the
/// caller's choice.
fn serve_command(
    dir: &Path,
    name: &str,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    extra: &[&str],
) -> (Command, std::path::PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--db")
        .arg(db)
        .args([
            "--workers",
            &workers.to_string(),
            "--lease-ttl-ms",
            &ttl_ms.to_string(),
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("WAYMARK_DEMO_EFFECTS", dir.join("effects"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    (cmd, log)
}

/// `waymark serve --db DB --workers W --lease-ttl-ms TTL EXTRA...` with `envs`.
pub fn serve_with(
    dir: &Path,
    name: &str,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    envs: &[(&str, String)],
    extra: &[&str],
) -> Proc {
    let (mut cmd, log) = serve_command(dir, name, db, workers, ttl_ms, extra);
    cmd.stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log: Some(log),
    }
}

/// `waymark serve --db DB --workers W --lease-ttl-ms TTL --ui 127.0.0.1:0` (an engine with
/// the web console in its process): the engine and the console's URL (without the final
/// `/`), read from the first line of its stdout. Stderr to `dir/NAME.log`.
pub fn serve_with_ui(
    dir: &Path,
    name: &str,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
) -> (Proc, String) {
    use std::io::BufRead as _;
    let (mut cmd, log) = serve_command(dir, name, db, workers, ttl_ms, &["--ui", "127.0.0.1:0"]);
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let proc = Proc {
        child,
        log: Some(log),
    };
    assert!(
        line.starts_with("http://127.0.0.1:"),
        "serve --ui printed {line:?}; its log: {}",
        proc.log_text()
    );
    (proc, line.trim().trim_end_matches('/').to_string())
}

/// `unshare --pid --fork --mount-proc --kill-child waymark serve --workers W --lease-ttl-ms
/// TTL EXTRA... --db DB`: an engine in its own PID namespace (as in another container on this
/// host), stderr to `log` (or discarded). Killing the returned `unshare` takes the engine
/// down with it. Needs root.
pub fn serve_in_pid_namespace(
    dir: &Path,
    db: &Path,
    workers: usize,
    ttl_ms: u64,
    extra: &[&str],
    log: Option<&Path>,
) -> Child {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .expect("unshare(1) from util-linux must be installed");
    assert!(ok.success(), "unshare --pid needs root (CI runs as root)");
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(bin())
        .arg("serve")
        .args(extra)
        .args([
            "--workers",
            &workers.to_string(),
            "--lease-ttl-ms",
            &ttl_ms.to_string(),
            "--db",
        ])
        .arg(db)
        .env("RUST_LOG", "info")
        .env("WAYMARK_DEMO_EFFECTS", dir.join("effects"))
        .stdout(Stdio::null())
        .stderr(match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap()
}

/// `waymark start WORKFLOW --db DB --json JSON --count N [--key KEY]`; returns the run ids.
pub fn start_runs(
    db: &Path,
    workflow: &str,
    json: &str,
    key: Option<&str>,
    count: usize,
) -> Vec<i64> {
    let count_s = count.to_string();
    let mut args = vec![
        "start",
        workflow,
        "--db",
        db.to_str().unwrap(),
        "--json",
        json,
        "--count",
        &count_s,
    ];
    if let Some(k) = key {
        args.extend(["--key", k]);
    }
    let out = run(&args);
    assert!(
        out.status.success(),
        "start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// `waymark start WORKFLOW --db DB --json JSON --count N`; returns the run ids.
pub fn start(db: &Path, workflow: &str, json: &str, count: usize) -> Vec<i64> {
    start_runs(db, workflow, json, None, count)
}

/// A temp dir holding a database `wm.db` (or a PostgreSQL database: [`Tmp::pg`]) and an
/// effects file `effects.log`, with the subcommands run on them.
pub struct Tmp {
    pub dir: tempfile::TempDir,
    /// The database: `dir/wm.db`, or a PostgreSQL URL.
    db: PathBuf,
    /// The PostgreSQL database used instead of `wm.db`.
    pub url: Option<String>,
}

impl Tmp {
    pub fn new() -> Self {
        Tmp::on(super::Backend::Sqlite)
    }
    /// A temp dir and a fresh database on `backend`.
    pub fn on(backend: super::Backend) -> Self {
        let dir = super::tempdir();
        let db = backend.fresh_db(dir.path(), "wm.db");
        let url = (backend == super::Backend::Postgres).then(|| db.to_string_lossy().into_owned());
        Tmp { dir, db, url }
    }
    /// A temp dir for the effects file, and a fresh database on the test's PostgreSQL
    /// cluster: every subcommand and `serve` gets its URL as `--db`.
    pub fn pg() -> Self {
        Tmp::on(super::Backend::Postgres)
    }
    /// The `--db` argument: the file `wm.db`, or the PostgreSQL URL.
    pub fn db(&self) -> PathBuf {
        self.db.clone()
    }
    pub fn effects(&self) -> PathBuf {
        self.dir.path().join("effects.log")
    }

    /// Lines `run seq step` of the effects file.
    pub fn effect_steps(&self) -> Vec<(i64, i64, String)> {
        super::effect_steps(&self.effects())
    }

    /// Run a `waymark` subcommand to completion; returns stdout. Panics with stderr on failure.
    pub fn waymark(&self, args: &[&str]) -> String {
        let out = cmd(args)
            .env("WAYMARK_DEMO_EFFECTS", self.effects())
            .output()
            .expect("spawn waymark");
        assert!(
            out.status.success(),
            "waymark {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `waymark start WORKFLOW --json JSON --count N` on the database: the new run ids.
    pub fn start(&self, workflow: &str, json: &str, count: usize) -> Vec<i64> {
        start(&self.db(), workflow, json, count)
    }

    /// `waymark serve` on the database (lease TTL 3 s, stderr inherited). `extra_env` are
    /// environment variables, except the pseudo-entry `("--sync-normal", "")` which passes
    /// that flag.
    pub fn serve(&self, workers: usize, extra_env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args([
            "serve",
            "--db",
            self.db().to_str().unwrap(),
            "--workers",
            &workers.to_string(),
            "--lease-ttl-ms",
            "3000",
        ])
        .env("WAYMARK_DEMO_EFFECTS", self.effects())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            if *k == "--sync-normal" {
                cmd.arg("--sync-normal");
            } else {
                cmd.env(k, v);
            }
        }
        Proc {
            child: cmd.spawn().expect("spawn waymark serve"),
            log: None,
        }
    }
}

/// A `waymark serve` engine on a fresh file in a temp dir of its own, for tests whose own
/// process holds only a `waymark::Client` ([`serve_with_client`]). SIGKILLed when dropped.
pub struct Served {
    pub child: Child,
    /// The database: a file, or a PostgreSQL URL.
    pub db: PathBuf,
    /// The effects file the engine's fixture steps append to.
    pub effects: PathBuf,
    /// The temp dir holding both (and the engine's stderr, `serve.log`).
    pub dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        super::kill9(&mut self.child);
    }
}

/// `waymark serve --workers 2` on a fresh file `DIR/DB_NAME` (effects to
/// `DIR/effects.log`, stderr to `DIR/serve.log`), and a client on the file once the engine
/// registered itself in it.
pub fn serve_with_client(db_name: &str) -> (Served, waymark::Client) {
    serve_with_client_on(super::Backend::Sqlite, db_name)
}

/// [`serve_with_client`] on a fresh database of `backend` (`db_name` names an SQLite file).
pub fn serve_with_client_on(backend: super::Backend, db_name: &str) -> (Served, waymark::Client) {
    let dir = super::tempdir();
    let db = backend.fresh_db(dir.path(), db_name);
    let effects = dir.path().join("effects.log");
    let child = super::spawn(
        &["serve", "--db", db.to_str().unwrap(), "--workers", "2"],
        &[("WAYMARK_DEMO_EFFECTS", effects.to_str().unwrap())],
        &dir.path().join("serve.log"),
    );
    super::wait_for(
        "the engine to create the file",
        Duration::from_secs(60),
        || {
            super::try_query_i64(&db, "SELECT count(*) FROM engines WHERE stopped_at IS NULL")
                .filter(|n| *n > 0)
        },
    );
    let client = waymark::Client::open(&db).expect("client");
    (
        Served {
            child,
            db,
            effects,
            dir,
        },
        client,
    )
}
