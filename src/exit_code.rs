//! Exit codes of `vhu-conform`, documented in the README.

/// Every applicable scenario passed (warnings allowed unless `--strict`).
pub const ALL_PASSED: u8 = 0;
/// At least one scenario failed: the back-end departs from the spec.
pub const FAILURES: u8 = 1;
/// The command line or a scenario file is wrong.
pub const USAGE: u8 = 2;
/// The back-end could not be reached or started: it was never judged.
pub const SETUP: u8 = 3;
/// No scenario was selected, or none could run (all skipped).
pub const NOTHING_RAN: u8 = 4;
/// The harness could not judge some scenario (a harness error, not the back-end's fault).
pub const HARNESS_ERROR: u8 = 5;
