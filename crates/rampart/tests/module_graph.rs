//! The crate's imports run one way.
//!
//! Every top-level module of `src/` is a room; a room may use the rooms below it and never
//! one above, so the rooms form a graph without loops that a reader can draw (the module map
//! at the top of `lib.rs`). Inside a room, the files beside each other (`gateway/pipeline.rs`,
//! `gateway/refusal.rs`, …) follow the same rule among themselves; a room's own file
//! (`gateway.rs`) is its face and may be used by its inner files.
//!
//! The check reads the source as text: every `crate::` and `super::` path outside
//! `#[cfg(test)]` items (tests may reach anywhere), resolved to the longest module it names.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One module per source file, keyed by its path from the crate root (`gateway::pipeline`).
struct Module {
    file: PathBuf,
    text: String,
}

fn collect(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, Module>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            collect(&path, &inner, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut key = prefix.to_vec();
            if !(prefix.is_empty() && name == "lib") && name != "mod" {
                key.push(name);
            }
            let text = fs::read_to_string(&path).unwrap();
            out.insert(
                key,
                Module {
                    file: path,
                    text: strip(&text),
                },
            );
        }
    }
}

/// The code without comments, string and character literals, and `#[cfg(test)]` items.
fn strip(text: &str) -> String {
    const TEST_ONLY: &str = "#[cfg(test)]";
    let code = blank_literals(text);
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(at) = rest.find(TEST_ONLY) {
        out.push_str(&rest[..at]);
        rest = &rest[at + TEST_ONLY.len()..];
        rest = &rest[skip_item(rest)..];
    }
    out.push_str(rest);
    out
}

/// A raw string literal's opening (`r"`, `r#"`, `br##"`): the length of the prefix before
/// the quote and the number of hashes.
fn raw_string_start(rest: &str) -> Option<(usize, usize)> {
    let (prefix, after) = match rest.strip_prefix("br") {
        Some(after) => (2, after),
        None => (1, rest.strip_prefix('r')?),
    };
    let hashes = after.bytes().take_while(|&b| b == b'#').count();
    (after.as_bytes().get(hashes) == Some(&b'"')).then_some((prefix, hashes))
}

/// `'x'`, `'\n'`, `'\u{1F600}'`: the literal's length; a lifetime (`'a`) is not one.
fn char_literal_len(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices().skip(1);
    let (_, first) = chars.next()?;
    if first == '\\' {
        let end = rest[2..].find('\'')?;
        return Some(end + 3);
    }
    let (at, next) = chars.next()?;
    (next == '\'').then_some(at + 1)
}

/// Length of the item after an attribute, in code whose literals are blanked: up to its `;`
/// or its matching closing brace.
fn skip_item(rest: &str) -> usize {
    let mut depth = 0usize;
    for (at, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return at + 1;
                }
            }
            ';' if depth == 0 => return at + 1,
            _ => {}
        }
    }
    rest.len()
}

/// The same text, same length, with comments and string and character literals blanked, so
/// that neither a path nor a brace inside them counts.
fn blank_literals(rest: &str) -> String {
    let bytes = rest.as_bytes();
    let mut out = vec![b' '; bytes.len()];
    let mut i = 0;
    while i < bytes.len() {
        let tail = &rest[i..];
        let skip = if tail.starts_with("//") {
            tail.find('\n').unwrap_or(tail.len())
        } else if tail.starts_with("/*") {
            tail.find("*/").map_or(tail.len(), |end| end + 2)
        } else if let Some((prefix, hashes)) = raw_string_start(tail) {
            let close = format!("\"{}", "#".repeat(hashes));
            let body = prefix + hashes + 1;
            body + tail[body..]
                .find(&close)
                .map_or(tail.len() - body, |end| end + close.len())
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j + 1 - i
        } else if bytes[i] == b'\'' && char_literal_len(tail).is_some() {
            char_literal_len(tail).unwrap()
        } else {
            let len = tail.chars().next().map_or(1, char::len_utf8);
            out[i..i + len].copy_from_slice(&bytes[i..i + len]);
            len
        };
        i += skip.max(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every module path named from `module`'s code: `crate::a::b`, `super::c`, and the
/// branches of `use` groups (`crate::a::{b::C, d}`).
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let base: Option<(Vec<String>, usize)> = if boundary && rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if boundary && rest.starts_with("super::") {
            let mut base = module.to_vec();
            let mut len = 0;
            while code[i + len..].starts_with("super::") {
                base.pop();
                len += "super::".len();
            }
            Some((base, len))
        } else {
            None
        };
        match base {
            Some((base, len)) => {
                let used = path_tree(&code[i + len..], &base, &mut found);
                i += len + used;
            }
            None => i += rest.chars().next().unwrap().len_utf8(),
        }
    }
    found
}

/// Reads a path (or a `{…}` group of paths) after `prefix`, pushing every full path.
fn path_tree(text: &str, prefix: &[String], found: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let mut i = 0;
    loop {
        let rest = &text[i..];
        let trimmed = rest.trim_start();
        i += rest.len() - trimmed.len();
        if trimmed.starts_with('{') {
            i += 1;
            let mut inner = &text[i..];
            loop {
                let used = path_tree(inner, &path, found);
                i += used;
                inner = &text[i..];
                let t = inner.trim_start();
                i += inner.len() - t.len();
                if let Some(after) = t.strip_prefix(',') {
                    i += 1;
                    inner = &text[i..];
                    if after.trim_start().starts_with('}') {
                        let t = inner.trim_start();
                        i += inner.len() - t.len() + 1;
                        return i;
                    }
                } else {
                    if t.starts_with('}') {
                        i += 1;
                    }
                    return i;
                }
            }
        }
        let ident: String = trimmed
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            found.push(path);
            return i;
        }
        i += ident.len();
        if ident != "self" {
            path.push(ident);
        }
        if text[i..].starts_with("::") {
            i += 2;
        } else {
            found.push(path);
            return i;
        }
    }
}

/// The longest known module that `path` names (the module itself for a type inside it).
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// Strongly connected components of more than one node (Tarjan).
fn loops(nodes: &BTreeSet<String>, edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        found: Vec<Vec<String>>,
    }
    fn visit(walk: &mut Walk<'_>, node: &str) {
        let n = walk.index.len();
        walk.index.insert(node.to_string(), n);
        walk.low.insert(node.to_string(), n);
        walk.stack.push(node.to_string());
        walk.on_stack.insert(node.to_string());
        for next in walk.edges.get(node).cloned().unwrap_or_default() {
            if !walk.index.contains_key(&next) {
                visit(walk, &next);
                let low = walk.low[node].min(walk.low[&next]);
                walk.low.insert(node.to_string(), low);
            } else if walk.on_stack.contains(&next) {
                let low = walk.low[node].min(walk.index[&next]);
                walk.low.insert(node.to_string(), low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut component = Vec::new();
            loop {
                let top = walk.stack.pop().unwrap();
                walk.on_stack.remove(&top);
                let done = top == node;
                component.push(top);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                walk.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in nodes {
        if !walk.index.contains_key(node) {
            visit(&mut walk, node);
        }
    }
    walk.found
}

/// The rooms of one scope and, for each, the rooms it uses.
type Graph = (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>);

/// An edge between two rooms (or two files of one room), with the paths that make it.
type Reasons = BTreeMap<(String, String), BTreeSet<String>>;

#[test]
fn the_modules_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    collect(&root, &[], &mut modules);
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();

    // Level 1: top-level rooms. Level 2: the files inside one room, beside each other.
    let mut graphs: BTreeMap<String, Graph> = BTreeMap::new();
    let mut reasons = Reasons::new();
    for (key, module) in &modules {
        if key.is_empty() {
            continue;
        }
        for path in references(key, &module.text) {
            let Some(target) = resolve(&known, &path) else {
                continue;
            };
            if target.is_empty() {
                continue;
            }
            let (scope, from, to) = if key[0] != target[0] {
                ("crate".to_string(), key[0].clone(), target[0].clone())
            } else if key.len() >= 2 && target.len() >= 2 && key[1] != target[1] {
                (key[0].clone(), key[1].clone(), target[1].clone())
            } else {
                continue;
            };
            let graph = graphs.entry(scope.clone()).or_default();
            graph.0.insert(from.clone());
            graph.0.insert(to.clone());
            graph.1.entry(from.clone()).or_default().insert(to.clone());
            reasons
                .entry((format!("{scope}/{from}"), format!("{scope}/{to}")))
                .or_default()
                .insert(format!(
                    "{} uses {}",
                    module.file.strip_prefix(&root).unwrap().display(),
                    path.join("::")
                ));
        }
    }

    let mut report = String::new();
    for (scope, (nodes, edges)) in &graphs {
        for component in loops(nodes, edges) {
            report.push_str(&format!("\nloop in {scope}: {}\n", component.join(" <-> ")));
            for from in &component {
                for to in edges
                    .get(from)
                    .into_iter()
                    .flatten()
                    .filter(|t| component.contains(t))
                {
                    for why in &reasons[&(format!("{scope}/{from}"), format!("{scope}/{to}"))] {
                        report.push_str(&format!("  {from} -> {to}: {why}\n"));
                    }
                }
            }
        }
    }
    assert!(report.is_empty(), "imports run in a loop:{report}");

    // The floors, printed with `--nocapture`: each room one floor above the highest room it
    // uses, so a room only ever looks down.
    if let Some((nodes, edges)) = graphs.get("crate") {
        let mut floor: BTreeMap<&str, usize> = BTreeMap::new();
        fn height<'a>(
            node: &'a str,
            edges: &'a BTreeMap<String, BTreeSet<String>>,
            floor: &mut BTreeMap<&'a str, usize>,
        ) -> usize {
            if let Some(&known) = floor.get(node) {
                return known;
            }
            let below = edges.get(node).into_iter().flatten();
            let height = below
                .map(|next| height(next, edges, floor) + 1)
                .max()
                .unwrap_or(0);
            floor.insert(node, height);
            height
        }
        let all: BTreeSet<&str> = nodes
            .iter()
            .map(String::as_str)
            .chain(
                modules
                    .keys()
                    .filter_map(|key| key.first().map(String::as_str)),
            )
            .collect();
        for node in &all {
            height(node, edges, &mut floor);
        }
        let top = floor.values().copied().max().unwrap_or(0);
        for level in (0..=top).rev() {
            let rooms: Vec<&str> = floor
                .iter()
                .filter(|(_, f)| **f == level)
                .map(|(n, _)| *n)
                .collect();
            println!("floor {level:>2}: {}", rooms.join(", "));
        }
    }
}

#[test]
fn the_checker_sees_use_groups_and_skips_tests() {
    let code = strip(
        "use crate::{a::B, c::{d::E, F}};\nfn f() { crate::g::h(); let s = \"crate::x\"; }\n\
         #[cfg(test)]\nmod tests { use crate::z::Q; fn t() { let c = '{'; } }\nuse super::y;",
    );
    let found: Vec<String> = references(&["m".to_string(), "n".to_string()], &code)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(found, ["a::B", "c::d::E", "c::F", "g::h", "m::y"]);
}
