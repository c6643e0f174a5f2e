//! A crash-simulating SQLite VFS (binary only: library users never link it).
//!
//! `waymark-sim` wraps SQLite's default (unix) VFS. Every call is forwarded, except `fsync`:
//! durability is what this module simulates, so the real disk is never asked for it. For the
//! database, WAL and rollback-journal files it records, per path, every write (offset, bytes),
//! truncate, creation, deletion and sync, and keeps two things per file:
//!
//! - the **durable image**: the bytes a power cut cannot take away (the state at the file's
//!   last completed sync; `None` if the file's existence is not durable);
//! - the **pending** operations since that sync, in order.
//!
//! Model of the disk (the assumptions SQLite itself documents for its own crash tests):
//! - after `fsync(file)` returns, everything written to that file before it is durable;
//! - a file's creation is durable only once the file is synced (the unix VFS pairs a new
//!   file's first sync with an fsync of its directory); a deletion is durable at once when
//!   SQLite asks for the directory sync (`xDelete(.., syncDir=1)`), otherwise it is pending;
//! - unsynced operations reach the disk in any subset and any order, and a write can be torn
//!   at 512-byte sector granularity (a prefix of its sectors reaches the disk). Bytes outside a
//!   write's range are never damaged (SQLite's "powersafe overwrite", the unix default).
//!
//! A **cut** ([`cut_now`], or the `cut_at`-th recorded operation) is atomic with respect to
//! every recorded operation (one lock): the operation that meets it fails with an I/O error,
//! and so does every later write, truncate, sync or delete, as on a machine whose power is
//! gone. [`crash_images`] then draws, with a seeded RNG, one state the disk could hold.
//!
//! Test-only mutation: with `drop_wal_sync`, syncs of `-wal` files are ignored (not made
//! durable), so the checker must then find lost acknowledgements.

use rusqlite::ffi;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Name the simulating VFS is registered under.
pub const VFS_NAME: &str = "waymark-sim";

/// Sector size of the torn-write model.
const SECTOR_BYTES: u64 = 512;

#[derive(Debug, Clone)]
enum PendOp {
    Create,
    Delete,
    Write { off: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Debug, Default)]
struct FileLog {
    path: PathBuf,
    durable: Option<Vec<u8>>,
    pending: Vec<PendOp>,
    /// Recorded operation number of each pending operation (for the post-mortem trace).
    pending_seq: Vec<u64>,
}

#[derive(Debug, Default)]
struct State {
    files: Vec<FileLog>,
    by_path: HashMap<PathBuf, usize>,
    /// Recorded operations so far.
    ops: u64,
    /// The operation number that cuts the power (`u64::MAX`: none).
    cut_at: u64,
    /// The sync that cuts the power (it fails: what it would have made durable is pending).
    cut_at_sync: u64,
    drop_wal_sync: bool,
    /// Syncs seen, and syncs ignored by `drop_wal_sync`.
    syncs: u64,
    syncs_dropped: u64,
    /// Every recorded operation, in order (post-mortem trace: kind, file, offset, length).
    trace: Vec<String>,
}

struct Sim {
    state: parking_lot::Mutex<State>,
    cut: AtomicBool,
    real: *mut ffi::sqlite3_vfs,
}

// SAFETY: `real` points at SQLite's default VFS, a static object that lives as long as the
// process and whose methods are thread-safe; everything else is behind the mutex or atomic.
unsafe impl Send for Sim {}
unsafe impl Sync for Sim {}

static SIM: OnceLock<Sim> = OnceLock::new();

fn sim() -> &'static Sim {
    SIM.get()
        .expect("the simulating VFS is registered before any file is opened")
}

/// Our file object: SQLite allocates `szOsFile` bytes; the real file follows ours.
#[repr(C)]
struct SimFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Index into `State::files`, or `usize::MAX` for an untracked file (temp files).
    id: usize,
}

const REAL_OFFSET: usize = std::mem::size_of::<SimFile>().next_multiple_of(16);

/// Register the simulating VFS (once per process) with the given cut points (recorded
/// operation number, sync number; `u64::MAX`: none) and mutation.
pub fn register(cut_at: u64, cut_at_sync: u64, drop_wal_sync: bool) -> Result<(), String> {
    // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS (static, never freed).
    let real = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if real.is_null() {
        return Err("SQLite has no default VFS".into());
    }
    let state = State {
        cut_at,
        cut_at_sync,
        drop_wal_sync,
        ..Default::default()
    };
    SIM.set(Sim {
        state: parking_lot::Mutex::new(state),
        cut: AtomicBool::new(false),
        real,
    })
    .map_err(|_| "the simulating VFS is already registered".to_string())?;
    // SAFETY: `real` is valid; we copy its struct and replace what must be ours. The copied
    // methods (access, full pathname, randomness, sleep, time, dl*, syscalls) do not use
    // their VFS argument in the unix VFS.
    let mut vfs: ffi::sqlite3_vfs = unsafe { *real };
    vfs.szOsFile = (REAL_OFFSET + unsafe { (*real).szOsFile } as usize) as c_int;
    vfs.pNext = std::ptr::null_mut();
    vfs.zName = CString::new(VFS_NAME).expect("no NUL").into_raw();
    vfs.pAppData = std::ptr::null_mut();
    vfs.xOpen = Some(x_open);
    vfs.xDelete = Some(x_delete);
    let vfs = Box::into_raw(Box::new(vfs));
    // SAFETY: the VFS object is leaked: SQLite keeps the pointer for the process's life.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed: {rc}"));
    }
    Ok(())
}

/// Adopt the database's files already in `dir` (names starting with `db_name`, except the
/// shared-memory index) as durable: they are what the disk holds at start.
pub fn adopt_dir(dir: &Path, db_name: &str) -> Result<(), String> {
    let mut st = sim().state.lock();
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for ent in rd.flatten() {
        let path = ent.path();
        let name = path.to_string_lossy();
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(db_name));
        if !ours || name.ends_with("-shm") || !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let id = file_id(&mut st, &path);
        st.files[id].durable = Some(data);
    }
    Ok(())
}

fn file_id(st: &mut State, path: &Path) -> usize {
    if let Some(&id) = st.by_path.get(path) {
        return id;
    }
    let id = st.files.len();
    st.files.push(FileLog {
        path: path.to_path_buf(),
        durable: None,
        pending: Vec::new(),
        pending_seq: Vec::new(),
    });
    st.by_path.insert(path.to_path_buf(), id);
    id
}

/// Whether the power has been cut.
pub fn is_cut() -> bool {
    SIM.get().is_some_and(|s| s.cut.load(Ordering::SeqCst))
}

/// Cut the power now (if it is not already cut).
pub fn cut_now() {
    let s = sim();
    let _g = s.state.lock();
    s.cut.store(true, Ordering::SeqCst);
}

/// `(recorded operations, syncs, syncs dropped by the mutation)`.
pub fn counters() -> (u64, u64, u64) {
    let st = sim().state.lock();
    (st.ops, st.syncs, st.syncs_dropped)
}

/// Under the lock: count one recorded operation; false if the power is (now) cut.
fn powered(s: &Sim, st: &mut State) -> bool {
    if s.cut.load(Ordering::SeqCst) {
        return false;
    }
    st.ops += 1;
    if st.ops >= st.cut_at {
        s.cut.store(true, Ordering::SeqCst);
        return false;
    }
    true
}

fn describe(op: &PendOp) -> String {
    match op {
        PendOp::Create => "create".into(),
        PendOp::Delete => "delete".into(),
        PendOp::Write { off, data } => format!("write@{off}+{}", data.len()),
        PendOp::Truncate(n) => format!("truncate({n})"),
    }
}

fn file_name(st: &State, id: usize) -> String {
    st.files[id]
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Add an unsynced operation to a file's pending list (and to the trace).
fn record(st: &mut State, id: usize, op: PendOp) {
    let line = format!("{} {} {}", st.ops, file_name(st, id), describe(&op));
    st.trace.push(line);
    let seq = st.ops;
    st.files[id].pending.push(op);
    st.files[id].pending_seq.push(seq);
}

/// Every recorded operation so far, one a line (post-mortem trace).
pub fn trace() -> Vec<String> {
    sim().state.lock().trace.clone()
}

fn apply(img: &mut Option<Vec<u8>>, op: &PendOp) {
    match op {
        PendOp::Create => {
            if img.is_none() {
                *img = Some(Vec::new());
            }
        }
        PendOp::Delete => *img = None,
        PendOp::Write { off, data } => {
            if let Some(v) = img {
                let (off, end) = (*off as usize, *off as usize + data.len());
                if v.len() < end {
                    v.resize(end, 0);
                }
                v[off..end].copy_from_slice(data);
            }
        }
        PendOp::Truncate(n) => {
            if let Some(v) = img {
                v.resize(*n as usize, 0);
            }
        }
    }
}

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How the unsynced operations of one file reached the disk (for the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Choice {
    NothingPending,
    None,
    All,
    Subset,
    Reordered,
    Prefix,
}

/// One file of a crash image: its path, its bytes (`None`: absent), and how it was drawn.
pub struct Image {
    pub path: PathBuf,
    pub data: Option<Vec<u8>>,
    pub choice: Choice,
    pub pending: usize,
    pub torn: bool,
    /// Post-mortem: the pending operations and which reached the disk, in what order.
    pub trace: String,
}

/// Draw one state the disk could hold at the cut (call after the cut).
pub fn crash_images(rng: &mut Rng) -> Vec<Image> {
    let st = sim().state.lock();
    let mut out = Vec::new();
    for f in &st.files {
        let n = f.pending.len();
        let choice = if n == 0 {
            Choice::NothingPending
        } else {
            match rng.below(5) {
                0 => Choice::None,
                1 => Choice::All,
                2 => Choice::Subset,
                3 => Choice::Reordered,
                _ => Choice::Prefix,
            }
        };
        let mut picked: Vec<usize> = match choice {
            Choice::NothingPending | Choice::None => Vec::new(),
            Choice::All => (0..n).collect(),
            Choice::Subset | Choice::Reordered => (0..n).filter(|_| rng.below(2) == 0).collect(),
            Choice::Prefix => (0..rng.below(n as u64 + 1) as usize).collect(),
        };
        if choice == Choice::Reordered {
            // Writes and truncates change places; creation and deletion keep theirs.
            let slots: Vec<usize> = (0..picked.len())
                .filter(|&i| {
                    matches!(
                        f.pending[picked[i]],
                        PendOp::Write { .. } | PendOp::Truncate(_)
                    )
                })
                .collect();
            let mut moved: Vec<usize> = slots.iter().map(|&i| picked[i]).collect();
            for i in (1..moved.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                moved.swap(i, j);
            }
            for (slot, op) in slots.into_iter().zip(moved) {
                picked[slot] = op;
            }
        }
        let seqs: Vec<u64> = picked.iter().map(|&i| f.pending_seq[i]).collect();
        let mut picked: Vec<PendOp> = picked.iter().map(|&i| f.pending[i].clone()).collect();
        // Tear the last write that reaches the disk: only a prefix of its sectors lands.
        let mut torn = false;
        let mut torn_at = None;
        if rng.below(3) == 0 {
            if let Some(PendOp::Write { off, data }) = picked
                .iter_mut()
                .rev()
                .find(|o| matches!(o, PendOp::Write { .. }))
            {
                let end = *off + data.len() as u64;
                let first_boundary = (*off / SECTOR_BYTES + 1) * SECTOR_BYTES;
                if first_boundary < end {
                    let sectors = (end - first_boundary).div_ceil(SECTOR_BYTES);
                    let keep_to = (first_boundary + rng.below(sectors) * SECTOR_BYTES).min(end);
                    let keep = (keep_to - *off) as usize;
                    // Either the prefix lands, or nothing of the write but the first sector.
                    data.truncate(keep);
                    torn = true;
                    torn_at = Some((*off, keep));
                }
            }
        }
        let mut img = f.durable.clone();
        for op in &picked {
            apply(&mut img, op);
        }
        let pending_seqs: Vec<String> = f
            .pending
            .iter()
            .zip(&f.pending_seq)
            .map(|(op, seq)| format!("{seq}:{}", describe(op)))
            .collect();
        let trace = format!(
            "{}: {choice:?}; pending [{}]; applied in order {seqs:?}; torn {torn_at:?} (offset, bytes kept)",
            f.path.display(),
            pending_seqs.join(" ")
        );
        out.push(Image {
            path: f.path.clone(),
            data: img,
            choice,
            pending: n,
            torn,
            trace,
        });
    }
    out
}

fn tracked(flags: c_int) -> bool {
    flags & (ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_WAL | ffi::SQLITE_OPEN_MAIN_JOURNAL) != 0
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let s = sim();
    let f = file as *mut SimFile;
    // SAFETY: SQLite gave us `szOsFile` bytes at `file`; the real file lives at REAL_OFFSET.
    let real = (file as *mut u8).add(REAL_OFFSET) as *mut ffi::sqlite3_file;
    (*f).base.pMethods = std::ptr::null();
    (*f).real = real;
    (*f).id = usize::MAX;
    let path = (!name.is_null() && tracked(flags))
        .then(|| PathBuf::from(CStr::from_ptr(name).to_string_lossy().into_owned()));
    let Some(real_open) = (*s.real).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    let rc = match &path {
        None => real_open(s.real, name, real, flags, out_flags),
        Some(p) => {
            let mut st = s.state.lock();
            let creates = flags & ffi::SQLITE_OPEN_CREATE != 0 && std::fs::metadata(p).is_err();
            if creates && !powered(s, &mut st) {
                return ffi::SQLITE_IOERR_WRITE;
            }
            let rc = real_open(s.real, name, real, flags, out_flags);
            if rc == ffi::SQLITE_OK {
                let existed_unknown = !st.by_path.contains_key(p) && !creates;
                let id = file_id(&mut st, p);
                if existed_unknown {
                    st.files[id].durable = std::fs::read(p).ok();
                }
                if creates {
                    record(&mut st, id, PendOp::Create);
                }
                (*f).id = id;
            }
            rc
        }
    };
    if rc == ffi::SQLITE_OK && !(*real).pMethods.is_null() {
        (*f).base.pMethods = &METHODS;
    }
    rc
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let s = sim();
    let Some(real_delete) = (*s.real).xDelete else {
        return ffi::SQLITE_ERROR;
    };
    let path = PathBuf::from(CStr::from_ptr(name).to_string_lossy().into_owned());
    let mut st = s.state.lock();
    let Some(&id) = st.by_path.get(&path) else {
        drop(st);
        return real_delete(s.real, name, sync_dir);
    };
    if !powered(s, &mut st) {
        return ffi::SQLITE_IOERR_DELETE;
    }
    let rc = real_delete(s.real, name, sync_dir);
    if rc == ffi::SQLITE_OK {
        if sync_dir & 1 != 0 {
            let line = format!("{} {} delete (durable)", st.ops, file_name(&st, id));
            st.trace.push(line);
            let log = &mut st.files[id];
            log.durable = None;
            log.pending.clear();
            log.pending_seq.clear();
        } else {
            record(&mut st, id, PendOp::Delete);
        }
    }
    rc
}

unsafe fn parts(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, usize) {
    let f = file as *mut SimFile;
    ((*f).real, (*f).id)
}

unsafe fn methods(real: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    &*(*real).pMethods
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let (real, _) = parts(file);
    match methods(real).xClose {
        Some(m) => m(real),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xRead
        .map_or(ffi::SQLITE_IOERR_READ, |m| m(real, buf, amt, off))
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    let (real, id) = parts(file);
    let Some(m) = methods(real).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    if id == usize::MAX {
        return m(real, buf, amt, off);
    }
    let s = sim();
    let mut st = s.state.lock();
    if !powered(s, &mut st) {
        return ffi::SQLITE_IOERR_WRITE;
    }
    let rc = m(real, buf, amt, off);
    if rc == ffi::SQLITE_OK {
        let data = std::slice::from_raw_parts(buf as *const u8, amt.max(0) as usize).to_vec();
        record(
            &mut st,
            id,
            PendOp::Write {
                off: off as u64,
                data,
            },
        );
    }
    rc
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let (real, id) = parts(file);
    let Some(m) = methods(real).xTruncate else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    if id == usize::MAX {
        return m(real, size);
    }
    let s = sim();
    let mut st = s.state.lock();
    if !powered(s, &mut st) {
        return ffi::SQLITE_IOERR_TRUNCATE;
    }
    let rc = m(real, size);
    if rc == ffi::SQLITE_OK {
        record(&mut st, id, PendOp::Truncate(size as u64));
    }
    rc
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let (real, id) = parts(file);
    if id == usize::MAX {
        return methods(real)
            .xSync
            .map_or(ffi::SQLITE_OK, |m| m(real, flags));
    }
    let s = sim();
    let mut st = s.state.lock();
    if st.syncs + 1 >= st.cut_at_sync {
        s.cut.store(true, Ordering::SeqCst);
    }
    if !powered(s, &mut st) {
        return ffi::SQLITE_IOERR_FSYNC;
    }
    st.syncs += 1;
    let line = format!("{} {} sync", st.ops, file_name(&st, id));
    st.trace.push(line);
    let st = &mut *st;
    let log = &mut st.files[id];
    if st.drop_wal_sync && log.path.to_string_lossy().ends_with("-wal") {
        st.syncs_dropped += 1;
        return ffi::SQLITE_OK;
    }
    // The real fsync is not needed: durability is what is simulated here.
    let pending = std::mem::take(&mut log.pending);
    log.pending_seq.clear();
    for op in &pending {
        apply(&mut log.durable, op);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xFileSize
        .map_or(ffi::SQLITE_IOERR_FSTAT, |m| m(real, size))
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xLock
        .map_or(ffi::SQLITE_OK, |m| m(real, lock))
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xUnlock
        .map_or(ffi::SQLITE_OK, |m| m(real, lock))
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xCheckReservedLock
        .map_or(ffi::SQLITE_OK, |m| m(real, out))
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xFileControl
        .map_or(ffi::SQLITE_NOTFOUND, |m| m(real, op, arg))
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xSectorSize
        .map_or(SECTOR_BYTES as c_int, |m| m(real))
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (real, _) = parts(file);
    methods(real).xDeviceCharacteristics.map_or(0, |m| m(real))
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    pg: c_int,
    pgsz: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xShmMap
        .map_or(ffi::SQLITE_IOERR_SHMMAP, |m| m(real, pg, pgsz, extend, out))
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xShmLock
        .map_or(ffi::SQLITE_IOERR_SHMLOCK, |m| m(real, offset, n, flags))
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    let (real, _) = parts(file);
    if let Some(m) = methods(real).xShmBarrier {
        m(real)
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xShmUnmap
        .map_or(ffi::SQLITE_OK, |m| m(real, delete))
}

unsafe extern "C" fn x_fetch(
    file: *mut ffi::sqlite3_file,
    off: ffi::sqlite3_int64,
    amt: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (real, _) = parts(file);
    match methods(real).xFetch {
        Some(m) => m(real, off, amt, out),
        None => {
            *out = std::ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_unfetch(
    file: *mut ffi::sqlite3_file,
    off: ffi::sqlite3_int64,
    p: *mut c_void,
) -> c_int {
    let (real, _) = parts(file);
    methods(real)
        .xUnfetch
        .map_or(ffi::SQLITE_OK, |m| m(real, off, p))
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};
