//! rust-vmm's `vhost` front-end (`vhost::vhost_user::Frontend`, 0.18) judged end to end: a
//! thread drives it through the setup a VMM built on it does (features, protocol features with
//! REPLY_ACK and NEED_REPLY from then on, SET_OWNER, the memory table from memfds, one ring
//! started with a kick, enabled and stopped) against the judging back-end listening on a real
//! socket (`FeTarget::Listen`), in the front-end scenarios whose offers the library handles
//! itself. The driver stops at the first error the library returns, as a VMM gives up on a
//! device; what the judge then says is about the library's messages. Findings are in the README
//! ("rust-vmm's vhost Frontend").

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhu_conform::device::DeviceType;
use vhu_conform::engine::{Outcome, ScenarioResult};
use vhu_conform::frontend::scenarios;
use vhu_conform::frontend::{FeOptions, FeTarget, run_scenario};
use vhu_mock_frontend::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

/// The ring the driver starts: 64 entries, its parts placed in region 0 by user address.
const QUEUE: u16 = 64;

/// Connects once the judging back-end listens (the path appears when it binds).
fn connect(path: &Path) -> Option<Frontend> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(f) = Frontend::connect(path, 1) {
            return Some(f);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A minimal VMM on the library: every step through its API, stopping at the first error.
fn drive(path: &Path) -> Result<(), vhost::Error> {
    let Some(mut fe) = connect(path) else {
        return Ok(());
    };
    let offered = fe.get_features()?;
    let bit30 = 1u64 << 30;
    if offered & bit30 != 0 {
        let pf = fe.get_protocol_features()?;
        let proto = pf
            & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        fe.set_protocol_features(proto)?;
        if proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // What a VMM does to hear about every refusal: NEED_REPLY on what follows.
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if proto.contains(VhostUserProtocolFeatures::MQ) {
            fe.get_queue_num()?;
        }
        if proto.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            fe.get_max_mem_slots()?;
        }
    }
    fe.set_owner()?;
    // VERSION_1, bit 30 and the blk bits the judging back-end offers: what a blk VMM takes.
    fe.set_features(offered)?;
    let mem = GuestMemory::new(&GuestMemory::default_layout(2 << 20))
        .expect("guest memory for the driver");
    let regions: Vec<VhostUserMemoryRegionInfo> = mem
        .regions()
        .iter()
        .map(|r| VhostUserMemoryRegionInfo {
            guest_phys_addr: r.spec.guest_addr,
            memory_size: r.spec.size,
            userspace_addr: r.spec.user_addr,
            mmap_offset: r.spec.mmap_offset,
            mmap_handle: r.fd().as_raw_fd(),
        })
        .collect();
    fe.set_mem_table(&regions)?;
    let base = regions[0].userspace_addr;
    let ring = VringConfigData {
        queue_max_size: QUEUE,
        queue_size: QUEUE,
        flags: 0,
        desc_table_addr: base,
        avail_ring_addr: base + 0x1000,
        used_ring_addr: base + 0x2000,
        log_addr: None,
    };
    let call = EventFd::new(0).expect("eventfd");
    let kick = EventFd::new(0).expect("eventfd");
    fe.set_vring_num(0, QUEUE)?;
    fe.set_vring_base(0, 0)?;
    fe.set_vring_addr(0, &ring)?;
    fe.set_vring_call(0, &call)?;
    fe.set_vring_kick(0, &kick)?;
    // One kick as QEMU injects it (R-RING-05 is the VMM's part, not the library's).
    let _ = kick.write(1);
    if offered & bit30 != 0 {
        fe.set_vring_enable(0, true)?;
    }
    fe.get_vring_base(0)?;
    Ok(())
}

fn judge(id: &str) -> (ScenarioResult, Result<(), String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("judge.sock");
    let opts = FeOptions {
        target: FeTarget::Listen(path.clone()),
        device: DeviceType::Block,
        scenario_timeout: Duration::from_secs(15),
        connect_timeout: Duration::from_secs(10),
        strict: false,
    };
    let driver = std::thread::spawn(move || drive(&path).map_err(|e| e.to_string()));
    let s = scenarios::all()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no scenario {id}"));
    let r = run_scenario(&opts, &s);
    (r, driver.join().expect("the driver thread"))
}

fn checked(r: &ScenarioResult, rule: &str) -> bool {
    r.checked_rules.iter().any(|c| c.as_str() == rule)
}

#[test]
fn rust_vmm_frontend_passes_a_normal_setup() {
    let (r, driven) = judge("frontend/baseline");
    assert_eq!(driven, Ok(()), "the library's setup went through");
    assert_eq!(r.outcome, Outcome::Pass, "{r:#?}");
    for rule in [
        "R-WIRE-03",
        "R-WIRE-06",
        "R-NEG-04",
        "R-NEG-09",
        "R-FE-01",
        "R-FE-02",
        "R-FE-04",
        "R-MEM-04",
        "R-VRING-01",
        "R-VRING-08",
        "R-FE-05",
        "R-RING-05",
    ] {
        assert!(
            checked(&r, rule),
            "{rule} was judged: {:?}",
            r.checked_rules
        );
    }
}

#[test]
fn rust_vmm_frontend_sets_no_need_reply_without_reply_ack() {
    let (r, driven) = judge("frontend/no-reply-ack");
    assert_eq!(driven, Ok(()));
    assert_eq!(r.outcome, Outcome::Pass, "{r:#?}");
    assert!(checked(&r, "R-WIRE-06"));
}

#[test]
fn rust_vmm_frontend_reports_a_refused_memory_table_and_starts_no_ring() {
    let (r, driven) = judge("frontend/nack-mem-table");
    // The library turns the non-zero ack into an error; the driver gives up there.
    assert!(driven.is_err(), "the refusal reached the VMM: {driven:?}");
    assert_eq!(r.outcome, Outcome::Pass, "{r:#?}");
}

#[test]
fn rust_vmm_frontend_survives_a_backend_that_hangs_up_and_needs_no_mq() {
    let (r, driven) = judge("frontend/close-after-3");
    assert!(driven.is_err(), "the hang-up reached the VMM: {driven:?}");
    assert_eq!(r.outcome, Outcome::Pass, "{r:#?}");
    let (r, driven) = judge("frontend/no-mq");
    assert_eq!(driven, Ok(()));
    assert_eq!(r.outcome, Outcome::Pass, "{r:#?}");
    assert!(checked(&r, "R-NEG-17"), "{:?}", r.checked_rules);
}
