//! Layering check: the top-level modules under `src/` form layers, and a module may use
//! (through `crate::` paths) only modules of lower layers, or other layer-1 modules as
//! long as no cycle forms between top-level modules.
//!
//! The check reads every `src/**/*.rs` as text (no extra dependencies): comments, string
//! and char literals are blanked, then every `crate::NAME` (also `$crate::`, grouped
//! `use crate::{a, b::{c, d}}`, and inline paths such as `crate::repo::open(..)`) is
//! an edge from the file's top-level module to `NAME`. `crate::user_error!` and other
//! root-exported macros count as the module that defines them (see [`MACROS`]).
//! `main.rs` and `lib.rs` are not modules of any layer and are skipped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;

/// The layers, top to bottom, and the top-level modules in each. A module may import
/// only modules of a lower layer, or modules of its own layer when that is layer 1 and
/// no cycle forms. A top-level module not listed here is layer 1; names of modules that
/// do not exist (yet) are harmless.
const LAYERS: &[(u8, &[&str])] = &[
    // The command line: argument parsing and dispatch.
    (4, &["cli"]),
    // The long-running daemon: scheduler, HTTP server, metrics, alerts.
    (3, &["daemon"]),
    // The operations (backup, restore, verify, wal-push, ...) cli and daemon run.
    (2, &["ops"]),
    // Domain and infrastructure: any of these may use another, as long as no cycle
    // forms.
    (
        1,
        &[
            "archival",
            "codec",
            "config",
            "crypto",
            "error",
            "host",
            "jobs",
            "lock",
            "logging",
            "manifest",
            "notify",
            "partitions",
            "pg",
            "physical",
            "recovery",
            "repo",
            "retention",
            "schedule",
            "transfer",
            "text",
            "webhook",
        ],
    ),
];

/// Test-only modules (`#[cfg(test)]` in lib.rs): shared fixtures for unit tests all over
/// the crate. They are not part of the shipped layering, so their edges (both ways)
/// are not checked.
const TEST_ONLY: &[&str] = &["test_fixtures"];

/// Macros exported at the crate root (`#[macro_export]`), and the module defining them:
/// `crate::user_error!` is a use of `error`.
const MACROS: &[(&str, &str)] = &[("user_error", "error")];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(_, names)| names.contains(&module))
        .map_or(1, |(l, _)| *l)
}

/// One `crate::` reference: from `from` (the file's top-level module) to `to`.
#[derive(Debug, Clone)]
struct Ref {
    from: String,
    to: String,
    file: String,
    line: usize,
    /// The source line(s) of the reference, whitespace collapsed.
    text: String,
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.text)
    }
}

/// The top-level module a file under `src/` belongs to (`src/pg/proc.rs` → `pg`,
/// `src/config.rs` → `config`); `None` for `main.rs`, `lib.rs` and non-Rust files.
fn module_of(path: &str) -> Option<String> {
    let rel = path.strip_prefix("src/")?;
    if !rel.ends_with(".rs") {
        return None;
    }
    match rel.split_once('/') {
        Some((dir, _)) => Some(dir.to_string()),
        None => {
            let name = rel.strip_suffix(".rs")?;
            (name != "main" && name != "lib").then(|| name.to_string())
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `src` with comments, string literals and char literals blanked to spaces (newlines
/// kept, one char for one char), so only code is searched and positions stay valid.
fn strip(src: &str) -> Vec<char> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::with_capacity(c.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && is_ident(c[i - 1]);
        // Line comments, doc comments included.
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        // Block comments, which nest.
        if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.extend([' ', ' ']);
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.extend([' ', ' ']);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br#".."# (not raw identifiers such as r#type).
        if !prev_ident && (c[i] == 'r' || (c[i] == 'b' && at(i + 1) == 'r')) {
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) == '"' {
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.extend(c[i..j.min(c.len())].iter().map(|&ch| blank(ch)));
                i = j;
                continue;
            }
        }
        // Strings and byte strings.
        if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(c.len());
            out.extend(c[i..end].iter().map(|&ch| blank(ch)));
            i = end;
            continue;
        }
        // Char literals ('x', '\n', '\'', '\u{..}'); a lifetime ('a) stays.
        if c[i] == '\'' {
            let end = if at(i + 1) == '\\' {
                let mut j = i + 3;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                Some(j + 1)
            } else if at(i + 2) == '\'' {
                Some(i + 3)
            } else {
                None
            };
            if let Some(end) = end {
                let end = end.min(c.len());
                out.extend(c[i..end].iter().map(|&ch| blank(ch)));
                i = end;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// The `crate::` references in `src` (the text of file `path`), resolved against the
/// top-level module names `modules`. Names that are no top-level module (`self`, items
/// re-exported by `lib.rs`) are skipped; root macros map to their module.
fn refs_in(path: &str, src: &str, modules: &BTreeSet<String>) -> Vec<Ref> {
    let Some(from) = module_of(path) else {
        return vec![];
    };
    let code = strip(src);
    let lines: Vec<&str> = src.lines().collect();
    let mut line_of = Vec::with_capacity(code.len());
    let mut n = 1;
    for &ch in &code {
        line_of.push(n);
        if ch == '\n' {
            n += 1;
        }
    }
    let at = |i: usize| code.get(i).copied().unwrap_or('\0');
    let skip_ws = |mut i: usize| {
        while at(i).is_whitespace() {
            i += 1;
        }
        i
    };
    let ident_at = |i: usize| -> Option<(String, usize)> {
        let mut j = i;
        while is_ident(at(j)) {
            j += 1;
        }
        (j > i && !at(i).is_ascii_digit()).then(|| (code[i..j].iter().collect(), j))
    };
    let resolve = |name: &str| -> Option<String> {
        if modules.contains(name) {
            return Some(name.to_string());
        }
        MACROS
            .iter()
            .find(|(m, _)| *m == name)
            .map(|(_, home)| home.to_string())
    };

    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= code.len() {
        if code[i..i + 5] != ['c', 'r', 'a', 't', 'e']
            || (i > 0 && is_ident(code[i - 1]))
            || is_ident(at(i + 5))
        {
            i += 1;
            continue;
        }
        let start = i;
        i += 5;
        let j = skip_ws(i);
        if !(at(j) == ':' && at(j + 1) == ':') {
            continue;
        }
        let j = skip_ws(j + 2);
        // The first segment of each path: one name, or each item of a group.
        let mut names: Vec<(String, usize)> = Vec::new();
        if at(j) == '{' {
            let (mut k, mut depth, mut expect_item) = (j + 1, 1, true);
            while k < code.len() && depth > 0 {
                let ch = code[k];
                if depth == 1 && expect_item && is_ident(ch) {
                    if let Some((name, end)) = ident_at(k) {
                        names.push((name, k));
                        expect_item = false;
                        k = end;
                        continue;
                    }
                }
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => expect_item = true,
                    _ => {}
                }
                k += 1;
            }
        } else if let Some((name, _)) = ident_at(j) {
            names.push((name, j));
        }
        for (name, pos) in names {
            let Some(to) = resolve(&name) else { continue };
            if to == from {
                continue;
            }
            let (l0, l1) = (line_of[start], line_of[pos]);
            let text = lines[l0 - 1..l1]
                .iter()
                .flat_map(|l| l.split_whitespace())
                .collect::<Vec<_>>()
                .join(" ");
            let text = if text.chars().count() > 160 {
                text.chars().take(157).collect::<String>() + "..."
            } else {
                text
            };
            out.push(Ref {
                from: from.clone(),
                to,
                file: path.to_string(),
                line: l1,
                text,
            });
        }
    }
    out
}

/// Edges between top-level modules, each with the references that make it.
type Graph = BTreeMap<(String, String), Vec<Ref>>;

fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files.iter().filter_map(|(p, _)| module_of(p)).collect();
    let mut g = Graph::new();
    for (path, src) in files {
        for r in refs_in(path, src, &modules) {
            if TEST_ONLY.contains(&r.from.as_str()) || TEST_ONLY.contains(&r.to.as_str()) {
                continue;
            }
            g.entry((r.from.clone(), r.to.clone())).or_default().push(r);
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in g.keys() {
        adj.entry(a.as_str()).or_default().push(b.as_str());
        adj.entry(b.as_str()).or_default();
    }
    struct T<'a> {
        adj: &'a BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for &w in &t.adj[v] {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        adj: &adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in adj.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out.sort();
    t.out
}

/// A shortest cycle through the first (smallest) module of `scc`, as `[a, b, .., a]`.
fn shortest_cycle(g: &Graph, scc: &[String]) -> Vec<String> {
    let start = &scc[0];
    let inside = |m: &String| scc.contains(m);
    let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for (a, b) in g.keys() {
            if a != v || !inside(b) {
                continue;
            }
            if b == start {
                let mut path = vec![start.clone()];
                let mut at = v;
                while at != start {
                    path.push(at.clone());
                    at = prev[at];
                }
                path.push(start.clone());
                path.reverse();
                return path;
            }
            if !prev.contains_key(b) {
                prev.insert(b, v);
                queue.push_back(b);
            }
        }
    }
    unreachable!("{scc:?} is strongly connected")
}

fn sites(out: &mut String, refs: &[Ref]) {
    for r in refs.iter().take(3) {
        let _ = writeln!(out, "      {r}");
    }
    if refs.len() > 3 {
        let _ = writeln!(out, "      (+{} more)", refs.len() - 3);
    }
}

/// The layering rules over `files` (path under the crate root, source text): `Err`
/// with a report naming every upward import and every cycle, with their files and lines.
fn check(files: &[(String, String)]) -> Result<(), String> {
    let g = graph(files);
    let report = upward_imports(&g) + &cycle_report(&g);
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

/// Every import of a higher layer, with its sites.
fn upward_imports(g: &Graph) -> String {
    let mut report = String::new();
    for ((a, b), refs) in g {
        if layer(b) > layer(a) {
            let _ = writeln!(
                report,
                "upward import: {a} (layer {}) imports {b} (layer {}):",
                layer(a),
                layer(b)
            );
            sites(&mut report, refs);
        }
    }
    report
}

/// Every cycle: its modules, a shortest cycle through them, and every import between
/// them (the ones to cut), with their sites.
fn cycle_report(g: &Graph) -> String {
    let mut report = String::new();
    for scc in cycles(g) {
        let cycle = shortest_cycle(g, &scc);
        let _ = writeln!(
            report,
            "cycle between top-level modules: {} (modules in the cycle: {}); its imports:",
            cycle.join(" -> "),
            scc.join(", ")
        );
        for ((a, b), refs) in g {
            if scc.contains(a) && scc.contains(b) {
                let _ = writeln!(report, "    {a} -> {b}:");
                sites(&mut report, refs);
            }
        }
    }
    report
}

/// Every `src/**/*.rs` of this crate, as (path relative to the crate root, text).
fn real_tree() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(&p)
                    .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                out.push((rel, text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(&root.join("src"), root, &mut out);
    assert!(out.len() > 20, "found only {} files under src/", out.len());
    out
}

#[test]
fn the_tree_is_layered_and_acyclic() {
    let tree = real_tree();
    // The real tree is read at all: its files reference each other, across layers.
    let g = graph(&tree);
    for edge in [
        ("pg", "error"),
        ("cli", "ops"),
        ("daemon", "ops"),
        ("ops", "repo"),
    ] {
        assert!(
            g.contains_key(&(edge.0.into(), edge.1.into())),
            "{edge:?} not seen in {:?}",
            g.keys()
        );
    }
    if let Err(report) = check(&tree) {
        panic!("the top-level modules under src/ break the layering:\n{report}");
    }
}

fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect()
}

fn edges(files: &[(&str, &str)]) -> Vec<String> {
    graph(&tree(files))
        .keys()
        .map(|(a, b)| format!("{a}->{b}"))
        .collect()
}

#[test]
fn downward_and_acyclic_same_layer_imports_pass() {
    let files = tree(&[
        (
            "src/main.rs",
            "use backupctl::cli::Cli;\nfn main() { crate::cli::run(); }\n",
        ),
        ("src/lib.rs", "pub mod cli;\npub mod daemon;\n"),
        (
            "src/cli/mod.rs",
            "use crate::daemon::run;\nuse crate::ops::backup;\n",
        ),
        (
            "src/daemon/mod.rs",
            "use crate::ops::backup;\nuse crate::jobs::Job;\n",
        ),
        (
            "src/ops/backup.rs",
            "use crate::repo::open;\nuse crate::jobs::Job;\n",
        ),
        ("src/jobs.rs", "use crate::repo::Repository;\n"),
        (
            "src/repo/mod.rs",
            "use crate::config::Config;\nuse crate::repo::layout;\n",
        ),
        (
            "src/config.rs",
            "fn f() -> anyhow::Error { crate::user_error!(\"x\") }\n",
        ),
        (
            "src/error.rs",
            "macro_rules! user_error { () => { $crate::error::U } }\n",
        ),
    ]);
    assert_eq!(check(&files), Ok(()));
    assert_eq!(
        edges(&[
            ("src/main.rs", "use crate::cli::Cli;\n"),
            ("src/cli/mod.rs", ""),
            ("src/repo/mod.rs", "use crate::repo::x;\n"),
        ]),
        Vec::<String>::new(),
        "main.rs and self-references make no edge"
    );
}

#[test]
fn an_upward_import_is_named_with_its_file_and_line() {
    let files = tree(&[
        ("src/cli/mod.rs", ""),
        ("src/daemon/mod.rs", "use crate::ops::run;\n"),
        ("src/ops/mod.rs", ""),
        (
            "src/repo/mod.rs",
            "//! Repositories.\n\nuse crate::config::Config;\nuse crate::daemon::state::State;\n",
        ),
        ("src/config.rs", ""),
        (
            "src/ops/verify.rs",
            "fn f() {\n    let c = crate::cli::Cli::parse();\n}\n",
        ),
    ]);
    let report = check(&files).unwrap_err();
    assert!(
        report.contains("upward import: repo (layer 1) imports daemon (layer 3):"),
        "{report}"
    );
    assert!(
        report.contains("src/repo/mod.rs:4: use crate::daemon::state::State;"),
        "{report}"
    );
    assert!(
        report.contains("upward import: ops (layer 2) imports cli (layer 4):"),
        "{report}"
    );
    assert!(
        report.contains("src/ops/verify.rs:2: let c = crate::cli::Cli::parse();"),
        "{report}"
    );
    assert!(!report.contains("cycle"), "{report}");
    assert!(!report.contains("config"), "{report}");
    // A module not in the table (here `verify`) is layer 1.
    let report = check(&tree(&[
        ("src/verify/mod.rs", "use crate::ops::restore;\n"),
        ("src/ops/mod.rs", ""),
    ]))
    .unwrap_err();
    assert!(
        report.contains("verify (layer 1) imports ops (layer 2)"),
        "{report}"
    );
}

#[test]
fn a_two_module_cycle_is_reported() {
    let files = tree(&[
        ("src/repo/mod.rs", "use crate::pg::conn;\n"),
        ("src/pg/mod.rs", "pub mod x;\n"),
        ("src/pg/x.rs", "\n\nfn f() { crate::repo::open(); }\n"),
    ]);
    let report = check(&files).unwrap_err();
    assert!(
        report.contains(
            "cycle between top-level modules: pg -> repo -> pg (modules in the cycle: pg, repo)"
        ),
        "{report}"
    );
    assert!(
        report.contains("    pg -> repo:\n      src/pg/x.rs:3: fn f() { crate::repo::open(); }"),
        "{report}"
    );
    assert!(
        report.contains("    repo -> pg:\n      src/repo/mod.rs:1: use crate::pg::conn;"),
        "{report}"
    );
    assert!(!report.contains("upward"), "{report}");
}

#[test]
fn a_three_module_cycle_is_reported() {
    // Today's repo -> pg -> manifest -> repo, with an edge off the cycle.
    let files = tree(&[
        (
            "src/repo/mod.rs",
            "use crate::pg::retry;\nuse crate::config::Config;\n",
        ),
        (
            "src/pg/advisory.rs",
            "fn f() { let h = crate::manifest::local_hostname(); }\n",
        ),
        (
            "src/manifest.rs",
            "use crate::repo::{layout, Repository};\n",
        ),
        ("src/config.rs", ""),
    ]);
    let report = check(&files).unwrap_err();
    assert!(
        report.contains(
            "cycle between top-level modules: manifest -> repo -> pg -> manifest \
             (modules in the cycle: manifest, pg, repo)"
        ),
        "{report}"
    );
    assert!(
        report.contains(
            "src/pg/advisory.rs:1: fn f() { let h = crate::manifest::local_hostname(); }"
        ),
        "{report}"
    );
    assert!(!report.contains("config"), "{report}");
    // Moving local_hostname to its own module breaks it.
    let files = tree(&[
        ("src/repo/mod.rs", "use crate::pg::retry;\n"),
        (
            "src/pg/advisory.rs",
            "fn f() { let h = crate::host::local_hostname(); }\n",
        ),
        (
            "src/manifest.rs",
            "use crate::{host, repo::{layout, Repository}};\n",
        ),
        ("src/host.rs", ""),
    ]);
    assert_eq!(check(&files), Ok(()));
}

#[test]
fn grouped_and_nested_use_forms_are_read() {
    let src = "use crate::{\n    config::{self, Config},\n    repo::{self, layout::{self, backup_object_key}},\n    pg::conn::ConnParams, self as root,\n};\n\
               pub(crate) use crate :: lock;\n\
               use crate::{user_error};\n\
               fn f() -> u8 { let _ = crate::user_error!(\"x\"); crate::codec::LEVEL }\n";
    let files = tree(&[
        ("src/ops/backup.rs", src),
        ("src/config.rs", ""),
        ("src/repo/mod.rs", ""),
        ("src/pg/mod.rs", ""),
        ("src/lock.rs", ""),
        ("src/codec/mod.rs", ""),
        ("src/error.rs", ""),
        // A top-level module named like a nested segment: not referenced.
        ("src/layout.rs", ""),
    ]);
    let g = graph(&files);
    let to: Vec<&str> = g.keys().map(|(_, b)| b.as_str()).collect();
    assert_eq!(to, ["codec", "config", "error", "lock", "pg", "repo"]);
    let lines = |m: &str| -> Vec<usize> {
        g[&("ops".to_string(), m.to_string())]
            .iter()
            .map(|r| r.line)
            .collect()
    };
    assert_eq!(lines("config"), [2]);
    assert_eq!(lines("repo"), [3]);
    assert_eq!(lines("pg"), [4]);
    assert_eq!(lines("lock"), [6]);
    assert_eq!(lines("error"), [7, 8]);
    assert_eq!(
        g[&("ops".to_string(), "repo".to_string())][0].text,
        "use crate::{ config::{self, Config}, repo::{self, layout::{self, backup_object_key}},"
    );
}

#[test]
fn comments_strings_and_chars_are_not_code() {
    let src = r####"//! Uses [`crate::cli`] in its docs only.
/// See crate::daemon::run.
/* a block /* nested crate::daemon */ still comment crate::cli::x */
fn f<'a>(x: &'a str) -> &'a str {
    let _ = "crate::daemon::x \" crate::cli";
    let _ = r#"crate::daemon "quoted" crate::cli"#;
    let _ = br##"crate::ops"# crate::ops"##;
    let _ = b"crate::ops";
    let _ = ('"', '\'', '\u{1F600}', b'"');
    let _ = r#type;
    mycrate::daemon::x(); // a crate named differently
    crate::config::load()
}
"####;
    let files = tree(&[
        ("src/repo/mod.rs", src),
        ("src/cli/mod.rs", ""),
        ("src/daemon/mod.rs", ""),
        ("src/ops/mod.rs", ""),
        ("src/config.rs", ""),
    ]);
    let g = graph(&files);
    let found: Vec<String> = g.values().flatten().map(|r| r.to_string()).collect();
    assert_eq!(
        found,
        ["src/repo/mod.rs:12: crate::config::load()"],
        "{g:#?}"
    );
    assert_eq!(check(&files), Ok(()));
}

#[test]
fn files_map_to_top_level_modules() {
    assert_eq!(module_of("src/pg/proc.rs").as_deref(), Some("pg"));
    assert_eq!(module_of("src/cli/restore/args.rs").as_deref(), Some("cli"));
    assert_eq!(module_of("src/config.rs").as_deref(), Some("config"));
    assert_eq!(module_of("src/main.rs"), None);
    assert_eq!(module_of("src/lib.rs"), None);
    assert_eq!(module_of("tests/layering.rs"), None);
    assert_eq!(layer("cli"), 4);
    assert_eq!(layer("daemon"), 3);
    assert_eq!(layer("ops"), 2);
    assert_eq!(layer("jobs"), 1);
    assert_eq!(layer("anything_new"), 1);
}

/// Only the top layers talk to the terminal and end the process: below `cli/` and
/// `daemon/`, code reports through return values, `tracing` or a callback the caller
/// gives (restore's progress lines), never `println!`, `eprintln!` or
/// `std::process::exit` (unit tests, after `#[cfg(test)]` or in `*_tests.rs`, may).
#[test]
fn below_cli_and_daemon_nothing_prints_or_exits() {
    let mut found = String::new();
    for (path, text) in real_tree() {
        let module = module_of(&path).unwrap_or_default();
        if module.is_empty() || layer(&module) >= 3 || path.ends_with("_tests.rs") {
            continue;
        }
        let code: String = strip(&text).into_iter().collect();
        let code = code.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            for bad in [
                "println!",
                "print!",
                "eprintln!",
                "eprint!",
                "process::exit(",
            ] {
                let hit = line
                    .match_indices(bad)
                    .any(|(i, _)| !line[..i].ends_with(|c: char| is_ident(c)));
                if hit {
                    let _ = writeln!(found, "{path}:{}: {}", n + 1, line.trim());
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "printing or exiting below cli/ and daemon/:\n{found}"
    );
}
