//! A step's process tree, named by its process group: every step leader is started in a
//! group of its own (`process_group(0)`), whose id is the leader's pid.
//!
//! Invariants:
//! - A group is killed only as `(leader pid, leader start time)`: while any process is in
//!   group G, Linux keeps the number G allocated, so no new process can get pid G; a live
//!   process with pid G and another start time therefore means our group is gone.
//! - Members are found by scanning `/proc/*/stat` (pgid and start time); a member that
//!   started before the recorded leader cannot belong to its group, and such a group is
//!   left alone.
//!
//! What is out of reach: a descendant that called `setsid` (or `setpgid` to another group)
//! has left the step's group. It is not killed when the engine dies, nor at the end of the
//! step, nor by a reclaiming engine (tested in `tests/isolation_tree.rs`): a step that
//! daemonizes owns what it started.

use std::time::{Duration, Instant};

/// One process read from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    pgid: u32,
    start: u64,
}

/// Parse `/proc/PID/stat`; `None` for a zombie or an unreadable entry.
fn read_stat(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): pgrp is field 5, starttime field 22.
    let state = *fields.first()?;
    // A `Z` main thread with live threads is a live process (see `host::all_threads_dead`).
    if (state == "Z" || state == "X") && crate::host::all_threads_dead(pid) {
        return None;
    }
    Some(Proc {
        pid,
        pgid: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Live (non-zombie) members of process group `pgid`.
fn members(pgid: u32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .filter(|p| p.pgid == pgid)
        .collect()
}

/// How [`kill_tree`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeKill {
    /// Nothing of the tree was alive.
    Gone,
    /// This many processes were alive and were killed.
    Killed(usize),
    /// The group holds a process older than the recorded leader: not our group, untouched.
    Foreign { pid: u32 },
    /// Members still alive when the wait ran out.
    Survivors(Vec<u32>),
}

/// Kill what is left of the step tree whose leader was `(leader, leader_start)`: the leader
/// if it is still that process, and every process of its group that started no earlier
/// than it, whether the leader is alive or not. Waits up to `wait` for them to be gone.
pub fn kill_tree(leader: u32, leader_start: u64, wait: Duration) -> TreeKill {
    if leader <= 1 {
        return TreeKill::Gone;
    }
    if let Some(start) = crate::host::pid_start_time(leader) {
        if start != leader_start {
            // The number names another process, so no process is in group `leader` of ours.
            return TreeKill::Gone;
        }
    }
    let end = Instant::now() + wait;
    let mut killed = 0usize;
    loop {
        let mut found = members(leader);
        let leader_alive = crate::host::process_alive(leader, leader_start);
        if leader_alive && !found.iter().any(|p| p.pid == leader) {
            // The leader left its own group (setsid): it is still ours by (pid, start).
            found.push(Proc {
                pid: leader,
                pgid: leader,
                start: leader_start,
            });
        }
        if found.is_empty() {
            return if killed == 0 {
                TreeKill::Gone
            } else {
                TreeKill::Killed(killed)
            };
        }
        if let Some(old) = found.iter().find(|p| p.start < leader_start) {
            return TreeKill::Foreign { pid: old.pid };
        }
        if Instant::now() >= end {
            return TreeKill::Survivors(found.iter().map(|p| p.pid).collect());
        }
        killed = killed.max(found.len());
        // SAFETY: kill(2) of group `leader`, which (checked above) holds only processes
        // started no earlier than our leader: the group number cannot have been reused.
        unsafe {
            libc::kill(-(leader as i32), libc::SIGKILL);
            if leader_alive {
                libc::kill(leader as i32, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kill every process of the group of the live leader `(leader, leader_start)` except the
/// leader itself: what a step left running in a pooled child's group when it returned.
/// Waits up to `wait` for them to be gone; true if nothing but the leader is left.
/// The caller holds the leader unreaped, so the group number names this group only.
pub fn kill_group_except_leader(leader: u32, leader_start: u64, wait: Duration) -> bool {
    if leader <= 1 {
        return false;
    }
    let end = Instant::now() + wait;
    loop {
        let others: Vec<Proc> = members(leader)
            .into_iter()
            .filter(|p| p.pid != leader && p.start >= leader_start)
            .collect();
        if others.is_empty() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        for p in &others {
            // SAFETY: kill(2) of a member of our unreaped leader's group, started no
            // earlier than the leader: it belongs to the step's tree.
            unsafe {
                libc::kill(p.pid as i32, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_read_with_its_group_and_start() {
        let me = std::process::id();
        let p = read_stat(me).unwrap();
        // SAFETY: getpgrp has no preconditions.
        assert_eq!(p.pgid, unsafe { libc::getpgrp() } as u32);
        assert_eq!(Some(p.start), crate::host::pid_start_time(me));
        assert!(members(p.pgid).iter().any(|m| m.pid == me));
    }
}
