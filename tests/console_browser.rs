//! Issue 14: the web console, driven through a real headless Chromium (chromedriver's W3C
//! WebDriver HTTP API, a tiny client below) and through plain HTTP.
//!
//! Scenario: the real binary makes a database with runs in every state (a retried step,
//! a failure, runs waiting for an event, a run left `running` by a SIGKILLed engine, a run
//! of an unknown version, a delayed run whose key is `<script>alert(1)</script>`), then
//! `waymark ui` serves it. What must hold: the pages show every state, a run's timeline and
//! attempts; the cancel button cancels in the database; an action without the session's
//! anti-forgery token is 403 and changes nothing; the hostile key is text, no script runs.
//!
//! Every test runs on both stores (`--db` a file or a PostgreSQL URL).
//!
//! Screenshots for README: `WAYMARK_SCREENSHOTS=docs cargo test --release --test console_browser`.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const HOSTILE: &str = "<script>alert(1)</script>";

/// A minimal W3C WebDriver client over chromedriver.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn call(method: &str, url: &str, body: Option<&Value>) -> Result<Value, (u16, String)> {
    let req = ureq::request(method, url).timeout(Duration::from_secs(60));
    let resp = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    match resp {
        Ok(r) => Ok(serde_json::from_str(&r.into_string().unwrap()).unwrap()),
        Err(ureq::Error::Status(code, r)) => Err((code, r.into_string().unwrap_or_default())),
        Err(e) => Err((0, e.to_string())),
    }
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) must be installed");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(30), || {
            call("GET", &format!("{base}/status"), None)
                .ok()
                .filter(|v| v["value"]["ready"] == true)
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let v = call("POST", &format!("{base}/session"), Some(&caps)).expect("new session");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            base,
            session,
        }
    }
    fn url(&self, tail: &str) -> String {
        format!("{}/session/{}{tail}", self.base, self.session)
    }
    fn goto(&self, url: &str) {
        call("POST", &self.url("/url"), Some(&json!({ "url": url }))).expect("navigate");
    }
    fn find_all(&self, css: &str) -> Vec<String> {
        let v = call(
            "POST",
            &self.url("/elements"),
            Some(&json!({"using": "css selector", "value": css})),
        )
        .expect("find elements");
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.as_object()
                    .unwrap()
                    .values()
                    .next()
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
    fn text(&self, element: &str) -> String {
        let v = call("GET", &self.url(&format!("/element/{element}/text")), None).unwrap();
        v["value"].as_str().unwrap().to_string()
    }
    fn texts(&self, css: &str) -> Vec<String> {
        self.find_all(css).iter().map(|e| self.text(e)).collect()
    }
    fn click(&self, css: &str) {
        let e = self.find_all(css);
        assert!(!e.is_empty(), "no element {css}");
        call(
            "POST",
            &self.url(&format!("/element/{}/click", e[0])),
            Some(&json!({})),
        )
        .expect("click");
    }
    fn script(&self, js: &str) -> Value {
        call(
            "POST",
            &self.url("/execute/sync"),
            Some(&json!({"script": js, "args": []})),
        )
        .expect("execute")["value"]
            .clone()
    }
    /// The text of an open alert, if one is open.
    fn alert(&self) -> Option<String> {
        call("GET", &self.url("/alert/text"), None)
            .ok()
            .and_then(|v| v["value"].as_str().map(str::to_string))
    }
    fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let v = call("GET", &self.url("/screenshot"), None).expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call("DELETE", &self.url(""), None);
        kill9(&mut self.driver);
    }
}

/// `waymark ui` on `db`; its URL (first line of stdout).
fn ui(db: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(bin())
        .args([
            "ui",
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn waymark ui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("http://127.0.0.1:"), "ui printed {line:?}");
    (child, line.trim().trim_end_matches('/').to_string())
}

fn one(db: &Path, workflow: &str, input: &str, extra: &[&str]) -> i64 {
    let mut args = vec![
        "start",
        workflow,
        "--db",
        db.to_str().unwrap(),
        "--json",
        input,
    ];
    args.extend(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

struct Runs {
    flaky: i64,
    /// `fixture.chatty`: its step logs, fails its first attempt, succeeds on the second.
    chatty: i64,
    chatty_input: Value,
    /// `fixture.slow@9`: a version this binary does not register (its payloads have no type).
    unknown: i64,
    waiter: i64,
    waiter2: i64,
    hostile: i64,
}

/// A database with runs in every state, made by the real binary (one SQL update parks a
/// run `blocked`, which otherwise needs damaged data).
fn populate(backend: Backend, dir: &Path) -> (PathBuf, Runs) {
    let db = backend.fresh_db(dir, "wm.db");
    let marker = dir.join("flaky.marker");
    let flaky = one(
        &db,
        "fixture.flaky",
        &json!({"ms": 50, "marker": marker}).to_string(),
        &["--key", "flaky-1"],
    );
    one(&db, "fixture.slow_then_fail", r#"{"steps":1,"ms":10}"#, &[]);
    let chatty_input = json!({"flood_bytes": 0, "fail_marker": dir.join("chatty.marker")});
    let chatty = one(
        &db,
        "fixture.chatty",
        &chatty_input.to_string(),
        &["--key", "chatty-1"],
    );
    let waiter_in = r#"{"name":"go","timeout_ms":3600000}"#;
    let waiter = one(&db, "fixture.waiter", waiter_in, &["--key", "waiter-1"]);
    let waiter2 = one(&db, "fixture.waiter", waiter_in, &["--key", "waiter-2"]);
    let cancelled = one(&db, "fixture.waiter", waiter_in, &[]);
    let running = one(&db, "fixture.slow", r#"{"steps":1,"ms":600000}"#, &[]);
    let unknown = one(
        &db,
        "fixture.slow",
        r#"{"steps":1,"ms":10}"#,
        &["--workflow-version", "9"],
    );
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    // A queue limited to 0 keeps its run pending.
    let out = run(&[
        "queue",
        "held",
        "--db",
        db.to_str().unwrap(),
        "--limit",
        "0",
    ]);
    assert!(out.status.success());
    let hostile = one(
        &db,
        "fixture.slow",
        r#"{"steps":1,"ms":10}"#,
        &["--key", HOSTILE, "--queue", "held"],
    );
    let parked = one(
        &db,
        "fixture.slow",
        r#"{"steps":1,"ms":10}"#,
        &["--not-before-ms", &later],
    );
    let mut engine = spawn(
        &["serve", "--db", db.to_str().unwrap()],
        &[],
        &dir.join("serve.log"),
    );
    let snapshot = || {
        let mut v: Vec<String> = rows(
            &db,
            "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status",
        )
        .into_iter()
        .map(|r| format!("{}={}", r[0], r[1]))
        .collect();
        let started = query_i64(
            &db,
            &format!("SELECT count(*) FROM attempts WHERE run_id = {running}"),
        );
        v.push(format!("running-step-started={started}"));
        v.join(",")
    };
    let want = "blocked_version=1,completed=2,failed=1,pending=1,running=1,suspended=4,running-step-started=1";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while std::time::Instant::now() < deadline && seen != want {
        std::thread::sleep(Duration::from_millis(100));
        seen = snapshot();
    }
    assert_eq!(
        seen, want,
        "the engine did not bring every run to its state"
    );
    kill9(&mut engine);
    let out = run(&[
        "cancel",
        &cancelled.to_string(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    exec(
        &db,
        &format!(
            "UPDATE runs SET status = 'blocked', note = 'parked by the test' WHERE id = {parked}"
        ),
    );
    (
        db,
        Runs {
            flaky,
            chatty,
            chatty_input,
            unknown,
            waiter,
            waiter2,
            hostile,
        },
    )
}

// On both stores: the one browser test (expensive) covers every page (runs, run detail,
// payloads, logs, timeline), the cancel button's write and the page after it, so it is the
// one doubled for PostgreSQL.
on_both_stores!(console_in_a_real_browser);
fn console_in_a_real_browser(backend: Backend) {
    let dir = tempdir();
    let (db, runs) = populate(backend, dir.path());
    let (mut server, url) = ui(&db, &[]);
    let browser = Browser::start();

    // Runs page: a count for every state, the hostile key as text, no script of its own.
    browser.goto(&format!("{url}/"));
    let counts = browser.texts("ul.counts li");
    for s in [
        "pending",
        "running",
        "suspended",
        "completed",
        "failed",
        "cancelled",
        "blocked",
        "blocked_version",
    ] {
        let line = counts
            .iter()
            .find(|c| c.starts_with(&format!("{s} ")))
            .unwrap_or_else(|| panic!("no count for {s} in {counts:?}"));
        assert_ne!(line, &format!("{s} 0"), "{s} has no run: {counts:?}");
    }
    assert!(
        browser.texts("td.key").iter().any(|k| k == HOSTILE),
        "hostile key not shown as text"
    );
    assert_eq!(browser.alert(), None, "an alert is open");
    assert_eq!(
        browser.script("return Array.from(document.scripts).map(s => s.src)"),
        json!([format!("{url}/static/console.js")]),
        "a script element other than the console's own"
    );
    if let Ok(out) = std::env::var("WAYMARK_SCREENSHOTS") {
        std::fs::create_dir_all(&out).unwrap();
        browser.screenshot(&Path::new(&out).join("console-runs.png"));
    }

    // The hostile run's page: its key as text, nothing executed.
    browser.goto(&format!("{url}/runs/{}", runs.hostile));
    assert_eq!(browser.texts("#run-key"), vec![HOSTILE.to_string()]);
    assert_eq!(browser.alert(), None);
    assert_eq!(browser.script("return document.scripts.length"), json!(1));

    // A run with a retried step: two attempt bars, the failed one's reason in the table.
    browser.goto(&format!("{url}/runs/{}", runs.flaky));
    let bars = browser.find_all("svg.timeline rect.attempt");
    assert_eq!(bars.len(), 2, "one bar per attempt");
    assert_eq!(browser.find_all("svg.timeline rect.o-error").len(), 1);
    assert_eq!(browser.find_all("svg.timeline rect.o-success").len(), 1);
    let reasons = browser.texts("table.attempts td.reason");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("first completed execution fails")),
        "{reasons:?}"
    );
    if let Ok(out) = std::env::var("WAYMARK_SCREENSHOTS") {
        browser.screenshot(&Path::new(&out).join("console-run-retried.png"));
    }

    // Payloads as JSON through the registry's types (issue 14: not bincode hex), and each
    // attempt's captured logs under it.
    browser.goto(&format!("{url}/runs/{}", runs.chatty));
    let shown = |css: &str| -> Value {
        let texts = browser.texts(css);
        assert_eq!(texts.len(), 1, "one {css}: {texts:?}");
        serde_json::from_str(&texts[0]).unwrap_or_else(|e| panic!("{css} {:?}: {e}", texts[0]))
    };
    assert_eq!(shown("#run-input"), runs.chatty_input);
    assert_eq!(shown("#run-output"), json!(2), "the attempt that succeeded");
    assert_eq!(
        browser.texts("table.journal td.output"),
        vec!["2".to_string()]
    );
    let logs = browser.texts("table.attempts pre.logs");
    assert_eq!(logs.len(), 2, "one log block per attempt: {logs:?}");
    assert!(logs[0].contains("chatty stderr 1 (attempt 1)"), "{logs:?}");
    assert!(logs[1].contains("chatty stderr 1 (attempt 2)"), "{logs:?}");
    assert!(!logs[1].contains("(attempt 1)"), "{logs:?}");
    // A payload without a registered type: said so, the page still served.
    browser.goto(&format!("{url}/runs/{}", runs.unknown));
    let input = browser.texts("#run-input");
    assert!(
        input.len() == 1 && input[0].starts_with("undecodable: "),
        "{input:?}"
    );

    // Cancel a waiting run with the button: the database changes.
    browser.goto(&format!("{url}/runs/{}", runs.waiter));
    assert!(
        !browser.find_all("svg.timeline rect.current").is_empty(),
        "wait to now"
    );
    assert_eq!(try_status(&db, runs.waiter).as_deref(), Some("suspended"));
    browser.click("#cancel");
    wait_for(
        "the cancel in the database",
        Duration::from_secs(20),
        || (try_status(&db, runs.waiter).as_deref() == Some("cancelled")).then_some(()),
    );
    wait_for("the page after the cancel", Duration::from_secs(20), || {
        (browser.texts("#run-status") == vec!["cancelled".to_string()]).then_some(())
    });

    // An action without the session's anti-forgery token: 403, nothing changes.
    for body in ["", "csrf=forged"] {
        let r = ureq::post(&format!("{url}/runs/{}/cancel", runs.waiter2))
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(body);
        assert!(
            matches!(r, Err(ureq::Error::Status(403, _))),
            "a forged POST was not refused: {:?}",
            r.map(|r| r.status())
        );
    }
    assert_eq!(try_status(&db, runs.waiter2).as_deref(), Some("suspended"));

    drop(browser);
    kill9(&mut server);
}

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

// `curl`-style checks: /metrics, /api/runs, read-only, the token, the Host check.
on_both_stores!(console_over_plain_http);
fn console_over_plain_http(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "wm.db");
    let marker = dir.path().join("m");
    let flaky = one(
        &db,
        "fixture.flaky",
        &json!({"ms": 10, "marker": marker}).to_string(),
        &["--key", "k-1"],
    );
    let waiter = one(
        &db,
        "fixture.waiter",
        r#"{"name":"go","timeout_ms":3600000}"#,
        &["--key", "k-2"],
    );
    let mut engine = spawn(
        &["serve", "--db", db.to_str().unwrap()],
        &[],
        &dir.path().join("serve.log"),
    );
    wait_for("both runs settled", Duration::from_secs(60), || {
        (try_status(&db, flaky).as_deref() == Some("completed")
            && try_status(&db, waiter).as_deref() == Some("suspended"))
        .then_some(())
    });
    kill9(&mut engine);

    let (mut server, url) = ui(&db, &["--read-only"]);
    let (code, metrics) = get(&format!("{url}/metrics"));
    assert_eq!(code, 200);
    assert!(
        !metrics.contains("waymark_engine_"),
        "a console without an engine shows no engine counters:\n{metrics}"
    );
    for line in [
        "waymark_runs{status=\"completed\"} 1",
        "waymark_runs{status=\"suspended\"} 1",
        "waymark_runs_started_total 2",
        "waymark_runs_completed_total 1",
        "waymark_step_duration_seconds_count{step=\"fixture.flaky\",outcome=\"error\"} 1",
        "waymark_step_duration_seconds_count{step=\"fixture.flaky\",outcome=\"success\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    let (code, api) = get(&format!("{url}/api/runs?key=k-"));
    assert_eq!(code, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    let ids: Vec<i64> = api["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![waiter, flaky], "newest first");
    assert_eq!(api["counts"]["completed"], 1);
    let (_, api) = get(&format!("{url}/api/runs?status=suspended"));
    let api: Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["runs"].as_array().unwrap().len(), 1);
    let (code, detail) = get(&format!("{url}/api/runs/{flaky}"));
    assert_eq!(code, 200);
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["attempts"].as_array().unwrap().len(), 2);
    // Payloads as JSON through the registry's types (the `ui` of the binary's admin CLI).
    assert_eq!(
        detail["input"],
        json!({"ms": 10, "marker": marker}),
        "{detail}"
    );
    assert!(detail["output"].is_u64(), "{detail}");
    assert_eq!(
        detail["journal"][0]["output_json"], detail["output"],
        "{detail}"
    );
    assert_eq!(get(&format!("{url}/api/runs?status=bogus")).0, 400);
    assert_eq!(get(&format!("{url}/runs/99999")).0, 404);

    // Read-only: no forms, every POST refused.
    let (_, page) = get(&format!("{url}/runs/{waiter}"));
    assert!(
        !page.contains("<form method=\"post\""),
        "read-only page has an action"
    );
    let r = ureq::post(&format!("{url}/runs/{waiter}/cancel")).send_string("");
    assert!(matches!(r, Err(ureq::Error::Status(403, _))));
    // A request naming another host (DNS rebinding) is refused on loopback.
    let r = ureq::get(&format!("{url}/"))
        .set("Host", "evil.example:80")
        .call();
    assert!(matches!(r, Err(ureq::Error::Status(403, _))));
    kill9(&mut server);

    // A non-loopback address without a token is refused; with one, every request needs it.
    let out = run(&["ui", "--db", db.to_str().unwrap(), "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
    let (mut server, url) = ui(&db, &["--token", "s3cret"]);
    assert_eq!(get(&format!("{url}/api/runs")).0, 401);
    let r = ureq::get(&format!("{url}/api/runs"))
        .set("Authorization", "Bearer s3cret")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.header("Access-Control-Allow-Origin").is_none(), "no CORS");
    assert!(r
        .header("Content-Security-Policy")
        .is_some_and(|c| c.contains("script-src 'self'") && !c.contains("unsafe-inline")));
    kill9(&mut server);
    assert_eq!(try_status(&db, waiter).as_deref(), Some("suspended"));
}

/// The session cookie and anti-forgery token a run page hands out (what a browser keeps).
fn session(url: &str, run: i64) -> (String, String) {
    let r = ureq::get(&format!("{url}/runs/{run}")).call().unwrap();
    let cookie = r
        .header("Set-Cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let page = r.into_string().unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("an anti-forgery token in the page")
        .to_string();
    (cookie, csrf)
}

/// POST a form with the session; (status, body). Redirects are not followed.
fn post_form(url: &str, cookie: &str, form: &[(&str, &str)]) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    match agent.post(url).set("Cookie", cookie).send_form(form) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

// The event form is checked through the registered `Event<T>` converter: a payload of
// the wrong type is 400 with the decode error and nothing is sent (the run keeps
// waiting); the right one resumes the run.
on_both_stores!(console_event_form_checks_the_registered_type);
fn console_event_form_checks_the_registered_type(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "wm.db");
    let id = one(&db, "fixture.approve", "null", &[]);
    let _engine = serve(dir.path(), "engine", &db, 2, 3000, &[]);
    wait_for("the run waits for approve", Duration::from_secs(60), || {
        (try_status(&db, id).as_deref() == Some("suspended")).then_some(())
    });
    let (mut server, url) = ui(&db, &[]);
    let (cookie, csrf) = session(&url, id);
    let event_url = format!("{url}/runs/{id}/event");

    let (code, body) = post_form(
        &event_url,
        &cookie,
        &[("csrf", &csrf), ("name", "approve"), ("json", "\"yes\"")],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("does not decode as bool"), "{body}");
    assert_eq!(try_query_i64(&db, "SELECT count(*) FROM events"), Some(0));
    assert_eq!(try_status(&db, id).as_deref(), Some("suspended"));
    // Not JSON at all: refused the same way.
    let (code, _) = post_form(
        &event_url,
        &cookie,
        &[("csrf", &csrf), ("name", "approve"), ("json", "{nope")],
    );
    assert_eq!(code, 400);
    assert_eq!(try_query_i64(&db, "SELECT count(*) FROM events"), Some(0));

    let (code, body) = post_form(
        &event_url,
        &cookie,
        &[("csrf", &csrf), ("name", "approve"), ("json", "true")],
    );
    assert_eq!(code, 303, "{body}");
    wait_for(
        "the approved run completes",
        Duration::from_secs(60),
        || (try_status(&db, id).as_deref() == Some("completed")).then_some(()),
    );
    kill9(&mut server);
}

/// A `/metrics` line's value.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

// The console inside an engine process (`serve --ui`) adds that engine's own counters to
// `/metrics`, and they grow as runs complete.
on_both_stores!(console_in_an_engine_serves_its_counters);
fn console_in_an_engine_serves_its_counters(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "wm.db");
    let (_engine, url) = serve_with_ui(dir.path(), "engine", &db, 2, 1500);
    let names = [
        "waymark_engine_writer_commits_total",
        "waymark_engine_writer_commands_total",
        "waymark_engine_lease_renewals_total",
        "waymark_engine_claim_latency_seconds_count",
    ];
    let read = || {
        let (code, text) = get(&format!("{url}/metrics"));
        assert_eq!(code, 200);
        let values: Vec<f64> = names
            .iter()
            .map(|n| metric(&text, n).unwrap_or_else(|| panic!("no {n} in\n{text}")))
            .collect();
        (values, text)
    };
    let (before, text) = read();
    assert!(
        text.contains("# TYPE waymark_engine_claim_latency_seconds histogram"),
        "{text}"
    );
    let ids = start(&db, "fixture.slow", r#"{"steps":2,"ms":1}"#, 5);
    wait_for("the runs complete", Duration::from_secs(60), || {
        ids.iter()
            .all(|id| try_status(&db, *id).as_deref() == Some("completed"))
            .then_some(())
    });
    // Renewals come every heartbeat (a third of the 1.5 s lease): wait for one more.
    let after = wait_for("every counter grows", Duration::from_secs(30), || {
        let (after, _) = read();
        after
            .iter()
            .zip(&before)
            .all(|(a, b)| a > b)
            .then_some(after)
    });
    assert!(after[1] >= after[0], "commands >= commits: {after:?}");
}
