//! The architecture's invariants, read off the source (`docs/architecture.md` states them):
//! imports run one way down the library's floors, the state engine names neither redb nor
//! Matrix, the generator stands apart, and the CLI's modules import each other without a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's floors, bottom up. A module may import its own floor's modules only where the
/// floor is the bottom one; otherwise only floors below its own.
const FLOORS: &[(&str, u8)] = &[
    ("nid", 0),
    ("error", 0),
    ("engine", 1),
    ("store", 2),
    ("matrix", 3),
    ("ingest", 4),
];

/// The generator imports nothing of the crate: it writes JSON lines and knows no store.
const APART: &[&str] = &["workload"];

/// Words a floor's code must not contain (comments are not read).
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("nid", &["redb", "ruma", "serde_json", "zstd"]),
    ("error", &["ruma", "serde_json", "zstd"]),
    (
        "engine",
        &["redb", "ruma", "serde_json", "zstd", "\"m.room."],
    ),
    ("store", &["ruma", "serde_json"]),
    ("matrix", &["redb", "zstd"]),
    ("ingest", &["redb", "ruma", "zstd"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top module a file under `src/` belongs to: `engine` for `src/engine/block.rs`, `nid` for
/// `src/nid.rs`; `None` for the crate root and the CLI.
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// The code of a file without its comment lines.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// Every `crate::NAME` a line names.
fn crate_paths(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter(|(i, _)| {
            // `roomstate::crate::` does not occur; `$crate::` in macros does.
            !line[..*i].ends_with('$')
                && !line[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        })
        .map(|(i, m)| {
            line[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn floor(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

/// What is wrong with one library file's imports and words, as messages.
fn check_file(relative: &Path, text: &str) -> Vec<String> {
    let Some(own) = top_module(relative) else {
        return Vec::new();
    };
    let shown = relative.display();
    let mut problems = Vec::new();
    let apart = APART.contains(&own.as_str());
    let own_floor = floor(&own);
    if !apart && own_floor.is_none() {
        problems.push(format!(
            "{shown}: module `{own}` is in no floor of tests/layers.rs"
        ));
        return problems;
    }
    for (n, line) in code_lines(text) {
        for target in crate_paths(line) {
            if target == own {
                continue;
            }
            if apart {
                problems.push(format!(
                    "{shown}:{n}: the generator imports `crate::{target}`; it stands apart"
                ));
                continue;
            }
            let Some(target_floor) = floor(&target) else {
                problems.push(format!(
                    "{shown}:{n}: `crate::{target}` is not a floor's module (name the module, not a root re-export)"
                ));
                continue;
            };
            let own_floor = own_floor.unwrap_or(0);
            let allowed = target_floor < own_floor || (target_floor == 0 && own_floor == 0);
            if !allowed {
                problems.push(format!(
                    "{shown}:{n}: `{own}` (floor {own_floor}) imports `crate::{target}` (floor {target_floor})"
                ));
            }
        }
        if let Some((_, words)) = FORBIDDEN.iter().find(|(m, _)| *m == own) {
            for word in words.iter().filter(|w| line.contains(*w)) {
                problems.push(format!("{shown}:{n}: `{own}` names {word}"));
            }
        }
    }
    problems
}

#[test]
fn library_imports_run_down_the_floors() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for path in &files {
        let relative = path.strip_prefix(&root).expect("under src/");
        let text = std::fs::read_to_string(path).expect("source is UTF-8");
        problems.extend(check_file(relative, &text));
        if let Some(m) = top_module(relative) {
            seen.insert(m);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every floor exists: a renamed folder must be renamed here too.
    for (module, _) in FLOORS {
        assert!(seen.contains(*module), "no module `{module}` under src/");
    }
}

#[test]
fn the_check_fails_on_an_upward_import() {
    let bottom = check_file(Path::new("nid.rs"), "use crate::ingest::IngestOptions;\n");
    assert_eq!(bottom.len(), 1, "{bottom:?}");
    let engine = check_file(
        Path::new("engine/block.rs"),
        "use crate::store::Store;\nuse redb::Database;\n",
    );
    assert_eq!(engine.len(), 2, "{engine:?}");
    let root_path = check_file(
        Path::new("store/check.rs"),
        "let m = crate::StateMap::new();\n",
    );
    assert_eq!(root_path.len(), 1, "{root_path:?}");
    let generator = check_file(Path::new("workload/hq.rs"), "use crate::nid::EventNid;\n");
    assert_eq!(generator.len(), 1, "{generator:?}");
    let comment = check_file(Path::new("engine/cache.rs"), "// redb evicts per stripe\n");
    assert!(comment.is_empty(), "{comment:?}");
    let fine = check_file(
        Path::new("matrix/input.rs"),
        "use crate::store::Writer;\nuse crate::engine::resolve::StateMap;\n",
    );
    assert!(fine.is_empty(), "{fine:?}");
}

/// The CLI's modules and which of them each imports through `crate::`.
fn cli_graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = src().join("bin/roomstate");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("src/bin/roomstate is readable") {
        let path = entry.expect("a directory entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("source is UTF-8");
        let name = if stem == "main" { "main" } else { stem };
        let mut imports: BTreeSet<String> = code_lines(&text)
            .flat_map(|(_, l)| crate_paths(l))
            .filter(|t| t != name)
            .collect();
        // The root declares every module; it is the top, so its `mod` lines are not imports.
        if name != "main" {
            imports.retain(|t| t != "main");
        }
        graph.insert(name.to_owned(), imports);
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|k| visit(k, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cli_modules_have_no_circle() {
    let graph = cli_graph();
    assert!(graph.contains_key("bench") && graph.contains_key("plot"));
    assert_eq!(find_cycle(&graph), None, "{graph:?}");
    // The checker finds a circle when there is one.
    let mut circular = graph.clone();
    circular
        .entry("plot".to_owned())
        .or_default()
        .insert("bench".to_owned());
    assert!(find_cycle(&circular).is_some());
}
