//! The pages (server-rendered HTML) and their `/api/...` JSON mirrors.

use super::backend::{BResult, Backend, BackendError, RunDetail};
use super::html::{duration, esc, opt_time, page, payload, time, url_enc};
use super::http::Params;
use super::timeline::{self, css_word};
use crate::client::PayloadJson;
use crate::store::{RunQuery, RunRow, RunStatus};
use serde_json::json;
use std::fmt::Write as _;

/// Runs per page unless asked.
pub const PAGE_RUNS_DEFAULT: i64 = 50;
/// Most runs per page.
pub const PAGE_RUNS_MAX: i64 = 500;

/// What the runs page was asked for.
#[derive(Debug, Default)]
pub struct RunsQuery {
    filter: RunQuery,
    before: Option<i64>,
    limit: i64,
    /// The raw values, to fill the form and build links.
    raw: Vec<(&'static str, String)>,
}

/// `2024-05-01T12:00`, `2024-05-01T12:00:30` (UTC) or ms since the epoch.
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let (date, clock) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut c = clock
        .trim_end_matches('Z')
        .splitn(3, ':')
        .map(str::parse::<i64>);
    let (h, mi) = (c.next()?.ok()?, c.next()?.ok()?);
    let sec = c.next().and_then(Result::ok).unwrap_or(0);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = super::html::days_from_civil(y, m as u32, day as u32);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000)
}

/// Parse the runs page's query (400 on a bad value).
pub fn runs_query(p: &Params) -> BResult<RunsQuery> {
    let mut q = RunsQuery {
        limit: PAGE_RUNS_DEFAULT,
        ..Default::default()
    };
    let bad = |what: &str, v: &str| BackendError::Bad(format!("bad {what} '{v}'"));
    for key in ["status", "workflow", "key", "from", "to", "before", "limit"] {
        let Some(v) = p.get(key).map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        match key {
            "status" => {
                q.filter.status = Some(
                    v.parse::<RunStatus>()
                        .map_err(|e| BackendError::Bad(e.to_string()))?,
                )
            }
            "workflow" => q.filter.workflow = Some(v.to_string()),
            "key" => q.filter.key_prefix = Some(v.to_string()),
            "from" => q.filter.created_from = Some(parse_time(v).ok_or_else(|| bad("time", v))?),
            "to" => q.filter.created_to = Some(parse_time(v).ok_or_else(|| bad("time", v))?),
            "before" => q.before = Some(v.parse().map_err(|_| bad("run id", v))?),
            _ => {
                q.limit = v
                    .parse::<i64>()
                    .map_err(|_| bad("limit", v))?
                    .clamp(1, PAGE_RUNS_MAX)
            }
        }
        if key != "before" {
            q.raw.push((key, v.to_string()));
        }
    }
    Ok(q)
}

fn link_with(q: &RunsQuery, extra: &[(&str, String)]) -> String {
    let mut parts: Vec<String> = q
        .raw
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .map(|(k, v)| format!("{k}={}", url_enc(v)))
        .collect();
    parts.extend(extra.iter().map(|(k, v)| format!("{k}={}", url_enc(v))));
    format!("/?{}", parts.join("&amp;"))
}

fn raw<'a>(q: &'a RunsQuery, key: &str) -> &'a str {
    q.raw
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// `GET /`: counts per status, the filter form, a page of runs.
pub fn runs_page(b: &dyn Backend, q: &RunsQuery) -> BResult<String> {
    let counts = b.counts()?;
    let runs = b.runs(&q.filter, q.before, q.limit)?;
    let mut h = String::from("<h1>Runs</h1><ul class=\"counts\">");
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let _ = write!(
        h,
        "<li class=\"st-all\"><a href=\"/\">all <b>{total}</b></a></li>"
    );
    for s in RunStatus::ALL {
        let n = counts
            .iter()
            .find(|(name, _)| name == s.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = write!(
            h,
            "<li class=\"st-{s}\"><a href=\"/?status={s}\" data-status=\"{s}\">{s} <b>{n}</b></a></li>"
        );
    }
    h.push_str("</ul><form class=\"filter\" method=\"get\" action=\"/\"><select name=\"status\"><option value=\"\">any status</option>");
    for s in RunStatus::ALL {
        let sel = if q.filter.status == Some(s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(h, "<option{sel}>{s}</option>");
    }
    let _ = write!(
        h,
        "</select> <input name=\"workflow\" placeholder=\"workflow\" value=\"{}\"> \
         <input name=\"key\" placeholder=\"key prefix\" value=\"{}\"> \
         <label>from <input name=\"from\" type=\"datetime-local\" value=\"{}\"></label> \
         <label>to <input name=\"to\" type=\"datetime-local\" value=\"{}\"></label> \
         <button type=\"submit\">Filter</button> \
         <label class=\"auto\"><input type=\"checkbox\" id=\"autorefresh\"> auto-refresh</label></form>",
        esc(raw(q, "workflow")),
        esc(raw(q, "key")),
        esc(raw(q, "from")),
        esc(raw(q, "to")),
    );
    h.push_str(
        "<table class=\"runs\"><thead><tr><th>id</th><th>workflow</th><th>status</th><th>key</th>\
         <th>queue</th><th>steps</th><th>created</th><th>updated</th><th>note / error</th></tr></thead><tbody>",
    );
    for r in &runs {
        let _ = write!(
            h,
            "<tr class=\"run st-{st}\"><td><a href=\"/runs/{id}\">{id}</a></td><td>{wf}@{v}</td>\
             <td class=\"status\">{st}</td><td class=\"key\">{key}</td><td>{queue}</td><td>{steps}</td>\
             <td>{created}</td><td>{updated}</td><td class=\"note\">{note}</td></tr>",
            id = r.id,
            wf = esc(&r.workflow),
            v = r.version,
            st = r.status,
            key = esc(r.idempotency_key.as_deref().unwrap_or("")),
            queue = esc(&r.queue),
            steps = r.steps_completed,
            created = time(r.created_at),
            updated = time(r.updated_at),
            note = esc(&excerpt(r.error.as_deref().or(r.note.as_deref()).unwrap_or(""))),
        );
    }
    h.push_str("</tbody></table><p class=\"paging\">");
    if q.before.is_some() {
        let _ = write!(h, "<a href=\"{}\">newest</a> ", link_with(q, &[]));
    }
    if runs.len() as i64 == q.limit {
        if let Some(last) = runs.last() {
            let _ = write!(
                h,
                "<a class=\"older\" href=\"{}\">older →</a>",
                link_with(q, &[("before", last.id.to_string())])
            );
        }
    }
    h.push_str("</p>");
    Ok(page("Runs", &h))
}

/// `GET /api/runs`.
pub fn runs_json(b: &dyn Backend, q: &RunsQuery) -> BResult<serde_json::Value> {
    let counts: serde_json::Map<String, serde_json::Value> = b
        .counts()?
        .into_iter()
        .map(|(s, n)| (s, json!(n)))
        .collect();
    let runs = b.runs(&q.filter, q.before, q.limit)?;
    let next = (runs.len() as i64 == q.limit)
        .then(|| runs.last().map(|r| r.id))
        .flatten();
    Ok(json!({ "counts": counts, "runs": runs, "next_before": next }))
}

fn excerpt(s: &str) -> String {
    const CHARS_MAX: usize = 120;
    let mut out: String = s.chars().take(CHARS_MAX).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn run_link(id: i64) -> String {
    format!("<a href=\"/runs/{id}\">{id}</a>")
}

/// Forms of the actions a run page offers (none when read-only).
fn actions(r: &RunRow, csrf: Option<&str>) -> String {
    let Some(csrf) = csrf else {
        return "<p class=\"readonly\">read-only console: no actions</p>".into();
    };
    let csrf = esc(csrf);
    let id = r.id;
    let mut h = String::from("<section class=\"actions\"><h2>Actions</h2>");
    if !r.status.is_final() {
        let _ = write!(
            h,
            "<form method=\"post\" action=\"/runs/{id}/cancel\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button id=\"cancel\" type=\"submit\" class=\"danger\">Cancel run</button></form>\
             <form method=\"post\" action=\"/runs/{id}/event\" class=\"event\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input name=\"name\" placeholder=\"event name\" required> \
             <textarea name=\"json\" class=\"json-editor\" rows=\"2\" placeholder=\"JSON payload\">null</textarea> \
             <button type=\"submit\">Send event</button></form>"
        );
    } else {
        let _ = write!(
            h,
            "<form method=\"post\" action=\"/runs/{id}/retry\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button id=\"retry\" type=\"submit\">Retry</button></form>"
        );
    }
    let _ = write!(
        h,
        "<form method=\"post\" action=\"/runs/{id}/restart\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input name=\"seq\" type=\"number\" min=\"1\" placeholder=\"from step #\" required> \
         <button type=\"submit\">Restart from step</button></form></section>"
    );
    h
}

/// `GET /runs/ID`.
pub fn run_page(b: &dyn Backend, d: &RunDetail, csrf: Option<&str>) -> String {
    let r = &d.run;
    let now = b.now_ms();
    let mut h = format!(
        "<h1>Run {} <span class=\"status st-{st}\" id=\"run-status\">{st}</span></h1><dl class=\"summary\">",
        r.id,
        st = r.status
    );
    let mut dd = |k: &str, v: String| {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    };
    dd("workflow", format!("{}@{}", esc(&r.workflow), r.version));
    dd(
        "key",
        format!(
            "<span id=\"run-key\">{}</span>",
            esc(r.idempotency_key.as_deref().unwrap_or("–"))
        ),
    );
    dd(
        "queue",
        format!("{} (priority {})", esc(&r.queue), r.priority),
    );
    dd("created", time(r.created_at));
    dd("updated", time(r.updated_at));
    dd("finished", opt_time(r.finished_at));
    dd("ready at", time(r.ready_at));
    let lease = match (&r.owner, &d.lease_beat) {
        (Some(o), Some((beat, at))) => format!(
            "owner {} · epoch {} · heartbeat {} at {}",
            esc(o),
            r.epoch,
            beat.map_or("–".into(), |b| b.to_string()),
            opt_time(*at)
        ),
        (Some(o), None) => format!("owner {} · epoch {} (no engine row)", esc(o), r.epoch),
        (None, _) => format!("none · epoch {}", r.epoch),
    };
    dd("lease", lease);
    dd(
        "interruptions",
        format!(
            "{} {}",
            r.interruptions,
            esc(r.last_interruption.as_deref().unwrap_or(""))
        ),
    );
    if let Some(e) = &r.error {
        dd("error", format!("<span class=\"error\">{}</span>", esc(e)));
    }
    if let Some(n) = &r.note {
        dd("note", esc(n));
    }
    if let Some(p) = r.parent_id {
        dd("parent", run_link(p));
    }
    dd("input", payload(&d.input, " id=\"run-input\""));
    if let Some(out) = &d.output {
        dd("output", payload(out, " id=\"run-output\""));
    }
    h.push_str("</dl><h2>Timeline</h2>");
    h.push_str(&timeline::render(d, now));
    h.push_str(&actions(r, csrf));
    h.push_str(
        "<h2>Journal</h2><table class=\"journal\"><thead><tr><th>#</th><th>name</th><th>kind</th>\
         <th>status</th><th>attempts</th><th>recorded</th><th>output / error</th></tr></thead><tbody>",
    );
    for (s, shown) in d.journal.iter().zip(&d.outputs) {
        let out = match (&s.error, shown) {
            (Some(e), _) => format!("<span class=\"error\">{}</span>", esc(e)),
            (None, Some(shown)) => payload(shown, ""),
            (None, None) => "–".into(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"output\">{out}</td></tr>",
            s.seq,
            esc(&s.name),
            esc(&s.kind),
            esc(&s.status),
            s.attempts,
            time(s.recorded_at)
        );
    }
    h.push_str(
        "</tbody></table><h2>Attempts</h2><table class=\"attempts\"><thead><tr><th>#</th><th>try</th>\
         <th>step</th><th>outcome</th><th>reason</th><th>duration</th><th>owner · epoch</th><th>pid</th>\
         </tr></thead><tbody>",
    );
    for a in &d.attempts {
        let outcome =
            a.outcome
                .as_deref()
                .unwrap_or(if a.ended_at.is_none() { "open" } else { "none" });
        let _ = write!(
            h,
            "<tr class=\"attempt o-{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"outcome\">{}</td>\
             <td class=\"reason\">{}</td><td>{}</td><td>{} · {}</td><td>{}</td></tr>",
            css_word(outcome),
            a.seq,
            a.attempt,
            esc(&a.name),
            esc(outcome),
            esc(a.reason.as_deref().unwrap_or("")),
            a.ended_at
                .map_or("–".into(), |e| duration(e - a.started_at)),
            esc(&a.owner),
            a.epoch,
            a.pid.map_or("–".into(), |p| p.to_string())
        );
        // The attempt's captured output and `log` records, under it.
        if let Some(logs) = a.logs.as_deref().filter(|l| !l.is_empty()) {
            let _ = write!(
                h,
                "<tr class=\"logs\"><td colspan=\"8\"><pre class=\"logs\">{}</pre></td></tr>",
                esc(logs)
            );
        }
    }
    h.push_str("</tbody></table>");
    if !d.events.is_empty() {
        h.push_str("<h2>Events</h2><table class=\"events\"><thead><tr><th>id</th><th>name</th><th>sent</th><th>consumed by</th><th>payload</th></tr></thead><tbody>");
        for (e, shown) in d.events.iter().zip(&d.payloads) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.id,
                esc(&e.name),
                time(e.sent_at),
                e.consumed_seq.map_or("–".into(), |s| format!("#{s}")),
                payload(shown, "")
            );
        }
        h.push_str("</tbody></table>");
    }
    if !d.children.is_empty() {
        h.push_str("<h2>Child runs</h2><ul class=\"children\">");
        for c in &d.children {
            let _ = write!(
                h,
                "<li>{} {} <span class=\"st-{}\">{}</span></li>",
                run_link(c.id),
                esc(&c.workflow),
                c.status,
                c.status
            );
        }
        h.push_str("</ul>");
    }
    page(&format!("Run {}", r.id), &h)
}

/// `GET /api/runs/ID`.
/// Payloads are JSON values, or `{"undecodable": why, "bytes": N}`.
pub fn run_json(d: &RunDetail) -> serde_json::Value {
    let shown = |p: &PayloadJson| match p {
        Ok(v) => v.clone(),
        Err(why) => json!({"undecodable": why.reason, "bytes": why.bytes}),
    };
    let events: Vec<_> = d
        .events
        .iter()
        .zip(&d.payloads)
        .map(|(e, p)| {
            json!({"id": e.id, "name": e.name, "sent_at": e.sent_at,
                   "consumed_seq": e.consumed_seq, "payload": shown(p), "bytes": e.payload.len()})
        })
        .collect();
    let journal: Vec<_> = d
        .journal
        .iter()
        .zip(&d.outputs)
        .map(|(s, out)| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["output_json"] = out.as_ref().map_or(serde_json::Value::Null, shown);
            v
        })
        .collect();
    json!({
        "run": d.run, "input": shown(&d.input), "output": d.output.as_ref().map(shown),
        "journal": journal, "attempts": d.attempts, "events": events,
        "children": d.children.iter().map(|c| c.id).collect::<Vec<_>>(),
        "lease": d.lease_beat.map(|(beat, at)| json!({"owner": d.run.owner, "epoch": d.run.epoch, "beat": beat, "beat_at": at})),
    })
}

/// `GET /engines`: engines, queues, schedules.
pub fn engines_page(b: &dyn Backend) -> BResult<String> {
    let now = b.now_ms();
    let mut h = String::from(
        "<h1>Engines</h1><table class=\"engines\"><thead><tr><th>id</th><th>pid</th><th>host</th>\
         <th>started</th><th>last heartbeat</th><th>state</th><th>runs held</th></tr></thead><tbody>",
    );
    for e in b.engines()? {
        let state = match (e.stopped_at, e.beat_at) {
            (Some(_), _) => "stopped".to_string(),
            (None, Some(at)) if now - at <= super::backend::LIVE_BEAT_AGE_MS => "live".into(),
            (None, Some(at)) => format!("silent for {}", duration(now - at)),
            (None, None) => "unknown".into(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} (beat {})</td><td>{}</td><td>{}</td></tr>",
            esc(&e.id),
            e.pid.map_or("–".into(), |p| p.to_string()),
            esc(e.host.as_deref().unwrap_or("–")),
            opt_time(e.started_at),
            opt_time(e.beat_at),
            e.beat.map_or("–".into(), |b| b.to_string()),
            esc(&state),
            e.runs_held
        );
    }
    h.push_str("</tbody></table><h2>Queues</h2><table class=\"queues\"><thead><tr><th>queue</th><th>limit</th><th>running</th><th>pending</th></tr></thead><tbody>");
    for q in b.queues()? {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&q.name),
            q.limit.map_or("unlimited".into(), |l| l.to_string()),
            q.running,
            q.pending
        );
    }
    h.push_str("</tbody></table><h2>Schedules</h2><table class=\"schedules\"><thead><tr><th>name</th><th>cron</th><th>workflow</th><th>next due</th><th>missed</th></tr></thead><tbody>");
    for s in b.schedules()? {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.cron),
            esc(&s.workflow),
            time(s.next_due),
            if s.catch_up { "catch up" } else { "skip" }
        );
    }
    h.push_str("</tbody></table>");
    Ok(page("Engines", &h))
}

/// `GET /api/engines`.
pub fn engines_json(b: &dyn Backend) -> BResult<serde_json::Value> {
    Ok(json!({"engines": b.engines()?, "queues": b.queues()?, "schedules": b.schedules()?}))
}
