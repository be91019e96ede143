//! Whole-run wall times (issue 15): the suite against the bundled reference back-end with
//! `-j 1`, `-j 2`, `-j 4`, `-j 8` and the default (four per CPU for the bundled back-end), and the fuzzer for a fixed number of cases with `-j 1` and `-j 2`,
//! with its persistent back-end processes and with `--fresh-process`, each the best of two
//! runs of the built `vhu-conform`; prints the figures and the ratios. Run with
//! `cargo bench --bench suite` (`cargo bench --bench suite -- fuzz`: the fuzzer alone);
//! benches/RESULTS.md records them with the machine.

use std::process::Command;
use std::time::{Duration, Instant};

/// Fuzz cases per run: enough for a stable rate, few enough to stay short.
const FUZZ_CASES: u32 = 1000;
/// Fuzz cases per run with a new process per case (about 60 a second on one worker).
const FRESH_CASES: u32 = 300;

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
    if !std::env::args().any(|a| a == "fuzz") {
        suite(cpus);
    }
    fuzz(cpus);
}

fn suite(cpus: usize) {
    println!("suite against the bundled reference back-end ({cpus} CPUs):");
    let mut serial = None;
    for jobs in ["1", "2", "4", "8", "default"] {
        let args: &[&str] = if jobs == "default" {
            &[]
        } else {
            &["-j", jobs]
        };
        let t = best_of_two(args);
        let ratio = serial.map_or(String::new(), |s: Duration| {
            format!(", {:.2}x the -j 1 time", t.as_secs_f64() / s.as_secs_f64())
        });
        println!("  -j {jobs}: {:.2} s wall{ratio}", t.as_secs_f64());
        serial.get_or_insert(t);
    }
}

/// Cases per second of `fuzz` over `cases` cases of seed 1 with `jobs` workers.
fn fuzz_rate(cases: u32, jobs: &str, fresh: bool) -> f64 {
    let cases_arg = cases.to_string();
    let mut args = vec![
        "fuzz", "--cases", &cases_arg, "--seed", "1", "--out", "fuzz-out", "-j", jobs,
    ];
    if fresh {
        args.push("--fresh-process");
    }
    f64::from(cases) / best_of_two(&args).as_secs_f64()
}

fn fuzz(cpus: usize) {
    println!("fuzz against the bundled reference back-end, seed 1 ({cpus} CPUs):");
    for jobs in ["1", "2"] {
        let kept = fuzz_rate(FUZZ_CASES, jobs, false);
        let fresh = fuzz_rate(FRESH_CASES, jobs, true);
        println!(
            "  -j {jobs}: {kept:.0} cases/s ({FUZZ_CASES} cases, a process kept per worker); \
             {fresh:.0} cases/s ({FRESH_CASES} cases, --fresh-process); persistent / fresh {:.1}x",
            kept / fresh
        );
    }
}
