//! The house rules, checked on the source text (docs/architecture.md explains them):
//! sources and sinks never import each other nor the configuration; a kind is named only in
//! its own file, its family's registry and the configuration; the agent never names a kind;
//! the modules of the crate import each other without a circle; no file of the agent holds
//! more than one concept's worth of lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`, with its production code only: test modules (`tests.rs`,
/// `tests/`) are left out and a file is cut where its inline `mod tests` starts.
fn production_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "tests" || name == "tests.rs" {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
                out.push((path, code.to_owned()));
            }
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file under `src/` belongs to (`src/agent/fetch.rs` → `agent`).
fn top_module(path: &Path) -> String {
    let relative = path.strip_prefix(src()).unwrap();
    let first = relative.components().next().unwrap();
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The modules `code` names after `crate::`, also inside a group (`crate::{config, sink}`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                modules.insert(name);
            }
        } else {
            modules.insert(rest.chars().take_while(|c| is_ident(*c)).collect());
        }
    }
    modules.remove("");
    modules
}

/// Whether `code` holds the path `path` as a whole (`sink::file` in `sink::file::X` or
/// `use crate::sink::file;`, not in `sink::file_x`).
fn names_path(code: &str, path: &str) -> bool {
    code.match_indices(path).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + path.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// One line of a registry: `"name" => Variant(module::Config),`.
struct Registered {
    name: String,
    variant: String,
    module: String,
    config: String,
}

/// The kinds a registry declares.
fn registered_kinds(registry: &Path) -> Vec<Registered> {
    let text = std::fs::read_to_string(registry).unwrap();
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(" => ")?;
            let name = name.strip_prefix('"')?.strip_suffix('"')?;
            let (variant, path) = rest.strip_suffix("),")?.split_once('(')?;
            let (module, config) = path.split_once("::")?;
            Some(Registered {
                name: name.to_owned(),
                variant: variant.to_owned(),
                module: module.to_owned(),
                config: config.to_owned(),
            })
        })
        .collect()
}

#[test]
fn sources_and_sinks_import_neither_each_other_nor_the_config() {
    let mut violations = Vec::new();
    for (family, forbidden) in [
        ("source", ["sink", "config"]),
        ("sink", ["source", "config"]),
    ] {
        for (path, code) in production_files(&src().join(family)) {
            let used = crate_paths(&code);
            for f in forbidden.iter().filter(|f| used.contains(**f)) {
                violations.push(format!("{} imports crate::{f}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_kind_is_named_only_in_its_file_its_registry_and_the_config() {
    let mut violations = Vec::new();
    for family in ["source", "sink"] {
        let registry = src().join(family).join("mod.rs");
        let kinds = registered_kinds(&registry);
        assert!(kinds.len() >= 3, "no kinds found in {}", registry.display());
        for Registered { module, .. } in &kinds {
            let own_file = src().join(family).join(format!("{module}.rs"));
            let own_dir = src().join(family).join(module);
            assert!(own_file.exists(), "{} is missing", own_file.display());
            for (path, code) in production_files(&src()) {
                if path == own_file
                    || path.starts_with(&own_dir)
                    || path == registry
                    || top_module(&path) == "config"
                {
                    continue;
                }
                let sibling = path.parent() == Some(&src().join(family));
                let named = names_path(&code, &format!("{family}::{module}"))
                    || names_path(&code, &format!("{family}::{{{module}"))
                    || (sibling && names_path(&code, &format!("super::{module}")));
                if named {
                    violations.push(format!("{} names {family}::{module}", path.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_agent_never_names_a_kind() {
    // Per kind: its name (`"file"`), the enum variant (`File(`), its configuration type and
    // the runtime types its file implements `Source`/`SingleTokenSource`/`Sink` for.
    let mut names: Vec<String> = Vec::new();
    for family in ["source", "sink"] {
        for kind in registered_kinds(&src().join(family).join("mod.rs")) {
            names.push(format!("\"{}\"", kind.name));
            names.push(format!("{}(", kind.variant));
            names.push(kind.config);
            let file = src().join(family).join(format!("{}.rs", kind.module));
            let text = std::fs::read_to_string(file).unwrap();
            for part in text.split("\nimpl ").skip(1) {
                let Some((traits, rest)) = part.split_once(" for ") else {
                    continue;
                };
                if ["Source", "SingleTokenSource", "Sink"].contains(&traits) {
                    names.push(rest.split_whitespace().next().unwrap().to_owned());
                }
            }
        }
    }
    assert!(names.iter().any(|n| n == "FileSink"), "{names:?}");
    let mut violations = Vec::new();
    for (path, code) in production_files(&src().join("agent")) {
        for name in &names {
            if code.contains(name.as_str()) {
                violations.push(format!("{} names `{name}`", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn modules_import_each_other_without_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in production_files(&src()) {
        let from = top_module(&path);
        if from == "lib" || from == "main" {
            continue;
        }
        let modules: BTreeSet<String> = crate_paths(&code)
            .into_iter()
            .filter(|m| src().join(m).exists() || src().join(format!("{m}.rs")).exists())
            .filter(|m| *m != from)
            .collect();
        graph.entry(from).or_default().extend(modules);
    }
    // Depth-first search; a module met again while still on the path closes a circle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
    // The leaves the kinds share import none of the modules that use them.
    for leaf in [
        "http",
        "k8s",
        "names",
        "credential",
        "kind",
        "error",
        "de",
        "token",
    ] {
        let reaches: Vec<&String> = graph
            .get(leaf)
            .into_iter()
            .flatten()
            .filter(|m| ["agent", "config", "source", "sink", "server"].contains(&m.as_str()))
            .collect();
        assert!(reaches.is_empty(), "leaf `{leaf}` imports {reaches:?}");
    }
    assert_eq!(
        graph.get("server").cloned().unwrap_or_default(),
        BTreeSet::from(["observability".to_owned()]),
        "the server reads the observability view only"
    );
}

#[test]
fn no_file_of_the_agent_is_over_400_lines() {
    let mut pending = vec![src().join("agent")];
    let mut long = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                if lines > 400 {
                    long.push(format!("{}: {lines} lines", path.display()));
                }
            }
        }
    }
    assert!(long.is_empty(), "{long:?}");
}
