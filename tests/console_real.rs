//! End to end: `vhu-conform --device console` against rust-vmm's vhost-device-console 0.1.0
//! (ci/install-devices.sh console) with its `network` back-end, one fresh process per
//! scenario, one at a time (each binds the same TCP port). The harness reads port 0's host side
//! with --console-tcp, so what the guest writes is checked where it arrives. The only FAILs are
//! the departures the README writes up.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod real_target;

/// The FAILs the README ("What it finds in real back-ends", vhost-device-console) writes up:
/// driver-readable chains (control messages, port data) are used with the bytes read as used
/// length (virtio 1.2 2.7.8.2: the used length counts bytes written into device-writable
/// buffers; these chains have none).
///
/// Port data that is not UTF-8 is never consumed: the transmitq handler converts the bytes
/// with `String::from_utf8(..).unwrap()` and its thread panics (virtio 1.2 5.3.6: a port
/// carries characters, no encoding implied).
const KNOWN_FAILS: &[(&str, &str)] = &[
    ("console/binary-data", "R-CONSOLE-03"),
    ("console/device-ready", "R-DEV-02"),
    ("console/event-idx", "R-DEV-02"),
    ("console/indirect-control", "R-DEV-02"),
    ("console/port-write", "R-DEV-02"),
    ("console/restart-ring", "R-DEV-02"),
    ("console/second-port", "R-DEV-02"),
    ("console/segments", "R-DEV-02"),
    ("console/unknown-control", "R-DEV-02"),
    ("console/write-no-multiport", "R-DEV-02"),
];

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn console_data_path_against_vhost_device_console() {
    let script = real_target::installed_device("vhost-device-console", "console");
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let run = real_target::run_spawned(
        "console",
        &script,
        &format!("env VHU_CONSOLE_TCP_PORT={port} "),
        // One at a time: every process binds the same TCP port. The console scenarios and
        // device-neutral areas: enough to run 15 and more.
        &[
            "-j",
            "1",
            "--console-tcp",
            &tcp,
            "console",
            "negotiation",
            "session",
            "vring",
        ],
        "ci/install-devices.sh console",
    );
    run.assert_ran_at_least(15);
    // The console scenarios that move data through the rings ran to their end: no finding of
    // theirs but the written-up one.
    let moved = run
        .results()
        .iter()
        .filter(|r| r["id"].as_str().unwrap().starts_with("console/") && r["outcome"] != "skip")
        .filter(|r| {
            r["findings"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["rule"] == "R-DEV-02")
        })
        .count();
    assert!(
        moved >= 4,
        "only {moved} console scenarios moved data cleanly\n{}",
        run.text
    );
    run.assert_must_findings_exactly(KNOWN_FAILS);
    assert_eq!(run.outcome("console/config"), "pass", "{}", run.text);
}
