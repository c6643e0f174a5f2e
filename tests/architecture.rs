//! The dependency direction of src/, as ARCHITECTURE.md states it, checked on the code:
//! every `crate::MODULE` a top-level module names must be allowed below, and the allowed
//! graph has no cycle. Adding an import that goes up (the store naming the engine, the
//! process code naming the engine or the workflow code) fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of src/ (binary-only `cli` aside) and the modules it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("host", &[]),
    ("fault", &[]),
    ("outcome", &[]),
    ("codec", &[]),
    ("store", &["clock", "fault", "host", "codec"]),
    ("config", &["codec", "outcome", "store"]),
    ("error", &["codec", "store"]),
    ("step", &["codec", "config", "error"]),
    (
        "exec",
        &["config", "fault", "host", "outcome", "step", "store"],
    ),
    (
        "isolation",
        &[
            "codec", "config", "error", "exec", "fault", "host", "outcome", "step",
        ],
    ),
    (
        "workflow",
        &[
            "codec",
            "config",
            "error",
            "exec",
            "fault",
            "host",
            "isolation",
            "outcome",
            "step",
            "store",
        ],
    ),
    (
        "client",
        &["clock", "codec", "error", "host", "store", "workflow"],
    ),
    (
        "engine",
        &[
            "client",
            "clock",
            "codec",
            "config",
            "error",
            "exec",
            "fault",
            "host",
            "isolation",
            "outcome",
            "step",
            "store",
            "workflow",
        ],
    ),
    // Layer 8, the web console (feature `console`): reads through the storage seam and the
    // engine's admin helpers; nothing but lib.rs and the CLI imports it (no module lists it).
    (
        "console",
        &[
            "client", "clock", "codec", "engine", "error", "host", "store",
        ],
    ),
    // The admin CLI (`waymark::cli`) uses the public API only: nothing by module path but
    // the public `console` module (its `ui` and `serve --ui`).
    ("cli_admin", &["console"]),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::NAME` occurrences outside comments.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = tail;
        }
    }
    found
}

fn actual_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "cli" || top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for m in imports(&text) {
            if m != top {
                deps.insert(m);
            }
        }
    }
    graph
}

#[test]
fn every_import_goes_down_the_declared_layers() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut wrong = Vec::new();
    for (module, deps) in actual_graph() {
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "src/{module}: a new top-level module; add it to ALLOWED and ARCHITECTURE.md"
            ));
            continue;
        };
        for d in deps {
            if !ok.contains(d.as_str()) {
                wrong.push(format!("{module} imports {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering: {wrong:?}");
}

#[test]
fn the_declared_layers_have_no_cycle() {
    // Kahn's algorithm over ALLOWED: every module must be removable.
    let mut left: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    loop {
        let free: Vec<&str> = left
            .iter()
            .filter(|(_, d)| d.iter().all(|x| !left.contains_key(x)))
            .map(|(m, _)| *m)
            .collect();
        if free.is_empty() {
            break;
        }
        for m in free {
            left.remove(m);
        }
    }
    assert!(left.is_empty(), "cycle among {:?}", left.keys());
}

#[test]
fn the_checker_sees_an_upward_import() {
    // The parser itself: a line naming the engine from the store is seen; a comment is not.
    let seen = imports("use crate::engine::Inner;\n// crate::workflow in a comment\n");
    assert_eq!(seen, BTreeSet::from(["engine".to_string()]));
}

#[test]
fn above_the_store_everything_goes_through_the_storage_seam() {
    // The engine, the workflow code and the executors name no SQLite type, no query
    // function and no writer command: only the `Storage` trait (store/seam.rs), so another
    // store can implement it.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in ["client", "engine", "workflow", "isolation", "cli_admin"] {
        rust_files(&src.join(dir), &mut files);
    }
    files.push(src.join("exec.rs"));
    files.push(src.join("step.rs"));
    let mut wrong = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for banned in ["rusqlite", "queries::", "write::", "Op::", "store::Store"] {
                // A whole path segment: `store::StoreError` is a plain type, not the SQLite store.
                let hit = code.match_indices(banned).any(|(at, _)| {
                    !code[at + banned.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                if hit {
                    wrong.push(format!("{}:{}: {banned}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "past the storage seam: {wrong:#?}");
}
