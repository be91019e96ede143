//! End to end against a real virtio-vsock back-end, rust-vmm vhost-device-vsock 0.3
//! (`../shared/targets/vhost-device-vsock.sh`, hybrid vsock with its host side at
//! `{socket}.vsock`, guest CID 3): the whole suite runs as a user would run it, and the report
//! says connections, data both ways and credit work, with exactly the departures the README
//! writes up (its RST replies are unimplemented). Needs `../shared/targets/install.sh vsock`;
//! without it the test fails, saying so.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod common_real;

use common_real::run_suite;

#[test]
fn vhost_device_vsock_moves_data_and_fails_only_where_the_readme_says() {
    let run = run_suite("vsock", "vhost-device-vsock.sh", "");
    run.assert_ran_at_least(25);
    run.assert_data_path_passed("vsock/", 8);
    // README "vhost-device-vsock": no RST for a refused connection, an unknown socket type, or
    // a packet for no connection (the back-end drops them).
    run.assert_fails_exactly(&[
        ("vsock/connect-refused", "R-VSOCK-01"),
        ("vsock/no-connection", "R-VSOCK-04"),
        ("vsock/unknown-type", "R-VSOCK-04"),
    ]);
    for id in [
        "vsock/host-connect-echo",
        "vsock/host-connect-writes",
        "vsock/small-credit",
        "vsock/echo-large",
        "vsock/shutdown",
        "vsock/config-guest-cid",
    ] {
        assert_eq!(run.outcome(id), "pass", "{id}: {}", run.text);
    }
}
