//! Bench results: one row per figure, printed as a table or as JSON.

use super::cost::Cost;
use std::path::Path;
use std::time::Duration;

/// One measured figure, with the baseline it is compared to (if any) and its goal.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: &'static str,
    pub what: String,
    pub value: f64,
    pub unit: &'static str,
    /// (baseline name, baseline value in the same unit)
    pub baseline: Option<(&'static str, f64)>,
    /// Human-readable goal, and whether it was met.
    pub goal: Option<(String, bool)>,
    /// What the measurement behind this figure cost per unit of work.
    pub cost: Option<Cost>,
}

impl Row {
    pub fn new(id: &'static str, what: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Row {
            id,
            what: what.into(),
            value,
            unit,
            baseline: None,
            goal: None,
            cost: None,
        }
    }

    pub fn cost(mut self, cost: Cost) -> Self {
        self.cost = Some(cost);
        self
    }

    pub fn baseline(mut self, name: &'static str, value: f64) -> Self {
        self.baseline = Some((name, value));
        self
    }

    /// Goal: ratio to the baseline at least `min`.
    pub fn ratio_goal(mut self, min: f64) -> Self {
        let met = self.ratio().map(|r| r >= min).unwrap_or(false);
        self.goal = Some((format!("ratio >= {min}"), met));
        self
    }

    /// Goal: value at most `max` (in the row's unit).
    pub fn max_goal(mut self, max: f64) -> Self {
        self.goal = Some((format!("<= {}", fmt_num(max)), self.value <= max));
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.value / b)
    }
}

pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

/// The 1-minute load average (other work on the machine skews every figure).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A markdown table (also readable in a terminal).
pub fn table(rows: &[Row], quick: bool, total: Duration) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "waymark bench{} ({} {}, {} CPUs, load average {}) in {:.1}s\n\n",
        if quick { " --quick" } else { "" },
        std::env::consts::OS,
        std::env::consts::ARCH,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load_average(),
        total.as_secs_f64()
    ));
    out.push_str(
        "| id | workload | result | baseline | ratio | goal | per | commits | ctx switches | CPU µs | writer µs (busy) | run-queue µs |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let base = r
            .baseline
            .map(|(n, v)| format!("{} {} ({n})", fmt_num(v), r.unit))
            .unwrap_or_else(|| "-".into());
        let ratio = r
            .ratio()
            .map(|x| format!("{x:.2}x"))
            .unwrap_or_else(|| "-".into());
        let goal = r
            .goal
            .as_ref()
            .map(|(g, met)| format!("{g} {}", if *met { "met" } else { "MISSED" }))
            .unwrap_or_else(|| "-".into());
        let dash = || "-".to_string();
        let (per, commits, switches, cpu, writer, runq) = match &r.cost {
            Some(c) => (
                c.per,
                c.commits.map(fmt_num).unwrap_or_else(dash),
                fmt_num(c.switches),
                fmt_num(c.cpu_us),
                c.writer_cpu_us
                    .zip(c.writer_busy)
                    .map(|(w, b)| format!("{} ({:.0}%)", fmt_num(w), b * 100.0))
                    .unwrap_or_else(dash),
                c.runq_us.map(fmt_num).unwrap_or_else(dash),
            ),
            None => ("-", dash(), dash(), dash(), dash(), dash()),
        };
        out.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {} | {per} | {commits} | {switches} | {cpu} | {writer} | {runq} |\n",
            r.id,
            r.what,
            fmt_num(r.value),
            r.unit,
            base,
            ratio,
            goal
        ));
    }
    out
}

/// One JSON object: `{"quick":..,"dir":..,"seconds":..,"results":[..]}`. A result's
/// `cost` (null where not measured) is per unit of work (`per`: a run, a start, a commit
/// ...): `commits` (null where the writers do not count them), `context_switches` and
/// `cpu_us` (getrusage of the bench process and its reaped children), `writer_cpu_us` and
/// `writer_busy` (the writer thread's on-CPU time per unit and as a share of wall time; null
/// where the engine runs in other processes), `runq_us` (time this process's threads waited
/// for a CPU, per unit), and two bounds in units a second: `cpu_bound` (all CPUs at this
/// CPU cost per unit) and `writer_bound` (the one writer thread at its CPU cost per unit).
pub fn json(rows: &[Row], quick: bool, dir: &Path, total: Duration) -> String {
    let results: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "workload": r.what,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline.map(|(n, _)| n),
                "baseline_value": r.baseline.map(|(_, v)| v),
                "ratio": r.ratio(),
                "goal": r.goal.as_ref().map(|(g, _)| g.clone()),
                "goal_met": r.goal.as_ref().map(|(_, m)| *m),
                "cost": r.cost.map(|c| serde_json::json!({
                    "per": c.per,
                    "units": c.units,
                    "commits": c.commits,
                    "context_switches": c.switches,
                    "cpu_us": c.cpu_us,
                    "writer_cpu_us": c.writer_cpu_us,
                    "writer_busy": c.writer_busy,
                    "runq_us": c.runq_us,
                    "cpu_bound": c.cpu_bound(),
                    "writer_bound": c.writer_bound(),
                })),
            })
        })
        .collect();
    serde_json::json!({
        "quick": quick,
        "dir": dir.display().to_string(),
        "seconds": total.as_secs_f64(),
        "load_average": load_average(),
        "results": results,
    })
    .to_string()
}
