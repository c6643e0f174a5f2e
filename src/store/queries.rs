//! Read-only queries (reader pool). Nothing here writes.

use super::error::{StoreError, StoreResult};
pub use super::views::{AttemptRow, RunChange, RunFilter, RunRow, StepRow};
use rusqlite::{params, Connection, OptionalExtension, Row};

const RUN_COLS: &str = "id, workflow, version, status, idempotency_key, queue, priority,
    (SELECT count(*) FROM steps s WHERE s.run_id = runs.id AND s.status = 'completed'),
    created_at, updated_at, finished_at, ready_at, owner, epoch, interruptions, last_interruption,
    error, note, parent_id, output, retry_of,
    (SELECT max(r.id) FROM runs r WHERE r.retry_of = runs.id)";

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        workflow: r.get(1)?,
        version: r.get(2)?,
        status: r.get(3)?,
        idempotency_key: r.get(4)?,
        queue: r.get(5)?,
        priority: r.get(6)?,
        steps_completed: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        finished_at: r.get(10)?,
        ready_at: r.get(11)?,
        owner: r.get(12)?,
        epoch: r.get(13)?,
        interruptions: r.get(14)?,
        last_interruption: r.get(15)?,
        error: r.get(16)?,
        note: r.get(17)?,
        parent_id: r.get(18)?,
        output: r.get(19)?,
        retry_of: r.get(20)?,
        retried_as: r.get(21)?,
    })
}

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(context, e)
}

/// The run with this id.
pub fn run(conn: &Connection, id: i64) -> StoreResult<Option<RunRow>> {
    conn.prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id], run_row).optional())
        .map_err(sql("reading a run"))
}

/// Up to `limit` runs with id greater than `after`, optionally of one status.
pub fn runs_page(
    conn: &Connection,
    status: Option<&str>,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<RunRow>> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLS} FROM runs WHERE id > ?1 AND (?2 IS NULL OR status = ?2) ORDER BY id LIMIT +?3"
    ))
    .and_then(|mut s| s.query_map(params![after, status, limit], run_row)?.collect())
    .map_err(sql("listing runs"))
}

/// Runs matching `filter`, in id order (newest first if asked), at most `filter.limit`.
pub fn list(conn: &Connection, filter: &RunFilter) -> StoreResult<Vec<RunRow>> {
    let statuses: Option<String> = (!filter.statuses.is_empty()).then(|| {
        let names: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
    });
    let (cursor_cmp, order) = if filter.newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let sql_text = format!(
        "SELECT {RUN_COLS} FROM runs
         WHERE (?1 IS NULL OR id {cursor_cmp} ?1)
           AND (?2 IS NULL OR status IN (SELECT value FROM json_each(?2)))
           AND (?3 IS NULL OR workflow = ?3)
           AND (?4 IS NULL OR substr(idempotency_key, 1, length(?4)) = ?4)
           AND (?5 IS NULL OR created_at >= ?5)
           AND (?6 IS NULL OR created_at < ?6)
         ORDER BY id {order} LIMIT +?7"
    );
    conn.prepare_cached(&sql_text)
        .and_then(|mut s| {
            s.query_map(
                params![
                    filter.cursor,
                    statuses,
                    filter.workflow,
                    filter.key_prefix,
                    filter.created_from_ms,
                    filter.created_before_ms,
                    i64::from(filter.effective_limit())
                ],
                run_row,
            )?
            .collect()
        })
        .map_err(sql("listing runs"))
}

/// Whether a run with this id exists.
pub fn run_exists(conn: &Connection, id: i64) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM runs WHERE id = ?1")
        .and_then(|mut s| s.exists(params![id]))
        .map_err(sql("reading a run"))
}

/// The stored input of a run (`None`: no such run).
pub fn run_input(conn: &Connection, id: i64) -> StoreResult<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT input FROM runs WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![id], |r| r.get(0)).optional())
        .map_err(sql("reading a run's input"))
}

/// Up to `limit` run state changes after change `after`, oldest first.
pub fn changes(conn: &Connection, after: i64, limit: i64) -> StoreResult<Vec<RunChange>> {
    conn.prepare_cached(
        "SELECT seq, run_id, status, at FROM run_changes WHERE seq > ?1 ORDER BY seq LIMIT +?2",
    )
    .and_then(|mut s| {
        s.query_map(params![after, limit], |r| {
            let status: String = r.get(2)?;
            Ok(RunChange {
                seq: r.get(0)?,
                run_id: r.get(1)?,
                status: status.parse().ok(),
                at: r.get(3)?,
            })
        })?
        .collect()
    })
    .map_err(sql("reading run changes"))
}

/// The newest change's sequence number (0 when none).
pub fn last_change(conn: &Connection) -> StoreResult<i64> {
    conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM run_changes")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(sql("reading run changes"))
}

/// The oldest unconsumed event `name` of run `run_id`: its id and payload.
pub fn next_event(
    conn: &Connection,
    run_id: i64,
    name: &str,
) -> StoreResult<Option<(i64, Vec<u8>)>> {
    conn.prepare_cached(
        "SELECT id, payload FROM events WHERE run_id = ?1 AND name = ?2
           AND consumed_seq IS NULL ORDER BY id LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row(params![run_id, name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    })
    .map_err(sql("looking for an event"))
}

/// The journal of a run, in sequence order. A row whose columns do not have the types we
/// write is [`StoreError::Undecodable`] naming the entry and the column (the run's data is
/// bad, the storage is fine): the caller parks the run instead of retrying it.
/// A run's journal in order. `+?1`: with a plain `?1` the bundled SQLite (3.54) marks the
/// plan as depending on the parameter's value (equality on the primary key's prefix plus
/// ORDER BY on the rest) and prepares the statement again at every execution (measured:
/// once per claimed run on every reader; `tests/query_plans.rs` guards it). The unary
/// plus keeps the index lookup.
pub const JOURNAL_SQL: &str =
    "SELECT seq, name, kind, status, attempts, error, recorded_at, output, copied_from
     FROM steps WHERE run_id = +?1 ORDER BY seq";

/// A run's attempts in order (`+?1`: see [`JOURNAL_SQL`]).
pub const ATTEMPTS_SQL: &str =
    "SELECT seq, attempt, name, owner, epoch, pid, pid_start, started_at, ended_at, outcome, reason,
            logs, memory_cap
     FROM attempts WHERE run_id = +?1 ORDER BY seq, attempt";

pub fn journal(conn: &Connection, run_id: i64) -> StoreResult<Vec<StepRow>> {
    let mut stmt = conn
        .prepare_cached(JOURNAL_SQL)
        .map_err(sql("reading a journal"))?;
    let mut rows = stmt
        .query(params![run_id])
        .map_err(sql("reading a journal"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sql("reading a journal"))? {
        let row = (|| {
            let seq = decode::int(r, 0, "steps.seq")?;
            let at = |e: decode::BadColumn| e.at(format!("journal entry seq {seq}"));
            Ok(StepRow {
                seq,
                name: decode::text(r, 1, "steps.name").map_err(at)?,
                kind: decode::text(r, 2, "steps.kind").map_err(at)?,
                status: decode::text(r, 3, "steps.status").map_err(at)?,
                attempts: decode::int(r, 4, "steps.attempts").map_err(at)?,
                error: decode::opt_text(r, 5, "steps.error").map_err(at)?,
                recorded_at: decode::int(r, 6, "steps.recorded_at").map_err(at)?,
                output: decode::opt_blob(r, 7, "steps.output").map_err(at)?,
                copied_from: decode::opt_int(r, 8, "steps.copied_from").map_err(at)?,
            })
        })()
        .map_err(|e: decode::BadColumn| StoreError::Undecodable {
            run_id,
            detail: e.at(format!("journal entry #{}", out.len())).to_string(),
        })?;
        out.push(row);
    }
    Ok(out)
}

/// The stored host id (boot id and PID namespace) of engine incarnation `id`, if its row
/// still exists.
pub fn engine_host(conn: &Connection, id: &str) -> StoreResult<Option<String>> {
    conn.prepare_cached("SELECT boot_id FROM engines WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![id], |r| r.get(0)).optional())
        .map_err(sql("reading an engine's host"))
}

/// Does `fence` still hold: is the run `running` under that owner and epoch?
pub fn fence_holds(conn: &Connection, fence: &super::Fence) -> StoreResult<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM runs WHERE id = ?1 AND owner = ?2 AND epoch = ?3 AND status = 'running'",
    )
    .and_then(|mut s| s.exists(params![fence.run_id, &*fence.owner, fence.epoch]))
    .map_err(sql("reading a run's fence"))
}

/// Every recorded attempt of a run's steps. Like [`journal`], a row of the wrong types is
/// [`StoreError::Undecodable`].
pub fn attempts(conn: &Connection, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
    let mut stmt = conn
        .prepare_cached(ATTEMPTS_SQL)
        .map_err(sql("reading attempts"))?;
    let mut rows = stmt
        .query(params![run_id])
        .map_err(sql("reading attempts"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sql("reading attempts"))? {
        use decode::{int, opt_int, opt_text, text};
        let row = (|| {
            Ok(AttemptRow {
                seq: int(r, 0, "attempts.seq")?,
                attempt: int(r, 1, "attempts.attempt")?,
                name: text(r, 2, "attempts.name")?,
                owner: text(r, 3, "attempts.owner")?,
                epoch: int(r, 4, "attempts.epoch")?,
                pid: opt_int(r, 5, "attempts.pid")?,
                pid_start: opt_int(r, 6, "attempts.pid_start")?,
                started_at: int(r, 7, "attempts.started_at")?,
                ended_at: opt_int(r, 8, "attempts.ended_at")?,
                outcome: opt_text(r, 9, "attempts.outcome")?,
                reason: opt_text(r, 10, "attempts.reason")?,
                logs: opt_text(r, 11, "attempts.logs")?,
                memory_cap: opt_text(r, 12, "attempts.memory_cap")?,
            })
        })()
        .map_err(|e: decode::BadColumn| StoreError::Undecodable {
            run_id,
            detail: e.at(format!("attempt row #{}", out.len())).to_string(),
        })?;
        out.push(row);
    }
    Ok(out)
}

/// Lenient, per-column decoding of rows whose data may be damaged: a value of the wrong
/// storage class is a [`BadColumn`] naming the column and what was found (never a panic,
/// never an error that fails a whole statement for one row).
pub(crate) mod decode {
    use rusqlite::types::ValueRef;
    use rusqlite::Row;

    /// Longest text or blob excerpt quoted in a [`BadColumn`].
    const EXCERPT_CHARS_MAX: usize = 32;

    /// A column whose stored value does not have the type waymark writes there.
    #[derive(Debug, Clone)]
    pub struct BadColumn {
        pub column: &'static str,
        pub expected: &'static str,
        pub found: String,
        pub place: Option<String>,
    }

    impl BadColumn {
        /// Name where the row is (kept if already set).
        pub fn at(mut self, place: String) -> Self {
            self.place.get_or_insert(place);
            self
        }
    }

    impl std::fmt::Display for BadColumn {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if let Some(p) = &self.place {
                write!(f, "{p}: ")?;
            }
            write!(
                f,
                "column {} holds {} where {} is expected",
                self.column, self.found, self.expected
            )
        }
    }

    /// What a stored value is, for messages: `text 'soon'`, `blob of 3 bytes`, `real 1.5`.
    pub fn describe(v: ValueRef<'_>) -> String {
        match v {
            ValueRef::Null => "NULL".into(),
            ValueRef::Integer(i) => format!("integer {i}"),
            ValueRef::Real(x) => format!("real {x}"),
            ValueRef::Text(t) => {
                let t = String::from_utf8_lossy(t);
                let excerpt: String = t.chars().take(EXCERPT_CHARS_MAX).collect();
                let more = if excerpt.len() < t.len() { "..." } else { "" };
                format!("text {excerpt:?}{more}")
            }
            ValueRef::Blob(b) => format!("blob of {} bytes", b.len()),
        }
    }

    fn value<'a>(r: &'a Row<'_>, i: usize) -> ValueRef<'a> {
        // An index outside the statement is a bug of the caller's SQL, not bad data: read
        // it as NULL, which every decoder below reports or accepts without panicking.
        r.get_ref(i).unwrap_or(ValueRef::Null)
    }

    fn bad(column: &'static str, expected: &'static str, v: ValueRef<'_>) -> BadColumn {
        BadColumn {
            column,
            expected,
            found: describe(v),
            place: None,
        }
    }

    pub fn int(r: &Row<'_>, i: usize, column: &'static str) -> Result<i64, BadColumn> {
        match value(r, i) {
            ValueRef::Integer(n) => Ok(n),
            v => Err(bad(column, "an integer", v)),
        }
    }

    pub fn opt_int(r: &Row<'_>, i: usize, column: &'static str) -> Result<Option<i64>, BadColumn> {
        match value(r, i) {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            v => Err(bad(column, "an integer or NULL", v)),
        }
    }

    pub fn text(r: &Row<'_>, i: usize, column: &'static str) -> Result<String, BadColumn> {
        match value(r, i) {
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map(str::to_owned)
                .map_err(|_| bad(column, "UTF-8 text", ValueRef::Text(t))),
            v => Err(bad(column, "text", v)),
        }
    }

    pub fn opt_text(
        r: &Row<'_>,
        i: usize,
        column: &'static str,
    ) -> Result<Option<String>, BadColumn> {
        match value(r, i) {
            ValueRef::Null => Ok(None),
            _ => text(r, i, column).map(Some),
        }
    }

    pub fn blob(r: &Row<'_>, i: usize, column: &'static str) -> Result<Vec<u8>, BadColumn> {
        match value(r, i) {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            v => Err(bad(column, "a blob", v)),
        }
    }

    pub fn opt_blob(
        r: &Row<'_>,
        i: usize,
        column: &'static str,
    ) -> Result<Option<Vec<u8>>, BadColumn> {
        match value(r, i) {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(b) => Ok(Some(b.to_vec())),
            v => Err(bad(column, "a blob or NULL", v)),
        }
    }
}

/// Counts of runs by status.
pub fn stats(conn: &Connection) -> StoreResult<Vec<(String, i64)>> {
    conn.prepare_cached("SELECT status, count(*) FROM runs GROUP BY status ORDER BY status")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(sql("counting runs"))
}

/// An engine that holds running runs, as the reaper sees it.
#[derive(Debug, Clone)]
pub struct OwnerRow {
    pub id: String,
    pub pid: Option<i64>,
    pub pid_start: Option<i64>,
    pub boot_id: Option<String>,
    pub beat: Option<i64>,
    pub stopped: bool,
    /// Latest lease expiry among its runs (wall clock, ms).
    pub lease_expires_at: Option<i64>,
}

/// A column of a liveness row that does not decode is read as unknown (`None`), logged: the
/// reaper then judges that owner by what it can read, and one bad row never stops the
/// recovery of every other owner.
fn lenient<T>(v: Result<Option<T>, decode::BadColumn>) -> Option<T> {
    v.unwrap_or_else(|e| {
        log::warn!("{e}: read as unknown");
        None
    })
}

fn owner_row(r: &Row<'_>, lease: Option<usize>) -> OwnerRow {
    use decode::{opt_int, opt_text};
    OwnerRow {
        id: lenient(opt_text(r, 0, "runs.owner")).unwrap_or_default(),
        pid: lenient(opt_int(r, 1, "engines.pid")),
        pid_start: lenient(opt_int(r, 2, "engines.pid_start")),
        boot_id: lenient(opt_text(r, 3, "engines.boot_id")),
        beat: lenient(opt_int(r, 4, "engines.beat")),
        stopped: lenient(opt_int(r, 5, "engines.stopped_at")).is_some_and(|s| s != 0),
        lease_expires_at: lease.and_then(|i| lenient(opt_int(r, i, "runs.lease_expires_at"))),
    }
}

/// Every owner of a running run (with its engine row, if any).
pub fn owners(conn: &Connection) -> StoreResult<Vec<OwnerRow>> {
    conn.prepare_cached(
        "SELECT o.owner, e.pid, e.pid_start, e.boot_id, e.beat, e.stopped_at IS NOT NULL, o.lease
         FROM (SELECT owner, max(lease_expires_at) AS lease FROM runs INDEXED BY runs_owner WHERE status = 'running' GROUP BY owner) o
         LEFT JOIN engines e ON e.id = o.owner",
    )
    .and_then(|mut s| s.query_map([], |r| Ok(owner_row(r, Some(6))))?.collect())
    .map_err(sql("reading lease owners"))
}

/// The engine row of incarnation `id`, if it is still recorded.
pub fn engine(conn: &Connection, id: &str) -> StoreResult<Option<OwnerRow>> {
    conn.prepare_cached(
        "SELECT id, pid, pid_start, boot_id, beat, stopped_at IS NOT NULL FROM engines WHERE id = ?1",
    )
    .and_then(|mut s| s.query_row(params![id], |r| Ok(owner_row(r, None))).optional())
    .map_err(sql("reading an engine"))
}

/// Runs that finished at or after `from` and before `to` (ms since the epoch).
pub fn finished_between(conn: &Connection, from: i64, to: i64) -> StoreResult<i64> {
    conn.prepare_cached(
        "SELECT count(*) FROM runs INDEXED BY runs_finished
         WHERE finished_at IS NOT NULL AND finished_at >= ?1 AND finished_at < ?2",
    )
    .and_then(|mut s| s.query_row(params![from, to], |r| r.get(0)))
    .map_err(sql("counting finished runs"))
}

/// Engine rows that hold no running run (candidates to forget once dead).
pub fn idle_engines(conn: &Connection) -> StoreResult<Vec<OwnerRow>> {
    conn.prepare_cached(
        "SELECT id, pid, pid_start, boot_id, beat, stopped_at IS NOT NULL FROM engines e
         WHERE NOT EXISTS (SELECT 1 FROM runs WHERE owner = e.id AND status = 'running') LIMIT 256",
    )
    .and_then(|mut s| s.query_map([], |r| Ok(owner_row(r, None)))?.collect())
    .map_err(sql("reading engines"))
}

/// `(run_id, epoch)` of every running run held by `owner`.
pub fn runs_of_owner(conn: &Connection, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
    conn.prepare_cached(
        "SELECT id, epoch FROM runs INDEXED BY runs_owner WHERE owner = ?1 AND status = 'running'",
    )
    .and_then(|mut s| {
        s.query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    })
    .map_err(sql("reading an owner's runs"))
}

/// Highest attempt number recorded for `(run_id, seq)`, 0 if none.
pub fn last_attempt(conn: &Connection, run_id: i64, seq: i64) -> StoreResult<i64> {
    conn.prepare_cached(
        "SELECT coalesce(max(attempt), 0) FROM attempts WHERE run_id = ?1 AND seq = ?2",
    )
    .and_then(|mut s| s.query_row(params![run_id, seq], |r| r.get(0)))
    .map_err(sql("reading attempts"))
}

/// Attempts of `run_id` that were started but never ended (their process may still live).
pub fn open_attempts(conn: &Connection, run_id: i64) -> StoreResult<Vec<AttemptRow>> {
    Ok(attempts(conn, run_id)?
        .into_iter()
        .filter(|a| a.outcome.is_none() && a.pid.is_some())
        .collect())
}

/// Is there work for `Op::Claim` now, for an engine running `workflows_json`: a pending run
/// (always due), a due suspended run, or a `blocked_version` run this engine can unpark
/// (the same conditions the claim acts on)? A read, so an idle dispatcher
/// polls without taking the write lock.
pub fn claimable(conn: &Connection, now: i64, workflows_json: &str) -> StoreResult<bool> {
    conn.prepare_cached(CLAIMABLE_SQL)
        .and_then(|mut s| s.query_row(params![now, workflows_json], |r| r.get(0)))
        .map_err(sql("checking for claimable runs"))
}

/// [`claimable`]'s statement: `?1` now, `?2` the JSON array of `workflow@version` this
/// engine runs. Pending runs are found by one seek in `runs_pending_workflow` per entry of
/// `?2` (split at its last `@`: the version is digits), so pending runs of versions this
/// engine does not run cost nothing here however many are queued. (`CROSS JOIN` keeps
/// `?2` the outer loop: SQLite does not reorder it.) The entry is cut as bytes (a BLOB):
/// SQLite's `length` and `substr` of a TEXT stop at its first NUL, so a workflow name
/// holding one would be cut short and its pending runs never seen by the poll, while the
/// claim (which compares whole `workflow@version` texts) takes them. `@` is ASCII, so the
/// cut never splits a UTF-8 character.
pub const CLAIMABLE_SQL: &str = "
    SELECT EXISTS (SELECT 1 FROM json_each(?2) AS k
                   CROSS JOIN runs INDEXED BY runs_pending_workflow
                   WHERE runs.status = 'pending'
                    AND runs.workflow = CAST(substr(CAST(k.value AS BLOB), 1,
                            length(CAST(rtrim(k.value, '0123456789') AS BLOB)) - 1) AS TEXT)
                    AND runs.version = CAST(substr(CAST(k.value AS BLOB),
                            length(CAST(rtrim(k.value, '0123456789') AS BLOB)) + 1) AS INTEGER))
        OR EXISTS (SELECT 1 FROM runs INDEXED BY runs_wake
                   WHERE status = 'suspended' AND ready_at <= ?1)
        OR EXISTS (SELECT 1 FROM runs
                   WHERE status = 'blocked_version'
                     AND (workflow || '@' || version) IN (SELECT value FROM json_each(?2)))";

/// Whether a cancel was requested for the run (`false` for a run that does not exist).
pub fn cancel_requested(conn: &Connection, run_id: i64) -> StoreResult<bool> {
    conn.prepare_cached("SELECT cancel_requested FROM runs WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![run_id], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|v| v == Some(1))
        .map_err(sql("reading cancel_requested"))
}

/// Up to `limit` parked runs (`suspended`, `blocked`, `blocked_version`) with a cancel
/// requested: the backstop sweep's work.
pub fn parked_cancel_requests(conn: &Connection, limit: i64) -> StoreResult<Vec<i64>> {
    conn.prepare_cached(
        "SELECT id FROM runs WHERE status IN ('suspended', 'blocked', 'blocked_version')
           AND cancel_requested = 1 LIMIT +?1",
    )
    .and_then(|mut s| {
        s.query_map(params![limit], |r| r.get(0))?
            .collect::<Result<_, _>>()
    })
    .map_err(sql("looking for unfinished cancellations"))
}

/// `(id, epoch)` of the runs `owner` holds that have a cancel requested.
pub fn running_cancel_requests(conn: &Connection, owner: &str) -> StoreResult<Vec<(i64, i64)>> {
    conn.prepare_cached(
        "SELECT id, epoch FROM runs WHERE owner = ?1 AND status = 'running' AND cancel_requested = 1",
    )
    .and_then(|mut s| {
        s.query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()
    })
    .map_err(sql("reading cancellation requests"))
}

/// Is a due pending run of a workflow this engine knows (`names_json`) at a version it does
/// not (`workflows_json` holds `name@version`) waiting?
pub fn pending_unknown_versions(
    conn: &Connection,
    now: i64,
    names_json: &str,
    workflows_json: &str,
) -> StoreResult<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'pending' AND ready_at <= ?1
           AND workflow IN (SELECT value FROM json_each(?2))
           AND (workflow || '@' || version) NOT IN (SELECT value FROM json_each(?3)))",
    )
    .and_then(|mut s| s.query_row(params![now, names_json, workflows_json], |r| r.get(0)))
    .map_err(sql("looking for unknown versions"))
}

/// Has a pending or suspended run passed its deadline?
pub fn deadlines_passed(conn: &Connection, now: i64) -> StoreResult<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE deadline_at <= ?1 AND finished_at IS NULL
           AND status IN ('pending', 'suspended'))",
    )
    .and_then(|mut s| s.query_row(params![now], |r| r.get(0)))
    .map_err(sql("looking for expired deadlines"))
}

/// Up to `limit` runs matching `filter`, newest first, with ids below `before` (keyset
/// paging). The SQL names only the conditions given, so the planner can use `runs_status`
/// (status), the unique key index (key prefix) or `runs_parent`, and walks the rowid
/// backwards otherwise: the first page costs `limit` rows, not the table.
pub fn runs_filtered(
    conn: &Connection,
    filter: &super::views::RunQuery,
    before: Option<i64>,
    limit: i64,
) -> StoreResult<Vec<RunRow>> {
    use rusqlite::types::Value;
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut push = |cond: &'static str, v: Value| {
        conds.push(cond);
        args.push(v);
    };
    if let Some(b) = before {
        push("id < ?", Value::Integer(b));
    }
    if let Some(s) = filter.status {
        push("status = ?", Value::Text(s.as_str().into()));
    }
    if let Some(w) = &filter.workflow {
        push("workflow = ?", Value::Text(w.clone()));
    }
    if let Some(p) = filter.key_prefix.as_ref().filter(|p| !p.is_empty()) {
        // A range, so the unique index on the key can answer: every key starting with `p`
        // sorts between `p` and `p` + U+10FFFF (UTF-8 bytes keep code point order).
        push("idempotency_key >= ?", Value::Text(p.clone()));
        push(
            "idempotency_key < ?",
            Value::Text(format!("{p}{}", char::MAX)),
        );
    }
    if let Some(t) = filter.created_from {
        push("created_at >= ?", Value::Integer(t));
    }
    if let Some(t) = filter.created_to {
        push("created_at < ?", Value::Integer(t));
    }
    if let Some(p) = filter.parent {
        push("parent_id = ?", Value::Integer(p));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    args.push(Value::Integer(limit));
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLS} FROM runs {where_} ORDER BY id DESC LIMIT +?"
    ))
    .and_then(|mut s| {
        s.query_map(rusqlite::params_from_iter(args), run_row)?
            .collect()
    })
    .map_err(sql("listing runs"))
}

/// Every engine incarnation on the file, newest first, with the runs each holds.
pub fn engines(conn: &Connection) -> StoreResult<Vec<super::views::EngineInfo>> {
    use decode::{opt_int, opt_text};
    conn.prepare_cached(
        "SELECT e.id, e.pid, e.boot_id, e.started_at, e.beat, e.beat_at, e.stopped_at,
                (SELECT count(*) FROM runs INDEXED BY runs_owner WHERE owner = e.id AND status = 'running')
         FROM engines e ORDER BY e.started_at DESC LIMIT 256",
    )
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(super::views::EngineInfo {
                id: lenient(opt_text(r, 0, "engines.id")).unwrap_or_default(),
                pid: lenient(opt_int(r, 1, "engines.pid")),
                host: lenient(opt_text(r, 2, "engines.boot_id")),
                started_at: lenient(opt_int(r, 3, "engines.started_at")),
                beat: lenient(opt_int(r, 4, "engines.beat")),
                beat_at: lenient(opt_int(r, 5, "engines.beat_at")),
                stopped_at: lenient(opt_int(r, 6, "engines.stopped_at")),
                runs_held: r.get(7)?,
            })
        })?
        .collect()
    })
    .map_err(sql("reading engines"))
}

/// Every queue with a limit or with pending or running runs.
pub fn queues(conn: &Connection) -> StoreResult<Vec<super::views::QueueInfo>> {
    conn.prepare_cached(
        "SELECT name, max(lim), sum(running), sum(pending) FROM (
             SELECT name, concurrency AS lim, 0 AS running, 0 AS pending FROM queues
             UNION ALL
             SELECT queue, NULL, count(*), 0 FROM runs INDEXED BY runs_queue_running
                 WHERE status = 'running' GROUP BY queue
             UNION ALL
             SELECT queue, NULL, 0, count(*) FROM runs INDEXED BY runs_queue_claim
                 WHERE status = 'pending' GROUP BY queue)
         GROUP BY name ORDER BY name LIMIT 1024",
    )
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(super::views::QueueInfo {
                name: r.get(0)?,
                limit: r.get(1)?,
                running: r.get(2)?,
                pending: r.get(3)?,
            })
        })?
        .collect()
    })
    .map_err(sql("reading queues"))
}

/// Every schedule, soonest first.
pub fn schedules(conn: &Connection) -> StoreResult<Vec<super::views::ScheduleInfo>> {
    conn.prepare_cached(
        "SELECT name, cron, workflow, next_due, catch_up FROM schedules ORDER BY next_due LIMIT 1024",
    )
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(super::views::ScheduleInfo {
                name: r.get(0)?,
                cron: r.get(1)?,
                workflow: r.get(2)?,
                next_due: r.get(3)?,
                catch_up: r.get::<_, i64>(4)? != 0,
            })
        })?
        .collect()
    })
    .map_err(sql("reading schedules"))
}

/// The events sent to a run (at most 1024, oldest first). A payload that is not a blob is
/// read as empty (the console shows sizes; decoding reports bad data elsewhere).
pub fn events_of(conn: &Connection, run_id: i64) -> StoreResult<Vec<super::views::EventInfo>> {
    conn.prepare_cached(
        "SELECT id, name, sent_at, consumed_seq, payload FROM events WHERE run_id = ?1 ORDER BY id LIMIT 1024",
    )
    .and_then(|mut s| {
        s.query_map(params![run_id], |r| {
            Ok(super::views::EventInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                sent_at: r.get(2)?,
                consumed_seq: r.get(3)?,
                payload: lenient(decode::opt_blob(r, 4, "events.payload")).unwrap_or_default(),
            })
        })?
        .collect()
    })
    .map_err(sql("reading events"))
}

/// Attempt durations by step name and outcome, bucketed by
/// [`super::views::DURATION_BUCKETS_MS`] (one pass over `attempts`).
pub fn step_durations(conn: &Connection) -> StoreResult<Vec<super::views::StepDurations>> {
    use super::views::DURATION_BUCKETS_MS as B;
    let buckets: Vec<String> = B
        .iter()
        .map(|b| format!("sum(ended_at IS NOT NULL AND ended_at - started_at <= {b})"))
        .collect();
    conn.prepare_cached(&format!(
        "SELECT name, coalesce(outcome, 'none'), count(ended_at),
                coalesce(sum(ended_at - started_at), 0), {}
         FROM attempts GROUP BY name, coalesce(outcome, 'none') ORDER BY 1, 2 LIMIT 4096",
        buckets.join(", ")
    ))
    .and_then(|mut s| {
        s.query_map([], |r| {
            let mut counts = Vec::with_capacity(B.len());
            for i in 0..B.len() {
                counts.push(r.get::<_, Option<i64>>(4 + i)?.unwrap_or(0));
            }
            Ok(super::views::StepDurations {
                name: r.get(0)?,
                outcome: r.get(1)?,
                count: r.get(2)?,
                sum_ms: r.get(3)?,
                buckets: counts,
            })
        })?
        .collect()
    })
    .map_err(sql("reading attempt durations"))
}

/// Totals for metrics: interruptions, interrupted attempts, live engines (not stopped, beat
/// within `live_ms` of `now`).
pub fn run_totals(
    conn: &Connection,
    now: i64,
    live_ms: i64,
) -> StoreResult<super::views::RunTotals> {
    conn.query_row(
        "SELECT (SELECT coalesce(sum(interruptions), 0) FROM runs),
                (SELECT count(*) FROM attempts a WHERE a.ended_at IS NULL AND NOT EXISTS
                    (SELECT 1 FROM runs r WHERE r.id = a.run_id AND r.status = 'running'
                     AND r.owner = a.owner AND r.epoch = a.epoch)),
                (SELECT count(*) FROM engines WHERE stopped_at IS NULL AND beat_at >= ?1)",
        params![now - live_ms],
        |r| {
            Ok(super::views::RunTotals {
                interruptions: r.get(0)?,
                attempts_interrupted: r.get(1)?,
                engines_live: r.get(2)?,
            })
        },
    )
    .map_err(sql("reading totals"))
}
