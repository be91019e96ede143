//! The iotlb/* family against the bundled reference back-end (VIRTIO_F_ACCESS_PLATFORM, checklist
//! 4.18 and R-MEM-19): every scenario passes on each device; each IOTLB fault mode makes the
//! family fail (warn, for the SHOULD) with findings that cite exactly the rule the fault
//! breaks; a miss really travels the back-end channel and its update the main socket; without
//! the feature the family is skipped naming the bit.

use std::process::Command;

/// Runs `filters` against the bundled back-end as `device` with `faults` (`-j 2`, short step
/// timeout: several faults make steps time out); the JSON report and the console text.
fn run(device: &str, faults: &[&str], filters: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let mut backend = format!("'{exe}' mock-backend --socket-path {{socket}} --device {device}");
    if device == "fs" {
        backend.push_str(" --shared-dir {fs_dir}");
    }
    for f in faults {
        backend.push_str(&format!(" --fault {f}"));
    }
    let out = Command::new(exe)
        .args(["--device", device, "-j", "2", "--step-timeout-ms", "500"])
        .args(["--spawn", &backend, "--json-report"])
        .arg(&json)
        .args(filters)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report ({e}): the bundled back-end did not run\n{text}"));
    let report =
        serde_json::from_str(&report).unwrap_or_else(|e| panic!("bad report ({e})\n{text}"));
    (report, text)
}

fn results(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["results"].as_array().unwrap()
}

fn outcome<'a>(report: &'a serde_json::Value, id: &str) -> &'a str {
    results(report)
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["outcome"].as_str())
        .unwrap_or_else(|| panic!("{id} did not run"))
}

#[test]
fn the_reference_passes_the_whole_family_on_every_device() {
    for device in ["blk", "net", "rng", "fs", "vsock"] {
        let (report, text) = run(device, &[], &["iotlb"]);
        let t = &report["totals"];
        for k in ["fail", "warn", "error"] {
            assert_eq!(t[k], 0, "--device {device}: {k}\n{text}");
        }
        // The device-neutral scenarios and the device's own data path run and pass.
        let own = match device {
            "blk" => "iotlb/blk-data-path",
            d => &format!("iotlb/{d}-data-path"),
        };
        for id in [
            "iotlb/update-invalidate",
            "iotlb/update-outside-memory",
            own,
        ] {
            assert_eq!(
                outcome(&report, id),
                "pass",
                "--device {device}: {id}\n{text}"
            );
        }
        // Misses on an unmapped ring and after an invalidation, for the devices that have them.
        let misses: &[&str] = match device {
            "blk" => &["iotlb/miss-on-ring", "iotlb/invalidate-then-miss"],
            "net" => &["iotlb/net-miss-on-ring", "iotlb/net-invalidate-then-miss"],
            "rng" => &["iotlb/rng-miss-on-ring", "iotlb/rng-invalidate-then-miss"],
            _ => &[],
        };
        for id in misses {
            assert_eq!(
                outcome(&report, id),
                "pass",
                "--device {device}: {id}\n{text}"
            );
        }
    }
}

#[test]
fn a_miss_travels_the_back_end_channel_and_its_update_the_main_socket_first() {
    let (report, text) = run("blk", &[], &["iotlb/miss-on-ring"]);
    let r = &results(&report)[0];
    assert_eq!(r["outcome"], "pass", "{text}");
    let t = r["transcript"].as_array().unwrap();
    let at = |pick: &dyn Fn(&serde_json::Value) -> bool| t.iter().position(pick);
    // BACKEND_IOTLB_MSG (code 1) on the back-end channel, then IOTLB_MSG (22) on the main
    // socket answering it, answered in turn.
    let miss =
        at(&|e| e["channel"] == "Backend" && e["code"] == 1 && e["direction"] == "FromBackend")
            .unwrap_or_else(|| panic!("no miss on the back-end channel: {t:#?}"));
    let update =
        at(&|e| e["channel"] == "Main" && e["code"] == 22 && e["direction"] == "ToBackend")
            .expect("an IOTLB update on the main socket");
    let reply =
        at(&|e| e["channel"] == "Main" && e["code"] == 22 && e["direction"] == "FromBackend")
            .expect("the update's reply");
    assert!(miss < update && update < reply, "{t:#?}");
    let checked: Vec<&str> = r["checked_rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for rule in ["R-IOTLB-02", "R-IOTLB-03", "R-MEM-19"] {
        assert!(checked.contains(&rule), "{rule} not checked: {checked:?}");
    }
}

#[test]
fn each_iotlb_fault_fails_exactly_its_rule() {
    let faults: Vec<(&str, &str)> = vhu_mock_backend::faults::ALL
        .iter()
        .filter(|f| f.1.starts_with("iotlb-"))
        .map(|f| (f.1, f.2))
        .collect();
    assert_eq!(faults.len(), 6, "{faults:?}");
    for (device, (name, rule)) in ["blk", "net", "rng"]
        .into_iter()
        .flat_map(|d| faults.iter().map(move |f| (d, *f)))
    {
        let (report, text) = run(device, &[name], &["iotlb"]);
        let verdict = if rule == "R-IOTLB-05" { "warn" } else { "fail" };
        let mut cited = std::collections::BTreeSet::new();
        let mut caught = false;
        for r in results(&report) {
            let findings = r["findings"].as_array().unwrap();
            cited.extend(findings.iter().filter_map(|f| f["rule"].as_str()));
            caught |= r["outcome"] == verdict && findings.iter().any(|f| f["rule"] == rule);
            assert_ne!(
                r["outcome"], "error",
                "{device} {name}: {}\n{text}",
                r["id"]
            );
        }
        assert!(
            caught,
            "--device {device}: {name} is not caught as {verdict} under {rule}\n{text}"
        );
        assert_eq!(
            cited.into_iter().collect::<Vec<_>>(),
            vec![rule],
            "--device {device}: {name}: findings cite other rules too\n{text}"
        );
    }
}

#[test]
fn without_access_platform_the_family_is_skipped_naming_the_bit() {
    let (report, text) = run("blk", &["no-access-platform"], &["iotlb"]);
    assert_eq!(report["totals"]["fail"], 0, "{text}");
    for r in results(&report) {
        assert_eq!(r["outcome"], "skip", "{}\n{text}", r["id"]);
        let reason = r["reason"].as_str().unwrap_or("");
        let other_device = reason.contains("written for");
        assert!(
            other_device || reason.contains("virtio bit 33 (ACCESS_PLATFORM)"),
            "{}: {reason}",
            r["id"]
        );
    }
}
