//! Guards the crate's layering (docs/ARCHITECTURE.md, "Layers"): it reads
//! the source tree and fails on an import that crosses a layer the wrong way.
//!
//! - The sans-IO core (`protocol/`, `crypto/`, `session/`, `transform/`,
//!   `dedup/`, `link/`, `lane/`, `frames/` and `sources.rs`) names neither
//!   an I/O runtime nor a datapath nor `admin/`: no `tokio`, `smoltcp` or
//!   `lmas_dpdk`, no `crate::kernel`, `crate::dpdk` or `crate::admin`. Then
//!   both datapaths can drive it, its tests need no sockets and no clock,
//!   and configuration depends on the core, not the other way round.
//! - `admin/` (config, status, metrics) is shared by both datapaths, so it
//!   names neither of them.
//!
//! Comments and string literals are skipped, so prose may mention anything.

use std::fs;
use std::path::{Path, PathBuf};

/// Core modules, relative to `src/` (a directory, or one file).
const CORE: [&str; 9] = [
    "protocol",
    "lane",
    "frames",
    "crypto",
    "session",
    "transform",
    "dedup",
    "link",
    "sources.rs",
];
/// Crates the core must not use: the I/O runtime, the userspace stack, the DPDK bindings.
const IO_CRATES: [&str; 3] = ["tokio", "smoltcp", "lmas_dpdk"];
/// The datapaths, as `crate::` paths.
const DATAPATHS: [&str; 2] = ["kernel", "dpdk"];
/// What the core must not name: the datapaths and the configuration layer above it.
const ABOVE_CORE: [&str; 3] = ["kernel", "dpdk", "admin"];

#[test]
fn the_core_and_admin_do_not_import_a_datapath() {
    let found = violations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        found.is_empty(),
        "layering broken (see docs/ARCHITECTURE.md, \"Layers\"):\n{}",
        found.join("\n")
    );
}

#[test]
fn a_planted_violation_in_each_layer_is_reported() {
    let src = std::env::temp_dir().join(format!("lmas-layering-{}", std::process::id()));
    let _ = fs::remove_dir_all(&src);
    let plant = |file: &str, text: &str| {
        let path = src.join(file);
        fs::create_dir_all(path.parent().expect("a parent")).expect("temp dir");
        fs::write(path, text).expect("temp file");
    };
    plant(
        "session/ok.rs",
        "// tokio, smoltcp: prose only\nuse crate::protocol::Message;\n",
    );
    plant("session/bad.rs", "use tokio::sync::Notify;\n");
    plant(
        "link/deep/bad.rs",
        "fn f() { let _ = smoltcp::time::Instant::ZERO; }\n",
    );
    plant(
        "crypto/bad.rs",
        "\n\nuse crate::{protocol, kernel::sockopt};\n",
    );
    plant("link/admission.rs", "extern crate lmas_dpdk;\n");
    plant("sources.rs", "use crate::admin::Stats;\n");
    plant(
        "admin/config.rs",
        "use super::dpdk::DpdkSection; // admin's own dpdk module: fine\n",
    );
    plant("admin/bad.rs", "fn f() { crate::dpdk::run(); }\n");
    let mut found = violations(&src);
    let _ = fs::remove_dir_all(&src);
    found.sort();
    let want = [
        "lmas-layering-X/admin/bad.rs:1: admin/ uses `crate::dpdk`",
        "lmas-layering-X/crypto/bad.rs:3: the core uses `crate::kernel`",
        "lmas-layering-X/link/admission.rs:1: the core uses `lmas_dpdk`",
        "lmas-layering-X/link/deep/bad.rs:1: the core uses `smoltcp`",
        "lmas-layering-X/session/bad.rs:1: the core uses `tokio`",
        "lmas-layering-X/sources.rs:1: the core uses `crate::admin`",
    ]
    .map(|w| w.replace("X", &std::process::id().to_string()));
    assert_eq!(found, want);
}

/// Every import under `src` that crosses a layer the wrong way, as `FILE:LINE: what`.
fn violations(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for module in CORE {
        for file in rust_files(&src.join(module)) {
            let text = read(&file);
            for (line, ident) in idents(&text) {
                if IO_CRATES.contains(&ident.as_str()) {
                    found.push(format!(
                        "{}:{line}: the core uses `{ident}`",
                        rel(src, &file)
                    ));
                }
            }
            found.extend(forbidden_paths(src, &file, &text, "the core", &ABOVE_CORE));
        }
    }
    for file in rust_files(&src.join("admin")) {
        found.extend(forbidden_paths(
            src,
            &file,
            &read(&file),
            "admin/",
            &DATAPATHS,
        ));
    }
    found
}

#[test]
fn the_scanner_skips_prose_and_sees_grouped_imports() {
    let text = r##"
        // tokio in a comment, /* crate::kernel */ in a block comment
        const S: &str = "tokio::spawn"; const R: &str = r#"crate::dpdk"#; let c = '"';
        fn f<'a>(x: &'a str) {}
        use crate::{admin, kernel::sockopt};
        let t = smoltcp::time::Instant::ZERO;
    "##;
    let names: Vec<_> = idents(text).into_iter().map(|(_, i)| i).collect();
    assert!(!names.contains(&"tokio".to_string()), "{names:?}");
    assert!(names.contains(&"smoltcp".to_string()));
    assert_eq!(
        crate_paths(text),
        [(5, "admin".into()), (5, "kernel".into())]
    );
}

/// `crate::X…` paths in `file` for each X in `forbidden`, one line each.
fn forbidden_paths(
    src: &Path,
    file: &Path,
    text: &str,
    who: &str,
    forbidden: &[&str],
) -> Vec<String> {
    crate_paths(text)
        .into_iter()
        .filter(|(_, first)| forbidden.contains(&first.as_str()))
        .map(|(line, first)| format!("{}:{line}: {who} uses `crate::{first}`", rel(src, file)))
        .collect()
}

fn read(file: &Path) -> String {
    fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// `file` from `src`'s parent on (`src/admin/config.rs`).
fn rel(src: &Path, file: &Path) -> String {
    let root = src.parent().unwrap_or(src);
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// Every `.rs` file under `path` (or `path` itself); none if it does not
/// exist (`link/` comes later).
fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = fs::read_dir(path) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries {
        let p = entry
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .path();
        if p.is_dir() {
            files.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    files.sort();
    files
}

/// A token of code: an identifier, `::`, or one punctuation character.
#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Path,
    Punct(char),
}

/// The code's tokens with their line numbers, without comments and literals.
fn tokens(text: &str) -> Vec<(usize, Tok)> {
    let c: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    // Skips to just past `end`, counting the lines it passes; honours
    // backslash escapes if `escapes` (a `\` may end a line in a string).
    let skip_to = |i: &mut usize, line: &mut usize, end: &[char], escapes: bool| {
        let from = *i;
        while *i < c.len() && !c[*i..].starts_with(end) {
            *i += if escapes && c[*i] == '\\' { 2 } else { 1 };
        }
        *i = (*i + end.len()).min(c.len());
        *line += c[from..*i].iter().filter(|&&ch| ch == '\n').count();
    };
    while i < c.len() {
        let rest = &c[i..];
        match c[i] {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if rest.starts_with(&['/', '/']) => skip_to(&mut i, &mut line, &['\n'], false),
            '/' if rest.starts_with(&['/', '*']) => {
                // Block comments nest in Rust.
                let mut depth = 0;
                while i < c.len() {
                    if c[i..].starts_with(&['/', '*']) {
                        depth += 1;
                        i += 2;
                    } else if c[i..].starts_with(&['*', '/']) {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(c[i] == '\n');
                        i += 1;
                    }
                }
            }
            '"' => {
                i += 1;
                skip_to(&mut i, &mut line, &['"'], true);
            }
            // Raw strings: r"…", r#"…"#, br#"…"#.
            'r' | 'b' if raw_string_hashes(rest).is_some() => {
                let (start, hashes) = raw_string_hashes(rest).expect("checked");
                i += start;
                let mut end = vec!['"'];
                end.extend(std::iter::repeat_n('#', hashes));
                skip_to(&mut i, &mut line, &end, false);
            }
            // A char literal ('x', '\n', '"'), else a lifetime ('a).
            '\'' if rest.get(1) == Some(&'\\') => {
                i += 1;
                skip_to(&mut i, &mut line, &['\''], true);
            }
            '\'' if rest.get(2) == Some(&'\'') => i += 3,
            ':' if rest.starts_with(&[':', ':']) => {
                out.push((line, Tok::Path));
                i += 2;
            }
            ch if ch.is_alphabetic() || ch == '_' => {
                let len = rest
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '_')
                    .count();
                out.push((line, Tok::Ident(rest[..len].iter().collect())));
                i += len;
            }
            ch if ch.is_whitespace() => i += 1,
            ch => {
                out.push((line, Tok::Punct(ch)));
                i += 1;
            }
        }
    }
    out
}

/// For `r"`, `r#"`, `br##"`…: how many characters precede the body, and the `#` count.
fn raw_string_hashes(s: &[char]) -> Option<(usize, usize)> {
    let after_b = usize::from(s.first() == Some(&'b'));
    if s.get(after_b) != Some(&'r') {
        return None;
    }
    let hashes = s[after_b + 1..].iter().take_while(|c| **c == '#').count();
    (s.get(after_b + 1 + hashes) == Some(&'"')).then_some((after_b + 2 + hashes, hashes))
}

/// Every identifier in the code, with its line.
fn idents(text: &str) -> Vec<(usize, String)> {
    tokens(text)
        .into_iter()
        .filter_map(|(line, t)| match t {
            Tok::Ident(name) => Some((line, name)),
            _ => None,
        })
        .collect()
}

/// The first segment of every `crate::` path, with its line: `crate::a::b`
/// gives `a`; `crate::{a, b::c}` gives `a` and `b`.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let toks = tokens(text);
    let mut out = Vec::new();
    for (k, (_, t)) in toks.iter().enumerate() {
        if *t != Tok::Ident("crate".into()) || toks.get(k + 1).map(|t| &t.1) != Some(&Tok::Path) {
            continue;
        }
        match toks.get(k + 2) {
            Some((line, Tok::Ident(name))) => out.push((*line, name.clone())),
            Some((_, Tok::Punct('{'))) => {
                // Items of the group: the identifier after `{` or a top-level `,`.
                let (mut depth, mut item_start) = (0, true);
                for (line, t) in &toks[k + 2..] {
                    match t {
                        Tok::Punct('{') => {
                            depth += 1;
                            item_start = depth == 1;
                            continue;
                        }
                        Tok::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Tok::Punct(',') if depth == 1 => {
                            item_start = true;
                            continue;
                        }
                        Tok::Ident(name) if item_start && depth == 1 => {
                            out.push((*line, name.clone()))
                        }
                        _ => {}
                    }
                    item_start = false;
                }
            }
            _ => {}
        }
    }
    out
}
