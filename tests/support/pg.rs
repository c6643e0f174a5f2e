//! A throwaway PostgreSQL cluster for the tests: started once per test binary from the OS's
//! PostgreSQL binaries, one fresh database per test, stopped and removed when the test
//! binary's process ends (a watcher process waits for it to die).
//!
//! - The binaries: `initdb`, `pg_ctl` and `postgres` under `/usr/lib/postgresql/VERSION/bin`
//!   (Debian keeps them off PATH; the newest version wins), else on PATH.
//! - `initdb` refuses to run as root: as root the cluster runs as the `postgres` user (the
//!   package creates it) in a directory it owns.
//! - It listens on 127.0.0.1 on a free port, and on a unix socket in its own directory.
//! - A missing PostgreSQL is a test failure naming the install command, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The install command named when PostgreSQL is missing.
pub const INSTALL: &str = "apt-get install -y postgresql";

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub run_as: Option<String>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// The directory holding `initdb` and `pg_ctl`.
pub fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let dir = Path::new(dir);
        if dir.join("initdb").exists()
            && dir.join("pg_ctl").exists()
            && dir.join("postgres").exists()
        {
            return Ok(dir.to_path_buf());
        }
    }
    Err(format!(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under /usr/lib/postgresql/*/bin nor on PATH; install them: {INSTALL}"
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn as_user(run_as: &Option<String>, program: &Path) -> Command {
    match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn start() -> Result<Cluster, String> {
    let bin = bin_dir()?;
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = root.then(|| "postgres".to_string());
    let dir = tempfile::Builder::new()
        .prefix("waymark-pg-")
        .tempdir_in("/tmp")
        .map_err(|e| e.to_string())?
        .keep();
    if let Some(user) = &run_as {
        let status = Command::new("chown")
            .args(["-R", user])
            .arg(&dir)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("chown {user} {} failed", dir.display()));
        }
    }
    let data = dir.join("data");
    let out = as_user(&run_as, &bin.join("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "waymark",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port();
    let opts = server_options(port, &dir);
    let out = as_user(&run_as, &bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-o", &opts, "-l"])
        .arg(dir.join("log"))
        .args(["-w", "-t", "60", "start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("pg_ctl start: {e}"))?;
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        return Err(format!(
            "pg_ctl start failed: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Stop and remove the cluster once this test process is gone.
    let watcher = format!(
        "while [ -d /proc/{pid} ]; do sleep 0.5; done; {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    as_user(&run_as, Path::new("/bin/sh"))
        .args(["-c", &watcher])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the cluster's watcher: {e}"))?;
    Ok(Cluster {
        port,
        dir,
        bin,
        run_as,
    })
}

use std::os::unix::process::CommandExt;

/// The server's options: loopback and a unix socket in `dir`, on `port`; room for many
/// engines; `pg_stat_statements` loaded, so a test can read what a statement cost (pages
/// touched, calls) the moment it has run.
fn server_options(port: u16, dir: &Path) -> String {
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=64MB \
         -c shared_preload_libraries=pg_stat_statements",
        dir.display()
    )
}

/// The cluster of this test binary (started at the first call).
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("no PostgreSQL for the tests: {e}"),
    }
}

impl Cluster {
    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://waymark@127.0.0.1:{}/{name}", self.port)
    }

    /// A connection to database `name`.
    pub fn connect(&self, name: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(name), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url(name)))
    }

    /// Stop the server (`mode`: smart, fast or immediate) and start it again on the same
    /// port: what a server restart does to engines.
    pub fn restart(&self, mode: &str) {
        let data = self.dir.join("data");
        let opts = server_options(self.port, &self.dir);
        let out = as_user(&self.run_as, &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", mode, "-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "restart"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl restart");
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A fresh, empty database on the test cluster; its URL.
pub fn fresh_pg_db() -> String {
    let c = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = c.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    c.url(&name)
}

/// A plain connection to the database at `url` (for assertions on its rows).
pub fn pg_cluster_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}
