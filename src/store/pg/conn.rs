//! Connections to PostgreSQL: the pool, a per-connection statement cache, and [`Db`], the
//! one door every PostgreSQL statement of the store goes through (errors mapped to
//! [`StoreError`] with what the store was doing).
//!
//! Invariants:
//! - A connection is given back to the pool only outside a transaction: [`Db::transaction`]
//!   ends every transaction it begins (COMMIT, or ROLLBACK on any error); a connection whose
//!   ROLLBACK failed is marked broken and never reused.
//! - A connection lost during COMMIT (no answer, or the server's "connection ended" error)
//!   is [`StoreError::OutcomeUnknown`], never success and never a plain failure: the caller
//!   cannot know whether the change was committed.

use crate::store::error::{StoreError, StoreResult};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use std::collections::HashMap;

/// Parameters of a statement.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A pooled connection with its prepared statements.
pub struct PgConn {
    client: Client,
    cache: HashMap<&'static str, Statement>,
    broken: bool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("statements", &self.cache.len())
            .finish()
    }
}

/// The r2d2 manager of [`PgConn`]s.
#[derive(Debug)]
pub struct Manager {
    pub config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConn, postgres::Error> {
        let client = self.config.connect(NoTls)?;
        Ok(PgConn {
            client,
            cache: HashMap::new(),
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

/// Map a client error: `code` is the server's SQLSTATE when it answered.
pub fn pg(context: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |e| StoreError::Postgres {
        context,
        code: e.code().map(|c| c.code().to_string()),
        detail: describe(&e),
    }
}

/// The server's message (with its detail) when it answered; the client's text otherwise.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// An error that ends the connection rather than one statement: no SQLSTATE (the socket
/// closed), class 08 (connection exception) or 57P01-57P03 (the server terminated the
/// session: administrator command, crash shutdown, cannot connect now). Met by a COMMIT,
/// it leaves the outcome unknown: the server may have committed before the session ended.
pub fn lost_connection(e: &postgres::Error) -> bool {
    match e.code().map(|c| c.code()) {
        None => true,
        Some(c) => c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03"),
    }
}

/// The SQLSTATE of a store error, if the server gave one.
pub fn sqlstate(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::Postgres { code, .. } => code.as_deref(),
        _ => None,
    }
}

/// A transaction that may succeed if tried again: serialization failure, deadlock.
pub fn retryable(e: &StoreError) -> bool {
    matches!(sqlstate(e), Some("40001") | Some("40P01"))
}

/// One connection, in or out of a transaction: every statement of the store.
pub struct Db<'a> {
    conn: &'a mut PgConn,
}

impl<'a> Db<'a> {
    /// Use `conn`.
    pub fn new(conn: &'a mut PgConn) -> Db<'a> {
        Db { conn }
    }

    fn statement(&mut self, context: &'static str, sql: &'static str) -> StoreResult<Statement> {
        if let Some(s) = self.conn.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.conn.client.prepare(sql).map_err(pg(context))?;
        self.conn.cache.insert(sql, s.clone());
        Ok(s)
    }

    /// Execute a statement; the number of rows it changed.
    pub fn exec(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: Params<'_>,
    ) -> StoreResult<u64> {
        let s = self.statement(context, sql)?;
        self.conn.client.execute(&s, params).map_err(pg(context))
    }

    /// Run a query; its rows.
    pub fn query(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: Params<'_>,
    ) -> StoreResult<Vec<Row>> {
        let s = self.statement(context, sql)?;
        self.conn.client.query(&s, params).map_err(pg(context))
    }

    /// Run a query that returns at most one row.
    pub fn query_opt(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: Params<'_>,
    ) -> StoreResult<Option<Row>> {
        let s = self.statement(context, sql)?;
        self.conn.client.query_opt(&s, params).map_err(pg(context))
    }

    /// Run a query that returns exactly one row.
    pub fn query_one(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: Params<'_>,
    ) -> StoreResult<Row> {
        let s = self.statement(context, sql)?;
        self.conn.client.query_one(&s, params).map_err(pg(context))
    }

    /// A statement built at run time (not cached): DDL, lists of a varying length.
    pub fn batch(&mut self, context: &'static str, sql: &str) -> StoreResult<()> {
        self.conn.client.batch_execute(sql).map_err(pg(context))
    }

    /// Run `f` in a transaction: COMMIT when it returns `Ok`, ROLLBACK otherwise.
    pub fn transaction<T>(
        &mut self,
        context: &'static str,
        f: impl FnOnce(&mut Db<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.batch(context, "BEGIN")?;
        let result = f(self);
        match result {
            Ok(v) => match self.conn.client.batch_execute("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) if lost_connection(&e) => {
                    self.conn.broken = true;
                    Err(StoreError::OutcomeUnknown {
                        context,
                        detail: describe(&e),
                    })
                }
                Err(e) => Err(pg(context)(e)),
            },
            Err(e) => {
                if self.conn.client.batch_execute("ROLLBACK").is_err() {
                    self.conn.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Run `f` inside a savepoint of the open transaction: on error, roll back to it (the
    /// rest of the transaction stands) and return the error.
    pub fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Db<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.batch("opening a savepoint", "SAVEPOINT sp")?;
        match f(self) {
            Ok(v) => {
                self.batch("releasing a savepoint", "RELEASE SAVEPOINT sp")?;
                Ok(v)
            }
            Err(e) => {
                self.batch(
                    "rolling back to a savepoint",
                    "ROLLBACK TO SAVEPOINT sp; RELEASE SAVEPOINT sp",
                )?;
                Err(e)
            }
        }
    }

    /// The underlying client, for what [`Db`] does not cover (LISTEN, COPY).
    pub fn client(&mut self) -> &mut Client {
        &mut self.conn.client
    }
}

/// Column `idx` of a row one of waymark's statements returned, as `T`: a typed error naming
/// `context` when the column does not read as `T` (a column whose type was changed under
/// the schema), never a panic.
pub fn get<'r, T: postgres::types::FromSql<'r>>(
    row: &'r Row,
    idx: usize,
    context: &'static str,
) -> StoreResult<T> {
    row.try_get(idx).map_err(|e| StoreError::Postgres {
        context,
        code: None,
        detail: format!("column {idx}: {e}"),
    })
}

/// Read column `idx` of `row`, mapping a type mismatch to [`StoreError::Undecodable`] for
/// `run_id` (PostgreSQL's columns are typed, so this is a schema mismatch, not bad data).
pub fn col<'r, T: postgres::types::FromSql<'r>>(
    row: &'r Row,
    idx: usize,
    run_id: i64,
    what: &'static str,
) -> StoreResult<T> {
    row.try_get(idx).map_err(|e| StoreError::Undecodable {
        run_id,
        detail: format!("{what}: {e}"),
    })
}
