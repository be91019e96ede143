//! The front-end scenarios: each is one front-end process (or connection) against the judging
//! back-end with a chosen offer or departure, and says what a conformant front-end does. The
//! passive checks run in every one of them.

use vhu_protocol::ProtocolFeatures;

use crate::device::DeviceType;
use crate::rules::{RuleId, id};
use crate::scenario::Level;

use vhu_protocol::VirtioFeatures;

use super::backend::{Misbehave, Profile, SHMEM_REGION};

/// One front-end scenario.
#[derive(Clone, Debug)]
pub struct FeScenario {
    /// `frontend/baseline`.
    pub id: &'static str,
    /// One line.
    pub title: &'static str,
    /// What a conformant front-end does here, and why.
    pub description: &'static str,
    /// The weight of its findings (each capped by its rule's level).
    pub level: Level,
    /// The rules it is about beyond the passive ones.
    pub rules: &'static [RuleId],
    /// How the offer differs from the device's normal one.
    pub tweak: fn(&mut Profile),
    /// How the judging back-end misbehaves.
    pub misbehave: Misbehave,
    /// Ask the front-end, once its main socket fell silent, whether it still serves its
    /// channel: no answer is a hang (see [`Judge::liveness`](super::judge::Judge::liveness)).
    pub idle_probe: bool,
}

fn none(_: &mut Profile) {}

fn no_reply_ack(p: &mut Profile) {
    p.protocol &= !ProtocolFeatures::REPLY_ACK.bits();
}

fn no_mem_slots(p: &mut Profile) {
    p.protocol &= !ProtocolFeatures::CONFIGURE_MEM_SLOTS.bits();
}

fn no_mq(p: &mut Profile) {
    p.protocol &= !ProtocolFeatures::MQ.bits();
}

fn one_mem_slot(p: &mut Profile) {
    p.max_mem_slots = 1;
}

fn inflight(p: &mut Profile) {
    p.protocol |= ProtocolFeatures::INFLIGHT_SHMFD.bits();
}

fn gpa_addresses(p: &mut Profile) {
    p.protocol |= ProtocolFeatures::GPA_ADDRESSES.bits();
}

fn device_state(p: &mut Profile) {
    p.protocol |= ProtocolFeatures::DEVICE_STATE.bits();
}

fn postcopy(p: &mut Profile) {
    // "none of them when CONFIGURE_MEM_SLOTS is negotiated": left out, so postcopy is usable.
    p.protocol |= ProtocolFeatures::PAGEFAULT.bits();
    p.protocol &= !ProtocolFeatures::CONFIGURE_MEM_SLOTS.bits();
}

fn inband(p: &mut Profile) {
    p.protocol |= ProtocolFeatures::INBAND_NOTIFICATIONS.bits();
}

fn iommu(p: &mut Profile) {
    p.features |= VirtioFeatures::ACCESS_PLATFORM.bits();
}

fn shmem(p: &mut Profile) {
    p.protocol |= (ProtocolFeatures::SHMEM | ProtocolFeatures::BACKEND_SEND_FD).bits();
    p.shmem = vec![SHMEM_REGION];
}

/// Every front-end scenario, in run order.
pub fn all() -> Vec<FeScenario> {
    vec![
        FeScenario {
            id: "frontend/baseline",
            title: "a normal session against a sane offer: every passive check",
            description: "The judging back-end offers VERSION_1, bit 30, MQ, REPLY_ACK, BACKEND_REQ, \
                CONFIGURE_MEM_SLOTS (32 slots) and CONFIG where the device has a config space, and serves \
                blk requests. Every message is judged against the front-end rules.",
            level: Level::Must,
            rules: &[],
            tweak: none,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/no-reply-ack",
            title: "no REPLY_ACK offered: no request may set NEED_REPLY",
            description: "REPLY_ACK (protocol bit 3) is not offered, so it cannot be negotiated: \
                \"With this protocol extension negotiated, the sender (QEMU) can set the need_reply \
                [Bit 3] flag to any command\" - without it, never (R-WIRE-06).",
            level: Level::Must,
            rules: &[id::R_WIRE_06],
            tweak: no_reply_ack,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/no-mem-slots",
            title: "no CONFIGURE_MEM_SLOTS offered: SET_MEM_TABLE only, at most 8 regions",
            description: "Without CONFIGURE_MEM_SLOTS (protocol bit 15) the front-end must not send \
                GET_MAX_MEM_SLOTS, ADD_MEM_REG or REM_MEM_REG (R-NEG-14) and its SET_MEM_TABLE holds at \
                most 8 regions (R-MEM-02).",
            level: Level::Must,
            rules: &[id::R_NEG_14, id::R_MEM_02],
            tweak: no_mem_slots,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/mem-slots-1",
            title: "GET_MAX_MEM_SLOTS answers 1: never more than one region in the table",
            description: "The back-end has one memory slot. A front-end whose guest needs more regions \
                must stop (QEMU: \"memory slots limit is less than current number of present memory \
                slots\"), never hand over more than one (R-FE-04). Stopping is allowed.",
            level: Level::Must,
            rules: &[id::R_FE_04],
            tweak: one_mem_slot,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/nack-mem-table",
            title: "the back-end refuses every memory table: no ring may start on it",
            description: "SET_MEM_TABLE and ADD_MEM_REG are acked with 1 (REPLY_ACK). The front-end \
                stops or sends a table that is acked before it starts a ring (R-FE-06, SHOULD: the spec \
                says only that QEMU \"is expected to terminate\" on such errors). A front-end that \
                then neither goes on nor leaves is asked, after a second of silence, to ack a request \
                on its back-end channel: no answer is a hang (R-ACK-08, a MUST, so the scenario \
                weighs MUST and R-FE-06 keeps its own SHOULD).",
            level: Level::Must,
            rules: &[id::R_FE_06, id::R_ACK_08],
            tweak: none,
            misbehave: Misbehave::NackMemTable,
            idle_probe: true,
        },
        FeScenario {
            id: "frontend/close-after-3",
            title: "the back-end closes the connection after 3 messages: no crash; SET_OWNER again on a reconnect",
            description: "After answering 3 messages the judging back-end closes the socket. The front-end \
                may give up (exit with an error status) or reconnect; it must not die by a signal \
                (R-FE-07), and a new connection starts with SET_OWNER before memory and rings \
                (R-NEG-09: \"on every new connection\").",
            level: Level::Must,
            rules: &[id::R_FE_07, id::R_NEG_09],
            tweak: none,
            misbehave: Misbehave::CloseAfter(3),
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/no-mq",
            title: "no MQ offered: a fixed-queue device still sets up",
            description: "MQ (protocol bit 0) is not offered, so GET_QUEUE_NUM is not allowed \
                (R-NEG-14). A front-end must not depend on MQ for a device whose queue count is \
                fixed (R-NEG-17): it completes negotiation (SET_FEATURES) instead of hanging up.",
            level: Level::Must,
            rules: &[id::R_NEG_17, id::R_NEG_14],
            tweak: no_mq,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/backend-channel",
            title: "the back-end sends NEED_REPLY requests on its channel: each gets a well-formed u64 ack",
            description: "Once the front-end gave a channel (SET_BACKEND_REQ_FD) and REPLY_ACK is \
                negotiated, the judging back-end sends CONFIG_CHANGE_MSG (where CONFIG is negotiated) \
                and then an unknown request code, each with NEED_REPLY, while it keeps serving the main \
                socket. Each must get a reply framed as the main socket's are (R-WIRE-16) carrying a \
                u64 (R-ACK-08: \"the back-end ... can set the need_reply flag\" and the front-end \
                answers); the unknown code a non-zero one (R-BCH-08, SHOULD). Not observed where the \
                front-end gives no channel.",
            level: Level::Must,
            rules: &[id::R_ACK_08, id::R_WIRE_16, id::R_BCH_08],
            tweak: none,
            misbehave: Misbehave::ChannelProbe,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/channel-during-reply",
            title: "the back-end blocks on a channel ack while the front-end waits for its reply: no deadlock",
            description: "On the first request after SET_BACKEND_REQ_FD that the front-end awaits a reply \
                to, the judging back-end first sends a NEED_REPLY request on the channel \
                (CONFIG_CHANGE_MSG with CONFIG, else an unknown code) and blocks on its ack, as a \
                single-threaded back-end does, before it answers. The checklist (R-BCH-07) has the \
                front-end serve the channel while it waits, otherwise neither side can go on; the \
                vhost-user text itself does not say so (and the back-end could avoid the wait), so \
                a front-end that does not is a warning, not a failure.",
            level: Level::Should,
            rules: &[id::R_BCH_07, id::R_WIRE_16],
            tweak: none,
            misbehave: Misbehave::ChannelBlock,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/inflight-reconnect",
            title: "INFLIGHT_SHMFD offered, the back-end hangs up once a ring started: the buffer comes back on the reconnect",
            description: "The judging back-end offers INFLIGHT_SHMFD (protocol bit 12) and answers \
                GET_INFLIGHT_FD with a memfd; it closes the first connection right after the first \
                SET_VRING_KICK. A front-end may give up; one that reconnects must hand the same buffer \
                back with SET_INFLIGHT_FD (same description, same file) before its rings start again \
                (R-INFL-03), so the new back-end can resubmit what was in flight.",
            level: Level::Must,
            rules: &[id::R_INFL_03],
            tweak: inflight,
            misbehave: Misbehave::CloseAfterKick,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/gpa-addresses",
            title: "GPA_ADDRESSES offered: user addresses are guest addresses",
            description: "The judging back-end offers GPA_ADDRESSES (protocol bit 21). Once it is \
                negotiated every region's user address equals its guest address and ring addresses \
                are guest addresses (R-MEM-18), which the ring-inside-memory check (R-FE-05) then \
                judges.",
            level: Level::Must,
            rules: &[id::R_MEM_18],
            tweak: gpa_addresses,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/device-state",
            title: "DEVICE_STATE offered: rings stopped before a transfer",
            description: "The judging back-end offers DEVICE_STATE (protocol bit 19) and serves \
                SET_DEVICE_STATE_FD (a short state on a save, read to EOF on a load) and \
                CHECK_DEVICE_STATE. Phase 0 means the device is stopped: every ring gets its \
                GET_VRING_BASE before SET_DEVICE_STATE_FD (R-MIG-03). Not observed where the \
                front-end transfers no state (QEMU does only when migrating).",
            level: Level::Must,
            rules: &[id::R_MIG_03, id::R_MIG_01],
            tweak: device_state,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/postcopy",
            title: "PAGEFAULT offered without CONFIGURE_MEM_SLOTS: ADVISE, LISTEN, END in order",
            description: "The judging back-end offers PAGEFAULT (protocol bit 8) and not \
                CONFIGURE_MEM_SLOTS, and answers POSTCOPY_ADVISE with a userfaultfd (no fd where the \
                host allows none). POSTCOPY_LISTEN comes only after ADVISE and POSTCOPY_END only after \
                LISTEN, never with CONFIGURE_MEM_SLOTS negotiated (R-PC-01). Not observed where the \
                front-end does no postcopy (QEMU does only in a postcopy migration).",
            level: Level::Must,
            rules: &[id::R_PC_01],
            tweak: postcopy,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/inband-notifications",
            title: "INBAND_NOTIFICATIONS offered: VRING_KICK asks for a reply",
            description: "The judging back-end offers INBAND_NOTIFICATIONS (protocol bit 14) with \
                BACKEND_REQ and REPLY_ACK. The front-end negotiates it only with both (R-INB-01) and \
                sets NEED_REPLY on every VRING_KICK (R-INB-05, SHOULD: \"the front-end is expected \
                to\"); the kick is served.",
            level: Level::Must,
            rules: &[id::R_INB_05, id::R_INB_01],
            tweak: inband,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/iotlb-miss",
            title: "ACCESS_PLATFORM offered: every IOTLB miss is answered with the update, then the ack",
            description: "The judging back-end offers VIRTIO_F_ACCESS_PLATFORM (bit 33) and, with it \
                negotiated, translates ring and descriptor addresses through the IOTLB the front-end \
                fills. Each address it cannot translate is a BACKEND_IOTLB_MSG miss with NEED_REPLY on \
                the channel; the front-end sends the IOTLB_MSG update covering it and then acks the \
                miss (R-IOTLB-04). The misses are for addresses the front-end put in a ring it \
                started, so they are valid. Not observed where ACCESS_PLATFORM is not acked.",
            level: Level::Must,
            rules: &[id::R_IOTLB_04, id::R_IOTLB_01],
            tweak: iommu,
            misbehave: Misbehave::None,
            idle_probe: false,
        },
        FeScenario {
            id: "frontend/shmem-map",
            title: "SHMEM offered: SHMEM_MAP and SHMEM_UNMAP are acked, the bad ones refused",
            description: "The judging back-end offers SHMEM (protocol bit 22) and BACKEND_SEND_FD and \
                declares one 64 KiB region (shmid 0). With a ring running it sends, each with NEED_REPLY \
                and a memfd where it maps: a valid map (any u64 ack: a map may fail for lack of \
                resources, R-SHM-06), the same range again, a range past the region, an undeclared \
                shmid (each refused, R-SHM-07), flags 0x3 and length 0 (refused, R-SHM-14, a \
                robustness rule), an unmap that is not exactly one mapping (refused) and the exact \
                unmap of the first map (acked 0, R-SHM-08). The overlap and the exact unmap are sent \
                only after the first map was acked 0.",
            level: Level::Must,
            rules: &[
                id::R_SHM_06,
                id::R_SHM_07,
                id::R_SHM_08,
                id::R_SHM_14,
                id::R_ACK_08,
                id::R_WIRE_16,
            ],
            tweak: shmem,
            misbehave: Misbehave::ShmemProbe,
            idle_probe: false,
        },
    ]
}

/// The offer a scenario makes for `device`.
pub fn profile(s: &FeScenario, device: DeviceType) -> Profile {
    let mut p = Profile::for_device(device);
    (s.tweak)(&mut p);
    p
}
