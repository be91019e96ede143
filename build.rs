//! Embeds the repository's `scenarios/**/*.toml` in the binary, so an installed `vhu-conform`
//! carries its suite, and turns `spec/rules.toml`'s ids into typed constants (`R_MEM_11`), so a
//! rule cited in code that the checklist lacks does not compile.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

fn main() {
    let root = manifest_dir().join("scenarios");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut code = String::from(
        "/// Scenario files embedded at build time: (path relative to the repository, contents).\npub static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f.strip_prefix(manifest_dir()).unwrap();
        let _ = writeln!(
            code,
            "    ({:?}, include_str!({:?})),",
            rel.display().to_string(),
            f.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded_scenarios.rs");
    std::fs::write(out, code).unwrap();
    rule_ids();
}

/// `spec/rules.toml`'s `id = "R-..."` lines, in order, as `RuleId` constants and a name table.
fn rule_ids() {
    let path = manifest_dir().join("spec/rules.toml");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path).unwrap();
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("id = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .collect();
    let mut code = String::new();
    for (i, id) in ids.iter().enumerate() {
        let _ = writeln!(
            code,
            "/// `{id}`.\npub const {}: RuleId = RuleId({i});",
            id.replace('-', "_")
        );
    }
    let _ = writeln!(
        code,
        "/// Every id, in checklist order.\npub(crate) static NAMES: &[&str] = &{ids:?};"
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("rule_ids.rs");
    std::fs::write(out, code).unwrap();
}

/// The package's directory, read when the script runs (not when it was compiled, so a build
/// script shared between checkouts still reads this one).
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}
