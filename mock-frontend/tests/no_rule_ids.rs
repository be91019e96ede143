//! The mock front-end and the protocol crate say what happened, typed; which checklist rule
//! that breaks is the engine's business (`src/engine/violations.rs`). So no string literal in
//! their sources may carry a rule id (`R-WIRE-16`): the engine must never have to find a rule
//! in a message's text. Comments (doc comments included) may cite rules.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The string literals of Rust source `src` (normal, raw, byte and C strings), each with the
/// line it starts on; comments, char literals and lifetimes are skipped.
fn string_literals(src: &str) -> Vec<(usize, String)> {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = vec![];
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if at(i + 1) == '/' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && at(i + 1) == '/' {
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
            '\'' if at(i + 1) == '\\' => {
                // An escaped char literal: '\'', '\\', '\u{..}'.
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if at(i + 2) == '\'' => i += 3,
            // A lifetime or a label.
            '\'' => i += 1,
            '"' => {
                let start_line = line;
                let mut text = String::new();
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        text.push(c[i]);
                        i += 1;
                    }
                    line += usize::from(at(i) == '\n');
                    text.push(at(i));
                    i += 1;
                }
                out.push((start_line, text));
                i += 1;
            }
            ch if ident(ch) => {
                let start = i;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                if matches!(word.as_str(), "r" | "br" | "cr") && matches!(at(i), '"' | '#') {
                    let mut hashes = 0;
                    while at(i) == '#' {
                        hashes += 1;
                        i += 1;
                    }
                    if at(i) != '"' {
                        continue;
                    }
                    let start_line = line;
                    let mut text = String::new();
                    i += 1;
                    while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                        line += usize::from(c[i] == '\n');
                        text.push(c[i]);
                        i += 1;
                    }
                    out.push((start_line, text));
                    i += 1 + hashes;
                }
                // `b"..."`, `c"..."` and `b'x'` go on with the quote, on the next turn.
            }
            _ => i += 1,
        }
    }
    out
}

/// The first checklist rule id in `s`: `R-`, letters, any `-letters`, then `-digits`.
fn rule_id(s: &str) -> Option<String> {
    let b = s.as_bytes();
    for start in s.match_indices("R-").map(|(i, _)| i) {
        let mut j = start + 2;
        loop {
            let k = j;
            while j < b.len() && b[j].is_ascii_uppercase() {
                j += 1;
            }
            if j == k || j >= b.len() || b[j] != b'-' {
                break;
            }
            j += 1;
            if j < b.len() && b[j].is_ascii_digit() {
                let d = j;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j > d {
                    return Some(s[start..j].to_string());
                }
            }
        }
    }
    None
}

#[test]
fn the_scanner_finds_ids_in_literals_and_ignores_comments() {
    let src = r##"
        // "R-WIRE-16" in a comment
        /// doc: R-ACK-03 and "R-ACK-03"
        /* "R-SHM-05" /* nested "R-SHM-05" */ */
        fn f<'a>(x: &'a str) -> char { let _ = '"'; let _ = '\''; 'x' }
        const A: &str = "plain text, R- but no id, and R-BCH-x";
        const B: &str = "refused (R-BCH-02)";
        const C: &str = r#"raw "quoted" R-CRASH-01"#;
        const D: &[u8] = b"bytes R-VRING-13";
        let e = format!("{} (R-WIRE-03)", "for");
    "##;
    let found: Vec<(usize, String)> = string_literals(src)
        .into_iter()
        .filter_map(|(l, s)| rule_id(&s).map(|id| (l, id)))
        .collect();
    let want = [
        (7, "R-BCH-02"),
        (8, "R-CRASH-01"),
        (9, "R-VRING-13"),
        (10, "R-WIRE-03"),
    ];
    assert_eq!(
        found,
        want.map(|(l, s)| (l, s.to_string())).to_vec(),
        "{:#?}",
        string_literals(src)
    );
    assert_eq!(rule_id("R-GPA-MEM-2"), Some("R-GPA-MEM-2".into()));
    assert_eq!(
        rule_id("ERR-1"),
        None,
        "no letters between R- and the digits"
    );
}

#[test]
fn no_string_literal_in_mock_frontend_or_protocol_names_a_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [root.join("src"), root.join("../protocol/src")];
    let mut offenders = vec![];
    let mut files = 0;
    for dir in &dirs {
        for path in rust_files(dir) {
            files += 1;
            let src = std::fs::read_to_string(&path).unwrap();
            for (line, lit) in string_literals(&src) {
                if let Some(id) = rule_id(&lit) {
                    offenders.push(format!("{}:{line}: {id} in {lit:?}", path.display()));
                }
            }
        }
    }
    assert!(files > 10, "only {files} source files found under {dirs:?}");
    assert!(
        offenders.is_empty(),
        "string literals name rules (say what happened; the engine maps it to a rule):\n{}",
        offenders.join("\n")
    );
}
