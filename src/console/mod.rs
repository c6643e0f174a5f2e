//! A local web console over a waymark file: runs (counts per status, filters, paging), a
//! run's story (timeline of attempts and waits, journal, attempts, lease, parent and child
//! links), engines, queues and schedules, `/metrics` (Prometheus text) and `/api/...` JSON
//! mirrors, and actions (cancel, send an event) as POSTs with a per-session anti-forgery
//! token. Behind the `console` cargo feature; `waymark ui` serves it from the command line.
//!
//! ```no_run
//! # fn main() -> Result<(), waymark::console::ConsoleError> {
//! let console = waymark::console::serve("app.db", waymark::console::Options::default())?;
//! println!("{}", console.url());
//! console.wait();
//! # Ok(())
//! # }
//! ```
//!
//! Payloads are shown as JSON through the application's types when the console knows its
//! registry ([`serve_client`] with a client made with one, [`serve_engine`], or the admin
//! CLI's `ui`); without it, a payload says it cannot be decoded, and why. The same registry
//! checks the payload of an event sent from the console before anything is sent. A console
//! inside an engine ([`serve_engine`]) adds that engine's counters to `/metrics`.
//!
//! Security of a local admin tool: loopback by default (a non-loopback address needs a
//! token, which every request must carry); no CORS; every user or step string escaped; a
//! Content-Security-Policy without inline script; reads only through the reader pool.
//!
//! Invariant: the console reaches data only through its `Backend` trait (one
//! implementation over the storage seam); nothing of the crate imports the console.

mod backend;
mod html;
mod http;
mod metrics;
mod pages;
mod timeline;

use crate::client::Client;
use crate::clock::{Clock, SystemClock};
use crate::store::{StoreError, StoreOptions};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Threads answering requests.
pub const THREADS: usize = 2;
/// Readers the console's own store keeps (pages read concurrently, never the writer).
pub const READERS_MAX: u32 = 4;

/// How to serve the console.
#[derive(Debug, Clone)]
pub struct Options {
    listen: SocketAddr,
    read_only: bool,
    token: Option<String>,
}

impl Default for Options {
    /// `127.0.0.1:7077`, actions allowed, no token.
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 7077)),
            read_only: false,
            token: None,
        }
    }
}

impl Options {
    /// Listen on `addr` (port 0: any free port; see [`Console::url`]). A non-loopback
    /// address needs [`Options::token`].
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
    /// Serve no action (no forms, every POST refused).
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }
    /// Require `token` on every request: header `Authorization: Bearer TOKEN` or
    /// `X-Waymark-Token`, or a cookie set by a first visit to `/?token=TOKEN`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// Why the console could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The database could not be opened.
    Store(StoreError),
    /// The address could not be listened on.
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// A non-loopback address was asked for without a token: pass one.
    TokenRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleError::Store(e) => write!(f, "console: {e}"),
            ConsoleError::Listen { addr, detail } => {
                write!(f, "console: cannot listen on {addr}: {detail}")
            }
            ConsoleError::TokenRequired { addr } => write!(
                f,
                "console: {addr} is not a loopback address: pass a token (--token) that every request must carry"
            ),
        }
    }
}

impl std::error::Error for ConsoleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConsoleError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// A running console: its address, and its threads until [`Console::shutdown`] (or drop).
pub struct Console {
    server: Arc<tiny_http::Server>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("addr", &self.addr).finish()
    }
}

impl Console {
    /// The address served (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
    /// Block until the console's threads stop (they stop only by [`Console::shutdown`]
    /// from another handle, so: forever, for a command-line server).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
    /// Stop answering and join the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }
    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serve the console over the waymark file `db` (which must exist), without a registry:
/// payloads other than events' JSON are shown as undecodable, and event payloads are
/// checked only for being JSON (see [`serve_client`]).
pub fn serve(db: impl AsRef<Path>, options: Options) -> Result<Console, ConsoleError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::from_env());
    let store = crate::store::open_storage(
        db.as_ref(),
        &StoreOptions {
            create: false,
            readers_max: READERS_MAX,
            ..Default::default()
        },
        clock.clone(),
        READERS_MAX,
    )
    .map_err(ConsoleError::Store)?
    .api;
    let client = Client::over(store, None, crate::codec::PAYLOAD_BYTES_MAX, clock, None);
    serve_backend(backend::StoreBackend::new(client, None), options)
}

/// Serve the console over `client`'s file. With a client made with the application's
/// registry ([`crate::ClientConfig::registry`]), payloads are shown as JSON through the
/// registered types and an event's payload is checked against its registered type.
pub fn serve_client(client: &Client, options: Options) -> Result<Console, ConsoleError> {
    serve_backend(backend::StoreBackend::new(client.clone(), None), options)
}

/// Serve the console over the file of a running engine, in its process: payloads through
/// the engine's registry, and `/metrics` with the engine's own counters
/// ([`crate::Engine::counters`]). The console does not keep the engine running.
pub fn serve_engine(engine: &crate::Engine, options: Options) -> Result<Console, ConsoleError> {
    let reader: backend::CountersReader = Box::new(engine.counters_reader());
    serve_backend(
        backend::StoreBackend::new(engine.client().clone(), Some(reader)),
        options,
    )
}

fn serve_backend(
    backend: backend::StoreBackend,
    options: Options,
) -> Result<Console, ConsoleError> {
    let loopback = options.listen.ip().is_loopback();
    if !loopback && options.token.as_deref().is_none_or(str::is_empty) {
        return Err(ConsoleError::TokenRequired {
            addr: options.listen,
        });
    }
    let server = tiny_http::Server::http(options.listen).map_err(|e| ConsoleError::Listen {
        addr: options.listen,
        detail: e.to_string(),
    })?;
    let addr = server.server_addr().to_ip().unwrap_or(options.listen);
    let server = Arc::new(server);
    let app = Arc::new(http::App::new(
        Box::new(backend),
        http::Settings {
            read_only: options.read_only,
            token: options.token,
            loopback,
        },
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = (0..THREADS)
        .map(|i| {
            let (server, app, stop) = (server.clone(), app.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("waymark-console-{i}"))
                .spawn(move || http::serve_loop(server, app, stop))
                .map_err(|e| ConsoleError::Listen {
                    addr,
                    detail: format!("starting a thread: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    log::info!("console serving http://{addr}/");
    Ok(Console {
        server,
        stop,
        addr,
        threads,
    })
}
