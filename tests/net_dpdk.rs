//! End to end: `vhu-conform --device net` against DPDK 22.11 testpmd (net_vhost PMD, io
//! forwarding, loop topology: a frame sent on TX comes back on RX), one fresh process per
//! scenario. The net data path really moves frames both ways, and the only FAILs are the two
//! departures the README writes up.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod real_target;

/// The FAILs the README ("What it finds in real back-ends", DPDK) writes up as real departures.
const KNOWN_FAILS: &[(&str, &str)] = &[
    // Without MRG_RXBUF num_buffers is left unwritten (5.1.6.4.1: MUST set it to 1).
    ("net/loopback", "R-NET-03"),
    // A disabled TX ring is not processed: its frames are never consumed (vhost-user "Ring
    // states": "must process and discard any TX packets").
    ("net/disabled-tx-discards", "R-RING-06"),
];

#[test]
fn net_data_path_against_dpdk_testpmd() {
    let install = "../shared/targets/install.sh net";
    let script = real_target::shared_script("dpdk-testpmd.sh", install);
    let args = ["-j", "2", "net", "negotiation", "session"];
    let run = real_target::run_spawned("net", &script, "", &args, install);
    run.assert_ran_at_least(25);
    let passed = run.passed("net/");
    assert!(passed.len() >= 8, "net passes: {passed:?}\n{}", run.text);
    // Frames went out and came back, split, merged and packed.
    for id in [
        "net/tx-used-len-zero",
        "net/loopback-mrg-rxbuf",
        "net/loopback-in-order",
        "net/loopback-segments",
        "net/packed-loopback",
    ] {
        assert!(passed.contains(&id), "{id} did not pass\n{}", run.text);
    }
    run.assert_must_findings_exactly(KNOWN_FAILS);
    run.assert_passes_checked_their_rules();
}
