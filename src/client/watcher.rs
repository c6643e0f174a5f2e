//! One thread per client that learns of commits (the store's [`ChangeWatch`]), wakes the
//! client's waiters and fans run state changes out to subscriptions.
//!
//! Invariants:
//! - The thread holds no strong reference to the store: it reads through a `Weak` and ends
//!   when the store is gone or the client stopped it (within [`BACKSTOP`]).
//! - A waiter never misses a change: it reads the generation before it reads the runs and
//!   waits only while the generation is unchanged.

use crate::error::Error;
use crate::store::{RunStatus, Storage};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Longest the watch blocks without reading `data_version` (the backstop when no file event
/// arrives, and how long a stopped client's thread may linger).
const BACKSTOP: Duration = Duration::from_millis(500);
/// Changes read per query when fanning out.
const CHANGES_PAGE: i64 = 1024;

/// A run's state change, as a [`Subscription`] delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEvent {
    /// The run.
    pub run_id: i64,
    /// Its new status.
    pub status: RunStatus,
    /// When the change was committed (ms since the Unix epoch).
    pub at_ms: i64,
    /// Position in the file's change log (increasing; a gap means changes were skipped
    /// because the log's oldest entries were dropped before this client read them).
    pub change: i64,
}

/// Run state changes from the moment of [`crate::Client::subscribe`], in commit order.
/// Dropping it ends the subscription. The channel is unbounded: a subscriber that stops
/// reading keeps its backlog in memory.
#[derive(Debug)]
pub struct Subscription {
    rx: Receiver<RunEvent>,
    _watcher: Arc<Watcher>,
}

impl Subscription {
    /// The channel of changes (for `select!`, `recv_timeout`, iteration).
    pub fn receiver(&self) -> &Receiver<RunEvent> {
        &self.rx
    }
    /// The next change, waiting up to `timeout`; `None` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<RunEvent> {
        self.rx.recv_timeout(timeout).ok()
    }
    /// Every change already received, without waiting.
    pub fn drain(&self) -> Vec<RunEvent> {
        self.rx.try_iter().collect()
    }
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    subscribers: Vec<Sender<RunEvent>>,
    /// Last change delivered to subscribers.
    last_change: i64,
}

/// The shared half of the watch thread.
#[derive(Debug)]
pub(crate) struct Watcher {
    state: Mutex<State>,
    cond: Condvar,
    stop: AtomicBool,
    /// The watch thread, joined when the client goes away (it holds a connection).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Watcher {
    /// Start the watch thread on `store`.
    pub(crate) fn start(store: &Arc<dyn Storage>) -> Result<Arc<Watcher>, Error> {
        let mut watch = store.watch()?;
        let watcher = Arc::new(Watcher {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let weak_store: Weak<dyn Storage> = Arc::downgrade(store);
        let weak_self = Arc::downgrade(&watcher);
        let handle = std::thread::Builder::new()
            .name("waymark-client-watch".into())
            .spawn(move || loop {
                let changed = match watch.wait_change(BACKSTOP) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("client change watch: {e}");
                        std::thread::sleep(BACKSTOP);
                        true
                    }
                };
                let (Some(w), Some(store)) = (weak_self.upgrade(), weak_store.upgrade()) else {
                    return;
                };
                if w.stop.load(Ordering::SeqCst) {
                    return;
                }
                if changed {
                    w.fan_out(&*store);
                    w.bump();
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the client's watch thread: {e}")))?;
        *watcher.thread.lock() = Some(handle);
        Ok(watcher)
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stop the watch thread and wait until it has ended (closing its connection: after
    /// this, nothing of the client holds the database files). Waits at most one backstop
    /// interval of the watch.
    pub(crate) fn stop_and_join(&self) {
        self.stop();
        let handle = self.thread.lock().take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }

    /// Wake every waiter to look again.
    pub(crate) fn bump(&self) {
        self.state.lock().generation += 1;
        self.cond.notify_all();
    }

    pub(crate) fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// Block until the generation moves past `seen`, at most `timeout`.
    pub(crate) fn wait_past(&self, seen: u64, timeout: Duration) {
        let mut g = self.state.lock();
        if g.generation == seen {
            self.cond.wait_for(&mut g, timeout);
        }
    }

    pub(crate) fn subscribe(self: &Arc<Self>, store: &dyn Storage) -> Result<Subscription, Error> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut g = self.state.lock();
        if g.subscribers.is_empty() {
            g.last_change = store.last_change()?;
        }
        g.subscribers.push(tx);
        Ok(Subscription {
            rx,
            _watcher: self.clone(),
        })
    }

    fn fan_out(&self, store: &dyn Storage) {
        let mut g = self.state.lock();
        if g.subscribers.is_empty() {
            return;
        }
        loop {
            let changes = match store.changes(g.last_change, CHANGES_PAGE) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("client subscription: reading changes: {e}");
                    return;
                }
            };
            let n = changes.len() as i64;
            for c in changes {
                g.last_change = c.seq;
                let Some(status) = c.status else { continue };
                let event = RunEvent {
                    run_id: c.run_id,
                    status,
                    at_ms: c.at,
                    change: c.seq,
                };
                g.subscribers.retain(|s| s.send(event.clone()).is_ok());
            }
            if n < CHANGES_PAGE || g.subscribers.is_empty() {
                return;
            }
        }
    }
}
