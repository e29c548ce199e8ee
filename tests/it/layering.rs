//! The module structure read from the source: every `crate::…` and `super::…` path in
//! `src/` (outside comments and the `#[cfg(test)]` part at the end of a file) is an arrow
//! from its file to the file that defines the module it names. The arrows must not form a
//! loop, and the leaves stay leaves. A `mod.rs` naming its own children is its table of
//! contents, not an arrow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/` (`src/config/keys.rs` → `["config", "keys"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its tests (by the project's style, the
/// `#[cfg(test)]` module comes last).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// The module paths (as written, starting with `crate` or `super`) a piece of code names,
/// `use a::{b, c::d}` groups expanded one level.
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            // Not the tail of a longer name (`my_crate::`).
            let before = rest[..at].chars().last();
            rest = &rest[at..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                rest = &rest[start.len()..];
                continue;
            }
            let mut path = Vec::new();
            let mut s = rest;
            loop {
                let (name, tail) = ident(s);
                if name.is_empty() {
                    break;
                }
                path.push(name.to_owned());
                s = tail;
                if let Some(t) = s.strip_prefix("::") {
                    s = t;
                } else {
                    break;
                }
            }
            if let Some(group) = s.strip_prefix('{') {
                // One level of a group: each item's first name.
                let mut depth = 0;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => return true,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        false
                    })
                    .map_or(group.len(), |(i, _)| i);
                let mut depth = 0;
                let mut item_start = 0;
                let inner = &group[..end];
                let mut items = Vec::new();
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&inner[item_start..i]);
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
                items.push(&inner[item_start..]);
                for item in items {
                    let mut p = path.clone();
                    let (name, _) = ident(item.trim_start());
                    if !name.is_empty() && name != "self" {
                        p.push(name.to_owned());
                    }
                    found.push(p);
                }
            } else {
                found.push(path);
            }
            rest = &rest[start.len()..];
        }
    }
    found
}

/// The modules of the crate and the arrows between them.
fn module_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let lib: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("bin")) && !f.ends_with("main.rs"))
        .filter(|f| !f.starts_with(src.join("cli")))
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &lib {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut arrows = BTreeSet::new();
        // The module `super` is relative to: a mod.rs is its folder's module.
        let is_mod = file.ends_with("mod.rs");
        for path in paths_named(&code) {
            let mut target: Vec<String> = Vec::new();
            let mut names = path.iter().peekable();
            match names.next().map(String::as_str) {
                Some("crate") => {}
                Some("super") => {
                    target = module.clone();
                    target.pop();
                    while names.peek().is_some_and(|n| *n == "super") {
                        names.next();
                        target.pop();
                    }
                }
                _ => continue,
            }
            for name in names {
                target.push(name.clone());
                if !lib.contains_key(&target) {
                    target.pop();
                    break;
                }
            }
            let own_child = is_mod && target.starts_with(module);
            if target != *module && !own_child && lib.contains_key(&target) {
                arrows.insert(target);
            }
        }
        graph.insert(module.clone(), arrows);
    }
    graph
}

/// A loop of arrows, if there is one.
fn find_loop(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|n| n == node).unwrap();
                let mut names: Vec<String> = stack[at..].iter().map(|n| n.join("::")).collect();
                names.push(node.join("::"));
                return Some(names);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, marks, stack) {
                return Some(found);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(found) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(found);
        }
    }
    None
}

#[test]
fn the_reader_finds_arrows_through_groups_and_super() {
    let code = "use super::keys::{self, KeyPlan};\nuse crate::{spool::Spool, record};\n\
                let x = crate::time::now();";
    let paths = paths_named(code);
    let has = |p: &[&str]| paths.iter().any(|q| q == p);
    assert!(has(&["crate", "spool"]), "{paths:?}");
    assert!(has(&["crate", "record"]), "{paths:?}");
    assert!(has(&["crate", "time", "now"]), "{paths:?}");
    assert!(has(&["super", "keys"]), "{paths:?}");
    let graph = module_graph();
    let config_keys = vec!["config".to_owned(), "keys".to_owned()];
    assert!(graph.contains_key(&config_keys), "{:?}", graph.keys());
    // Known arrows are seen, so an empty result below means no loop, not a blind reader.
    let forward = &graph[&vec!["config".to_owned(), "forward".to_owned()]];
    assert!(forward.contains(&config_keys), "{forward:?}");
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = module_graph();
    assert_eq!(find_loop(&graph), None, "a loop of imports between modules");
}

#[test]
fn the_leaves_import_nothing_of_the_pipeline() {
    let graph = module_graph();
    // The record schema, the pure decoders and the small leaves know nothing above them.
    let above = [
        "sources",
        "dissect",
        "correlation",
        "pipeline",
        "spool",
        "spooler",
        "uplink",
        "daemon",
        "config",
        "observe",
        "replay",
        "collect",
    ];
    for (module, arrows) in &graph {
        let Some(top) = module.first().map(String::as_str) else {
            continue;
        };
        if ![
            "record",
            "decode",
            "time",
            "secret",
            "backoff",
            "bounded",
            "log_limit",
            "panics",
            "server_url",
            "seal",
            "admission",
            "durable",
        ]
        .contains(&top)
        {
            continue;
        }
        for arrow in arrows {
            assert!(
                !above.contains(&arrow[0].as_str()),
                "{} imports {}",
                module.join("::"),
                arrow.join("::")
            );
        }
    }
}

/// The crate doc's four steps (where a packet enters, where its call is decided, where its
/// record becomes durable, where it leaves) name one module each, in that order, and the
/// code agrees: no step imports a later one (a source knows nothing of calls or the spool,
/// the correlator nothing of the spool or the uplink, the spooler nothing of the uplink).
#[test]
fn the_crate_doc_names_the_four_steps_and_each_knows_only_what_comes_before() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let steps: Vec<String> = [
        "**enters**",
        "**call is decided**",
        "**becomes durable**",
        "**leaves**",
    ]
    .iter()
    .map(|step| {
        let line = lib
            .lines()
            .find(|l| l.contains(step))
            .unwrap_or_else(|| panic!("the crate doc has no step {step}"));
        let after = &line[line.find(step).unwrap() + step.len()..];
        let start = after.find("[`").unwrap_or_else(|| panic!("{line}")) + 2;
        let end = after[start..].find('`').unwrap() + start;
        after[start..end].to_owned()
    })
    .collect();
    assert_eq!(steps, ["sources", "correlation", "spooler", "uplink"]);
    let graph = module_graph();
    for (i, step) in steps.iter().enumerate() {
        for later in &steps[i + 1..] {
            for (module, arrows) in graph.iter().filter(|(m, _)| m.first() == Some(step)) {
                assert!(
                    !arrows.iter().any(|a| a.first() == Some(later)),
                    "{} imports {later}, a later step",
                    module.join("::")
                );
            }
        }
    }
}

/// The same at the level of the crate's top modules (`config`, `sensors`, `uplink`, ...):
/// a folder that imports another must not be imported back by it, even through a leaf.
#[test]
fn no_top_module_imports_one_that_imports_it_back() {
    let mut top: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, arrows) in module_graph() {
        let Some(first) = module.first() else {
            continue;
        };
        let entry = top.entry(vec![first.clone()]).or_default();
        for arrow in arrows {
            if arrow.first() != Some(first) {
                entry.insert(arrow[..1].to_vec());
            }
        }
    }
    assert_eq!(
        find_loop(&top),
        None,
        "a loop of imports between top modules"
    );
}
