//! Fuzz cases per second against the reference back-end (issue 6): each iteration runs one case
//! from the fuzzer's own strategies (`vhu_conform::fuzz::strategy::case`) through its whole
//! oracle (`fuzz::runner::Target::run`: the malformed input, the liveness probe, a fresh session
//! with a blk write and read-back, canaries, fd and mapping accounting), as one worker of
//! `vhu-conform fuzz -j 1` does: the bundled back-end kept from case to case, a standby process
//! for the cases that need a new one. Cases 0..256 of a fixed seed are drawn up front
//! (`fuzz::runner::draw`), so every run measures the same inputs.

// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proptest::strategy::ValueTree;
use vhu_conform::fuzz::exec::Limits;
use vhu_conform::fuzz::runner::{Target, draw};
use vhu_conform::fuzz::strategy::{Selection, case};
use vhu_conform::target::TargetSpec;

/// Cases drawn for the bench (criterion cycles through them).
const CASES: usize = 256;

fn fuzz_cases(c: &mut Criterion) {
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let spec = TargetSpec::Spawn(format!("'{exe}' mock-backend --socket-path {{socket}}"));
    let limits = Limits {
        timeout: Duration::from_secs(2),
        settle: Duration::from_millis(200),
    };
    let mut target = Target::new(spec, Duration::from_secs(10)).with_standby();
    target
        .warm_up(limits)
        .expect("the bundled back-end serves a clean session");
    let strategy = case(&Selection::all());
    let cases: Vec<_> = (0..CASES as u64)
        .map(|i| draw(&strategy, 7, i).expect("a case").current())
        .collect();
    let mut g = c.benchmark_group("fuzz");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    let mut next = 0;
    g.bench_function("case_with_oracle_reference_backend", |b| {
        b.iter(|| {
            let r = target.run(&cases[next % CASES], limits, 0x5a);
            next += 1;
            assert!(
                matches!(r, Ok(None)),
                "the reference back-end failed a fuzz case: {r:?}"
            );
        });
    });
    g.finish();
}

criterion_group!(benches, fuzz_cases);
criterion_main!(benches);
