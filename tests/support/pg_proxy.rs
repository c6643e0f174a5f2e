//! A TCP proxy in front of the test cluster that can lose the answer to a COMMIT: the
//! COMMIT reaches the server and is applied, then both sockets are closed before the
//! server's reply gets back to the client. What a network fault or a crash of a middlebox
//! at the worst moment does, and what `pg_terminate_backend` cannot do (it cuts the
//! session before its COMMIT reaches the server).
//!
//! - It listens on 127.0.0.1 on a free port ([`PgProxy::url`] rewrites a cluster URL to
//!   it) and forwards each connection to the cluster's port, one thread per direction.
//! - It follows the client's side of the protocol (v3, no TLS: waymark connects with
//!   `NoTls`): the untyped startup messages, then typed messages `tag, u32 length, body`.
//!   Per connection it keeps the SQL of each prepared statement (`Parse`) and, between a
//!   simple-query `BEGIN` and its `COMMIT`, the SQL each `Bind` or simple query ran.
//! - Armed ([`PgProxy::lose_commit_answer`]), it counts the COMMITs (the `postgres` crate's
//!   `batch_execute("COMMIT")`: a `Q` message of length 11, `COMMIT\0`) whose transaction
//!   ran a statement matching the filter; the Nth is forwarded, the server's reply is read
//!   up to its `ReadyForQuery` (so the COMMIT was applied) and dropped, and both sockets are
//!   shut down. Each armed cut happens once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Which transactions an armed cut counts: the SQL texts the transaction ran.
type Filter = Box<dyn Fn(&[String]) -> bool + Send + Sync>;

struct Armed {
    /// COMMITs of matching transactions still to let through before the cut.
    skip: u32,
    filter: Filter,
}

#[derive(Default)]
struct Shared {
    armed: Mutex<Option<Armed>>,
    cuts: AtomicU32,
    commits: AtomicU32,
}

/// A proxy in front of the test cluster (see the module docs). Its threads live as long as
/// the test process.
pub struct PgProxy {
    pub port: u16,
    upstream: u16,
    shared: Arc<Shared>,
}

impl PgProxy {
    /// A proxy to the test binary's cluster.
    pub fn start() -> PgProxy {
        PgProxy::to_port(super::cluster().port)
    }

    /// A proxy to `127.0.0.1:upstream`.
    pub fn to_port(upstream: u16) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                        relay(client, server, s);
                    }
                });
            }
        });
        PgProxy {
            port,
            upstream,
            shared,
        }
    }

    /// `url` (a URL of the cluster, `...@127.0.0.1:PORT/db`) through this proxy.
    pub fn url(&self, url: &str) -> String {
        let from = format!("127.0.0.1:{}/", self.upstream);
        assert!(
            url.contains(&from),
            "{url} is not on port {}",
            self.upstream
        );
        url.replacen(&from, &format!("127.0.0.1:{}/", self.port), 1)
    }

    /// Lose the answer to the `nth` (1 = the next) COMMIT of a transaction whose statements
    /// satisfy `filter` (each statement's SQL text, in order). Replaces an earlier arming.
    pub fn lose_commit_answer(
        &self,
        nth: u32,
        filter: impl Fn(&[String]) -> bool + Send + Sync + 'static,
    ) {
        assert!(nth >= 1);
        *self.shared.armed.lock().unwrap() = Some(Armed {
            skip: nth - 1,
            filter: Box::new(filter),
        });
    }

    /// [`PgProxy::lose_commit_answer`] for the next transaction that ran a statement
    /// containing `sql`.
    pub fn lose_next_commit_answer_of(&self, sql: &'static str) {
        self.lose_commit_answer(1, move |stmts| stmts.iter().any(|s| s.contains(sql)));
    }

    /// Disarm the cut armed last, if it has not happened.
    pub fn disarm(&self) {
        *self.shared.armed.lock().unwrap() = None;
    }

    /// How many COMMIT answers were lost so far.
    pub fn cuts(&self) -> u32 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// How many COMMITs went through the proxy so far (lost ones included).
    pub fn commits(&self) -> u32 {
        self.shared.commits.load(Ordering::SeqCst)
    }

    /// Is a cut still armed?
    pub fn armed(&self) -> bool {
        self.shared.armed.lock().unwrap().is_some()
    }
}

/// `ReadyForQuery`: tag and length; the server sends it when it has finished a query.
const READY: &[u8] = b"Z\0\0\0\x05";
/// The SSLRequest and GSSENCRequest codes of untyped startup-phase messages.
const SSL_REQUEST: u32 = 80877103;
const GSS_REQUEST: u32 = 80877104;

fn read_exact_or_end(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    s.read_exact(buf).is_ok()
}

/// Relay one connection until either side ends it or a cut ends both.
fn relay(mut client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let cut = Arc::new(AtomicBool::new(false));
    // Server to client: raw bytes, until a cut: then read the COMMIT's reply to its end,
    // drop it, and close both sides.
    {
        let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
        let cut = cut.clone();
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut dropped: Vec<u8> = Vec::new();
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    dropped.extend_from_slice(&buf[..n]);
                    if dropped.windows(READY.len()).any(|w| w == READY) {
                        shared.cuts.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let mut server_w = server;
    // Client to server: message by message.
    // Startup phase: untyped messages (u32 length including itself, then a u32 code).
    loop {
        let mut len = [0u8; 4];
        if !read_exact_or_end(&mut client, &mut len) {
            return end(&client, &server_w);
        }
        let n = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; n.saturating_sub(4)];
        if !read_exact_or_end(&mut client, &mut body) {
            return end(&client, &server_w);
        }
        if server_w.write_all(&len).is_err() || server_w.write_all(&body).is_err() {
            return end(&client, &server_w);
        }
        let code = body
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .unwrap_or(0);
        if code != SSL_REQUEST && code != GSS_REQUEST {
            break;
        }
    }
    let mut prepared: std::collections::HashMap<String, String> = Default::default();
    let mut in_tx: Vec<String> = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if !read_exact_or_end(&mut client, &mut head) {
            return end(&client, &server_w);
        }
        let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; n.saturating_sub(4)];
        if !read_exact_or_end(&mut client, &mut body) {
            return end(&client, &server_w);
        }
        let mut lose_answer = false;
        match head[0] {
            b'P' => {
                let mut parts = body.split(|b| *b == 0);
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let sql = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                prepared.insert(name, sql);
            }
            b'B' => {
                let mut parts = body.split(|b| *b == 0);
                let _portal = parts.next();
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                if let Some(sql) = prepared.get(&name) {
                    in_tx.push(sql.clone());
                }
            }
            b'Q' => {
                let sql =
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
                if sql == "BEGIN" {
                    in_tx.clear();
                } else if sql == "COMMIT" {
                    shared.commits.fetch_add(1, Ordering::SeqCst);
                    let mut armed = shared.armed.lock().unwrap();
                    if let Some(a) = armed.as_mut() {
                        if (a.filter)(&in_tx) {
                            if a.skip == 0 {
                                *armed = None;
                                lose_answer = true;
                            } else {
                                a.skip -= 1;
                            }
                        }
                    }
                    in_tx.clear();
                } else {
                    in_tx.push(sql);
                }
            }
            _ => {}
        }
        if lose_answer {
            // Before the COMMIT leaves: every byte the server sends from now on answers it.
            cut.store(true, Ordering::SeqCst);
        }
        if server_w.write_all(&head).is_err() || server_w.write_all(&body).is_err() {
            return end(&client, &server_w);
        }
        if lose_answer {
            // The other thread closes both sockets once the reply is in; stop reading here.
            return;
        }
    }
}

fn end(client: &TcpStream, server: &TcpStream) {
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}
