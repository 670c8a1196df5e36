//! The layering the module maps promise, checked: inside every crate of the
//! workspace, and inside every folder of a crate, no module reaches
//! (through `crate::` paths, comments left out) a sibling that reaches back
//! to it. A folder's own `mod.rs` is the folder, not one of its children:
//! it may use its children, and they may use what it declares.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &[
    ".",
    "ca",
    "listen",
    "proxy",
    "policies",
    "workloads",
    "standalone",
    "benches",
    "kind",
    "xds",
    "control-plane",
    "harness",
    "soak",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file (`outbound/pool.rs` → `[outbound,
/// pool]`; `outbound/mod.rs` and `lib.rs` are their folder's).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Skips whitespace at `at`.
fn skip_space(text: &str, at: usize) -> usize {
    at + (text[at..].len() - text[at..].trim_start().len())
}

/// Reads one path after `crate::` (with `{…}` groups, nested), adding every
/// full path it names to `out`; returns where it stopped in `text`.
fn read_path(text: &str, prefix: &[String], out: &mut BTreeSet<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let mut at = 0;
    if text.starts_with('{') {
        at += 1;
        loop {
            at = skip_space(text, at);
            if text[at..].is_empty() {
                return at;
            }
            if text[at..].starts_with('}') {
                return at + 1;
            }
            at += read_path(&text[at..], prefix, out).max(1);
            at = skip_space(text, at);
            if text[at..].starts_with(',') {
                at += 1;
            }
        }
    }
    loop {
        let name = ident(&text[at..]);
        if name.is_empty() {
            break;
        }
        path.push(name.to_string());
        at += name.len();
        if !text[at..].starts_with("::") {
            break;
        }
        at += 2;
        if text[at..].starts_with('{') {
            return at + read_path(&text[at..], &path, out);
        }
    }
    if path.len() > prefix.len() {
        out.insert(path);
    }
    at
}

/// The module paths named by `crate::…` paths, and inside `use crate::{…}`
/// groups (comment lines left out).
fn references(text: &str) -> BTreeSet<Vec<String>> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `hbone_crate::` and the like are other crates.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        read_path(&code[i + "crate::".len()..], &[], &mut found);
    }
    found
}

fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if graph.contains_key(next) && seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

/// For every folder (module path) of a crate, the graph between its
/// children: child → the siblings its files name.
fn folder_graphs(
    modules: &[(Vec<String>, BTreeSet<Vec<String>>)],
) -> BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> {
    let mut folders: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, _) in modules {
        for depth in 0..module.len() {
            folders
                .entry(module[..depth].to_vec())
                .or_default()
                .entry(module[depth].clone())
                .or_default();
        }
    }
    for (module, uses) in modules {
        for depth in 0..module.len() {
            let (folder, child) = (&module[..depth], &module[depth]);
            for used in uses {
                if used.len() > depth && used[..depth] == *folder && used[depth] != *child {
                    folders
                        .get_mut(folder)
                        .unwrap()
                        .get_mut(child)
                        .unwrap()
                        .insert(used[depth].clone());
                }
            }
        }
    }
    // Items a folder's mod.rs declares are not children.
    for graph in folders.values_mut() {
        let children: BTreeSet<String> = graph.keys().cloned().collect();
        for uses in graph.values_mut() {
            uses.retain(|used| children.contains(used));
        }
    }
    folders
}

#[test]
fn no_crate_or_folder_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut circles = Vec::new();
    for name in CRATES {
        let src = root.join(name).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(!files.is_empty(), "no sources under {}", src.display());
        let modules: Vec<_> = files
            .iter()
            .map(|file| {
                let text = std::fs::read_to_string(file).unwrap();
                (module_of(&src, file), references(&text))
            })
            .collect();
        for (folder, graph) in folder_graphs(&modules) {
            for module in graph.keys() {
                if let Some(cycle) = cycle_through(&graph, module) {
                    let at = if folder.is_empty() {
                        String::new()
                    } else {
                        format!(" (in {})", folder.join("/"))
                    };
                    circles.push(format!("{name}{at}: {}", cycle.join(" → ")));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "modules that import each other:\n{}",
        circles.join("\n")
    );
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let text = "use crate::a::X;\nuse crate::{b::Y, c, d::{e, f}};\n// crate::commented\nlet x = crate::g::h(); use hbone_crate::z;";
    let found: Vec<String> = references(text).into_iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["a::X", "b::Y", "c", "d::e", "d::f", "g::h"]);
}

#[test]
fn a_cycle_inside_a_folder_is_found_and_the_folder_root_is_not_a_child() {
    let path = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let uses = |list: &[&str]| list.iter().map(|s| path(s)).collect::<BTreeSet<_>>();
    let modules = vec![
        // net/mod.rs uses its child, and the child uses the folder: no cycle.
        (path("net"), uses(&["net::listen::accept"])),
        (path("net::listen"), uses(&["net::Thing"])),
        // Inside outbound/: pool → capture → pool.
        (path("outbound::pool"), uses(&["outbound::capture::x"])),
        (
            path("outbound::capture"),
            uses(&["outbound::pool::y", "net::listen::z"]),
        ),
    ];
    let graphs = folder_graphs(&modules);
    let top = &graphs[&Vec::new()];
    assert_eq!(top["outbound"], ["net".to_string()].into());
    assert!(top["net"].is_empty());
    assert!(graphs[&path("net")]["listen"].is_empty());
    let inner = &graphs[&path("outbound")];
    assert!(cycle_through(inner, "pool").is_some());
}
