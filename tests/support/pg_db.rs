//! The store-neutral peeks of [`super::db`] under the names the PostgreSQL-only tests use
//! (a URL instead of a path), plus the few those tests add.

use std::path::Path;

/// Status of run `id` (panics if there is no such run).
pub fn pg_status(url: &str, id: i64) -> String {
    super::status(Path::new(url), id)
}

/// One integer from a query with no parameters.
pub fn pg_i64(url: &str, sql: &str) -> i64 {
    super::query_i64(Path::new(url), sql)
}

/// Runs with `status`.
pub fn pg_count(url: &str, status: &str) -> i64 {
    super::count(Path::new(url), status)
}

/// Journal of a run: (seq, name, kind, status).
pub fn pg_journal(url: &str, run_id: i64) -> Vec<(i64, String, String, String)> {
    super::journal(Path::new(url), run_id)
}

/// Ids of the children of run `parent`, in id order.
pub fn pg_children(url: &str, parent: i64) -> Vec<i64> {
    super::rows(
        Path::new(url),
        &format!("SELECT id FROM runs WHERE parent_id = {parent} ORDER BY id"),
    )
    .into_iter()
    .map(|r| r[0].parse().expect("an id"))
    .collect()
}

/// `(id, consumed_seq)` of the run's events, in send order.
pub fn pg_events(url: &str, run_id: i64) -> Vec<(i64, Option<i64>)> {
    super::rows(
        Path::new(url),
        &format!("SELECT id, consumed_seq FROM events WHERE run_id = {run_id} ORDER BY id"),
    )
    .into_iter()
    .map(|r| (r[0].parse().expect("an id"), r[1].parse().ok()))
    .collect()
}

/// The output of run `id`, decoded as `T` (None while it has none).
pub fn pg_output<T: serde::de::DeserializeOwned>(url: &str, id: i64) -> Option<T> {
    let hex = super::query_text(
        Path::new(url),
        &format!("SELECT output FROM runs WHERE id = {id}"),
    );
    (hex != "NULL").then(|| {
        let bytes = super::query_blob(
            Path::new(url),
            &format!("SELECT output FROM runs WHERE id = {id}"),
        );
        waymark::internal::codec::decode::<T>(&bytes, waymark::internal::codec::PAYLOAD_BYTES_MAX)
            .expect("a decodable output")
    })
}
