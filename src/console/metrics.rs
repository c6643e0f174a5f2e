//! `/metrics` in the Prometheus text format (0.0.4), read from the database, so a console
//! over any file serves them. Counters are totals over the runs the file still holds
//! (purging runs lowers them, as a counter reset). A console inside an engine process adds
//! that engine's own counters (`waymark_engine_...`, since the engine started).

use super::backend::{BResult, Backend};
use crate::store::{RunStatus, DURATION_BUCKETS_MS};
use std::fmt::Write as _;

/// Escape a label value (backslash, quote, newline).
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text.
pub fn render(b: &dyn Backend) -> BResult<String> {
    let m = b.metrics()?;
    let count = |s: RunStatus| {
        m.counts
            .iter()
            .find(|(n, _)| n == s.as_str())
            .map_or(0, |(_, n)| *n)
    };
    let mut t = String::new();
    t.push_str("# HELP waymark_runs Runs in the file by status.\n# TYPE waymark_runs gauge\n");
    for s in RunStatus::ALL {
        let _ = writeln!(t, "waymark_runs{{status=\"{s}\"}} {}", count(s));
    }
    let started: i64 = m.counts.iter().map(|(_, n)| n).sum();
    for (name, help, v) in [
        ("started", "Runs started (still in the file).", started),
        ("completed", "Runs completed.", count(RunStatus::Completed)),
        ("failed", "Runs failed.", count(RunStatus::Failed)),
        ("cancelled", "Runs cancelled.", count(RunStatus::Cancelled)),
        (
            "reclaims",
            "Runs taken back from a dead or stalled owner (interruptions).",
            m.totals.interruptions,
        ),
    ] {
        let _ = write!(
            t,
            "# HELP waymark_runs_{name}_total {help}\n# TYPE waymark_runs_{name}_total counter\nwaymark_runs_{name}_total {v}\n"
        );
    }
    let _ = write!(
        t,
        "# HELP waymark_attempts_interrupted_total Step attempts that never ended (owner died or stalled).\n\
         # TYPE waymark_attempts_interrupted_total counter\nwaymark_attempts_interrupted_total {}\n\
         # HELP waymark_engines_live Engines not stopped with a recent heartbeat.\n\
         # TYPE waymark_engines_live gauge\nwaymark_engines_live {}\n",
        m.totals.attempts_interrupted, m.totals.engines_live
    );
    t.push_str("# HELP waymark_step_duration_seconds Step attempt durations by step and outcome.\n# TYPE waymark_step_duration_seconds histogram\n");
    for d in &m.durations {
        let labels = format!(
            "step=\"{}\",outcome=\"{}\"",
            label(&d.name),
            label(&d.outcome)
        );
        for (le, n) in DURATION_BUCKETS_MS.iter().zip(&d.buckets) {
            let _ = writeln!(
                t,
                "waymark_step_duration_seconds_bucket{{{labels},le=\"{}\"}} {n}",
                *le as f64 / 1000.0
            );
        }
        let _ = write!(
            t,
            "waymark_step_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {c}\n\
             waymark_step_duration_seconds_sum{{{labels}}} {}\n\
             waymark_step_duration_seconds_count{{{labels}}} {c}\n",
            d.sum_ms as f64 / 1000.0,
            c = d.count
        );
    }
    if let Some(e) = &m.engine {
        engine_counters(&mut t, e);
    }
    Ok(t)
}

/// The counters of the engine the console runs in.
fn engine_counters(t: &mut String, e: &crate::engine::counters::EngineCounters) {
    for (name, help, v) in [
        (
            "writer_commits",
            "Write transactions this engine's writer committed (group commits).",
            e.writer_commits,
        ),
        (
            "writer_commands",
            "Commands those transactions applied (commands / commits = group size).",
            e.writer_commands,
        ),
        (
            "lease_renewals",
            "Lease renewals (heartbeats) this engine committed.",
            e.lease_renewals,
        ),
    ] {
        let _ = write!(
            t,
            "# HELP waymark_engine_{name}_total {help}\n# TYPE waymark_engine_{name}_total counter\nwaymark_engine_{name}_total {v}\n"
        );
    }
    t.push_str("# HELP waymark_engine_claim_latency_seconds Claim transactions of this engine by latency.\n# TYPE waymark_engine_claim_latency_seconds histogram\n");
    for (le_us, n) in &e.claim_latency_buckets {
        let _ = writeln!(
            t,
            "waymark_engine_claim_latency_seconds_bucket{{le=\"{}\"}} {n}",
            *le_us as f64 / 1e6
        );
    }
    let _ = write!(
        t,
        "waymark_engine_claim_latency_seconds_bucket{{le=\"+Inf\"}} {c}\n\
         waymark_engine_claim_latency_seconds_sum {}\n\
         waymark_engine_claim_latency_seconds_count {c}\n",
        e.claim_latency_us_sum as f64 / 1e6,
        c = e.claims
    );
}
