//! Attack (AwaitEvent's look-again path releases the run straight to `pending`): two
//! `waymark serve` engines run `fixture.ticks` runs (a step, then a wait for "tick", many
//! times) while the test sends each run its next tick as soon as the previous one was
//! consumed, so ticks land while the run is suspended, while it runs, and between the
//! workflow's look at its next event and its AwaitEvent command (the look-again path: the
//! run goes `running -> pending` and either engine may claim it at once).
//! Must hold, on both stores: every run completes with all its ticks; each (run, seq) step
//! ran exactly once (no crash here, so no second execution is ever allowed); no step of a
//! run overlapped another execution of the same run.

mod support;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

const RUNS: usize = 12;
const TICKS: u64 = 25;

on_both_stores!(ticks_racing_waits_across_two_engines_run_each_step_once);
fn ticks_racing_waits_across_two_engines_run_each_step_once(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let ids = tmp.start("fixture.ticks", &TICKS.to_string(), RUNS);
    let mut engines: Vec<Proc> = (0..2).map(|_| tmp.serve(4, &[])).collect();
    let client = waymark::Client::open(&db).expect("client");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut sent: HashMap<i64, u64> = HashMap::new();
    loop {
        let done = query_i64(&db, "SELECT count(*) FROM runs WHERE status = 'completed'");
        if done == RUNS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs stalled: {done} of {RUNS} completed; statuses: {}",
            query_text(
                &db,
                "SELECT coalesce(string_agg(id || ':' || status || ':' || coalesce(note, ''), ' '), '') FROM runs"
            )
        );
        for &id in &ids {
            let unconsumed = query_i64(
                &db,
                &format!(
                    "SELECT count(*) FROM events WHERE run_id = {id} AND consumed_seq IS NULL"
                ),
            );
            let n = sent.entry(id).or_insert(0);
            if unconsumed == 0 && *n < TICKS {
                client
                    .send_event_json(id, "tick", "1")
                    .expect("send a tick");
                *n += 1;
            }
        }
    }
    // The look-again transitions seen (running -> pending with no reclaim in between).
    let look_agains = query_i64(
        &db,
        "SELECT count(*) FROM (SELECT status, lag(status) OVER (PARTITION BY run_id ORDER BY seq) AS prev
                               FROM run_changes) t
         WHERE prev = 'running' AND status = 'pending'",
    );
    eprintln!("{backend:?}: {look_agains} look-again releases");
    let effects = tmp.effect_steps();
    let mut per: HashMap<(i64, i64), usize> = HashMap::new();
    for (run, seq, step) in &effects {
        assert_eq!(step, "mark");
        *per.entry((*run, *seq)).or_default() += 1;
    }
    let twice: Vec<_> = per.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "steps ran more than once: {twice:?}");
    assert_eq!(
        per.len(),
        RUNS * TICKS as usize,
        "one mark per tick per run"
    );
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM runs WHERE interruptions > 0"),
        0,
        "no run was reclaimed"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM events WHERE consumed_seq IS NULL"
        ),
        0,
        "every tick was delivered"
    );
    for mut e in engines.drain(..) {
        e.kill();
    }
}

// Scenario: the same race, and every other run is cancelled halfway through its ticks, in
// place of its next tick, from the test's client: the cancel meets the run running toward
// its wait, suspended in it, or released to `pending` by the look-again path.
// Must hold, on both stores: each cancelled run ends `cancelled` (never left pending,
// running or suspended), the others complete; no (run, seq) step ran twice.
on_both_stores!(cancels_racing_look_again_end_each_run_once);
fn cancels_racing_look_again_end_each_run_once(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let ids = tmp.start("fixture.ticks", &TICKS.to_string(), RUNS);
    let mut engines: Vec<Proc> = (0..2).map(|_| tmp.serve(4, &[])).collect();
    let client = waymark::Client::open(&db).expect("client");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut sent: HashMap<i64, u64> = HashMap::new();
    let doomed: Vec<i64> = ids.iter().copied().step_by(2).collect();
    let mut cancelled = Vec::new();
    loop {
        let open = query_i64(
            &db,
            "SELECT count(*) FROM runs WHERE status NOT IN ('completed', 'cancelled', 'failed')",
        );
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs stalled: {open} not ended; statuses: {}",
            query_text(
                &db,
                "SELECT coalesce(string_agg(id || ':' || status, ' '), '') FROM runs"
            )
        );
        for &id in &ids {
            if cancelled.contains(&id) {
                // A cancelled run takes no more events (the send is refused).
                continue;
            }
            let n = sent.entry(id).or_insert(0);
            let unconsumed = query_i64(
                &db,
                &format!(
                    "SELECT count(*) FROM events WHERE run_id = {id} AND consumed_seq IS NULL"
                ),
            );
            if unconsumed == 0 && doomed.contains(&id) && *n >= TICKS / 2 {
                // Instead of its next tick: the run is waiting for it, or about to.
                client.cancel(id).expect("cancel");
                cancelled.push(id);
            } else if unconsumed == 0 && *n < TICKS {
                client
                    .send_event_json(id, "tick", "1")
                    .expect("send a tick");
                *n += 1;
            }
        }
    }
    for &id in &ids {
        let want = if doomed.contains(&id) {
            "cancelled"
        } else {
            "completed"
        };
        assert_eq!(
            query_text(&db, &format!("SELECT status FROM runs WHERE id = {id}")),
            want,
            "run {id}"
        );
    }
    let mut per: HashMap<(i64, i64), usize> = HashMap::new();
    for (run, seq, _) in tmp.effect_steps() {
        *per.entry((run, seq)).or_default() += 1;
    }
    let twice: Vec<_> = per.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "steps ran more than once: {twice:?}");
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM runs WHERE interruptions > 0"),
        0,
        "no run was reclaimed"
    );
    for mut e in engines.drain(..) {
        e.kill();
    }
}
