//! A one-shot answer from the writer thread to one caller.
//!
//! Why not a channel: a caller waits for a COMMIT (an fsync, typically 0.1 to several ms),
//! and a channel's blocking receive first spins and calls `sched_yield` several times before
//! it sleeps. With dozens of workers on two cores every yield is a context switch to another
//! spinning worker: measured on `waymark bench --only W2 --workers 32`, 36 % of all context
//! switches were these yields. Here the caller sleeps on a condition variable at once and
//! the writer wakes exactly it.
//!
//! Invariant: a reply is delivered at most once; a sender dropped without sending (the writer
//! thread went away with the command) wakes its caller with [`Closed`].

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

enum State<T> {
    Empty,
    Full(T),
    Closed,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The writer's end: answer once.
pub struct Sender<T>(Arc<Slot<T>>);

/// The caller's end: wait for the answer.
pub struct Receiver<T>(Arc<Slot<T>>);

/// The sender went away without answering.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// Waiting ended without an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvTimeoutError {
    Timeout,
    Closed,
}

/// A connected pair.
pub fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Empty),
        ready: Condvar::new(),
    });
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    /// Deliver the answer (ignored if the caller is gone).
    pub fn send(self, value: T) {
        let mut s = self.0.state.lock();
        *s = State::Full(value);
        drop(s);
        self.0.ready.notify_one();
        // Drop sees a full slot and does nothing.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        if matches!(*s, State::Empty) {
            *s = State::Closed;
            drop(s);
            self.0.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    fn take(state: &mut State<T>) -> Option<Result<T, Closed>> {
        match std::mem::replace(state, State::Closed) {
            State::Full(v) => Some(Ok(v)),
            State::Closed => Some(Err(Closed)),
            State::Empty => {
                *state = State::Empty;
                None
            }
        }
    }

    /// Wait for the answer.
    pub fn recv(self) -> Result<T, Closed> {
        let mut s = self.0.state.lock();
        loop {
            if let Some(r) = Self::take(&mut s) {
                return r;
            }
            self.0.ready.wait(&mut s);
        }
    }

    /// Wait at most `wait` for the answer.
    pub fn recv_timeout(&self, wait: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + wait;
        let mut s = self.0.state.lock();
        loop {
            if let Some(r) = Self::take(&mut s) {
                return r.map_err(|Closed| RecvTimeoutError::Closed);
            }
            if self.0.ready.wait_until(&mut s, deadline).timed_out() {
                return match Self::take(&mut s) {
                    Some(r) => r.map_err(|Closed| RecvTimeoutError::Closed),
                    None => Err(RecvTimeoutError::Timeout),
                };
            }
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reply::Sender")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_arrives_across_threads() {
        let (tx, rx) = oneshot();
        let t = std::thread::spawn(move || tx.send(7));
        assert_eq!(rx.recv(), Ok(7));
        t.join().unwrap();
    }

    #[test]
    fn dropped_sender_wakes_the_caller() {
        let (tx, rx) = oneshot::<i32>();
        let t = std::thread::spawn(move || drop(tx));
        assert_eq!(rx.recv(), Err(Closed));
        t.join().unwrap();
    }

    #[test]
    fn timeout_then_late_answer() {
        let (tx, rx) = oneshot();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Timeout)
        );
        tx.send(3);
        assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Ok(3));
    }
}
