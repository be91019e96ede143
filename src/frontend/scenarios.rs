//! The front-end scenarios: each is one front-end process (or connection) against the judging
//! back-end with a chosen offer or departure, and says what a conformant front-end does. The
//! passive checks run in every one of them.

use vhu_protocol::ProtocolFeatures;

use crate::device::DeviceType;
use crate::rules::{RuleId, id};
use crate::scenario::Level;

use super::backend::{Misbehave, Profile};

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
        },
        FeScenario {
            id: "frontend/nack-mem-table",
            title: "the back-end refuses every memory table: no ring may start on it",
            description: "SET_MEM_TABLE and ADD_MEM_REG are acked with 1 (REPLY_ACK). The front-end \
                stops or sends a table that is acked before it starts a ring (R-FE-06, SHOULD: the spec \
                says only that QEMU \"is expected to terminate\" on such errors).",
            level: Level::Should,
            rules: &[id::R_FE_06],
            tweak: none,
            misbehave: Misbehave::NackMemTable,
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
        },
        FeScenario {
            id: "frontend/channel-during-reply",
            title: "the back-end blocks on a channel ack while the front-end waits for its reply: no deadlock",
            description: "On the first request after SET_BACKEND_REQ_FD that the front-end awaits a reply \
                to, the judging back-end first sends a NEED_REPLY request on the channel \
                (CONFIG_CHANGE_MSG with CONFIG, else an unknown code) and blocks on its ack, as a \
                single-threaded back-end does, before it answers. The front-end must serve the channel \
                while it waits (R-BCH-07): otherwise neither side can go on.",
            level: Level::Must,
            rules: &[id::R_BCH_07, id::R_WIRE_16],
            tweak: none,
            misbehave: Misbehave::ChannelBlock,
        },
    ]
}

/// The offer a scenario makes for `device`.
pub fn profile(s: &FeScenario, device: DeviceType) -> Profile {
    let mut p = Profile::for_device(device);
    (s.tweak)(&mut p);
    p
}
