//! End to end: the iotlb/* family against DPDK 22.11 testpmd with the vhost PMD's
//! `iommu-support=1` (`tests/targets/dpdk-testpmd-iommu.sh`), a real back-end that offers
//! VIRTIO_F_IOMMU_PLATFORM: rings and buffers at IOVAs through the IOTLB, misses on an unmapped
//! ring and after an invalidation, all pass; the one FAIL is the departure the README writes up.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod real_target;

/// DPDK answers IOTLB_MSG only when it carries NEED_REPLY (an ack-only reading; QEMU always
/// sets it): "The back-end has to acknowledge the request with sending zero as u64 payload".
const KNOWN_FAILS: &[(&str, &str)] = &[("iotlb/update-invalidate", "R-IOTLB-02")];

/// A departure DPDK 22.11 shows in some runs only (2 of 12 here, more under load): an
/// invalidation that covers the ring addresses clears them and, once the message is handled,
/// marks the rings not ready, so its polling thread stops translating them. A miss comes only when
/// that thread looks at the ring in between (microseconds); otherwise the queue waits for an update
/// the front-end never sends unasked (R-IOTLB-04), and the kicked frame is never used. Both
/// outcomes are judged right: pass, or this one finding.
const RACY_FAIL: (&str, &str) = ("iotlb/net-invalidate-then-miss", "R-IOTLB-03");

#[test]
fn the_iotlb_family_against_dpdk_testpmd_with_iommu_support() {
    let install = "../shared/targets/install.sh net";
    // The script sources the shared targets' _run.sh.
    real_target::shared_script("_run.sh", install);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/targets/dpdk-testpmd-iommu.sh");
    let run = real_target::run_spawned("net", &script, "", &["-j", "2", "iotlb"], install);
    let text = &run.text;
    for id in [
        "iotlb/net-data-path",
        "iotlb/net-miss-on-ring",
        "iotlb/update-outside-memory",
    ] {
        assert_eq!(run.outcome(id), "pass", "{id}\n{text}");
    }
    let racy = run.outcome(RACY_FAIL.0);
    assert!(
        racy == "pass" || racy == "fail",
        "{}: {racy}\n{text}",
        RACY_FAIL.0
    );
    let mut fails = vec![];
    for r in run.results() {
        assert_ne!(r["outcome"], "error", "{}\n{text}", r["id"]);
        if r["outcome"] != "fail" {
            continue;
        }
        for f in r["findings"].as_array().unwrap() {
            let found = (r["id"].as_str().unwrap(), f["rule"].as_str().unwrap());
            if found == RACY_FAIL {
                // The finding must be the missing miss, not a stale entry used.
                let received = f["received"].as_str().unwrap_or_default();
                assert!(
                    received.starts_with("no BACKEND_IOTLB_MSG"),
                    "{found:?}: {received}\n{text}"
                );
                continue;
            }
            fails.push((found.0.to_string(), found.1.to_string()));
        }
    }
    let known: Vec<(String, String)> = KNOWN_FAILS
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(fails, known, "{text}");
}
