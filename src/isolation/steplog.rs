//! A step attempt's logs, as the engine captures them: the child's output (stderr, and
//! stdout where it is not the result channel) and the `log` records the child forwarded as
//! [`super::protocol::Response::Log`] frames, in arrival order.
//!
//! Invariants: what is kept is bounded (`Config::step_log_head_bytes` +
//! `step_log_tail_bytes`, with a "[... N bytes dropped ...]" marker between them); what is
//! re-emitted through the host's `log` (target [`TARGET`]) is bounded by the head size too,
//! then one line says how much was not re-emitted. Nothing here reads the database.

use super::spawn::HeadTail;

/// Target of the records re-emitted for step output and step `log` records.
pub const TARGET: &str = "waymark::step";
/// A partial output line is re-emitted once it reaches this many bytes.
const LINE_BYTES_MAX: usize = 4096;

/// Captured logs of one attempt.
#[derive(Debug)]
pub struct StepLog {
    /// "run 5: step 'x' (seq 2, attempt 1)": the prefix of re-emitted records.
    label: String,
    kept: HeadTail,
    /// Output bytes after the last newline, not kept or re-emitted yet.
    pending: Vec<u8>,
    /// Bytes that may still be re-emitted.
    emit_left: u64,
    /// Bytes not re-emitted (over the budget).
    emit_skipped: u64,
}

/// `log::Level` from its number in a frame (1 = error .. 5 = trace); unknown numbers are info.
pub fn level_from_u8(n: u8) -> log::Level {
    match n {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        4 => log::Level::Debug,
        5 => log::Level::Trace,
        _ => log::Level::Info,
    }
}

impl StepLog {
    /// Capture for the attempt named by `label`, keeping `head` + `tail` bytes.
    pub fn new(label: String, head: u64, tail: u64) -> Self {
        StepLog {
            label,
            kept: HeadTail::with_sizes(head, tail, "dropped"),
            pending: Vec::new(),
            emit_left: head,
            emit_skipped: 0,
        }
    }

    /// Bytes the step wrote to its output. Kept and re-emitted by whole lines (a line
    /// longer than 4 KiB in pieces), so a `log` record never lands inside an output line
    /// (unbuffered stderr writes a line in several pieces).
    pub fn output(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() >= LINE_BYTES_MAX => self.pending.len(),
            None => return,
        };
        let done: Vec<u8> = self.pending.drain(..cut).collect();
        self.take_lines(&done);
    }

    /// Keep `done` (whole lines) and re-emit it within the budget.
    fn take_lines(&mut self, done: &[u8]) {
        self.kept.push(done);
        let take = (done.len() as u64).min(self.emit_left) as usize;
        self.emit_left -= take as u64;
        self.emit_skipped += (done.len() - take) as u64;
        for line in done[..take].split(|&b| b == b'\n') {
            if !line.is_empty() {
                self.emit_line(line);
            }
        }
    }

    /// A `log` record the step made.
    pub fn record(&mut self, level: u8, target: &str, message: &str) {
        let level = level_from_u8(level);
        let line = format!("[{level} {target}] {message}\n");
        self.kept.push(line.as_bytes());
        if self.emit_left == 0 {
            self.emit_skipped += line.len() as u64;
            return;
        }
        self.emit_left = self.emit_left.saturating_sub(line.len() as u64);
        log::log!(target: TARGET, level, "{}: [{target}] {message}", self.label);
    }

    fn emit_line(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        log::info!(target: TARGET, "{}: {text}", self.label);
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.take_lines(&rest);
        }
    }

    /// End of the attempt: re-emit what is pending, say what was not re-emitted, and
    /// return the kept text (head, marker, tail).
    pub fn finish(&mut self) -> String {
        self.flush_pending();
        if self.emit_skipped > 0 {
            log::info!(
                target: TARGET,
                "{}: [... {} bytes of output not re-emitted; the attempt's stored logs keep the head and tail ...]",
                self.label,
                self.emit_skipped
            );
            self.emit_skipped = 0;
        }
        self.kept.text()
    }

    /// Bytes seen in all.
    pub fn total(&self) -> u64 {
        self.kept.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_logs_are_bounded_with_a_marker() {
        let mut l = StepLog::new("t".into(), 8, 8);
        l.output(b"fir");
        l.record(2, "app", "careful");
        l.output(b"st\n");
        l.output(&[b'x'; 100]);
        l.output(b"\nlast\n");
        let text = l.finish();
        assert!(text.starts_with("[WARN ap\n[... "), "{text:?}");
        assert!(text.contains("bytes dropped ...]"), "{text:?}");
        assert!(text.ends_with("xx\nlast\n"), "{text:?}");
    }
}
