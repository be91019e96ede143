//! Every front-end check is proven by a fault mode of the mock front-end
//! (`vhu-conform mock-frontend --fault NAME`) that breaks exactly its rule, and the honest mock
//! front-end passes every front-end scenario. Each run is a real process connecting to the
//! judging back-end over a real socket (`vhu_conform::frontend::run_scenario`).

use std::time::Duration;

use vhu_conform::device::DeviceType;
use vhu_conform::engine::{Outcome, ScenarioResult};
use vhu_conform::frontend::scenarios::{self, FeScenario};
use vhu_conform::frontend::{FeOptions, FeTarget, run_scenario};

const BIN: &str = env!("CARGO_BIN_EXE_vhu-conform");

fn scenario(id: &str) -> FeScenario {
    scenarios::all()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no scenario {id}"))
}

fn run(id: &str, device: &str, fault: Option<&str>) -> ScenarioResult {
    let fault = fault.map_or(String::new(), |f| format!(" --fault {f}"));
    let opts = FeOptions {
        target: FeTarget::Exec(format!(
            "{BIN} mock-frontend --socket-path {{socket}} --device {device}{fault}"
        )),
        device: DeviceType::parse(device).unwrap(),
        scenario_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(10),
        strict: false,
    };
    run_scenario(&opts, &scenario(id))
}

fn rules_of(r: &ScenarioResult) -> Vec<&'static str> {
    let mut v: Vec<&str> = r.findings.iter().map(|f| f.rule.as_str()).collect();
    v.dedup();
    v
}

#[test]
fn the_honest_mock_frontend_passes_every_scenario_for_blk_and_net() {
    for device in ["blk", "net"] {
        for s in scenarios::all() {
            let r = run(s.id, device, None);
            assert_eq!(r.outcome, Outcome::Pass, "{device} {}: {r:#?}", s.id);
            assert!(r.findings.is_empty(), "{device} {}: {:?}", s.id, r.findings);
            // A check passes only where it ran: the basics ran in every full session.
            if s.id != "frontend/close-after-3" && s.id != "frontend/nack-mem-table" {
                // Behind an IOMMU ring addresses are IOVAs, which the table cannot judge.
                let fe05 = (s.id != "frontend/iotlb-miss").then_some("R-FE-05");
                for rule in [
                    "R-WIRE-03",
                    "R-WIRE-06",
                    "R-FE-01",
                    "R-FE-02",
                    "R-VRING-01",
                    "R-RING-05",
                ]
                .into_iter()
                .chain(fe05)
                {
                    assert!(
                        r.checked_rules.iter().any(|c| c.as_str() == rule),
                        "{device} {}: {rule} not checked",
                        s.id
                    );
                }
            }
        }
    }
    // Each feature scenario's own checks ran against the honest blk session (the IOTLB misses
    // come from the blk data path).
    for (id, rules) in [
        ("frontend/inflight-reconnect", &["R-INFL-03"][..]),
        ("frontend/gpa-addresses", &["R-MEM-18"]),
        ("frontend/device-state", &["R-MIG-03"]),
        ("frontend/postcopy", &["R-PC-01"]),
        ("frontend/inband-notifications", &["R-INB-05"]),
        ("frontend/iotlb-miss", &["R-IOTLB-04"]),
        (
            "frontend/shmem-map",
            &["R-SHM-06", "R-SHM-07", "R-SHM-08", "R-SHM-14"],
        ),
    ] {
        let r = run(id, "blk", None);
        assert_eq!(r.outcome, Outcome::Pass, "{id}: {r:#?}");
        for rule in rules {
            assert!(
                r.checked_rules.iter().any(|c| c.as_str() == *rule),
                "{id}: {rule} not checked: {:?} {:?}",
                r.checked_rules,
                r.notes
            );
        }
    }
    // The blk session's requests were served by the judging back-end.
    let r = run("frontend/baseline", "blk", None);
    assert!(
        r.notes.iter().any(|n| n == "served 3 blk requests"),
        "{:?}",
        r.notes
    );
}

#[test]
fn every_fault_mode_is_caught_by_exactly_its_rule() {
    let cases = [
        (
            "set-unoffered-feature",
            "frontend/baseline",
            "R-FE-01",
            Outcome::Fail,
        ),
        (
            "region-without-fd",
            "frontend/baseline",
            "R-FE-02",
            Outcome::Fail,
        ),
        (
            "short-payload",
            "frontend/baseline",
            "R-FE-02",
            Outcome::Fail,
        ),
        (
            "kick-before-addr",
            "frontend/baseline",
            "R-VRING-01",
            Outcome::Fail,
        ),
        (
            "exceed-mem-slots",
            "frontend/baseline",
            "R-FE-04",
            Outcome::Fail,
        ),
        (
            "need-reply-without-reply-ack",
            "frontend/baseline",
            "R-WIRE-06",
            Outcome::Fail,
        ),
        (
            "reply-flag-on-request",
            "frontend/baseline",
            "R-WIRE-06",
            Outcome::Fail,
        ),
        (
            "bad-version",
            "frontend/baseline",
            "R-WIRE-03",
            Outcome::Fail,
        ),
        (
            "no-set-owner",
            "frontend/baseline",
            "R-NEG-09",
            Outcome::Fail,
        ),
        (
            "queue-num-without-mq",
            "frontend/baseline",
            "R-NEG-14",
            Outcome::Fail,
        ),
        (
            "ring-index-past-end",
            "frontend/baseline",
            "R-MQ-02",
            Outcome::Fail,
        ),
        (
            "ring-outside-memory",
            "frontend/baseline",
            "R-FE-05",
            Outcome::Fail,
        ),
        (
            "overlapping-regions",
            "frontend/baseline",
            "R-MEM-04",
            Outcome::Fail,
        ),
        // SHOULD: the spec only says QEMU "is expected to terminate" on a refusal.
        (
            "ignore-mem-table-nack",
            "frontend/nack-mem-table",
            "R-FE-06",
            Outcome::Warn,
        ),
        (
            "abort-on-disconnect",
            "frontend/close-after-3",
            "R-FE-07",
            Outcome::Fail,
        ),
        ("require-mq", "frontend/no-mq", "R-NEG-17", Outcome::Fail),
        (
            "vring-log-without-log-all",
            "frontend/baseline",
            "R-LOG-01",
            Outcome::Fail,
        ),
        (
            "channel-no-ack",
            "frontend/backend-channel",
            "R-ACK-08",
            Outcome::Fail,
        ),
        (
            "channel-reply-without-reply-flag",
            "frontend/backend-channel",
            "R-WIRE-16",
            Outcome::Fail,
        ),
        // SHOULD: QEMU's behaviour, which the checklist asks for.
        (
            "channel-acks-unknown-code",
            "frontend/backend-channel",
            "R-BCH-08",
            Outcome::Warn,
        ),
        // SHOULD here: the checklist's rule, which the vhost-user text does not state.
        (
            "channel-only-when-idle",
            "frontend/channel-during-reply",
            "R-BCH-07",
            Outcome::Warn,
        ),
    ];
    let new_checks = [
        // Net: no blk request kicks the ring later. SHOULD: for back-ends on the old text.
        (
            "no-initial-kick",
            "frontend/baseline",
            "net",
            "R-RING-05",
            Outcome::Warn,
        ),
        (
            "gpa-with-user-addresses",
            "frontend/gpa-addresses",
            "blk",
            "R-MEM-18",
            Outcome::Fail,
        ),
        (
            "state-with-ring-running",
            "frontend/device-state",
            "blk",
            "R-MIG-03",
            Outcome::Fail,
        ),
        (
            "listen-before-advise",
            "frontend/postcopy",
            "blk",
            "R-PC-01",
            Outcome::Fail,
        ),
        // SHOULD: "the front-end is expected to" ask for the reply.
        (
            "inband-kick-without-need-reply",
            "frontend/inband-notifications",
            "blk",
            "R-INB-05",
            Outcome::Warn,
        ),
        (
            "miss-ack-without-update",
            "frontend/iotlb-miss",
            "blk",
            "R-IOTLB-04",
            Outcome::Fail,
        ),
        (
            "inflight-fresh-on-reconnect",
            "frontend/inflight-reconnect",
            "blk",
            "R-INFL-03",
            Outcome::Fail,
        ),
        (
            "shmem-no-ack",
            "frontend/shmem-map",
            "blk",
            "R-SHM-06",
            Outcome::Fail,
        ),
        (
            "shmem-accepts-overlap",
            "frontend/shmem-map",
            "blk",
            "R-SHM-07",
            Outcome::Fail,
        ),
        // A robustness rule (crosvm's and rust-vmm's validators): a warning.
        (
            "shmem-accepts-bad-flags",
            "frontend/shmem-map",
            "blk",
            "R-SHM-14",
            Outcome::Warn,
        ),
        (
            "shmem-unmap-any-range",
            "frontend/shmem-map",
            "blk",
            "R-SHM-08",
            Outcome::Fail,
        ),
        // The hang: silent after the refusal, its channel unanswered.
        (
            "hang-after-nack",
            "frontend/nack-mem-table",
            "blk",
            "R-ACK-08",
            Outcome::Fail,
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(f, id, rule, o)| (f, id, "blk", rule, o))
        .chain(new_checks);
    for (fault, id, device, rule, outcome) in cases {
        let r = run(id, device, Some(fault));
        assert_eq!(rules_of(&r), [rule], "{fault} in {id}: {:#?}", r.findings);
        assert_eq!(r.outcome, outcome, "{fault} in {id}");
        if fault == "hang-after-nack" {
            assert!(
                r.notes.iter().any(|n| n.contains("hung")),
                "the hang ended the connection: {:?}",
                r.notes
            );
        }
        if fault == "abort-on-disconnect" {
            let crash = r.findings[0]
                .crash
                .as_ref()
                .expect("a crash is reported as one");
            assert_eq!(crash.signal_name, "SIGABRT");
        }
    }
}

#[test]
fn a_frontend_that_never_connects_is_a_harness_error_not_a_verdict() {
    let opts = FeOptions {
        target: FeTarget::Exec("exit 3".into()),
        device: DeviceType::Block,
        scenario_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        strict: false,
    };
    let r = run_scenario(&opts, &scenario("frontend/baseline"));
    assert!(
        matches!(r.outcome, Outcome::Error { .. }),
        "{:?}",
        r.outcome
    );
    assert!(
        r.duration_ms < 4000,
        "it noticed the exit: {} ms",
        r.duration_ms
    );
}
