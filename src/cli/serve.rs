//! `waymark probe-threads`: the memory-cap measurements.

use super::CliResult;

/// `waymark probe-threads`: set the memory rlimit on this process, then start threads (each
/// with std's default stack) until `max` or the first failure; print how many started.
pub fn probe_threads(rlimit: &str, mib: u64, max: u32) -> CliResult {
    let which = match rlimit {
        "data" => waymark::MemoryRlimit::Data,
        "as" => waymark::MemoryRlimit::AddressSpace,
        other => return Err(format!("bad --rlimit '{other}': expected data or as")),
    };
    waymark::internal::isolation::limits::apply_memory_rlimit(which, mib * 1024 * 1024)
        .map_err(|e| format!("setrlimit: {e}"))?;
    let (tx, rx) = crossbeam_channel::bounded::<()>(0);
    let mut started = 0u32;
    let mut error = String::new();
    let mut handles = Vec::new();
    while started < max {
        let rx = rx.clone();
        match std::thread::Builder::new().spawn(move || {
            // Allocate a little on each thread, as real work would (glibc gives each
            // thread its own malloc arena).
            let v = std::hint::black_box(vec![1u8; 1024]);
            let _ = rx.recv();
            v.len()
        }) {
            Ok(h) => {
                handles.push(h);
                started += 1;
            }
            Err(e) => {
                error = e.to_string();
                break;
            }
        }
    }
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    println!("rlimit={rlimit} cap={mib}MiB threads_started={started} first_error={error:?}");
    Ok(0)
}
