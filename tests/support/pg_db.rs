//! Peeks at a test's PostgreSQL database (the counterparts of [`super::db`]'s): each opens
//! its own connection, so a poll sees the latest commits.

use std::collections::HashMap;

/// Status of run `id` (panics if there is no such run).
pub fn pg_status(url: &str, id: i64) -> String {
    super::pg_cluster_client(url)
        .query_one("SELECT status FROM runs WHERE id = $1", &[&id])
        .unwrap()
        .get(0)
}

/// One integer (BIGINT) from a query with no parameters.
pub fn pg_i64(url: &str, sql: &str) -> i64 {
    super::pg_cluster_client(url)
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Runs by status.
pub fn pg_counts(url: &str) -> HashMap<String, i64> {
    super::pg_cluster_client(url)
        .query("SELECT status, count(*) FROM runs GROUP BY status", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Runs with `status`.
pub fn pg_count(url: &str, status: &str) -> i64 {
    pg_counts(url).get(status).copied().unwrap_or(0)
}

/// Journal of a run: (seq, name, kind, status).
pub fn pg_journal(url: &str, run_id: i64) -> Vec<(i64, String, String, String)> {
    super::pg_cluster_client(url)
        .query(
            "SELECT seq, name, kind, status FROM steps WHERE run_id = $1 ORDER BY seq",
            &[&run_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Ids of the children of run `parent`, in id order.
pub fn pg_children(url: &str, parent: i64) -> Vec<i64> {
    super::pg_cluster_client(url)
        .query(
            "SELECT id FROM runs WHERE parent_id = $1 ORDER BY id",
            &[&parent],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Completed journal entries of run `run_id`.
pub fn pg_steps_done(url: &str, run_id: i64) -> i64 {
    super::pg_cluster_client(url)
        .query_one(
            "SELECT count(*) FROM steps WHERE run_id = $1 AND status = 'completed'",
            &[&run_id],
        )
        .unwrap()
        .get(0)
}

/// The output of run `id`, decoded as `T` (None while it has none).
pub fn pg_output<T: serde::de::DeserializeOwned>(url: &str, id: i64) -> Option<T> {
    let out: Option<Vec<u8>> = super::pg_cluster_client(url)
        .query_one("SELECT output FROM runs WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    out.map(|b| {
        waymark::internal::codec::decode::<T>(&b, waymark::internal::codec::PAYLOAD_BYTES_MAX)
            .unwrap()
    })
}
