//! End to end: `vhu-conform --device sound` against rust-vmm's vhost-device-sound 0.3 built with
//! `--no-default-features` (the null audio back-end; `ci/install-devices.sh sound`), one fresh
//! process per scenario. Item information requests are answered, an output stream runs its
//! whole lifecycle with frames on the tx queue; the only FAILs are the departures the README
//! writes up.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod real_target;

/// The FAILs the README ("What it finds in real back-ends", vhost-device-sound) writes up: the
/// config space announces 1 channel map while the device serves 2, so CHMAP_INFO of start_id 1,
/// past the announced items, is answered OK (virtio 1.2 5.14.6.1: the available identifiers are
/// limited by the config space's count).
/// A control request of a code the spec does not define is never used (virtio 1.2 5.14.6 has
/// VIRTIO_SND_S_NOT_SUPP for it; every available chain must be used).
const KNOWN_FAILS: &[(&str, &str)] = &[
    ("sound/bad-start-id", "R-SND-03"),
    ("sound/unknown-request", "R-SND-07"),
];

#[test]
fn sound_control_and_pcm_against_vhost_device_sound() {
    let script = real_target::installed_device("vhost-device-sound", "sound");
    let run = real_target::run_spawned(
        "sound",
        &script,
        "",
        // The ring size given: vhost-device-sound takes at most 64 (the preflight probe, before
        // it retried reconnecting, once settled on 128 on a loaded machine). The sound scenarios
        // and device-neutral areas: enough to run 15 and more.
        &[
            "--queue-size",
            "64",
            "-j",
            "1",
            "sound",
            "negotiation",
            "config",
            "session",
        ],
        "ci/install-devices.sh sound",
    );
    run.assert_ran_at_least(15);
    let passed = run.passed("sound/");
    for id in [
        "sound/config-and-pcm-info",
        "sound/chmap-info",
        "sound/bad-stream-id",
        "sound/pcm-lifecycle",
        "sound/pcm-restart",
        "sound/many-at-once",
    ] {
        assert!(passed.contains(&id), "{id} did not pass\n{}", run.text);
    }
    run.assert_must_findings_exactly(KNOWN_FAILS);
}
