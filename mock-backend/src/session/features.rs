//! Feature negotiation: the virtio and protocol features offered and their acceptance (R-NEG-05,
//! R-NEG-06, R-NEG-12, R-NEG-13), and the memory slots offered.

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{ProtocolFeatures, VirtioFeatures};

use crate::devices::Device;
use crate::faults::Fault;

use super::{MAX_MEM_SLOTS, Outcome, Session};

impl Session<'_> {
    /// The device's bits (blk, VERSION_1 and the ring layouts it drives) and the vhost-user
    /// ones, with ACCESS_PLATFORM for every device: addresses through the IOTLB (`iotlb`).
    pub(super) fn offered_features(&self) -> u64 {
        let mut f = self.dev.device_features()
            | (VirtioFeatures::LOG_ALL
                | VirtioFeatures::PROTOCOL_FEATURES
                | VirtioFeatures::ACCESS_PLATFORM)
                .bits();
        if self.has(Fault::NoAccessPlatform) {
            f &= !VirtioFeatures::ACCESS_PLATFORM.bits();
        }
        if self.has(Fault::Config8) && matches!(self.dev, Device::Blk(_)) {
            // An 8-byte config space has no writeback byte (offset 32) to make writable.
            f &= !vhu_protocol::virtio::blk::F_CONFIG_WCE;
        }
        f
    }

    pub(super) fn set_features(&mut self, v: u64) -> Outcome {
        if v & !self.offered_features() != 0 && !self.has(Fault::AcceptUnofferedFeatures) {
            return Outcome::Failed; // R-NEG-06: bits that were not offered.
        }
        self.features = v;
        self.dev.set_features(v);
        self.mem.logging = v & VirtioFeatures::LOG_ALL.bits() != 0 && !self.has(Fault::NoDirtyLog);
        if v & VirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            // R-RING-09: without bit 30 every ring is enabled at once.
            self.queues.iter_mut().for_each(|q| q.enabled = true);
        }
        Outcome::Done
    }

    pub(super) fn set_protocol_features(&mut self, v: u64) -> Outcome {
        if v & !self.offered_protocol != 0 {
            return Outcome::Failed; // R-NEG-05
        }
        // R-NEG-13: SKIP_DRAIN needs GET_VRING_BASE_INFLIGHT and INFLIGHT_SHMFD; bit 20 needs 12.
        let p = ProtocolFeatures::from_bits_retain(v);
        let inflight = p.contains(ProtocolFeatures::INFLIGHT_SHMFD);
        let base_inflight = p.contains(ProtocolFeatures::GET_VRING_BASE_INFLIGHT);
        // SKIP_DRAIN without bit 20 is refused, and bit 20 without 12 (so SKIP_DRAIN without 12).
        if (p.contains(ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN) && !base_inflight)
            || (base_inflight && !inflight)
        {
            return Outcome::Failed;
        }
        let inband = ProtocolFeatures::INBAND_NOTIFICATIONS.bits();
        let needs = (ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::REPLY_ACK).bits();
        if v & inband != 0 && v & needs != needs && !self.has(Fault::InbandWithoutChannel) {
            return Outcome::Close; // R-NEG-12: the only way to refuse it.
        }
        self.protocol = v;
        Outcome::Done
    }

    pub(super) fn get_max_mem_slots(&self) -> Outcome {
        let slots = if self.has(Fault::MaxMemSlotsZero) {
            0
        } else {
            MAX_MEM_SLOTS
        };
        Outcome::Reply(Body::U64(slots))
    }
}
