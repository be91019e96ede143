//! The legal variations: departures the spec allows, which real back-ends show.

use super::Fault;

/// Legal variations of real back-ends: name, what it does. None breaks a rule, so the whole
/// suite against any of them must give no failure and no error (`exit-on-disconnect` is also in
/// [`ALL`](super::ALL): R-ROB-09 is a robustness rule, worth a warning, never a failure).
pub const VARIATIONS: &[(Fault, &str, &str)] = &[
    (
        Fault::ExitAfterRefusal,
        "exit-after-refusal",
        "after refusing a message (the nack sent if NEED_REPLY asked for one) the process \
         exits with status 1",
    ),
    (
        Fault::CloseAfterRefusal,
        "close-after-refusal",
        "after refusing a message (the nack sent if NEED_REPLY asked for one) that connection \
         is closed; the next front-end is served",
    ),
    (
        Fault::ExitOnDisconnect,
        "exit-on-disconnect",
        "the process exits 0 when the front-end disconnects (warns under R-ROB-09)",
    ),
    (
        Fault::MaxRing64,
        "max-ring-64",
        "SET_VRING_NUM above 64 is refused (as --queue-size-max 64)",
    ),
    (
        Fault::NoReplyAck,
        "no-reply-ack",
        "REPLY_ACK (bit 3) and INBAND_NOTIFICATIONS, which needs it, are not offered",
    ),
    (
        Fault::NoAccessPlatform,
        "no-access-platform",
        "VIRTIO_F_ACCESS_PLATFORM (bit 33) is not offered (no IOMMU support): the iotlb/* \
         scenarios are skipped naming the bit",
    ),
    (
        Fault::Config8,
        "config-8",
        "the config space is 8 bytes: GET_CONFIG past it gets the empty error reply, \
         SET_CONFIG past it is refused",
    ),
];
