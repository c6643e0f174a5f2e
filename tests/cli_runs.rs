//! `waymark runs` filters and paging (issue 13): `--status`, `--workflow`, `--key-prefix`,
//! `--since` / `--until` (an age or an ISO-8601 UTC time) and `--limit` / `--after`, each
//! through `Client::list`; bad values are errors naming the valid form. Each test runs on
//! both stores (`--db` a file or a PostgreSQL URL).

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use support::*;

/// `waymark runs --db DB ARGS... --json`: the listed runs, or panics with stderr.
fn runs(db: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["runs", "--db", db.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(
        out.status.success(),
        "runs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The ids `runs ARGS...` lists, in the printed order.
fn ids(db: &Path, args: &[&str]) -> Vec<i64> {
    runs(db, args)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

// Scenario: three keyed runs of fixture.slow (keys imp-1..3), then two keyed runs of
// fixture.flaky (keys exp-1..2) and an unkeyed fixture.slow. Must hold: each filter lists
// exactly the runs it names, in id order; `--since`/`--until` split the two batches at the
// second batch's first creation time (given as an ISO time) and as ages.
on_both_stores!(each_runs_filter_narrows_the_listing_exactly);
fn each_runs_filter_narrows_the_listing_exactly(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "f.db");
    let slow = start_runs(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, Some("imp"), 3);
    // Creation times are milliseconds: the second batch starts strictly later.
    std::thread::sleep(Duration::from_millis(20));
    let flaky = start_runs(
        &db,
        "fixture.flaky",
        r#"{"ms":1,"marker":"/nonexistent/m"}"#,
        Some("exp"),
        2,
    );
    let plain = start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1);
    let everything: Vec<i64> = slow.iter().chain(&flaky).chain(&plain).copied().collect();

    assert_eq!(ids(&db, &[]), everything);
    assert_eq!(ids(&db, &["--workflow", "fixture.flaky"]), flaky);
    let slow_all: Vec<i64> = slow.iter().chain(&plain).copied().collect();
    assert_eq!(ids(&db, &["--workflow", "fixture.slow"]), slow_all);
    assert_eq!(
        ids(&db, &["--workflow", "no.such.workflow"]),
        Vec::<i64>::new()
    );
    assert_eq!(ids(&db, &["--key-prefix", "imp-"]), slow);
    assert_eq!(ids(&db, &["--key-prefix", "exp-2"]), vec![flaky[1]]);
    assert_eq!(
        ids(
            &db,
            &["--workflow", "fixture.flaky", "--key-prefix", "imp-"]
        ),
        Vec::<i64>::new()
    );
    assert_eq!(ids(&db, &["--status", "pending"]), everything);
    assert_eq!(ids(&db, &["--status", "completed"]), Vec::<i64>::new());

    // Time range: the second batch's first creation time, as printed.
    let listed = runs(&db, &[]);
    let second = listed
        .iter()
        .find(|r| r["id"].as_i64() == Some(flaky[0]))
        .unwrap();
    let t = second["created_at_iso"].as_str().unwrap();
    let later: Vec<i64> = flaky.iter().chain(&plain).copied().collect();
    assert_eq!(ids(&db, &["--since", t]), later);
    assert_eq!(ids(&db, &["--until", t]), slow);
    assert_eq!(ids(&db, &["--since", t, "--until", t]), Vec::<i64>::new());
    assert_eq!(
        ids(&db, &["--since", t, "--workflow", "fixture.slow"]),
        plain
    );
    // Ages: everything is younger than an hour, nothing older.
    assert_eq!(ids(&db, &["--since", "1h"]), everything);
    assert_eq!(ids(&db, &["--until", "1h"]), Vec::<i64>::new());
    assert_eq!(ids(&db, &["--since", "2000-01-01"]), everything);
    assert_eq!(
        ids(&db, &["--until", "2000-01-01T00:00:00Z"]),
        Vec::<i64>::new()
    );
}

// Scenario: seven runs listed two at a time with `--limit 2 --after LAST`. Must hold: the
// pages are disjoint, in order, together exactly every run; every page but the last says
// on stderr how to continue; `--after` alone lists the rest; paging composes with a filter.
on_both_stores!(runs_paging_returns_disjoint_pages_that_together_are_all);
fn runs_paging_returns_disjoint_pages_that_together_are_all(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "p.db");
    let mut all = start_runs(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, Some("a"), 4);
    all.extend(start_runs(
        &db,
        "fixture.flaky",
        r#"{"ms":1,"marker":"/nonexistent/m"}"#,
        Some("b"),
        3,
    ));

    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let a = after.to_string();
        let out = run(&[
            "runs",
            "--db",
            db.to_str().unwrap(),
            "--limit",
            "2",
            "--after",
            &a,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let page: Vec<i64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        let err = String::from_utf8_lossy(&out.stderr);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2, "{page:?}");
        pages += 1;
        let last = *page.last().unwrap();
        if seen.len() + page.len() < all.len() {
            assert!(err.contains(&format!("--after {last}")), "{err}");
        } else {
            assert!(!err.contains("--after"), "last page says more: {err}");
        }
        seen.extend(page);
        after = last;
        assert!(pages <= all.len(), "paging does not end: {seen:?}");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, all, "pages not disjoint or not complete");
    let distinct: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), all.len());

    let after3 = all[2].to_string();
    assert_eq!(ids(&db, &["--after", &after3]), all[3..].to_vec());
    assert_eq!(
        ids(&db, &["--workflow", "fixture.flaky", "--limit", "2"]),
        all[4..6].to_vec()
    );
    let after5 = all[5].to_string();
    assert_eq!(
        ids(
            &db,
            &[
                "--workflow",
                "fixture.flaky",
                "--limit",
                "2",
                "--after",
                &after5
            ]
        ),
        all[6..].to_vec()
    );
}

// Scenario: bad values of each option. Must hold: non-zero exit, nothing on stdout, and
// stderr names the option's valid form.
on_both_stores!(bad_runs_filter_values_are_errors_naming_the_valid_form);
fn bad_runs_filter_values_are_errors_naming_the_valid_form(backend: Backend) {
    let dir = tempdir();
    let db = backend.fresh_db(dir.path(), "b.db");
    start(&db, "fixture.slow", r#"{"steps":1,"ms":1}"#, 1);
    for (args, expect) in [
        (&["--status", "bogus"][..], "valid statuses are"),
        (&["--limit", "0"][..], "positive integer"),
        (&["--limit", "ten"][..], "positive integer"),
        (&["--after", "-3"][..], "run id"),
        (&["--after", "x"][..], "run id"),
        (&["--since", "yesterday"][..], "ISO-8601"),
        (&["--since", "2h30"][..], "ISO-8601"),
        (&["--until", "2026-02-30"][..], "ISO-8601"),
        (&["--until", "12x"][..], "15m"),
    ] {
        let mut all = vec!["runs", "--db", db.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = run(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(out.stdout.is_empty(), "{args:?} printed runs");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // Checked before the file is opened: a missing file is not the first complaint.
    let missing = match backend {
        Backend::Sqlite => dir.path().join("missing.db"),
        Backend::Postgres => std::path::PathBuf::from(format!("{}_missing", db.display())),
    };
    let out = run(&["runs", "--db", missing.to_str().unwrap(), "--limit", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("positive integer"), "{err}");
}
