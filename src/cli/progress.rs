//! A progress display of a set of runs, fed by run state changes (`Engine::subscribe`), not
//! by polling: on a terminal one line redrawn in place (a bar, runs finished / total, by
//! status), elsewhere plain lines (at most one a second, and always the last one).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};
use waymark::{Engine, RunFilter, RunStatus};

/// Redraws of the terminal line at most this often.
const TTY_REDRAW_MIN: Duration = Duration::from_millis(100);
/// Plain lines at most this often (the last one is always printed).
const PLAIN_LINE_MIN: Duration = Duration::from_secs(1);
/// Width of the bar, in characters.
const BAR_WIDTH: usize = 30;

/// What is known of each run followed, and what was last shown.
pub struct Progress {
    prefix: &'static str,
    status: HashMap<i64, RunStatus>,
    done: usize,
    tty: bool,
    drawn: Option<(Instant, String)>,
}

impl Progress {
    /// Follow the runs `ids`; `tty`: redraw one line in place.
    pub fn new(prefix: &'static str, ids: &[i64], tty: bool) -> Self {
        Progress {
            prefix,
            status: ids.iter().map(|&id| (id, RunStatus::Pending)).collect(),
            done: 0,
            tty,
            drawn: None,
        }
    }

    /// Runs followed.
    pub fn total(&self) -> usize {
        self.status.len()
    }

    /// True once every run followed has finished.
    pub fn all_done(&self) -> bool {
        self.done == self.total()
    }

    /// A change of run `id` to `status`. A finished run never changes again, so a change
    /// older than what is known (a subscription backlog behind a snapshot) is ignored.
    pub fn apply(&mut self, id: i64, status: RunStatus) {
        let Some(known) = self.status.get_mut(&id) else {
            return; // not one of ours
        };
        if known.is_final() {
            return;
        }
        *known = status;
        if status.is_final() {
            self.done += 1;
        }
    }

    /// Read the current status of every run followed (at start, and as a backstop if
    /// changes were skipped: the change log may drop its oldest entries).
    pub fn snapshot(&mut self, engine: &Engine) -> Result<(), String> {
        let (Some(&min), Some(&max)) = (self.status.keys().min(), self.status.keys().max()) else {
            return Ok(());
        };
        let mut after = min - 1;
        while after < max {
            let page = engine
                .list(&RunFilter::new().after(after).limit(RunFilter::LIMIT_MAX))
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for r in page {
                self.apply(r.id, r.status);
            }
        }
        Ok(())
    }

    fn line(&self) -> String {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for s in self.status.values() {
            *by.entry(s.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = RunStatus::ALL
            .iter()
            .filter_map(|s| by.get(s.as_str()).map(|n| format!("{n} {}", s.as_str())))
            .collect();
        format!(
            "{}: {}/{} finished ({})",
            self.prefix,
            self.done,
            self.total(),
            parts.join(", ")
        )
    }

    /// Show the progress if it changed (and the last showing is old enough, unless
    /// everything finished or `force`).
    pub fn draw(&mut self, force: bool) {
        let line = self.line();
        let min = if self.tty {
            TTY_REDRAW_MIN
        } else {
            PLAIN_LINE_MIN
        };
        if let Some((at, last)) = &self.drawn {
            if *last == line || (at.elapsed() < min && !self.all_done() && !force) {
                return;
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            let total = self.total().max(1);
            let filled = self.done * BAR_WIDTH / total;
            write!(
                err,
                "\r\x1b[K[{}{}] {line}",
                "#".repeat(filled),
                "-".repeat(BAR_WIDTH - filled)
            )
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.drawn = Some((Instant::now(), line));
    }

    /// Show the final state and end the terminal line.
    pub fn finish(&mut self) {
        self.draw(true);
        if self.tty {
            eprintln!();
        }
    }
}
