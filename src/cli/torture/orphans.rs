//! Orphans, counted from outside the engine: every engine process the harness starts carries
//! `WAYMARK_TORTURE_TAG=UNIQUE/LABEL` in its environment, and every step process it starts
//! (child steps, command leaders, their shells and grandchildren) inherits it. One second
//! after an engine died (SIGKILL, its own fault point, or the end of a clean shutdown), a
//! scan of `/proc/*/environ` for its tag finds what is left of its step trees. The engine's
//! own records are never consulted.

use super::workload::ENV_TAG;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long after its engine's death a step process counts as an orphan.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Shared {
    /// Engines that died and were not scanned yet: label and moment of death.
    deaths: Vec<(String, Instant)>,
    /// Orphans found: (pid, start time) and a description.
    found: Vec<((u32, u64), String)>,
}

/// A thread that scans `/proc` one second after each engine death.
pub struct OrphanWatch {
    unique: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OrphanWatch {
    pub fn start(unique: String) -> OrphanWatch {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, u) = (shared.clone(), stop.clone(), unique.clone());
        let thread = std::thread::spawn(move || loop {
            let stopping = st.load(Ordering::SeqCst);
            let due: Vec<String> = {
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut g.deaths)
                    .into_iter()
                    .partition(|(_, t)| now.duration_since(*t) >= ORPHAN_AFTER);
                g.deaths = later;
                if stopping && g.deaths.is_empty() && due.is_empty() {
                    return;
                }
                due.into_iter().map(|(l, _)| l).collect()
            };
            if !due.is_empty() {
                let found: Vec<_> = tagged(&u)
                    .into_iter()
                    .filter(|(_, _, label)| due.contains(label))
                    .map(|(pid, start, label)| {
                        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                            .unwrap_or_default();
                        (
                            (pid, start),
                            format!(
                                "pid {pid} ({}) of engine {label}'s step tree alive {ORPHAN_AFTER:?} after its engine died",
                                cmd.trim()
                            ),
                        )
                    })
                    .collect();
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .found
                    .extend(found);
            }
            std::thread::sleep(Duration::from_millis(50));
        });
        OrphanWatch {
            unique,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Engine `label` died now.
    pub fn died(&self, label: &str) {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deaths
            .push((label.to_string(), Instant::now()));
    }

    /// Scan what is still due, stop the thread, SIGKILL whatever still carries the tag (so
    /// the harness leaves nothing behind), and return the distinct orphans found.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (pid, _, _) in tagged(&self.unique) {
            // SAFETY: kill(2) of a process that carries this harness run's tag.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        g.found
            .iter()
            .filter(|(k, _)| seen.insert(*k))
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// Processes whose environment carries `WAYMARK_TORTURE_TAG=UNIQUE/LABEL`: pid, start time
/// and label. Zombies have an empty environ and are not listed.
pub fn tagged(unique: &str) -> Vec<(u32, u64, String)> {
    let prefix = format!("{ENV_TAG}={unique}/");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let label = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
            .map(|l| String::from_utf8_lossy(l).into_owned());
        if let Some(label) = label {
            let start = waymark::internal::host::pid_start_time(pid).unwrap_or(0);
            out.push((pid, start, label));
        }
    }
    out
}
