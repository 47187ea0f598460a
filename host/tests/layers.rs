//! The layer table of `docs/ARCHITECTURE.md` is true: every `crate::`
//! path in a module of `host/src` (in `use` lines and inline alike, test
//! modules and comments aside) names a module of a lower layer. Two
//! modules of one layer may not import each other, so there is no cycle
//! between the modules of `host/src`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Module name → layer, from the table under "## Layers".
fn layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("../docs/ARCHITECTURE.md")).unwrap();
    let section = doc
        .split("\n## Layers")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a \"## Layers\" section");
    let mut out = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<usize>() else {
            continue; // the header and its rule
        };
        for m in cells[2].split(',') {
            let m = m.trim().trim_matches('`');
            assert!(
                out.insert(m.to_owned(), layer).is_none(),
                "{m} is listed twice"
            );
        }
    }
    assert!(!out.is_empty(), "the layer table has no rows");
    out
}

/// The source files of each top-level module of `host/src`.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = root().join("src");
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            let first = rel.components().next().unwrap().as_os_str();
            let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            out.entry(module).or_default().push(p);
        }
    }
    out
}

/// Production code of a file: comments and the trailing test module
/// removed.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names with `crate::`, including
/// those in `crate::{a, b::c}` groups; a crate-level macro counts as the
/// module that defines it.
fn imports(code: &str, macros: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group, nested groups skipped.
            let (mut depth, mut name, mut at_start) = (0, String::new(), true);
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                        name.push(c)
                    }
                    _ if !name.is_empty() => {
                        out.push(std::mem::take(&mut name));
                        at_start = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                out.push(name);
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        out.push(macros.get(&name).cloned().unwrap_or(name));
    }
    out
}

#[test]
fn imports_point_down_the_layer_table() {
    let layers = layers();
    let modules = modules();
    let mut macros = BTreeMap::new();
    for (m, files) in &modules {
        for f in files {
            let text = std::fs::read_to_string(f).unwrap();
            for l in text.lines() {
                if let Some(rest) = l.trim().strip_prefix("macro_rules! ") {
                    macros.insert(rest.trim_end_matches(" {").to_owned(), m.clone());
                }
            }
        }
    }
    for m in modules.keys() {
        assert!(
            layers.contains_key(m),
            "host/src/{m} is not in the layer table of docs/ARCHITECTURE.md"
        );
    }
    for m in layers.keys() {
        assert!(
            modules.contains_key(m),
            "the layer table lists {m}, which host/src does not have"
        );
    }
    let mut wrong = Vec::new();
    for (m, files) in &modules {
        for f in files {
            let text = std::fs::read_to_string(f).unwrap();
            for target in imports(&code(&text), &macros) {
                if &target == m {
                    continue;
                }
                let Some(&to) = layers.get(&target) else {
                    wrong.push(format!("{}: crate::{target} is not a module", f.display()));
                    continue;
                };
                if to >= layers[m] {
                    wrong.push(format!(
                        "{}: {m} (layer {}) imports {target} (layer {to})",
                        f.strip_prefix(root()).unwrap().display(),
                        layers[m]
                    ));
                }
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports up the layers:\n{}",
        wrong.join("\n")
    );
}

/// The checker itself finds what it must: an import up, a grouped one, a
/// macro, and nothing in comments or test modules.
#[test]
fn the_checker_reads_groups_macros_and_skips_comments() {
    let macros = BTreeMap::from([("warn_limited".to_owned(), "logging".to_owned())]);
    let src = "use crate::{config::Config, upstream::{Pool, Backend}};\n\
               // crate::server in a comment\n\
               fn f() { crate::warn_limited!(x); let _ = crate::admin::metrics::none(); }\n\
               #[cfg(test)]\nmod tests { use crate::server; }\n";
    assert_eq!(
        imports(&code(src), &macros),
        ["config", "upstream", "logging", "admin"]
    );
}
