//! Fault names: parsing `--fault`, naming a fault, the `--list-faults` lines.

use super::{ALL, Fault, VARIATIONS};

/// The name of a fault (or variation).
pub fn name(f: Fault) -> &'static str {
    names().find(|n| n.0 == f).map_or("?", |n| n.1)
}

/// Parses a fault name.
///
/// # Errors
/// An unknown name, with the list of known ones.
pub fn parse(name: &str) -> Result<Fault, String> {
    names().find(|f| f.1 == name).map(|f| f.0).ok_or_else(|| {
        let known: Vec<&str> = names().map(|f| f.1).collect();
        format!("unknown fault {name:?}; known: {}", known.join(", "))
    })
}

/// Every name `--fault` takes, once each (a fault of both lists is listed with its rule).
fn names() -> impl Iterator<Item = (Fault, &'static str)> {
    let variations = VARIATIONS
        .iter()
        .filter(|v| !ALL.iter().any(|f| f.0 == v.0))
        .map(|v| (v.0, v.1));
    ALL.iter().map(|f| (f.0, f.1)).chain(variations)
}

/// The `--list-faults` lines: name, the rule broken (or `legal`), what it does; the faults
/// first, then the legal variations.
pub fn listing() -> Vec<String> {
    let faults = ALL
        .iter()
        .map(|(_, name, rule, what)| format!("{name:<26} {rule:<11} {what}"));
    let legal = VARIATIONS
        .iter()
        .map(|(_, name, what)| format!("{name:<26} {:<11} {what}", "legal"));
    faults.chain(legal).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_has_a_unique_kebab_case_name_and_a_rule_id() {
        let mut names: Vec<&str> = ALL.iter().map(|f| f.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.len() >= 20);
        for (fault, name, rule, what) in ALL {
            assert_eq!(parse(name), Ok(*fault));
            assert!(
                // Kebab case: lowercase words, digits allowed (as in `max-ring-64`).
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !name.starts_with('-')
                    && !name.ends_with('-')
                    && !name.contains("--"),
                "{name}"
            );
            assert!(rule.starts_with("R-") && !what.is_empty(), "{name}");
        }
        assert!(parse("no-such-fault").is_err());
    }

    #[test]
    fn variations_are_named_parsed_and_listed_as_legal() {
        let mut names: Vec<&str> = VARIATIONS.iter().map(|v| v.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARIATIONS.len());
        let listing = listing();
        assert_eq!(listing.len(), ALL.len() + VARIATIONS.len());
        for (fault, name, what) in VARIATIONS {
            assert_eq!(parse(name), Ok(*fault));
            assert!(!what.is_empty(), "{name}");
            // A variation in both lists is one variant under one name.
            if let Some(f) = ALL.iter().find(|f| f.0 == *fault) {
                assert_eq!(f.1, *name);
            }
            assert!(
                listing
                    .iter()
                    .any(|l| l.split_whitespace().take(2).eq([*name, "legal"])),
                "{name} not listed as legal"
            );
        }
        assert!(ALL.iter().any(|f| f.0 == Fault::ExitOnDisconnect));
        assert!(VARIATIONS.iter().any(|f| f.0 == Fault::ExitOnDisconnect));
        assert!(
            ALL.iter()
                .all(|f| !VARIATIONS.iter().any(|v| v.0 == f.0) || f.0 == Fault::ExitOnDisconnect),
            "only exit-on-disconnect is both a broken (robustness) rule and legal"
        );
    }
}
