//! Change detection on PostgreSQL: a dedicated connection that `LISTEN`s on the change
//! channel ([`super::schema::CHANNEL`]); the triggers that record run changes notify it,
//! and PostgreSQL delivers a notification only when its transaction commits.
//!
//! Cost when idle: one connection blocked in a read; nothing is polled.

use super::conn::pg;
use crate::store::error::{StoreError, StoreResult};
use crate::store::watch::ChangeWatch;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use std::time::Duration;

/// A listening connection.
pub struct PgWatch {
    client: Client,
}

impl std::fmt::Debug for PgWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWatch").finish()
    }
}

impl PgWatch {
    /// Connect to `url` and listen (`name`: the URL without its password, for errors).
    pub fn new(url: &str, name: &str) -> StoreResult<PgWatch> {
        let mut client = Client::connect(url, NoTls).map_err(|e| StoreError::Postgres {
            context: "opening a watch connection",
            code: e.code().map(|c| c.code().to_string()),
            detail: format!("{name}: {e}"),
        })?;
        client
            .batch_execute(&format!("LISTEN {}", super::schema::CHANNEL))
            .map_err(pg("listening for changes"))?;
        Ok(PgWatch { client })
    }
}

impl ChangeWatch for PgWatch {
    fn wait_change(&mut self, timeout: Duration) -> StoreResult<bool> {
        let mut notifications = self.client.notifications();
        let first = notifications
            .timeout_iter(timeout)
            .next()
            .map_err(pg("waiting for changes"))?;
        if first.is_none() {
            return Ok(false);
        }
        // Drain what else arrived: one wake-up answers them all.
        let mut rest = notifications.iter();
        while rest.next().map_err(pg("waiting for changes"))?.is_some() {}
        Ok(true)
    }
}
