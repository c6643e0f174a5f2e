//! Read-only queries on PostgreSQL, in three files by who reads: `core` (the engine),
//! `waits` (durable waits, cancellation, versions, schedules), `people` (clients, CLI,
//! console).

mod core;
mod people;
mod waits;

pub use self::core::*;
pub use self::people::*;
pub use self::waits::*;
