//! The layering of the parts holds: every module of the library imports only from the parts
//! that ARCHITECTURE.md allows it (the table under "Layers"), the allowed table itself only
//! points down, and inside each part the files do not import each other in a cycle.
//!
//! It reads the source, not the compiled crate: each `crate::<part>` path in code (comments
//! and the `#[cfg(test)] mod tests` block at the end of a file are skipped: a unit test may
//! drive any part) is an import of `<part>`; inside a part, `super::<file>` and
//! `crate::<part>::<file>` are edges between its files. The command line (`src/cli`, the
//! binary) is not checked here: it is a separate crate that can only reach the library's
//! public API, which the compiler enforces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One row of the table: a part, its layer, the parts it may import.
#[derive(Debug)]
struct Row {
    layer: u32,
    may_import: BTreeSet<String>,
}

/// Reads the table under the "## Layers" heading of ARCHITECTURE.md:
/// `| `part` | layer | `a`, `b` |` (a dash for none).
fn allowed_table() -> BTreeMap<String, Row> {
    let path = Path::new(ROOT).join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let section = text.split("\n## Layers").nth(1).expect("ARCHITECTURE.md has a '## Layers' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut table = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 3, "a row of the layers table has part, layer, may import: {line}");
        let part = cells[0].trim_matches('`').to_string();
        let layer = cells[1].parse().unwrap_or_else(|_| panic!("layer of {part} is not a number: {line}"));
        let may_import = cells[2]
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty() && s != "-")
            .collect();
        table.insert(part, Row { layer, may_import });
    }
    assert!(!table.is_empty(), "the '## Layers' table of ARCHITECTURE.md has no rows");
    table
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string literals and its trailing unit-test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if bytes[i] == b'"' && (i == 0 || bytes[i - 1] != b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path the code names through `prefix` (`crate::`, `super::`), as its components:
/// `crate::log::Reader` gives `["log", "Reader"]`; `crate::{bus::Bus, log}` gives
/// `["bus", "Bus"]` and `["log"]`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let boundary = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let tail = &rest[at + prefix.len()..];
        if boundary {
            collect_paths(tail, Vec::new(), &mut out);
        }
        rest = tail;
    }
    out
}

fn ident(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Parses a path tail (`log::Reader`, `{a::b, c}`) after a `::`, appending full paths.
fn collect_paths(tail: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let tail = tail.trim_start();
    if let Some(inner) = tail.strip_prefix('{') {
        // Split the group at its top-level commas.
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    collect_paths(&inner[start..i], prefix.clone(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    collect_paths(&inner[start..i], prefix.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let (name, rest) = ident(tail);
    if name.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix);
        }
        return;
    }
    let mut path = prefix;
    path.push(name.to_string());
    match rest.strip_prefix("::") {
        Some(more) => collect_paths(more, path, out),
        None => out.push(path),
    }
}

/// The library's files by part: `src/log/reader.rs` is part `log`, module path
/// `["log", "reader"]`.
fn library_modules() -> Vec<(String, Vec<String>, PathBuf)> {
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src");
        let mut module: Vec<String> =
            rel.iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        let Some(part) = module.first().cloned() else { continue };
        if part == "lib" || part == "main" || part == "cli" {
            continue;
        }
        out.push((part, module, path));
    }
    out
}

#[test]
fn the_allowed_table_points_down_and_covers_every_part() {
    let table = allowed_table();
    for (part, row) in &table {
        for dep in &row.may_import {
            let below = table.get(dep).unwrap_or_else(|| panic!("{part} may import {dep}, which has no row"));
            assert!(
                below.layer < row.layer,
                "{part} (layer {}) may import {dep} (layer {}): not below it",
                row.layer,
                below.layer
            );
        }
    }
    let src = Path::new(ROOT).join("src");
    for entry in std::fs::read_dir(&src).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            let part = path.file_name().expect("name").to_string_lossy().to_string();
            assert!(table.contains_key(&part), "src/{part} has no row in the layers table of ARCHITECTURE.md");
        }
    }
}

#[test]
fn every_module_imports_only_from_the_parts_below_it() {
    let table = allowed_table();
    let mut violations = Vec::new();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (part, _, path) in library_modules() {
        let row =
            table.get(&part).unwrap_or_else(|| panic!("{} belongs to part {part}, which has no row", path.display()));
        let code = code_of(&std::fs::read_to_string(&path).expect("read"));
        for used in paths_after(&code, "crate::") {
            let target = &used[0];
            if *target == part || !table.contains_key(target) {
                continue; // its own part, or an item of the crate root
            }
            seen.entry(part.clone()).or_default().insert(target.clone());
            if !row.may_import.contains(target) {
                violations.push(format!("{} imports crate::{}", path.display(), used.join("::")));
            }
        }
    }
    for (part, deps) in &seen {
        eprintln!("{part} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(violations.is_empty(), "imports against ARCHITECTURE.md's layers:\n{}", violations.join("\n"));
}

#[test]
fn the_files_of_each_part_import_each_other_without_a_cycle() {
    // Edges between the children of each part (`log::appender` -> `log::recovery`); items
    // of the part's own mod.rs are not a child.
    let modules = library_modules();
    let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (part, module, _) in &modules {
        if let Some(child) = module.get(1) {
            children.entry(part.clone()).or_default().insert(child.clone());
        }
    }
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (part, module, path) in &modules {
        let Some(child) = module.get(1) else { continue };
        let code = code_of(&std::fs::read_to_string(path).expect("read"));
        let mut targets = Vec::new();
        for used in paths_after(&code, "crate::") {
            if used[0] == *part && used.len() > 1 {
                targets.push(used[1].clone());
            }
        }
        for used in paths_after(&code, "super::") {
            // `super` of part/child.rs is the part; of part/child/x.rs it is the child.
            let mut base: Vec<String> = module[..module.len() - 1].to_vec();
            let mut rest: &[String] = &used;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            let mut full = base;
            full.extend(rest.iter().cloned());
            if full.len() > 1 && full[0] == *part {
                targets.push(full[1].clone());
            }
        }
        for target in targets {
            if target != *child && children.get(part).is_some_and(|c| c.contains(&target)) {
                edges.entry((part.clone(), child.clone())).or_default().insert(target);
            }
        }
    }
    let mut cycles = Vec::new();
    for (part, kids) in &children {
        // Depth-first search for a back edge among the part's children.
        let next = |k: &String| edges.get(&(part.clone(), k.clone())).cloned().unwrap_or_default();
        let mut state: BTreeMap<String, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
        fn visit(
            k: &String,
            next: &dyn Fn(&String) -> BTreeSet<String>,
            state: &mut BTreeMap<String, u8>,
            stack: &mut Vec<String>,
            cycles: &mut Vec<String>,
        ) {
            state.insert(k.clone(), 1);
            stack.push(k.clone());
            for n in next(k) {
                match state.get(&n) {
                    Some(1) => {
                        let from = stack.iter().position(|s| *s == n).unwrap_or(0);
                        cycles.push(format!("{} -> {n}", stack[from..].join(" -> ")));
                    }
                    Some(_) => {}
                    None => visit(&n, next, state, stack, cycles),
                }
            }
            stack.pop();
            state.insert(k.clone(), 2);
        }
        for k in kids {
            if !state.contains_key(k) {
                let mut stack = Vec::new();
                let mut found = Vec::new();
                visit(k, &next, &mut state, &mut stack, &mut found);
                cycles.extend(found.into_iter().map(|c| format!("{part}: {c}")));
            }
        }
        for k in kids {
            let out = next(k);
            if !out.is_empty() {
                eprintln!("{part}::{k} -> {}", out.into_iter().collect::<Vec<_>>().join(", "));
            }
        }
    }
    assert!(cycles.is_empty(), "files of a part that import each other in a cycle:\n{}", cycles.join("\n"));
}

#[test]
fn the_path_parser_reads_groups_and_skips_comments() {
    let code = code_of("use crate::{bus::Bus, log::{self, Reader}};\n// crate::group::x\nlet s = \"crate::metrics\"; crate::sys::futex::wait(w);\n#[cfg(test)]\nmod tests {\n use crate::pipeline;\n}\n");
    let got: Vec<String> = paths_after(&code, "crate::").into_iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["bus::Bus", "log::self", "log::Reader", "sys::futex::wait"]);
}
