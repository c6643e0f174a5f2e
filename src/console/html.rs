//! HTML building blocks: escaping, times, payloads, the page frame.
//!
//! Invariant: every string that came from a user or a step (workflow and step names, keys,
//! notes, errors, payloads, event names) reaches the page only through [`esc`].

use super::backend::BackendError;
use crate::client::PayloadJson;
use std::fmt::Write as _;

/// Payload bytes shown (as JSON text or hex) before the rest is cut.
pub const PAYLOAD_SHOWN_BYTES_MAX: usize = 4096;

/// Escape text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a query value.
pub fn url_enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2024-05-01 12:00:03.250Z` for a time in ms since the epoch (UTC).
pub fn time(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// An optional time, or a dash.
pub fn opt_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_else(|| "–".into())
}

/// `1.25 s`, `340 ms`, `2 h 3 min`.
pub fn duration(ms: i64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.2} s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => format!("{} min {} s", ms / 60_000, ms / 1000 % 60),
        ms => format!("{} h {} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// A stored payload for people, escaped: its JSON (decoded through the registered type,
/// see [`crate::Client::input_json`]) in a `<pre class="json">`, or "undecodable: why (N
/// bytes)". `attrs` go into the element (an `id`).
pub fn payload(shown: &PayloadJson, attrs: &str) -> String {
    match shown {
        Ok(v) => {
            let text = serde_json::to_string_pretty(v).unwrap_or_else(|e| e.to_string());
            let mut cut = text.len().min(PAYLOAD_SHOWN_BYTES_MAX);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let more = if cut < text.len() { "…" } else { "" };
            format!(
                "<pre class=\"json\"{attrs}>{}{more}</pre>",
                esc(&text[..cut])
            )
        }
        Err(why) => format!(
            "<span class=\"bad\"{attrs}>undecodable: {}</span>",
            esc(&why.to_string())
        ),
    }
}

/// The navigation bar's entries.
const NAV: &[(&str, &str)] = &[
    ("/", "Runs"),
    ("/engines", "Engines"),
    ("/metrics", "Metrics"),
];

/// The page frame: head (stylesheet, script: both static files, nothing inline), nav, body.
pub fn page(title: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, name) in NAV {
        let _ = write!(nav, "<a href=\"{href}\">{name}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} · waymark</title>\
         <link rel=\"stylesheet\" href=\"/static/console.css\">\
         <script src=\"/static/console.js\" defer></script></head>\
         <body><header><span class=\"brand\">waymark</span><nav>{nav}</nav></header>\
         <main>{body}</main></body></html>\n",
        esc(title)
    )
}

/// An error page's body.
pub fn error_body(e: &BackendError) -> String {
    format!(
        "<h1>Error</h1><p class=\"error\">{}</p>",
        esc(&e.to_string())
    )
}
