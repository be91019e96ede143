//! End to end: `vhu-conform --device rng` against rust-vmm's vhost-device-rng 0.1 (over
//! /dev/urandom, no REPLY_ACK), one fresh process per scenario. Entropy requests of every size
//! are filled, many at once; the only FAILs are the departures the README writes up.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod real_target;

/// The FAILs the README ("What it finds in real back-ends", vhost-device-rng) writes up: a
/// request whose buffer spans several descriptors is never used (virtio 1.2 2.7.4.1: the
/// device MUST NOT assume a descriptor arrangement).
const KNOWN_FAILS: &[(&str, &str)] = &[
    ("rng/segments", "R-RNG-03"),
    ("rng/indirect-segments", "R-RNG-03"),
];

#[test]
fn rng_data_path_against_vhost_device_rng() {
    let install = "../shared/targets/install.sh rng";
    let script = real_target::shared_script("vhost-device-rng.sh", install);
    // The rng scenarios and the device-neutral areas this back-end can be judged on without
    // REPLY_ACK: enough to run 25 and more.
    let args = ["-j", "2", "rng", "negotiation", "robustness", "session"];
    let run = real_target::run_spawned("rng", &script, "", &args, install);
    run.assert_ran_at_least(25);
    let passed = run.passed("rng/");
    assert!(passed.len() >= 8, "rng passes: {passed:?}\n{}", run.text);
    for id in [
        "rng/sizes",
        "rng/looks-random",
        "rng/many-in-flight",
        "rng/indirect",
        "rng/restart-from-base",
    ] {
        assert!(passed.contains(&id), "{id} did not pass\n{}", run.text);
    }
    run.assert_must_findings_exactly(KNOWN_FAILS);
    run.assert_passes_checked_their_rules();
}
