//! Feature names used in scenario files, resolved to bits (checklist section 5).

use vhu_protocol::{ProtocolFeatures, VirtioFeatures};

fn bit_form(name: &str) -> Option<u64> {
    let n: u32 = name.strip_prefix("bit:")?.parse().ok()?;
    1u64.checked_shl(n)
}

/// A virtio feature name (`EVENT_IDX`) or `bit:N`.
pub fn virtio_bit(name: &str) -> Option<u64> {
    bit_form(name).or_else(|| VirtioFeatures::from_name(name).map(|f| f.bits()))
}

/// A protocol feature name (`REPLY_ACK`) or `bit:N`.
pub fn protocol_bit(name: &str) -> Option<u64> {
    bit_form(name).or_else(|| ProtocolFeatures::from_name(name).map(|f| f.bits()))
}

/// Names a missing bit for a skip reason: `protocol bit 15 (CONFIGURE_MEM_SLOTS)`.
pub fn describe_missing(kind: &str, bits: u64) -> String {
    (0..64)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| {
            let name = if kind == "protocol" {
                ProtocolFeatures::bit_name(b)
            } else {
                VirtioFeatures::bit_name(b)
            };
            match name {
                Some(n) => format!("{kind} bit {b} ({n})"),
                None => format!("{kind} bit {b}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
