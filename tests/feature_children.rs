//! Child workflows (`ctx.start_child` / `ctx.join`): the child's id is journaled, creation
//! is idempotent (key = parent run + seq), the parent suspends while the child runs and is
//! woken when it ends; cancelling the parent cancels the child.

mod support;

use std::time::Duration;
use support::*;

fn children(tmp: &Tmp, parent: i64) -> Vec<i64> {
    rows(
        &tmp.db(),
        &format!("SELECT id FROM runs WHERE parent_id = {parent} ORDER BY id"),
    )
    .into_iter()
    .map(|r| r[0].parse().unwrap())
    .collect()
}

fn steps_done(tmp: &Tmp, run_id: i64) -> i64 {
    query_i64(
        &tmp.db(),
        &format!("SELECT count(*) FROM steps WHERE run_id = {run_id} AND status = 'completed'"),
    )
}

// Scenario: a parent starts a child of 10 slow steps and joins it; the engine is SIGKILLed
// while the child runs (parent suspended waiting for it), then restarted. Must survive: the
// single child (no duplicate on replay), the child's completed steps (not re-run: only the
// step in flight at the kill may run twice), and the parent completes with the child's
// output + 1.
on_both_stores!(kill_while_a_child_runs);
fn kill_while_a_child_runs(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let parent = tmp.start("fixture.parent", r#"{"steps":10,"ms":250}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("child ran 3 steps", Duration::from_secs(30), || {
        children(&tmp, parent)
            .first()
            .is_some_and(|c| steps_done(&tmp, *c) >= 3)
    });
    kill9(&mut engine);
    let child = children(&tmp, parent)[0];
    assert_eq!(status(&db, child), "running");

    let mut engine = tmp.serve(2, &[]);
    wait_until("parent completed", Duration::from_secs(60), || {
        status(&db, parent) == "completed"
    });
    kill9(&mut engine);
    assert_eq!(children(&tmp, parent), vec![child], "exactly one child");
    assert_eq!(status(&db, child), "completed");
    let p_out = query_blob(&db, &format!("SELECT output FROM runs WHERE id = {parent}"));
    let c_out = query_blob(&db, &format!("SELECT output FROM runs WHERE id = {child}"));
    let c_out: u64 = waymark::internal::codec::decode(&c_out, 1024).unwrap();
    let p_out: u64 = waymark::internal::codec::decode(&p_out, 1024).unwrap();
    assert_eq!(p_out, c_out + 1);
    let kinds: Vec<_> = journal(&db, parent).into_iter().map(|e| e.2).collect();
    assert_eq!(kinds, vec!["child", "step", "join"]);
    // Child steps: each seq executed once, except at most the one in flight at the kill.
    let mut per_seq = std::collections::HashMap::new();
    for (run, seq, _) in tmp.effect_steps() {
        if run == child {
            *per_seq.entry(seq).or_insert(0) += 1;
        }
    }
    assert_eq!(per_seq.len(), 10);
    assert!(
        per_seq.values().filter(|n| **n > 1).count() <= 1,
        "{per_seq:?}"
    );
}

// Scenario: the parent is cancelled while its child runs. Must hold: both end `cancelled`
// and the child executes no further step.
on_both_stores!(cancelling_the_parent_cancels_the_child);
fn cancelling_the_parent_cancels_the_child(backend: Backend) {
    let tmp = Tmp::on(backend);
    let db = tmp.db();
    let parent = tmp.start("fixture.parent", r#"{"steps":40,"ms":250}"#, 1)[0];
    let mut engine = tmp.serve(2, &[]);
    wait_until("child ran a step", Duration::from_secs(30), || {
        children(&tmp, parent)
            .first()
            .is_some_and(|c| steps_done(&tmp, *c) >= 1)
    });
    let child = children(&tmp, parent)[0];
    let out = tmp.waymark(&["cancel", &parent.to_string(), "--db", db.to_str().unwrap()]);
    assert_eq!(out.trim(), "cancelled", "a suspended parent ends at once");
    wait_until("child cancelled", Duration::from_secs(30), || {
        status(&db, child) == "cancelled"
    });
    let done = steps_done(&tmp, child);
    std::thread::sleep(Duration::from_millis(800));
    kill9(&mut engine);
    assert_eq!(status(&db, parent), "cancelled");
    assert_eq!(steps_done(&tmp, child), done);
    assert!(done < 40);
}
