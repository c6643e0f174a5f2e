//! The effects file: the fixture steps append one line `run seq step pid` per execution to
//! `$WAYMARK_DEMO_EFFECTS` (the engines of [`super::serve`] set it).

use std::path::Path;

/// The fields of each line: `(run, seq, step, pid)`; pid None if the line has only three.
fn lines(path: &Path) -> Vec<(i64, i64, String, Option<u32>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
                it.next().and_then(|p| p.parse().ok()),
            ))
        })
        .collect()
}

/// Lines `run seq step pid` of an effects file.
pub fn effects(path: &Path) -> Vec<(i64, i64, String, u32)> {
    lines(path)
        .into_iter()
        .filter_map(|(run, seq, step, pid)| Some((run, seq, step, pid?)))
        .collect()
}

/// Lines `run seq step` of an effects file (whatever follows).
pub fn effect_steps(path: &Path) -> Vec<(i64, i64, String)> {
    lines(path)
        .into_iter()
        .map(|(run, seq, step, _)| (run, seq, step))
        .collect()
}

/// Effects of the engines [`super::serve()`] started in `dir` (file `dir/effects`).
pub fn effects_in(dir: &Path) -> Vec<(i64, i64, String, u32)> {
    effects(&dir.join("effects"))
}

/// Effects recorded in `dir` for `(run, seq)` with step name `step`.
pub fn effect_count(dir: &Path, run: i64, seq: i64, step: &str) -> usize {
    effects_in(dir)
        .iter()
        .filter(|e| e.0 == run && e.1 == seq && e.2 == step)
        .count()
}

/// Every "overlap" effect in `dir`: a second execution of one (run, seq) found the first
/// still running.
pub fn overlaps(dir: &Path) -> Vec<(i64, i64, String, u32)> {
    effects_in(dir)
        .into_iter()
        .filter(|e| e.2 == "overlap")
        .collect()
}
