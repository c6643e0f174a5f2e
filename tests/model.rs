//! Seeded model-based test of the run state machine against a plain in-memory reference,
//! on both stores (SQLite: a fresh file per sequence; PostgreSQL: one database emptied
//! before each sequence, fewer sequences).
//!
//! Each sequence (seed = WAYMARK_MODEL_SEED or 1, plus the sequence index) opens a fresh
//! store and applies random operations: start (with a small pool of idempotency keys, so
//! duplicate starts are frequent), claim, step done (journal checkpoint), complete, crash
//! (an owner stops acting; its fences stay usable until its runs are reclaimed, as for a
//! paused process), reap (reclaim a crashed owner's runs, sometimes with a stale epoch),
//! restart (a new owner), heartbeat, clock jumps forward and back, and late writes by
//! crashed owners. After every operation the store's answer and its full state (status,
//! owner, epoch, journal length of every run) must equal the model's. A failure prints the
//! seed and the operation trace. The process-level kill points are covered by the torture
//! harness with real processes; here the same transitions are driven in-process so that
//! thousands of sequences fit in CI.

mod support;
use std::collections::{BTreeMap, HashMap};
use support::*;
use waymark::internal::clock::ManualClock;
use waymark::internal::store::pg::PgStore;
use waymark::internal::store::{
    Done, EngineRow, Entry, Fence, NewRun, Op, Store, StoreError, StoreOptions, Synchronous,
};

/// The store under test: both answer the same commands.
enum Under {
    Sqlite(Store),
    Postgres(PgStore, String),
}

impl Under {
    fn call(&self, op: Op) -> Result<Done, StoreError> {
        match self {
            Under::Sqlite(s) => s.call(op),
            Under::Postgres(s, _) => s.call(op),
        }
    }
}

const STEPS: usize = 3;
const SEQUENCES: u64 = 2000;
/// Sequences on PostgreSQL (each a few round trips per operation on a shared server).
const PG_SEQUENCES: u64 = 300;
const OPS: usize = 40;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Pending,
    Running { owner: String },
    Completed,
}

#[derive(Debug, Clone)]
struct MRun {
    status: Status,
    epoch: i64,
    journal: usize,
    created: u64, // order of enqueue: ready_at ties are broken by id, so id order = claim order
}

#[derive(Default)]
struct Model {
    runs: BTreeMap<i64, MRun>,
    keys: HashMap<String, i64>,
    live: Vec<String>,
    crashed: Vec<String>,
    /// Fences handed out by claims: (owner, run, epoch).
    fences: Vec<(String, i64, i64)>,
}

fn fence(owner: &str, run_id: i64, epoch: i64) -> Fence {
    Fence {
        run_id,
        owner: owner.into(),
        epoch,
    }
}

fn entry(seq: usize) -> Entry {
    Entry {
        seq: seq as i64,
        name: "s".into(),
        kind: "step",
        completed: true,
        attempts: 1,
        output: Some(vec![seq as u8]),
        error: None,
    }
}

fn register(store: &Under, id: &str) -> Result<(), String> {
    store
        .call(Op::RegisterEngine(EngineRow {
            id: id.into(),
            pid: 1,
            pid_start: 1,
            boot_id: "model".into(),
        }))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Per run: status, owner, epoch, journal length.
type State = BTreeMap<i64, (String, Option<String>, i64, i64)>;

const SNAPSHOT: &str = "SELECT id, status, owner, epoch, (SELECT count(*) FROM steps s WHERE s.run_id = runs.id) FROM runs";

fn snapshot(store: &Under) -> Result<State, String> {
    match store {
        Under::Sqlite(store) => store
            .read(|c| {
                let mut stmt = c
                    .prepare(SNAPSHOT)
                    .map_err(|e| StoreError::sqlite("snapshot", e))?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    })
                    .and_then(|it| it.collect::<Result<BTreeMap<_, _>, _>>())
                    .map_err(|e| StoreError::sqlite("snapshot", e))?;
                Ok(rows)
            })
            .map_err(|e| e.to_string()),
        Under::Postgres(_, url) => {
            let mut c = pg_cluster_client(url);
            Ok(c.query(SNAPSHOT, &[])
                .map_err(|e| e.to_string())?
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
                .collect())
        }
    }
}

fn check_state(store: &Under, m: &Model) -> Result<(), String> {
    let got = snapshot(store)?;
    let want: State = m
        .runs
        .iter()
        .map(|(id, r)| {
            let (st, owner) = match &r.status {
                Status::Pending => ("pending", None),
                Status::Running { owner } => ("running", Some(owner.clone())),
                Status::Completed => ("completed", None),
            };
            (*id, (st.to_string(), owner, r.epoch, r.journal as i64))
        })
        .collect();
    if got != want {
        return Err(format!("state differs:\n store {got:?}\n model {want:?}"));
    }
    Ok(())
}

/// A fenced write by `owner` at `epoch` must succeed iff the model says it holds the run.
fn holds(m: &Model, owner: &str, run: i64, epoch: i64) -> bool {
    m.runs.get(&run).is_some_and(|r| {
        r.epoch == epoch
            && r.status
                == Status::Running {
                    owner: owner.into(),
                }
    })
}

/// The database of the PostgreSQL sequences (one per test process), emptied before each.
fn pg_db() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(fresh_pg_db)
}

fn sequence(backend: Backend, seed: u64, trace: &mut Vec<String>) -> Result<(), String> {
    let clock = ManualClock::new();
    // A tmpfs when there is one: thousands of fresh databases are I/O bound otherwise.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .map_err(|e| e.to_string())?;
    let store = match backend {
        Backend::Sqlite => {
            let opts = StoreOptions {
                synchronous: Synchronous::Normal,
                quick_check: false,
                readers_max: 1,
                ..StoreOptions::default()
            };
            Under::Sqlite(
                Store::open(&dir.path().join("m.db"), &opts, clock.clone())
                    .map_err(|e| e.to_string())?,
            )
        }
        Backend::Postgres => {
            let url = pg_db().to_string();
            let store = PgStore::open(&url, 2, clock.clone()).map_err(|e| e.to_string())?;
            pg_cluster_client(&url)
                .batch_execute(
                    "TRUNCATE runs, steps, attempts, events, engines, run_changes RESTART IDENTITY",
                )
                .map_err(|e| e.to_string())?;
            Under::Postgres(store, url)
        }
    };
    let mut rng = Rng(seed);
    let mut m = Model::default();
    let mut next_owner = 0;
    let mut created = 0;
    let new_owner = |m: &mut Model, n: &mut u32| -> Result<String, String> {
        *n += 1;
        let id = format!("o{n}");
        register(&store, &id)?;
        m.live.push(id.clone());
        Ok(id)
    };
    new_owner(&mut m, &mut next_owner)?;
    for _ in 0..OPS {
        let roll = rng.below(100);
        match roll {
            0..=19 => {
                let key = format!("k{}", rng.below(6));
                trace.push(format!("start {key}"));
                let done = store
                    .call(Op::Enqueue(NewRun {
                        workflow: "w".into(),
                        version: 1,
                        input: vec![],
                        idempotency_key: Some(key.clone()),
                        queue: "default".into(),
                        priority: 0,
                        ready_at: None,
                        parent_id: None,
                        deadline_at: None,
                    }))
                    .map_err(|e| e.to_string())?;
                let Done::Run { id, created: fresh } = done else {
                    return Err(format!("enqueue answered {done:?}"));
                };
                match m.keys.get(&key) {
                    Some(&existing) => {
                        if fresh || id != existing {
                            return Err(format!("duplicate start of {key} created run {id}"));
                        }
                    }
                    None => {
                        if !fresh {
                            return Err(format!("first start of {key} created nothing"));
                        }
                        created += 1;
                        m.keys.insert(key, id);
                        m.runs.insert(
                            id,
                            MRun {
                                status: Status::Pending,
                                epoch: 0,
                                journal: 0,
                                created,
                            },
                        );
                    }
                }
            }
            20..=34 if !m.live.is_empty() => {
                let owner = m.live[rng.below(m.live.len())].clone();
                let limit = 1 + rng.below(3);
                trace.push(format!("claim {owner} {limit}"));
                let done = store
                    .call(Op::Claim {
                        owner: owner.as_str().into(),
                        limit: limit as i64,
                        workflows_json: r#"["w@1"]"#.into(),
                        lease_ms: 10_000,
                    })
                    .map_err(|e| e.to_string())?;
                let Done::Claimed(got) = done else {
                    return Err(format!("claim answered {done:?}"));
                };
                // Expected: the `limit` oldest pending runs (ready_at order = creation order,
                // ties by id); clock jumps must not hide a pending run.
                let mut pending: Vec<(u64, i64)> = m
                    .runs
                    .iter()
                    .filter(|(_, r)| r.status == Status::Pending)
                    .map(|(id, r)| (r.created, *id))
                    .collect();
                pending.sort();
                let mut want: Vec<i64> = pending.iter().take(limit).map(|p| p.1).collect();
                let mut got_ids: Vec<i64> = got.iter().map(|c| c.run_id).collect();
                want.sort();
                got_ids.sort();
                if want.len() != got_ids.len() {
                    return Err(format!("claim got {got_ids:?}, model expects {want:?}"));
                }
                for c in &got {
                    let r = m.runs.get_mut(&c.run_id).ok_or("claimed an unknown run")?;
                    if r.status != Status::Pending {
                        return Err(format!("claimed run {} in state {:?}", c.run_id, r.status));
                    }
                    r.epoch += 1;
                    if c.epoch != r.epoch {
                        return Err(format!(
                            "run {} claimed at epoch {}, model {}",
                            c.run_id, c.epoch, r.epoch
                        ));
                    }
                    r.status = Status::Running {
                        owner: owner.clone(),
                    };
                    m.fences.push((owner.clone(), c.run_id, c.epoch));
                }
            }
            35..=59 if !m.fences.is_empty() => {
                // Step done or complete, by any fence holder (live or crashed-but-not-reaped).
                let (owner, run, epoch) = m.fences[rng.below(m.fences.len())].clone();
                let journal = m.runs[&run].journal;
                let ok = holds(&m, &owner, run, epoch);
                let op = if journal < STEPS {
                    trace.push(format!(
                        "step {owner} run {run} epoch {epoch} seq {journal}"
                    ));
                    Op::Checkpoint {
                        fence: fence(&owner, run, epoch),
                        entry: entry(journal),
                    }
                } else {
                    trace.push(format!("complete {owner} run {run} epoch {epoch}"));
                    Op::Complete {
                        fence: fence(&owner, run, epoch),
                        output: vec![],
                    }
                };
                match (store.call(op), ok) {
                    (Ok(_), true) => {
                        let r = m.runs.get_mut(&run).ok_or("unknown run")?;
                        if journal < STEPS {
                            r.journal += 1;
                        } else {
                            r.status = Status::Completed;
                        }
                    }
                    (Err(StoreError::LeaseLost { .. }), false) => {}
                    (other, ok) => {
                        return Err(format!(
                            "fenced write answered {other:?}, model says allowed={ok}"
                        ));
                    }
                }
            }
            60..=67 if !m.live.is_empty() => {
                let i = rng.below(m.live.len());
                let owner = m.live.remove(i);
                trace.push(format!("crash {owner}"));
                m.crashed.push(owner);
            }
            68..=77 if !m.crashed.is_empty() => {
                // The reaper: reclaim every run of a crashed owner, with the epoch it reads;
                // sometimes with a stale epoch (the run moved on in between): a no-op.
                let owner = m.crashed[rng.below(m.crashed.len())].clone();
                let held: Vec<(i64, i64)> = m
                    .runs
                    .iter()
                    .filter(|(_, r)| {
                        r.status
                            == Status::Running {
                                owner: owner.clone(),
                            }
                    })
                    .map(|(id, r)| (*id, r.epoch))
                    .collect();
                for (run, epoch) in held {
                    let stale = rng.below(4) == 0;
                    let e = if stale { epoch - 1 } else { epoch };
                    trace.push(format!("reclaim run {run} epoch {e} (of {owner})"));
                    let done = store
                        .call(Op::Reclaim {
                            run_id: run,
                            epoch: e,
                            reason: "model".into(),
                            poison_limit: i64::MAX / 2,
                        })
                        .map_err(|e| e.to_string())?;
                    let Done::Reclaimed(did) = done else {
                        return Err(format!("reclaim answered {done:?}"));
                    };
                    if did == stale {
                        return Err(format!(
                            "reclaim of run {run} at epoch {e}: did={did}, stale={stale}"
                        ));
                    }
                    if did {
                        let r = m.runs.get_mut(&run).ok_or("unknown run")?;
                        r.status = Status::Pending;
                        r.epoch += 1;
                    }
                }
            }
            78..=85 => {
                let id = new_owner(&mut m, &mut next_owner)?;
                trace.push(format!("restart as {id}"));
            }
            86..=91 if !m.live.is_empty() => {
                let owner = m.live[rng.below(m.live.len())].clone();
                trace.push(format!("heartbeat {owner}"));
                let done = store
                    .call(Op::Heartbeat {
                        owner: owner.as_str().into(),
                        lease_ms: 10_000,
                    })
                    .map_err(|e| e.to_string())?;
                let held = m
                    .runs
                    .values()
                    .filter(|r| {
                        r.status
                            == Status::Running {
                                owner: owner.clone(),
                            }
                    })
                    .count();
                if !matches!(done, Done::Count(n) if n == held) {
                    return Err(format!(
                        "heartbeat of {owner} answered {done:?}, model holds {held}"
                    ));
                }
            }
            _ => {
                let jump = match rng.below(3) {
                    0 => 3_600_000,
                    1 => -3_600_000,
                    _ => rng.below(5000) as i64,
                };
                trace.push(format!("clock {jump:+} ms"));
                clock.jump(jump);
            }
        }
        check_state(&store, &m)?;
    }
    Ok(())
}

on_both_stores!(store_transitions_match_the_reference_model);
fn store_transitions_match_the_reference_model(backend: Backend) {
    let base: u64 = std::env::var("WAYMARK_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let count = if std::env::var_os("WAYMARK_MODEL_SEED").is_some() {
        1
    } else if backend == Backend::Postgres {
        PG_SEQUENCES
    } else {
        SEQUENCES
    };
    for i in 0..count {
        let seed = base + i;
        let mut trace = Vec::new();
        if let Err(e) = sequence(backend, seed, &mut trace) {
            panic!(
                "model test failed on {backend:?} with seed {seed} (rerun: WAYMARK_MODEL_SEED={seed} cargo test --release --test model)\n{e}\ntrace:\n  {}",
                trace.join("\n  ")
            );
        }
    }
}
