//! Starting a child and talking to it until it is gone.
//!
//! Invariants:
//! - No `pre_exec`: std spawns through posix_spawn (cost independent of the engine's
//!   resident memory). `process_group(0)` puts the child and everything it starts in a
//!   group of their own; the child applies its own limits (see [`super::hook`](mod@super::hook)).
//! - One thread (the worker that spawned the child, which outlives it: the parent-death
//!   signal is tied to the spawning *thread*) writes the input, drains stdout and stderr
//!   concurrently with `poll`, and enforces the deadline and cancellation, so a flooding
//!   child never deadlocks and never grows the engine beyond its output bounds.
//! - The engine's intent (timeout, cancel, output over limit, protocol error) is recorded
//!   before it sends any signal, so its own kill is never mistaken for another cause.
//! - Every child is reaped on every path; once the leader has exited (still a zombie, so its
//!   pid and group id cannot be reused) the rest of its group is killed.

use super::protocol::{FrameReader, ProtocolError, Response};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long, after a child exited, the engine keeps reading what is still readable in its
/// pipes (a descendant may hold them open and keep writing).
pub const EXIT_DRAIN_MAX: Duration = Duration::from_millis(200);

/// Head and tail of a stream, with the count of bytes dropped between them.
#[derive(Debug, Clone, Default)]
pub struct HeadTail {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    head_max: usize,
    tail_max: usize,
    total: u64,
    /// The word of the marker: "[... N bytes WORD ...]".
    word: &'static str,
}

impl HeadTail {
    /// Keep at most `max` bytes: the first `max/2` and the last `max/2`.
    pub fn new(max: u64) -> Self {
        Self::with_sizes(max / 2, max / 2, "truncated")
    }
    /// Keep the first `head` and the last `tail` bytes; the marker says "N bytes `word`".
    pub fn with_sizes(head: u64, tail: u64, word: &'static str) -> Self {
        HeadTail {
            head_max: head as usize,
            tail_max: tail as usize,
            word,
            ..Default::default()
        }
    }
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_max.saturating_sub(self.head.len());
        let n = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        if bytes.len() >= self.tail_max {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_max..]);
        } else {
            let over = (self.tail.len() + bytes.len()).saturating_sub(self.tail_max);
            self.tail.drain(..over);
            self.tail.extend(bytes);
        }
    }
    /// Bytes seen in all.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// True if bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }
    /// Head, a marker naming the bytes dropped (if any), tail.
    pub fn render(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        let dropped = self.total - (self.head.len() + self.tail.len()) as u64;
        if dropped > 0 {
            out.extend_from_slice(
                format!("\n[... {dropped} bytes {} ...]\n", self.word).as_bytes(),
            );
        }
        out.extend(self.tail.iter());
        out
    }
    /// The last non-empty line (for reasons), lossily decoded.
    pub fn last_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.render()).into_owned();
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .chars()
            .take(400)
            .collect()
    }
    /// The kept text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.render()).into_owned()
    }
}

/// What to start.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub mode: &'a str,
    pub args: Vec<std::ffi::OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<&'a Path>,
}

/// A started child and the engine's ends of its pipes.
#[derive(Debug)]
pub struct Running {
    pub pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// pidfd of the child (readable once it exits), if the kernel has pidfd_open.
    pidfd: Option<std::os::fd::OwnedFd>,
    /// Start time of the child (from /proc right after the spawn), if it could be read.
    start: Option<u64>,
    reaped: bool,
    /// The kernel reaped the child itself (SIGCHLD ignored in this process): its exit
    /// status is lost, and its pid is no longer ours.
    lost: std::cell::Cell<bool>,
}

fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a descriptor we own.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Start the child in its own process group, without any pre_exec.
pub fn spawn(spec: &SpawnSpec<'_>) -> std::io::Result<Running> {
    let mut cmd = Command::new(spec.program);
    cmd.args(&spec.args)
        .env(super::ENV_MODE, spec.mode)
        .env(super::ENV_PARENT, std::process::id().to_string())
        .env(
            super::ENV_STOPPED_KILL_MS,
            super::stopped_kill_ms().to_string(),
        )
        .env(
            super::ENV_LOG,
            log::max_level().max(log::LevelFilter::Info).to_string(),
        )
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn()?;
    let running = Running {
        pid: child.id(),
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        pidfd: pidfd_open(child.id()),
        start: crate::host::pid_start_time(child.id()),
        reaped: false,
        lost: std::cell::Cell::new(false),
    };
    // `child` is dropped without waiting: `Running` reaps the pid itself (wait4, for rusage).
    Ok(running)
}

/// Why the engine ended a child itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    Timeout(Duration),
    Cancelled,
    OutputLimit { size: u64, limit: u64 },
    Protocol(ProtocolError),
}

/// How the child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// No status could be read: the kernel reaped the child itself (SIGCHLD ignored or
    /// SA_NOCLDWAIT in this process). Never a success.
    Lost,
}

/// Where the child's stdout goes.
#[derive(Debug)]
pub enum Stdout {
    /// Protocol frames (a Rust step): the first complete frame ends the exchange.
    Frames(FrameReader),
    /// Captured output (a command step), head and tail.
    Capture(HeadTail),
}

/// How a [`Running::talk`] ended.
#[derive(Debug)]
pub struct Talk {
    pub response: Option<Response>,
    pub intent: Option<Intent>,
}

/// Everything known once a child is gone.
#[derive(Debug)]
pub struct Finished {
    pub exit: Exit,
    pub cpu: Duration,
    pub response: Option<Response>,
    pub stdout: Stdout,
    pub stderr: HeadTail,
    pub intent: Option<Intent>,
    pub wall: Duration,
    /// The attempt's log capture, as the exchange left it.
    pub log: Option<super::steplog::StepLog>,
}

/// How to drive one exchange.
#[derive(Debug)]
pub struct Exchange {
    pub input: Vec<u8>,
    /// Close stdin once the input is written (command steps). Rust step children keep it
    /// open: its end of file is their signal that the engine died.
    pub close_stdin: bool,
    pub deadline: Option<Instant>,
    pub timeout: Option<Duration>,
    pub cancel: Arc<AtomicBool>,
    pub grace: Duration,
    pub stderr_max: u64,
    pub stdout: Stdout,
    /// The attempt's log capture (output and forwarded `log` records), if kept.
    pub log: Option<super::steplog::StepLog>,
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

enum ReadResult {
    Data(usize),
    Eof,
    WouldBlock,
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> ReadResult {
    loop {
        match r.read(buf) {
            Ok(0) => return ReadResult::Eof,
            Ok(n) => return ReadResult::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return ReadResult::WouldBlock,
            Err(_) => return ReadResult::Eof,
        }
    }
}

impl Running {
    /// True once the leader has exited (left a zombie: not reaped yet), or was reaped by
    /// the kernel itself (then [`Running::lost`] is set).
    fn exited(&self) -> bool {
        if self.reaped || self.lost.get() {
            return true;
        }
        // SAFETY: waitid with WNOWAIT only inspects our own child.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                self.child_lost();
                return true;
            }
            r == 0 && info.si_pid() != 0
        }
    }

    /// Our child is no longer ours to wait for (ECHILD): the kernel reaped it.
    fn child_lost(&self) {
        if !self.lost.get() {
            self.lost.set(true);
            log::error!(
                "step child {} was reaped by the kernel, not by the engine: SIGCHLD is ignored \
                 (or SA_NOCLDWAIT set) in this process; its exit status is lost",
                self.pid
            );
        }
    }

    /// Signal the child's whole group.
    pub fn kill_group(&self, sig: i32) {
        if self.lost.get() {
            // The pid is free for reuse: reach the group only through members checked
            // against the leader's start time.
            if sig == libc::SIGKILL {
                if let Some(start) = self.start {
                    super::group::kill_tree(self.pid, start, Duration::from_secs(1));
                }
            }
            return;
        }
        if !self.reaped {
            // SAFETY: the leader is unreaped, so its pid names our group and no other.
            unsafe {
                libc::kill(-(self.pid as i32), sig);
            }
        }
    }

    /// Wait for the leader to exit (up to `limit`), without reaping it.
    fn wait_exit(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut nap = Duration::from_micros(50);
        loop {
            if self.exited() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            let left = end - now;
            if let Some(fd) = &self.pidfd {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; the pidfd turns readable when the child exits.
                unsafe { libc::poll(&mut p, 1, left.as_millis().clamp(1, 100) as i32) };
            } else {
                std::thread::sleep(nap.min(left));
                nap = (nap * 2).min(Duration::from_millis(2));
            }
        }
    }

    /// Kill what is left of the group, then reap the leader. Returns its exit and CPU time.
    fn reap(&mut self) -> (Exit, Duration) {
        if !self.exited() {
            self.kill_group(libc::SIGKILL);
        }
        let mut status = 0;
        // SAFETY: rusage is plain data written by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // The leader is a zombie now (or about to be): the group id is still ours.
        self.kill_group(libc::SIGKILL);
        while !self.lost.get() {
            // SAFETY: wait4 on our own child with valid out-pointers.
            let r = unsafe { libc::wait4(self.pid as i32, &mut status, 0, &mut usage) };
            if r == self.pid as i32 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if r < 0 && err.kind() != std::io::ErrorKind::Interrupted {
                if err.raw_os_error() == Some(libc::ECHILD) {
                    self.child_lost();
                    self.kill_group(libc::SIGKILL);
                } else {
                    log::error!("wait4 of step child {}: {err}", self.pid);
                    self.lost.set(true);
                }
                break;
            }
        }
        self.reaped = true;
        let tv = |t: libc::timeval| {
            Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000)
        };
        let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
        let exit = if self.lost.get() {
            Exit::Lost
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        };
        (exit, cpu)
    }

    /// Drive the exchange to its end and reap the child. Never leaves a zombie.
    pub fn exchange(mut self, mut ex: Exchange) -> Finished {
        let started = Instant::now();
        let mut stderr = HeadTail::new(ex.stderr_max);
        let talk = self.talk(&mut ex, &mut stderr);
        self.finish(ex, talk, stderr, started)
    }

    /// True while the child may still answer (its stdout is open and nothing went wrong).
    pub fn usable(&self) -> bool {
        self.stdout.is_some() && self.stdin.is_some() && !self.exited()
    }

    /// Start time of the child (from /proc right after the spawn), if it could be read.
    pub fn start_time(&self) -> Option<u64> {
        self.start
    }

    /// Resident memory of the child in bytes (0 if unknown).
    pub fn rss_bytes(&self) -> u64 {
        let statm =
            std::fs::read_to_string(format!("/proc/{}/statm", self.pid)).unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        pages * page
    }

    /// Write the input and read until a response, an intent to end the child, or the exit
    /// of the child. Sends no signal and does not reap: a pooled child may serve again.
    ///
    /// The exchange ends when the child *process* exits, never because its pipes closed
    /// (a command may point its own output elsewhere and keep running). After the exit,
    /// whatever is readable is drained, for at most [`EXIT_DRAIN_MAX`]: a descendant that
    /// still holds a pipe (and may write to it forever) does not keep the exchange open.
    pub fn talk(&mut self, ex: &mut Exchange, stderr: &mut HeadTail) -> Talk {
        let mut response: Option<Response> = None;
        let mut intent: Option<Intent> = None;
        let mut written = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        for fd in [
            self.stdin.as_ref().map(|s| s.as_raw_fd()),
            self.stdout.as_ref().map(|s| s.as_raw_fd()),
            self.stderr.as_ref().map(|s| s.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd);
        }
        if ex.input.is_empty() && ex.close_stdin {
            self.stdin = None;
        }
        // When the leader was seen gone; from then on only what is readable at once is read.
        let mut exited_at: Option<Instant> = None;
        loop {
            if response.is_some() || intent.is_some() {
                break;
            }
            if ex.cancel.load(Ordering::Relaxed) {
                intent = Some(Intent::Cancelled);
                break;
            }
            let now = Instant::now();
            if let Some(d) = ex.deadline {
                if now >= d {
                    intent = Some(Intent::Timeout(ex.timeout.unwrap_or_default()));
                    break;
                }
            }
            if let Some(at) = exited_at {
                if (self.stdout.is_none() && self.stderr.is_none())
                    || now.duration_since(at) >= EXIT_DRAIN_MAX
                {
                    // Leader gone: whatever still holds the pipes (a descendant) is killed
                    // with the group when we reap.
                    break;
                }
            }
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
            let mut which = Vec::with_capacity(4);
            let mut add = |fd: i32, events: libc::c_short, w: u8| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                which.push(w);
            };
            if let Some(s) = &self.stdin {
                if written < ex.input.len() && exited_at.is_none() {
                    add(s.as_raw_fd(), libc::POLLOUT, 0);
                }
            }
            if let Some(s) = &self.stdout {
                add(s.as_raw_fd(), libc::POLLIN, 1);
            }
            if let Some(s) = &self.stderr {
                add(s.as_raw_fd(), libc::POLLIN, 2);
            }
            if exited_at.is_none() {
                if let Some(fd) = &self.pidfd {
                    // Readable once the child exits: its exit ends the wait at once.
                    add(fd.as_raw_fd(), libc::POLLIN, 3);
                }
            }
            let wait = if exited_at.is_some() {
                // Drain only what is there now.
                Duration::ZERO
            } else {
                let mut w = Duration::from_millis(50);
                if let Some(d) = ex.deadline {
                    w = w.min(d.saturating_duration_since(now));
                }
                w.max(Duration::from_millis(1))
            };
            // SAFETY: `fds` is a valid array of pollfd for the call's duration (poll with no
            // descriptors just sleeps).
            let n = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    wait.as_millis() as i32,
                )
            };
            let pipes_ready = n > 0
                && fds
                    .iter()
                    .zip(which.iter())
                    .any(|(p, w)| *w != 3 && p.revents != 0);
            if exited_at.is_some() && !pipes_ready {
                break;
            }
            if exited_at.is_none() && self.exited() {
                exited_at = Some(Instant::now());
            }
            for (pfd, w) in fds.iter().zip(which.iter()) {
                if pfd.revents == 0 {
                    continue;
                }
                match w {
                    0 => {
                        let Some(s) = self.stdin.as_mut() else {
                            continue;
                        };
                        match s.write(&ex.input[written..]) {
                            Ok(k) => written += k,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            // EPIPE: the child is gone; its exit tells why.
                            Err(_) => {
                                self.stdin = None;
                            }
                        }
                        if written >= ex.input.len() && ex.close_stdin {
                            self.stdin = None;
                        }
                    }
                    1 => {
                        let Some(s) = self.stdout.as_mut() else {
                            continue;
                        };
                        match read_some(s, &mut buf) {
                            ReadResult::Data(k) => match &mut ex.stdout {
                                Stdout::Capture(h) => h.push(&buf[..k]),
                                Stdout::Frames(r) => {
                                    if let Err(e) = r.push(&buf[..k]) {
                                        intent = Some(match e {
                                            ProtocolError::TooLarge { size, limit } => {
                                                Intent::OutputLimit { size, limit }
                                            }
                                            e => Intent::Protocol(e),
                                        });
                                        continue;
                                    }
                                    loop {
                                        match r.take::<Response>() {
                                            Ok(Some(Response::Log {
                                                level,
                                                target,
                                                message,
                                            })) => {
                                                if let Some(l) = ex.log.as_mut() {
                                                    l.record(level, &target, &message);
                                                }
                                            }
                                            Ok(Some(resp)) => {
                                                response = Some(resp);
                                                break;
                                            }
                                            Ok(None) => break,
                                            Err(e) => {
                                                intent = Some(Intent::Protocol(e));
                                                break;
                                            }
                                        }
                                    }
                                }
                            },
                            ReadResult::Eof => self.stdout = None,
                            ReadResult::WouldBlock => {}
                        }
                    }
                    2 => {
                        let Some(s) = self.stderr.as_mut() else {
                            continue;
                        };
                        match read_some(s, &mut buf) {
                            ReadResult::Data(k) => {
                                stderr.push(&buf[..k]);
                                if let Some(l) = ex.log.as_mut() {
                                    l.output(&buf[..k]);
                                }
                            }
                            ReadResult::Eof => self.stderr = None,
                            ReadResult::WouldBlock => {}
                        }
                    }
                    _ => {}
                }
            }
        }
        if response.is_some() {
            // What the step wrote to stderr before it answered is already in the pipe
            // (a write to a pipe completes into its buffer): take it now, so a pooled
            // child's output stays with this attempt.
            if let Some(s) = self.stderr.as_mut() {
                while let ReadResult::Data(k) = read_some(s, &mut buf) {
                    stderr.push(&buf[..k]);
                    if let Some(l) = ex.log.as_mut() {
                        l.output(&buf[..k]);
                    }
                }
            }
        }
        Talk { response, intent }
    }

    /// End the child after [`Running::talk`]: act on the intent (TERM, grace, KILL), drain
    /// the last stderr bytes, kill the rest of the group, reap.
    pub fn finish(
        mut self,
        mut ex: Exchange,
        talk: Talk,
        mut stderr: HeadTail,
        started: Instant,
    ) -> Finished {
        let Talk {
            response,
            mut intent,
        } = talk;
        let mut buf = vec![0u8; 64 * 1024];
        match &intent {
            Some(Intent::Timeout(_)) | Some(Intent::Cancelled) => {
                // Intent recorded above; now TERM the group, give it the grace, then KILL.
                self.kill_group(libc::SIGTERM);
                if !self.wait_exit(ex.grace) {
                    self.kill_group(libc::SIGKILL);
                }
            }
            Some(_) => self.kill_group(libc::SIGKILL),
            None => {
                // Done (or the child ended): closing stdin lets a child still around leave.
                self.stdin = None;
                if !self.wait_exit(ex.grace) {
                    self.kill_group(libc::SIGKILL);
                }
            }
        }
        // Pick up the last stderr bytes (the allocator's message comes right before abort).
        if let Some(s) = self.stderr.as_mut() {
            let end = Instant::now() + Duration::from_millis(200);
            while Instant::now() < end {
                match read_some(s, &mut buf) {
                    ReadResult::Data(k) => {
                        stderr.push(&buf[..k]);
                        if let Some(l) = ex.log.as_mut() {
                            l.output(&buf[..k]);
                        }
                    }
                    _ => break,
                }
            }
        }
        if let (Stdout::Frames(r), None, None) = (&ex.stdout, &response, &intent) {
            if r.buffered() > 0 {
                intent = Some(Intent::Protocol(ProtocolError::Truncated {
                    have: r.buffered(),
                }));
            }
        }
        let (exit, cpu) = self.reap();
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        self.pidfd = None;
        Finished {
            exit,
            cpu,
            response,
            stdout: ex.stdout,
            stderr,
            intent,
            wall: started.elapsed(),
            log: ex.log,
        }
    }
}

/// Make sure this process gets its children's exit statuses: with SIGCHLD ignored
/// (SIG_IGN) or SA_NOCLDWAIT set, the kernel reaps children itself and `wait4` finds no
/// status (ECHILD). Restores the default (or clears the flag, keeping a handler) and says
/// what it changed.
pub(crate) fn restore_sigchld() -> Option<&'static str> {
    // SAFETY: sigaction reads/writes plain structs for SIGCHLD only.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) != 0 {
            return None;
        }
        if old.sa_sigaction == libc::SIG_IGN {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGCHLD, &new, std::ptr::null_mut());
            return Some("SIGCHLD was ignored (SIG_IGN); set back to its default");
        }
        if old.sa_flags & libc::SA_NOCLDWAIT != 0 {
            let mut new = old;
            new.sa_flags &= !libc::SA_NOCLDWAIT;
            libc::sigaction(libc::SIGCHLD, &new, std::ptr::null_mut());
            return Some("SIGCHLD had SA_NOCLDWAIT; the flag was cleared (the handler is kept)");
        }
    }
    None
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group(libc::SIGKILL);
            let _ = self.reap();
        }
    }
}

/// Kill a step tree left by a dead engine: the leader `(pid, start)` if it is still that
/// process (never a recycled pid), and every process of its group started no earlier than
/// it, even when the leader itself is dead (see [`super::group::kill_tree`]). Returns true
/// if something was alive and nothing is left now.
pub fn kill_orphan(pid: u32, start: u64, wait: Duration) -> bool {
    matches!(
        super::group::kill_tree(pid, start, wait),
        super::group::TreeKill::Killed(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_tail_keeps_both_ends_and_marks_the_gap() {
        let mut h = HeadTail::new(8);
        h.push(b"abcdefgh");
        h.push(b"ijklmnop");
        assert!(h.truncated());
        assert_eq!(
            h.render(),
            b"abcd\n[... 8 bytes truncated ...]\nmnop".to_vec()
        );
        let mut small = HeadTail::new(100);
        small.push(b"hi\nthere\n");
        assert!(!small.truncated());
        assert_eq!(small.last_line(), "there");
    }
}
