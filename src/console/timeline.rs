//! The run page's timeline: an SVG Gantt chart drawn on the server (no script). Each
//! attempt is a bar from its start to its end coloured by outcome (an attempt that never
//! ended is "interrupted", or "running" up to now while its run still runs it), each durable
//! wait (sleep, event, child) a span, and a running or waiting run's gap to now a hatched
//! span.

use super::backend::RunDetail;
use super::html::{duration, esc, time};
use crate::store::RunStatus;
use std::fmt::Write as _;

/// Drawing width of the time axis (SVG user units).
const WIDTH: f64 = 1000.0;
/// Width of the label column.
const LABEL_W: f64 = 220.0;
/// Height of one row.
const ROW_H: f64 = 22.0;
/// Rows drawn at most (the journal table has the rest).
pub const ROWS_MAX: usize = 200;

/// One bar of the chart.
struct Bar {
    label: String,
    start: i64,
    end: i64,
    /// CSS classes: `attempt o-ok`, `wait`, `gap`, ...
    class: String,
    title: String,
}

/// The chart of a run, as an SVG element.
pub fn render(d: &RunDetail, now: i64) -> String {
    let run = &d.run;
    let live = matches!(
        run.status,
        RunStatus::Running | RunStatus::Suspended | RunStatus::Pending
    );
    let mut bars = Vec::new();
    let mut last_end = run.created_at;
    for a in &d.attempts {
        let current = run.status == RunStatus::Running
            && run.owner.as_deref() == Some(&a.owner)
            && run.epoch == a.epoch;
        let (end, outcome) = match (a.ended_at, &a.outcome) {
            (Some(e), Some(o)) => (e, o.clone()),
            (Some(e), None) => (e, "none".into()),
            (None, _) if current => (now, "running".into()),
            // Never ended and not running now: its owner died or stalled (interrupted).
            (None, _) => (
                d.attempts
                    .iter()
                    .filter(|b| b.started_at > a.started_at)
                    .map(|b| b.started_at)
                    .min()
                    .unwrap_or(run.updated_at)
                    .max(a.started_at),
                "interrupted".into(),
            ),
        };
        last_end = last_end.max(end);
        let reason = a.reason.as_deref().unwrap_or("");
        bars.push(Bar {
            label: format!("#{} {} · try {}", a.seq, a.name, a.attempt),
            start: a.started_at,
            end,
            class: format!("attempt o-{}", css_word(&outcome)),
            title: format!(
                "{} try {}: {outcome} after {} {reason}",
                a.name,
                a.attempt,
                duration(end - a.started_at)
            ),
        });
    }
    // Waits: a journal entry that is not a step spans from the previous boundary (the
    // previous entry's record, or the end of an attempt of an earlier step) to its record.
    for (i, s) in d.journal.iter().enumerate() {
        if s.kind == "step" {
            continue;
        }
        let prev_entry = i
            .checked_sub(1)
            .and_then(|j| d.journal.get(j))
            .map(|p| p.recorded_at);
        let prev_attempt = d
            .attempts
            .iter()
            .filter(|a| a.seq < s.seq)
            .filter_map(|a| a.ended_at)
            .max();
        let start = prev_entry
            .into_iter()
            .chain(prev_attempt)
            .max()
            .unwrap_or(run.created_at)
            .min(s.recorded_at);
        last_end = last_end.max(s.recorded_at);
        bars.push(Bar {
            label: format!("#{} {} ({})", s.seq, s.name, s.kind),
            start,
            end: s.recorded_at,
            class: format!("wait k-{}", css_word(&s.kind)),
            title: format!("{} {}: {}", s.kind, s.name, duration(s.recorded_at - start)),
        });
    }
    if live {
        let (class, label) = match run.status {
            RunStatus::Suspended => ("wait current", run.note.clone().unwrap_or_default()),
            RunStatus::Pending => ("gap pending", "pending".to_string()),
            _ => ("gap", "running".to_string()),
        };
        let start = if run.status == RunStatus::Suspended {
            run.updated_at.max(last_end).min(now)
        } else {
            last_end.min(now)
        };
        bars.push(Bar {
            label: format!("now: {label}"),
            start,
            end: now,
            class: class.into(),
            title: format!("{label}: {} so far", duration(now - start)),
        });
    }
    bars.sort_by_key(|b| (b.start, b.end));
    bars.truncate(ROWS_MAX);
    let t0 = run
        .created_at
        .min(bars.iter().map(|b| b.start).min().unwrap_or(i64::MAX));
    let t1 = if live {
        now
    } else {
        run.finished_at.unwrap_or(run.updated_at)
    }
    .max(bars.iter().map(|b| b.end).max().unwrap_or(0))
    .max(t0 + 1);
    let scale = (WIDTH - LABEL_W) / (t1 - t0) as f64;
    let height = ROW_H * (bars.len() as f64 + 1.0);
    let mut svg = format!(
        "<svg class=\"timeline\" viewBox=\"0 0 {WIDTH} {height}\" width=\"100%\" \
         role=\"img\" aria-label=\"timeline\">"
    );
    for (i, b) in bars.iter().enumerate() {
        let y = ROW_H * i as f64;
        let x = LABEL_W + (b.start - t0) as f64 * scale;
        let w = ((b.end - b.start) as f64 * scale).max(2.0);
        let _ = write!(
            svg,
            "<text class=\"label\" x=\"4\" y=\"{:.1}\">{}</text>\
             <rect class=\"bar {}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\">\
             <title>{}</title></rect>",
            y + ROW_H * 0.7,
            esc(&b.label),
            b.class,
            y + 3.0,
            ROW_H - 6.0,
            esc(&b.title),
        );
    }
    let y = ROW_H * bars.len() as f64 + ROW_H * 0.7;
    let _ = write!(
        svg,
        "<text class=\"axis\" x=\"{LABEL_W}\" y=\"{y:.1}\">{}</text>\
         <text class=\"axis end\" x=\"{WIDTH}\" y=\"{y:.1}\" text-anchor=\"end\">{} (+{})</text></svg>",
        time(t0),
        time(t1),
        duration(t1 - t0)
    );
    svg
}

/// A word safe in a class name: ASCII alphanumerics and `_`, anything else `-`.
pub fn css_word(s: &str) -> String {
    s.chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}
