//! The agent's module graph reads top-down (issue 20): no top-level module of
//! `pgmon-agent/src` may reach itself again through `crate::` paths.
//!
//! Edges come from every `crate::m` path in a module's non-test code (`use` lines, grouped
//! `use crate::{a, b::c}`, and inline paths such as `crate::util::now_ms()`), comments and
//! test code left out (`tests.rs`, `*_tests.rs`, `tests/` directories, `#[cfg(test)] mod x;`
//! declarations, and everything from a `#[cfg(test)]` block on). A text scan, not a parser: enough for `crate::` paths, which
//! rustfmt keeps on predictable lines. When a cycle exists the test names it, module by
//! module, with one file and line per edge.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// (from module, to module) → the first place it is seen (file:line).
type Edges = BTreeMap<(String, String), String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src readable").flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if name != "tests" {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
            out.push(p);
        }
    }
}

/// The top-level modules declared in lib.rs.
fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(src.join("lib.rs"))
        .expect("lib.rs")
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or(l.trim().strip_prefix("mod "))
        })
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect()
}

/// Every module named right after `crate::` in `code`, including each name of a grouped
/// `crate::{a, b::c}` (which may span lines).
fn targets(code: &str) -> Vec<String> {
    targets_at(code).into_iter().map(|(n, _)| n).collect()
}

/// [`targets`] with the byte offset of each `crate::`.
fn targets_at(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut rest = code;
    let mut offset = 0;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        let at = offset + i;
        offset = at + "crate::".len();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `pgmon_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: those at brace depth 0 after a `{` or `,`.
            let mut depth = 0;
            let mut at_name = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_name = true,
                    c if depth == 0 && at_name && (c.is_alphanumeric() || c == '_') => name.push(c),
                    c if depth == 0 && at_name && !c.is_whitespace() && !name.is_empty() => {
                        let _ = c;
                        out.push((std::mem::take(&mut name), at));
                        at_name = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                out.push((name, at));
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((name, at));
        }
    }
    out
}

fn edges(src: &Path) -> Edges {
    let mods = modules(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = Edges::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src");
        let from = match rel.components().next().and_then(|c| c.as_os_str().to_str()) {
            Some(first) => first.trim_end_matches(".rs").to_owned(),
            None => continue,
        };
        if !mods.contains(&from) {
            continue; // lib.rs, main.rs
        }
        let text = std::fs::read_to_string(&f).expect("readable");
        // The code without comments and test code, and where each of its lines starts.
        let (mut code, mut starts) = (String::new(), Vec::new());
        let lines: Vec<&str> = text.lines().collect();
        let mut skip_next = false;
        for (n, line) in lines.iter().enumerate() {
            let kept = line.trim_start();
            if std::mem::take(&mut skip_next) {
                continue;
            }
            if kept.starts_with("#[cfg(test)]") {
                // `#[cfg(test)] mod tests;` declares a test file: skip that line only. A
                // test block (`mod tests {`) runs to the end of the file.
                if lines
                    .get(n + 1)
                    .is_some_and(|l| l.trim_end().ends_with(';'))
                {
                    skip_next = true;
                    continue;
                }
                break;
            }
            if kept.starts_with("//") {
                continue;
            }
            starts.push((code.len(), n + 1));
            code.push_str(kept.split(" //").next().unwrap_or(kept));
            code.push('\n');
        }
        for (to, at) in targets_at(&code) {
            if to != from && mods.contains(&to) {
                let line = starts
                    .iter()
                    .take_while(|(start, _)| *start <= at)
                    .last()
                    .map_or(0, |(_, n)| *n);
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| format!("{}:{line}", rel.display()));
            }
        }
    }
    edges
}

/// A cycle through `start`, if any, as its modules in order (breadth-first: the
/// shortest).
fn cycle_through(start: &str, edges: &Edges) -> Option<Vec<String>> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_owned()]);
    while let Some(m) = queue.pop_front() {
        for (_, to) in edges.keys().filter(|(f, _)| *f == m) {
            if to == start {
                let mut path = vec![m.clone()];
                let mut at = m.clone();
                while let Some(p) = prev.get(&at) {
                    path.push(p.clone());
                    at = p.clone();
                }
                path.reverse();
                return Some(path);
            }
            if !prev.contains_key(to) {
                prev.insert(to.clone(), m.clone());
                queue.push_back(to.clone());
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    assert!(
        edges.contains_key(&("pipeline".into(), "query".into())),
        "the scan found no pipeline → query edge: it is broken"
    );
    let mut cycles = Vec::new();
    let mut seen = BTreeSet::new();
    for m in modules(&src) {
        if seen.contains(&m) {
            continue;
        }
        if let Some(path) = cycle_through(&m, &edges) {
            let mut lines = Vec::new();
            for (i, from) in path.iter().enumerate() {
                let to = &path[(i + 1) % path.len()];
                lines.push(format!(
                    "  {from} → {to}  ({})",
                    edges[&(from.clone(), to.clone())]
                ));
                seen.insert(from.clone());
            }
            cycles.push(lines.join("\n"));
        }
    }
    assert!(
        cycles.is_empty(),
        "the module graph has {} cycle(s); each edge with its first use:\n{}",
        cycles.len(),
        cycles.join("\n\n")
    );
}

#[test]
fn grouped_and_inline_paths_are_edges() {
    assert_eq!(
        targets("use crate::{alerts::Book, budget::{a, b}, http};"),
        ["alerts", "budget", "http"]
    );
    assert_eq!(
        targets("let t = crate::util::now_ms(); x(crate::db::connect(c))"),
        ["util", "db"]
    );
    assert!(targets("use pgmon_crate::x;").is_empty());
}

/// The layering block of README.md's "Layout" section (the fenced block after "From the
/// top"): each line names one or more modules (comma-separated) before its description;
/// continuation lines start with spaces. Returns each module with its line's rank, 0 at
/// the top.
fn readme_layers(readme: &str) -> BTreeMap<String, usize> {
    let section = readme
        .split("## Layout")
        .nth(1)
        .expect("README.md has a Layout section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Layout section has a fenced block");
    let mut ranks = BTreeMap::new();
    let mut rank = 0;
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with(' ') || line.starts_with('(') {
            continue; // a description's continuation, or a crate beneath the agent
        }
        // Names end where two spaces start the description.
        let head = line.split("  ").next().unwrap_or(line).trim();
        for n in head.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            ranks.insert(n.to_owned(), rank);
        }
        // A list ending with a comma continues on the next line, on the same rank.
        if !head.ends_with(',') {
            rank += 1;
        }
    }
    ranks
}

/// README.md's layering is the graph's: every module is listed once, and every import
/// goes from a line to one below it.
#[test]
fn the_readme_layout_follows_the_imports() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(dir.join("../README.md")).expect("README.md");
    let ranks = readme_layers(&readme);
    let mods = modules(&dir.join("src"));
    let missing: Vec<&String> = mods.iter().filter(|m| !ranks.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "README's Layout does not list {missing:?}"
    );
    let extra: Vec<&String> = ranks.keys().filter(|m| !mods.contains(*m)).collect();
    assert!(
        extra.is_empty(),
        "README's Layout lists {extra:?}, not modules of lib.rs"
    );
    let wrong: Vec<String> = edges(&dir.join("src"))
        .iter()
        .filter(|((from, to), _)| ranks[from] >= ranks[to])
        .map(|((from, to), at)| format!("  {from} → {to} ({at})"))
        .collect();
    assert!(
        wrong.is_empty(),
        "README's Layout puts these imports upward or sideways:\n{}",
        wrong.join("\n")
    );
}
