//! Whole-run wall times (issue 15): the suite against the bundled reference back-end with
//! `-j 1`, `-j 2` and `-j 4`, and the fuzzer for a fixed number of cases, each the best of two
//! runs of the built `vhu-conform`; prints the figures and the ratios. Run with
//! `cargo bench --bench suite` (benches/RESULTS.md records them with the machine).

use std::process::Command;
use std::time::{Duration, Instant};

/// Fuzz cases per run: enough for a stable rate, few enough to stay short.
const FUZZ_CASES: u32 = 1000;

fn best_of_two(args: &[&str]) -> Duration {
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let dir = tempfile::tempdir().expect("a temporary directory");
    (0..2)
        .map(|_| {
            let start = Instant::now();
            let out = Command::new(exe)
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("vhu-conform runs");
            let took = start.elapsed();
            assert!(
                out.status.success(),
                "vhu-conform {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            took
        })
        .min()
        .expect("two runs")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only on bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("suite against the bundled reference back-end ({cpus} CPUs):");
    let mut serial = None;
    for jobs in ["1", "2", "4"] {
        let t = best_of_two(&["-j", jobs]);
        let ratio = serial.map_or(String::new(), |s: Duration| {
            format!(", {:.2}x the -j 1 time", t.as_secs_f64() / s.as_secs_f64())
        });
        println!("  -j {jobs}: {:.2} s wall{ratio}", t.as_secs_f64());
        serial.get_or_insert(t);
    }
    let cases = FUZZ_CASES.to_string();
    let t = best_of_two(&[
        "fuzz", "--cases", &cases, "--seed", "1", "--out", "fuzz-out",
    ]);
    println!(
        "fuzz: {FUZZ_CASES} cases in {:.2} s, {:.0} cases/s",
        t.as_secs_f64(),
        f64::from(FUZZ_CASES) / t.as_secs_f64()
    );
}
