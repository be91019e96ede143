//! Feature negotiation (checklist Appendix A steps 1-5): what the front-end wants, what was
//! agreed, and the sequence that gets there.

use vhu_protocol::{FrontendReq, ProtocolFeatures, VirtioFeatures};

use super::{Ack, Session, SessionError};

/// What the front-end wants to negotiate; the session takes the intersection with the offer.
#[derive(Copy, Clone, Debug)]
pub struct Wanted {
    /// Virtio feature bits to ack where offered (bit 30 is acked whenever offered).
    pub features: u64,
    /// Protocol feature bits to ack where offered.
    pub protocol: u64,
}

impl Wanted {
    /// Everything the harness drives: device bits, indirect descriptors, EVENT_IDX, VERSION_1
    /// and bit 30; no dirty logging, IOMMU, packed ring or in-order (not driven yet). Protocol
    /// bits that change message semantics (in-band notifications, Xen regions, GPA addresses,
    /// postcopy) are left out unless a scenario asks for them.
    pub fn all() -> Self {
        let virtio_excluded = VirtioFeatures::LOG_ALL
            | VirtioFeatures::ACCESS_PLATFORM
            | VirtioFeatures::RING_PACKED
            | VirtioFeatures::IN_ORDER;
        let protocol = ProtocolFeatures::MQ
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::BACKEND_REQ
            | ProtocolFeatures::CONFIG
            | ProtocolFeatures::BACKEND_SEND_FD
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS
            | ProtocolFeatures::RESET_DEVICE
            | ProtocolFeatures::DEVICE_STATE
            | ProtocolFeatures::SHMEM;
        Self {
            features: !virtio_excluded.bits(),
            protocol: protocol.bits(),
        }
    }
}

/// What [`Session::negotiate`] agreed with the back-end.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio features acked with SET_FEATURES.
    pub features: u64,
    /// Protocol features acked with SET_PROTOCOL_FEATURES (0 without bit 30).
    pub protocol: u64,
    /// GET_QUEUE_NUM's answer, when MQ was negotiated.
    pub queue_num: Option<u64>,
    /// GET_MAX_MEM_SLOTS's answer, when CONFIGURE_MEM_SLOTS was negotiated.
    pub max_mem_slots: Option<u64>,
}

impl Session {
    /// Appendix A steps 1-5: features, protocol features, queue and slot counts, the back-end
    /// channel, SET_OWNER, SET_FEATURES. A non-zero ack is an error.
    pub fn negotiate(&mut self, wanted: &Wanted) -> Result<Negotiated, SessionError> {
        let offered = self.get_features()?;
        let mut n = Negotiated::default();
        let bit30 = VirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & bit30 != 0 {
            let offered_pf = self.get_protocol_features()?;
            n.protocol = offered_pf & wanted.protocol & ProtocolFeatures::all().bits();
            self.checked(FrontendReq::SetProtocolFeatures, |s| {
                s.set_protocol_features(n.protocol)
            })?;
            let has = |f: ProtocolFeatures| n.protocol & f.bits() != 0;
            if has(ProtocolFeatures::MQ) {
                n.queue_num = Some(self.get_queue_num()?);
            }
            if has(ProtocolFeatures::BACKEND_REQ) {
                self.checked(FrontendReq::SetBackendReqFd, Session::set_backend_req_fd)?;
            }
            if has(ProtocolFeatures::CONFIGURE_MEM_SLOTS) {
                n.max_mem_slots = Some(self.get_max_mem_slots()?);
            }
        }
        self.checked(FrontendReq::SetOwner, Session::set_owner)?;
        n.features = (offered & wanted.features) | (offered & bit30);
        self.checked(FrontendReq::SetFeatures, |s| s.set_features(n.features))?;
        Ok(n)
    }

    /// Runs an ack-only request and turns a non-zero ack into [`SessionError::Nack`].
    pub fn checked(
        &mut self,
        req: FrontendReq,
        f: impl FnOnce(&mut Self) -> Result<Ack, SessionError>,
    ) -> Result<(), SessionError> {
        match f(self)? {
            Ack::Failed(value) => Err(SessionError::Nack { during: req, value }),
            _ => Ok(()),
        }
    }
}
