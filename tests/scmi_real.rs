//! End to end: `vhu-conform --device scmi` against rust-vmm's vhost-device-scmi 0.4 (BASE and
//! SENSOR protocols over a fake sensor; no REPLY_ACK, no CONFIG), the whole suite. BASE commands
//! are answered, one by one, in bursts, through indirect tables and over wrapping rings; the
//! only FAIL is the departure the README writes up.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod real_target;

/// The FAILs the README ("What it finds in real back-ends", vhost-device-scmi) writes up: a
/// command over three descriptors (header, parameters, response) is never used, the daemon
/// takes exactly two (virtio 1.2 2.7.4.1: no assumption on the descriptor arrangement).
const KNOWN_FAILS: &[(&str, &str)] = &[("scmi/split-params", "R-SCMI-06")];

#[test]
fn scmi_data_path_against_vhost_device_scmi() {
    let script = real_target::installed_device("vhost-device-scmi", "scmi");
    let run = real_target::run_spawned(
        "scmi",
        &script,
        "",
        &["-j", "2"],
        "ci/install-devices.sh scmi",
    );
    run.assert_ran_at_least(15);
    let passed = run.passed("scmi/");
    for id in [
        "scmi/base-version",
        "scmi/base-attributes",
        "scmi/unknown-protocol",
        "scmi/burst",
        "scmi/indirect",
        "scmi/event-idx",
        "scmi/discover-list-protocols",
        "scmi/no-p2a-notify-denied",
    ] {
        assert!(passed.contains(&id), "{id} did not pass\n{}", run.text);
    }
    assert!(passed.len() >= 12, "scmi passes: {passed:?}\n{}", run.text);
    run.assert_fails_exactly(KNOWN_FAILS);
}
