//! Copy a waymark SQLite file into an empty PostgreSQL database (`waymark copy`): every
//! run with its journal, attempts and events, the queue limits and the schedules, keeping
//! run ids and event ids (idempotency keys, `parent_id`, `retry_of`, `steps.copied_from`
//! and `events.consumed_seq` refer to them).
//!
//! Invariants:
//! - All or nothing: the target's rows are written by binary `COPY` (streamed: a million
//!   runs are one statement per table, not a million round trips) in ONE PostgreSQL
//!   transaction; any refusal or failure rolls it back (the schema, created when the
//!   database had none, is the only thing that may stay).
//! - The source is only read, through SQLite, read-only, from one read transaction (one
//!   consistent snapshot).
//! - A source with a live engine is refused before anything is written, judged as the
//!   reaper judges owners: a `(pid, start time)` in our PID namespace that is alive, or a
//!   heartbeat counter that moves while we watch (engines of another PID namespace or whose
//!   process cannot be read). And the copy is refused (rolled back) when anything committed
//!   to the source between the first look and the end of the snapshot (`data_version`
//!   moved): a copy never misses a write made while it ran.
//! - A target that holds runs, events, queues or schedules is refused: the copy never
//!   merges into a live database.
//! - Engine rows are not copied (they are incarnations, not history). A run `running`
//!   under an engine that is gone arrives as the reaper would have left it: `pending` (or
//!   `failed` past `interruptions_max`, the poison rule), its owner and lease cleared, its
//!   epoch bumped (a stale fence never matches), `interruptions + 1` with the reason; its
//!   open attempts are kept (the next claim sees them as interrupted).
//! - Identity sequences continue past the highest id the source ever gave (SQLite's
//!   AUTOINCREMENT counter included), so no new run or event reuses a purged id.

use super::conn::{pg, Db};
use super::PgStore;
use crate::clock::{Clock, SystemClock};
use crate::host;
use crate::store::error::StoreError;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use rusqlite::{Connection, OpenFlags, Row};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

// The copy moves columns one for one: both stores must be at the same schema version (a
// new version of either needs the copy's statements reviewed).
const _: () = assert!(super::schema::SCHEMA_VERSION == crate::store::schema::SCHEMA_VERSION);

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// How long to watch the heartbeat of an engine whose process cannot be checked here
    /// (another PID namespace, an unreadable /proc) before taking it as gone: a live engine
    /// beats several times in a lease TTL (the default: `Config`'s default `lease_ttl`).
    pub heartbeat_wait: Duration,
    /// The poison rule applied to a running run whose owner is gone, as the reaper does:
    /// more interruptions than this and it arrives `failed`.
    pub interruptions_max: i64,
}

impl Default for CopyOptions {
    /// `Config`'s defaults of `lease_ttl` and `interruptions_max` (the store cannot read
    /// `Config`; a test in `config.rs` keeps them equal).
    fn default() -> Self {
        CopyOptions {
            heartbeat_wait: Duration::from_secs(15),
            interruptions_max: 5,
        }
    }
}

impl CopyOptions {
    /// Copy the waymark SQLite file `from` into the empty PostgreSQL database at `to`
    /// (`postgres://...`): every run with its journal, attempts and events, queue limits
    /// and schedules, in one transaction, run and event ids kept. Refused (nothing
    /// written) when an engine runs on `from`, when `from` is written during the copy, or
    /// when `to` holds data.
    pub fn copy(&self, from: &Path, to: &str) -> Result<CopyReport, CopyError> {
        copy_sqlite_to_pg(from, to, self)
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Runs copied.
    pub runs: u64,
    /// Of them, runs that were `running` under a gone engine (arrived claimable, or failed
    /// by the poison rule).
    pub running_recovered: u64,
    /// Journal entries.
    pub steps: u64,
    /// Attempts.
    pub attempts: u64,
    /// Events.
    pub events: u64,
    /// Queue limits.
    pub queues: u64,
    /// Schedules.
    pub schedules: u64,
    /// The target (its URL without the password).
    pub target: String,
}

/// Why a copy was refused or failed. Nothing was written to the target's tables (but for
/// [`StoreError::OutcomeUnknown`] in [`CopyError::Target`]: the connection was lost during
/// the COMMIT).
#[derive(Debug)]
#[non_exhaustive]
pub enum CopyError {
    /// The source cannot be read as a waymark file of this build's schema.
    Source {
        /// The source file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An engine is running on the source.
    LiveEngine {
        /// The source file.
        path: PathBuf,
        /// Its incarnation id.
        engine: String,
        /// Its pid.
        pid: i64,
        /// How it was judged alive.
        why: String,
    },
    /// Something committed to the source while it was copied.
    SourceChanged {
        /// The source file.
        path: PathBuf,
    },
    /// The target already holds data.
    TargetNotEmpty {
        /// The target (its URL without password).
        target: String,
        /// Rows found per table (`runs 12, events 0, ...`).
        found: String,
    },
    /// The target failed (connection, statement).
    Target(StoreError),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Source { path, detail } => {
                write!(f, "cannot copy from {}: {detail}", path.display())
            }
            CopyError::LiveEngine { path, engine, pid, why } => write!(
                f,
                "an engine is running on {} (incarnation {engine}, pid {pid}: {why}); stop it before copying (nothing was written)",
                path.display()
            ),
            CopyError::SourceChanged { path } => write!(
                f,
                "{} changed while it was copied (a writer is using it); stop its engines and clients and copy again (nothing was written)",
                path.display()
            ),
            CopyError::TargetNotEmpty { target, found } => write!(
                f,
                "{target} already holds waymark data ({found}); copy into an empty database (nothing was written)"
            ),
            CopyError::Target(e @ StoreError::OutcomeUnknown { .. }) => write!(
                f,
                "{e}: the copy may or may not have been committed; look at the target (a second copy into it is refused if it was)"
            ),
            CopyError::Target(e) => write!(f, "copying failed, nothing was written: {e}"),
        }
    }
}

impl std::error::Error for CopyError {}

impl From<StoreError> for CopyError {
    fn from(e: StoreError) -> Self {
        CopyError::Target(e)
    }
}

/// An engine row of the source, as the liveness check reads it.
#[derive(Debug, Clone)]
struct EngineSeen {
    id: String,
    pid: i64,
    pid_start: i64,
    host: String,
    beat: i64,
}

/// Copy the SQLite file `from` into the PostgreSQL database at `to` (created schema when it
/// has none). See the module's invariants.
pub fn copy_sqlite_to_pg(
    from: &Path,
    to: &str,
    opts: &CopyOptions,
) -> Result<CopyReport, CopyError> {
    let source_err = |detail: String| CopyError::Source {
        path: from.to_path_buf(),
        detail,
    };
    let sq = |e: rusqlite::Error| source_err(e.to_string());
    if !super::is_url(to) {
        return Err(CopyError::Target(StoreError::Postgres {
            context: "copying",
            code: None,
            detail: format!("the target must be a PostgreSQL URL (postgres://...), not '{to}'"),
        }));
    }
    if !from.exists() {
        return Err(source_err("no such file".into()));
    }
    let conn = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sq)?;
    let version =
        crate::store::schema::check_identity(&conn, from).map_err(|e| source_err(e.to_string()))?;
    if version != crate::store::schema::SCHEMA_VERSION {
        return Err(source_err(format!(
            "its schema version is {version}, this build copies version {} only; open it once with this build (e.g. `waymark stats --db {}`) to migrate it",
            crate::store::schema::SCHEMA_VERSION,
            from.display()
        )));
    }
    let data_version = |c: &Connection| -> Result<i64, CopyError> {
        c.query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(sq)
    };
    let before = data_version(&conn)?;
    refuse_live_engines(&conn, from, opts)?;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock::from_env());
    let now = clock.now_ms();
    let store = PgStore::open(to, 2, clock)?;
    let target = store.name().to_string();
    let mut outcome: Result<CopyReport, CopyError> = Err(CopyError::Target(StoreError::Internal(
        "the copy did not run".into(),
    )));
    let committed = store.read(|db| {
        db.transaction("copying a database", |db| {
            outcome = (|| {
                refuse_non_empty(db, &target)?;
                conn.execute_batch("BEGIN").map_err(sq)?;
                let copied = copy_tables(&conn, db, opts, now, from);
                conn.execute_batch("COMMIT").map_err(sq)?;
                let report = copied?;
                if data_version(&conn)? != before {
                    return Err(CopyError::SourceChanged {
                        path: from.to_path_buf(),
                    });
                }
                Ok(report)
            })();
            match &outcome {
                Ok(_) => Ok(()),
                // Roll back: the reason is in `outcome`.
                Err(_) => Err(StoreError::Internal("copy refused".into())),
            }
        })
    });
    match (committed, outcome) {
        (Ok(()), Ok(report)) => Ok(CopyReport {
            target: super::redact(to),
            ..report
        }),
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(CopyError::Target(e)),
    }
}

/// Refuse a source with a live engine (see the module's invariants). Engines whose process
/// cannot be checked here are watched for `opts.heartbeat_wait`.
fn refuse_live_engines(
    conn: &Connection,
    from: &Path,
    opts: &CopyOptions,
) -> Result<(), CopyError> {
    let read = || -> Result<Vec<EngineSeen>, CopyError> {
        let mut stmt = conn
            .prepare(
                "SELECT id, pid, pid_start, boot_id, beat FROM engines WHERE stopped_at IS NULL",
            )
            .map_err(|e| CopyError::Source {
                path: from.to_path_buf(),
                detail: e.to_string(),
            })?;
        let rows = stmt
            .query_map([], |r| {
                Ok(EngineSeen {
                    id: r.get(0)?,
                    pid: r.get(1)?,
                    pid_start: r.get(2)?,
                    host: r.get(3)?,
                    beat: r.get(4)?,
                })
            })
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| CopyError::Source {
                path: from.to_path_buf(),
                detail: format!("reading its engines: {e}"),
            })?;
        Ok(rows)
    };
    let live = |e: &EngineSeen, why: String| CopyError::LiveEngine {
        path: from.to_path_buf(),
        engine: e.id.clone(),
        pid: e.pid,
        why,
    };
    let mine = host::host_id();
    let mut watch = Vec::new();
    for e in read()? {
        // The source is an SQLite file: it lives on this host.
        match host::place(&mine, &e.host, false) {
            host::Place::EarlierBoot | host::Place::OtherHost => {}
            host::Place::SameNamespace => match host::liveness(e.pid as u32, e.pid_start as u64) {
                host::Liveness::Dead => {}
                host::Liveness::Alive => {
                    return Err(live(&e, "its process is alive on this host".into()))
                }
                host::Liveness::Unknown => watch.push(e),
            },
            host::Place::OtherNamespace => watch.push(e),
        }
    }
    if watch.is_empty() {
        return Ok(());
    }
    log::info!(
        "{}: watching the heartbeat of {} engine(s) for {:?}",
        from.display(),
        watch.len(),
        opts.heartbeat_wait
    );
    std::thread::sleep(opts.heartbeat_wait);
    let again = read()?;
    for e in &watch {
        match again.iter().find(|a| a.id == e.id) {
            Some(a) if a.beat != e.beat => {
                return Err(live(
                    e,
                    format!(
                        "its heartbeat moved from {} to {} in {:?}",
                        e.beat, a.beat, opts.heartbeat_wait
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuse a target holding any waymark data (locking the tables against writers first, so
/// nothing arrives between the look and the copy).
fn refuse_non_empty(db: &mut Db<'_>, target: &str) -> Result<(), CopyError> {
    db.batch(
        "locking the target's tables",
        "LOCK TABLE runs, steps, attempts, events, queues, schedules IN EXCLUSIVE MODE",
    )?;
    let r = db.query_one(
        "looking at the target",
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM events),
                (SELECT count(*) FROM queues), (SELECT count(*) FROM schedules),
                (SELECT count(*) FROM steps), (SELECT count(*) FROM attempts)",
        &[],
    )?;
    let names = ["runs", "events", "queues", "schedules", "steps", "attempts"];
    let counts: Vec<i64> = (0..names.len()).map(|i| r.get(i)).collect();
    if counts.iter().all(|&n| n == 0) {
        return Ok(());
    }
    Err(CopyError::TargetNotEmpty {
        target: target.to_string(),
        found: names
            .iter()
            .zip(&counts)
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// One table to copy: `select` on the source, `copy` into the target with `types`.
struct Table {
    what: &'static str,
    select: &'static str,
    copy: &'static str,
    types: &'static [Type],
}

/// Copy `t`, each source row turned into values by `row` (which may count things).
fn copy_table(
    conn: &Connection,
    db: &mut Db<'_>,
    from: &Path,
    t: &Table,
    mut row: impl FnMut(&Row<'_>) -> rusqlite::Result<Vec<Box<dyn ToSql + Sync>>>,
) -> Result<u64, CopyError> {
    let (what, select, copy, types) = (t.what, t.select, t.copy, t.types);
    let src = |e: rusqlite::Error| CopyError::Source {
        path: from.to_path_buf(),
        detail: format!("reading {what}: {e}"),
    };
    let mut stmt = conn.prepare(select).map_err(src)?;
    let mut rows = stmt.query([]).map_err(src)?;
    let sink = db.client().copy_in(copy).map_err(pg("starting a COPY"))?;
    let mut writer = BinaryCopyInWriter::new(sink, types);
    let mut n = 0u64;
    while let Some(r) = rows.next().map_err(src)? {
        let values = row(r).map_err(|e| CopyError::Source {
            path: from.to_path_buf(),
            detail: format!("reading {what} (row {}): {e}", n + 1),
        })?;
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v).collect();
        writer.write(&refs).map_err(pg("copying rows"))?;
        n += 1;
    }
    writer.finish().map_err(pg("finishing a COPY"))?;
    Ok(n)
}

macro_rules! vals {
    ($($e:expr),* $(,)?) => {
        vec![$(Box::new($e) as Box<dyn ToSql + Sync>),*]
    };
}

/// Copy every table (inside both transactions) and move the identity sequences.
fn copy_tables(
    conn: &Connection,
    db: &mut Db<'_>,
    opts: &CopyOptions,
    now: i64,
    from: &Path,
) -> Result<CopyReport, CopyError> {
    use Type as T;
    let mut report = CopyReport::default();
    let mut recovered = 0u64;
    report.runs = copy_table(
        conn,
        db,
        from,
        &Table {
            what: "runs",
            select: "SELECT id, workflow, version, input, status, idempotency_key, queue, priority,
                ready_at, owner, epoch, lease_expires_at, interruptions, last_interruption,
                output, error, note, parent_id, deadline_at, cancel_requested, created_at,
                updated_at, finished_at, retry_of
         FROM runs ORDER BY id",
            copy:
                "COPY runs (id, workflow, version, input, status, idempotency_key, queue, priority,
                ready_at, owner, epoch, lease_expires_at, interruptions, last_interruption,
                output, error, note, parent_id, deadline_at, cancel_requested, created_at,
                updated_at, finished_at, retry_of) FROM STDIN BINARY",
            types: &[
                T::INT8,
                T::TEXT,
                T::INT8,
                T::BYTEA,
                T::TEXT,
                T::TEXT,
                T::TEXT,
                T::INT8,
                T::INT8,
                T::TEXT,
                T::INT8,
                T::INT8,
                T::INT8,
                T::TEXT,
                T::BYTEA,
                T::TEXT,
                T::TEXT,
                T::INT8,
                T::INT8,
                T::INT8,
                T::INT8,
                T::INT8,
                T::INT8,
                T::INT8,
            ],
        },
        |r| {
            let mut status: String = r.get(4)?;
            let mut owner: Option<String> = r.get(9)?;
            let mut epoch: i64 = r.get(10)?;
            let mut lease: Option<i64> = r.get(11)?;
            let mut interruptions: i64 = r.get(12)?;
            let mut last_interruption: Option<String> = r.get(13)?;
            let mut error: Option<String> = r.get(15)?;
            let mut updated_at: i64 = r.get(21)?;
            let mut finished_at: Option<i64> = r.get(22)?;
            if status == "running" {
                // The reaper's reclaim (store::write::leases::reclaim), word for word: its
                // owner is gone (checked above), and engines are not copied.
                let why = format!(
                    "owner {} was gone when the database was copied",
                    owner.as_deref().unwrap_or("(none)")
                );
                interruptions += 1;
                if interruptions > opts.interruptions_max {
                    status = "failed".into();
                    error = Some(format!("interrupted {interruptions} times; last: {why}"));
                    finished_at = Some(now);
                } else {
                    status = "pending".into();
                    finished_at = None;
                }
                last_interruption = Some(why);
                owner = None;
                epoch += 1;
                lease = None;
                updated_at = now;
                recovered += 1;
            }
            Ok(vals![
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                status,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                owner,
                epoch,
                lease,
                interruptions,
                last_interruption,
                r.get::<_, Option<Vec<u8>>>(14)?,
                error,
                r.get::<_, Option<String>>(16)?,
                r.get::<_, Option<i64>>(17)?,
                r.get::<_, Option<i64>>(18)?,
                r.get::<_, i64>(19)?,
                r.get::<_, i64>(20)?,
                updated_at,
                finished_at,
                r.get::<_, Option<i64>>(23)?,
            ])
        },
    )?;
    report.running_recovered = recovered;
    report.steps = copy_table(
        conn,
        db,
        from,
        &Table {
            what: "journal entries",
            select: "SELECT run_id, seq, name, kind, status, attempts, output, error, recorded_at, copied_from
         FROM steps ORDER BY run_id, seq",
            copy: "COPY steps (run_id, seq, name, kind, status, attempts, output, error, recorded_at,
                     copied_from) FROM STDIN BINARY",
            types: &[
            T::INT8, T::INT8, T::TEXT, T::TEXT, T::TEXT, T::INT8, T::BYTEA, T::TEXT, T::INT8,
            T::INT8,
        ],
        },
        |r| {
            Ok(vals![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<Vec<u8>>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, Option<i64>>(9)?,
            ])
        },
    )?;
    report.attempts = copy_table(
        conn,
        db,
        from,
        &Table {
            what: "attempts",
            select: "SELECT run_id, seq, attempt, name, owner, epoch, pid, pid_start, started_at, ended_at,
                outcome, reason, logs, memory_cap
         FROM attempts ORDER BY run_id, seq, attempt",
            copy: "COPY attempts (run_id, seq, attempt, name, owner, epoch, pid, pid_start, started_at,
                        ended_at, outcome, reason, logs, memory_cap) FROM STDIN BINARY",
            types: &[
            T::INT8, T::INT8, T::INT8, T::TEXT, T::TEXT, T::INT8, T::INT8, T::INT8, T::INT8,
            T::INT8, T::TEXT, T::TEXT, T::TEXT, T::TEXT,
        ],
        },
        |r| {
            Ok(vals![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, Option<i64>>(9)?,
                r.get::<_, Option<String>>(10)?,
                r.get::<_, Option<String>>(11)?,
                r.get::<_, Option<String>>(12)?,
                r.get::<_, Option<String>>(13)?,
            ])
        },
    )?;
    report.events = copy_table(
        conn,
        db,
        from,
        &Table {
            what: "events",
            select:
                "SELECT id, run_id, name, payload, sent_at, consumed_seq FROM events ORDER BY id",
            copy:
                "COPY events (id, run_id, name, payload, sent_at, consumed_seq) FROM STDIN BINARY",
            types: &[T::INT8, T::INT8, T::TEXT, T::BYTEA, T::INT8, T::INT8],
        },
        |r| {
            Ok(vals![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ])
        },
    )?;
    report.queues = copy_table(
        conn,
        db,
        from,
        &Table {
            what: "queues",
            select: "SELECT name, concurrency FROM queues ORDER BY name",
            copy: "COPY queues (name, concurrency) FROM STDIN BINARY",
            types: &[T::TEXT, T::INT8],
        },
        |r| Ok(vals![r.get::<_, String>(0)?, r.get::<_, i64>(1)?]),
    )?;
    report.schedules = copy_table(
        conn,
        db,
        from,
        &Table {
            what: "schedules",
            select:
                "SELECT name, cron, workflow, version, input, queue, catch_up, next_due, created_at,
                updated_at
         FROM schedules ORDER BY name",
            copy: "COPY schedules (name, cron, workflow, version, input, queue, catch_up, next_due,
                         created_at, updated_at) FROM STDIN BINARY",
            types: &[
                T::TEXT,
                T::TEXT,
                T::TEXT,
                T::INT8,
                T::BYTEA,
                T::TEXT,
                T::INT8,
                T::INT8,
                T::INT8,
                T::INT8,
            ],
        },
        |r| {
            Ok(vals![
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
            ])
        },
    )?;
    // Continue past every id the source ever gave (AUTOINCREMENT keeps purged ids used).
    for table in ["runs", "events"] {
        let highest: i64 = conn
            .query_row(
                &format!(
                    "SELECT max(coalesce((SELECT max(id) FROM {table}), 0),
                                coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0))"
                ),
                [],
                |r| r.get(0),
            )
            .map_err(|e| CopyError::Source {
                path: from.to_path_buf(),
                detail: format!("reading the highest id of {table}: {e}"),
            })?;
        let (value, called) = if highest > 0 {
            (highest, true)
        } else {
            (1, false)
        };
        let table_name = table.to_string();
        db.client()
            .query_one(
                "SELECT setval(pg_get_serial_sequence($1, 'id'), $2, $3)",
                &[&table_name, &value, &called],
            )
            .map_err(pg("moving an identity sequence"))?;
    }
    Ok(report)
}
