//! Facts about processes on this host: incarnation ids, pid start times, boot id.
//!
//! Invariant: a process is identified by `(pid, start time)`, never by pid
//! alone, so a recycled pid is never mistaken for a live owner or child.

use std::io::Read;

/// The kernel's boot id: differs after every reboot. Empty if unreadable.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat),
/// or `None` if the process does not exist or is a zombie.
pub fn pid_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); starttime is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// True if the process `(pid, start)` is still alive on this host.
pub fn process_alive(pid: u32, start: u64) -> bool {
    pid_start_time(pid) == Some(start)
}

/// This process's `(pid, start time)`.
pub fn this_process() -> (u32, u64) {
    let pid = std::process::id();
    (pid, pid_start_time(pid).unwrap_or(0))
}

/// 64 random bits from the kernel, hex-encoded: a fresh incarnation id.
pub fn random_id() -> String {
    format!("{:016x}", random_u64())
}

/// 64 random bits from the kernel (falls back to time and pid mixing).
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
    {
        return u64::from_le_bytes(buf);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_identified() {
        let (pid, start) = this_process();
        assert!(start > 0);
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1));
        assert!(!boot_id().is_empty());
    }
}
