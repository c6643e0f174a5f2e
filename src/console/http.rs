//! The HTTP side: request loop, routing, and the security of a local admin tool.
//!
//! Invariants:
//! - No response carries a CORS header; every response carries a Content-Security-Policy
//!   that allows scripts only from this server's own static files (`script-src 'self'`, no
//!   inline script, no nonce) and `frame-ancestors 'none'`.
//! - With a token configured, a request without it (header, cookie, or a first `?token=`
//!   visit that sets the cookie) gets 401 and nothing else.
//! - On a loopback address, a request whose `Host` is not a loopback name gets 403 (a web
//!   page elsewhere cannot reach the console through DNS rebinding).
//! - Every action is a POST carrying the anti-forgery token of its session (a random value
//!   bound to an `HttpOnly`, `SameSite=Strict` session cookie); without it: 403, nothing
//!   done. A read-only console serves no action (403).

use super::backend::{Backend, BackendError};
use super::html::{error_body, page};
use super::{metrics, pages};
use std::collections::{HashMap, VecDeque};
use std::io::Read as _;
use std::sync::Arc;
use tiny_http::{Header, Method, Request, Response};

/// Sessions remembered at once (the oldest is forgotten first).
pub const SESSIONS_MAX: usize = 4096;
/// Largest POST body read (forms are small).
pub const FORM_BYTES_MAX: u64 = 1024 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const SESSION_COOKIE: &str = "waymark_session";
const TOKEN_COOKIE: &str = "waymark_token";
const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// Decoded query or form parameters.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parse `a=1&b=x+y` (percent-decoded, `+` as space).
    pub fn parse(s: &str) -> Params {
        Params(
            s.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the console was asked to behave.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Serve no action.
    pub read_only: bool,
    /// Every request must carry this token.
    pub token: Option<String>,
    /// Listening on a loopback address (check `Host`).
    pub loopback: bool,
}

/// Session id → anti-forgery token, bounded.
#[derive(Default)]
struct Sessions {
    tokens: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Sessions {
    fn csrf(&self, session: &str) -> Option<&str> {
        self.tokens.get(session).map(String::as_str)
    }
    fn create(&mut self) -> (String, String) {
        while self.order.len() >= SESSIONS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.tokens.remove(&old);
            }
        }
        let id = format!("{}{}", crate::host::random_id(), crate::host::random_id());
        let csrf = format!("{}{}", crate::host::random_id(), crate::host::random_id());
        self.tokens.insert(id.clone(), csrf.clone());
        self.order.push_back(id.clone());
        (id, csrf)
    }
}

/// Shared by the request threads.
pub struct App {
    backend: Box<dyn Backend>,
    settings: Settings,
    sessions: parking_lot::Mutex<Sessions>,
}

/// What a handler answers.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn html(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            body,
            headers: Vec::new(),
        }
    }
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }
    fn json(v: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: v.to_string(),
            headers: Vec::new(),
        }
    }
    fn redirect(to: String) -> Reply {
        let mut r = Reply::text(303, "see other");
        r.headers.push(("Location".into(), to));
        r
    }
    fn error(e: BackendError, api: bool) -> Reply {
        let status = match &e {
            BackendError::NotFound(_) => 404,
            BackendError::Bad(_) => 400,
            BackendError::Failed(_) => 500,
        };
        if api {
            let mut r = Reply::json(&serde_json::json!({ "error": e.to_string() }));
            r.status = status;
            r
        } else {
            Reply::html(status, page("Error", &error_body(&e)))
        }
    }
}

/// A request's facts the handlers need, read once.
struct Facts {
    method: Method,
    path: String,
    query: Params,
    session: Option<String>,
    token_ok: bool,
    host_ok: bool,
    /// The `?token=` of a first visit was right: set the cookie.
    set_token_cookie: bool,
}

fn header<'a>(req: &'a Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .filter(|h| h.field.equiv("Cookie"))
        .flat_map(|h| h.value.as_str().split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compare without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    matches!(name, "127.0.0.1" | "localhost" | "::1")
}

impl App {
    /// An app over `backend`.
    pub fn new(backend: Box<dyn Backend>, settings: Settings) -> App {
        App {
            backend,
            settings,
            sessions: parking_lot::Mutex::new(Sessions::default()),
        }
    }

    fn facts(&self, req: &Request) -> Facts {
        let url = req.url();
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let query = Params::parse(query);
        let mut set_token_cookie = false;
        let token_ok = match &self.settings.token {
            None => true,
            Some(t) => {
                let bearer = header(req, "Authorization").and_then(|v| v.strip_prefix("Bearer "));
                let given = [
                    bearer,
                    header(req, "X-Waymark-Token"),
                    cookie(req, TOKEN_COOKIE),
                ];
                if given.iter().flatten().any(|g| same(g, t)) {
                    true
                } else if query.get("token").is_some_and(|g| same(g, t))
                    && *req.method() == Method::Get
                {
                    set_token_cookie = true;
                    true
                } else {
                    false
                }
            }
        };
        let host_ok = !self.settings.loopback || header(req, "Host").is_some_and(loopback_host);
        Facts {
            method: req.method().clone(),
            path: path.to_string(),
            query,
            session: cookie(req, SESSION_COOKIE)
                .filter(|s| self.sessions.lock().csrf(s).is_some())
                .map(str::to_string),
            token_ok,
            host_ok,
            set_token_cookie,
        }
    }

    /// Answer one request.
    pub fn handle(&self, mut req: Request) {
        let facts = self.facts(&req);
        let mut reply = if !facts.host_ok {
            Reply::text(403, "forbidden: unexpected Host header")
        } else if !facts.token_ok {
            Reply::text(
                401,
                "this console needs its token (?token=, a cookie or a header)",
            )
        } else if facts.set_token_cookie {
            // Drop the token from the address bar and history.
            let mut r = Reply::redirect(facts.path.clone());
            r.headers.push((
                "Set-Cookie".into(),
                format!(
                    "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                    self.settings.token.as_deref().unwrap_or("")
                ),
            ));
            r
        } else if facts.method == Method::Post {
            let mut body = String::new();
            let read = req
                .as_reader()
                .take(FORM_BYTES_MAX)
                .read_to_string(&mut body);
            match read {
                Ok(_) => self.post(&facts, &Params::parse(&body)),
                Err(_) => Reply::text(400, "unreadable form"),
            }
        } else if facts.method == Method::Get || facts.method == Method::Head {
            self.get(&facts)
        } else {
            Reply::text(405, "method not allowed")
        };
        // A page that made a session (for its forms' anti-forgery token) sets its cookie.
        if let Some(id) = reply
            .headers
            .iter()
            .find(|(k, _)| k == "X-New-Session")
            .map(|(_, v)| v.clone())
        {
            reply.headers.retain(|(k, _)| k != "X-New-Session");
            reply.headers.push((
                "Set-Cookie".into(),
                format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
            ));
        }
        let mut resp = Response::from_string(reply.body).with_status_code(reply.status);
        let mut headers = vec![
            ("Content-Type".to_string(), reply.content_type.to_string()),
            ("Content-Security-Policy".into(), CSP.into()),
            ("X-Content-Type-Options".into(), "nosniff".into()),
            ("X-Frame-Options".into(), "DENY".into()),
            ("Referrer-Policy".into(), "no-referrer".into()),
            ("Cache-Control".into(), "no-store".into()),
        ];
        headers.extend(reply.headers);
        for (k, v) in headers {
            match Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                Ok(h) => resp.add_header(h),
                Err(()) => log::warn!("console: header {k} not sent (not ASCII)"),
            }
        }
        if let Err(e) = req.respond(resp) {
            log::debug!("console: answering {}: {e}", facts.path);
        }
    }

    /// The session's anti-forgery token, creating the session if needed; `None` when
    /// read-only (no forms). The new session id, if one was made, goes in `new`.
    fn csrf(&self, facts: &Facts, new: &mut Option<String>) -> Option<String> {
        if self.settings.read_only {
            return None;
        }
        let mut sessions = self.sessions.lock();
        if let Some(t) = facts.session.as_deref().and_then(|s| sessions.csrf(s)) {
            return Some(t.to_string());
        }
        let (id, csrf) = sessions.create();
        *new = Some(id);
        Some(csrf)
    }

    fn get(&self, f: &Facts) -> Reply {
        let b = &*self.backend;
        let path = f.path.as_str();
        let api = path.starts_with("/api/");
        let result: Result<Reply, BackendError> = (|| {
            Ok(match path {
                "/" | "/runs" => {
                    Reply::html(200, pages::runs_page(b, &pages::runs_query(&f.query)?)?)
                }
                "/api/runs" => Reply::json(&pages::runs_json(b, &pages::runs_query(&f.query)?)?),
                "/engines" => Reply::html(200, pages::engines_page(b)?),
                "/api/engines" => Reply::json(&pages::engines_json(b)?),
                "/metrics" => {
                    let mut r = Reply::text(200, metrics::render(b)?);
                    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
                    r
                }
                "/static/console.css" => {
                    let mut r = Reply::text(200, CSS);
                    r.content_type = "text/css; charset=utf-8";
                    r
                }
                "/static/console.js" => {
                    let mut r = Reply::text(200, JS);
                    r.content_type = "text/javascript; charset=utf-8";
                    r
                }
                _ => {
                    let id = path
                        .strip_prefix("/api/runs/")
                        .or_else(|| path.strip_prefix("/runs/"))
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or_else(|| BackendError::NotFound(format!("no page {path}")))?;
                    let d = b
                        .run(id)?
                        .ok_or_else(|| BackendError::NotFound(format!("no run {id}")))?;
                    if api {
                        Reply::json(&pages::run_json(&d))
                    } else {
                        let mut new = None;
                        let csrf = self.csrf(f, &mut new);
                        let mut r = Reply::html(200, pages::run_page(b, &d, csrf.as_deref()));
                        if let Some(id) = new {
                            r.headers.push(("X-New-Session".into(), id));
                        }
                        r
                    }
                }
            })
        })();
        result.unwrap_or_else(|e| Reply::error(e, api))
    }

    fn post(&self, f: &Facts, form: &Params) -> Reply {
        if self.settings.read_only {
            return Reply::text(403, "read-only console: no actions");
        }
        let expected = f
            .session
            .as_deref()
            .and_then(|s| self.sessions.lock().csrf(s).map(str::to_string));
        let given = form.get("csrf");
        match (expected, given) {
            (Some(e), Some(g)) if same(&e, g) => {}
            _ => return Reply::text(403, "forbidden: missing or wrong anti-forgery token"),
        }
        let mut parts = f.path.trim_start_matches('/').split('/');
        let (Some("runs"), Some(id), Some(action), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Reply::text(404, "no such action");
        };
        let Ok(id) = id.parse::<i64>() else {
            return Reply::text(404, "no such run");
        };
        let b = &*self.backend;
        let done = match action {
            "cancel" => b.cancel(id).map(|_| ()),
            "event" => b
                .send_event(
                    id,
                    form.get("name").unwrap_or(""),
                    form.get("json").unwrap_or("null"),
                )
                .map(|_| ()),
            "retry" => b.retry(id),
            "restart" => match form.get("seq").and_then(|s| s.parse::<i64>().ok()) {
                Some(seq) => b.restart(id, seq),
                None => Err(BackendError::Bad("restart needs a step number".into())),
            },
            _ => return Reply::text(404, "no such action"),
        };
        match done {
            Ok(()) => Reply::redirect(format!("/runs/{id}")),
            Err(e) => Reply::error(e, false),
        }
    }
}

/// Serve requests from `server` until `stop` is set (and the server unblocked). An accept
/// error is logged and the loop goes on (after a pause, so a persistent one cannot spin).
pub fn serve_loop(
    server: Arc<tiny_http::Server>,
    app: Arc<App>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    loop {
        match server.recv() {
            Ok(req) => app.handle(req),
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(e) => {
                log::warn!("console: accepting a connection: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
