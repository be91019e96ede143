//! virtio-net driver requests on the device-neutral [`exchange`](crate::exchange) path
//! (virtio 1.2 section 5.1.6): transmit chains (a `virtio_net_hdr_v1`, then an Ethernet frame),
//! receive buffers, receive completions parsed into header and frame, and control-queue
//! commands. Facts only: the engine judges them.

use vhu_protocol::virtio::net::{HDR_LEN, NetHdr};
use zerocopy::{FromBytes, IntoBytes};

use crate::exchange::{ChainSpec, Exchanged};

/// EtherType of the harness's own frames (IEEE 802 local experimental), so frames a back-end
/// makes up itself (a RARP after SEND_RARP) are told from the ones sent.
pub const ETHERTYPE: u16 = 0x88b5;
/// Smallest frame built: an Ethernet header and the 8-byte tag.
pub const MIN_FRAME: usize = 14 + 8;

/// An Ethernet frame of `len` bytes (at least [`MIN_FRAME`]) carrying `seq`: locally
/// administered unicast addresses, [`ETHERTYPE`], the sequence number, then a pattern that
/// depends on both so a reordered or corrupted byte shows.
pub fn frame(seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(MIN_FRAME);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(b"vhu\0");
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// The sequence number of a frame built by [`frame`], or `None` for any other frame.
pub fn frame_seq(f: &[u8]) -> Option<u32> {
    if f.len() < MIN_FRAME || f[12..14] != ETHERTYPE.to_be_bytes() || &f[14..18] != b"vhu\0" {
        return None;
    }
    Some(u32::from_be_bytes(f[18..22].try_into().ok()?))
}

/// A transmit chain: a zeroed header (no offloads, `num_buffers` 0 as the driver sends it)
/// followed by `frame`, over `segments` descriptors: one holds header and frame together
/// (VERSION_1 allows any layout, 5.1.6.2); with more, the header has its own descriptor and the
/// frame is cut evenly over the rest.
pub fn tx_chain(frame: &[u8], segments: u32, indirect: bool) -> ChainSpec {
    let hdr = NetHdr::default();
    let mut readable = Vec::new();
    if segments <= 1 {
        let mut all = hdr.as_bytes().to_vec();
        all.extend_from_slice(frame);
        readable.push(all);
    } else {
        readable.push(hdr.as_bytes().to_vec());
        let parts = (segments - 1) as usize;
        let step = frame.len().div_ceil(parts).max(1);
        readable.extend(frame.chunks(step).map(<[u8]>::to_vec));
    }
    ChainSpec {
        readable,
        writable: vec![],
        indirect,
    }
}

/// A receive buffer of `size` device-writable bytes, over `segments` descriptors.
pub fn rx_chain(size: u32, segments: u32, indirect: bool) -> ChainSpec {
    ChainSpec::writable_split(size, segments, indirect)
}

/// Why a receive completion could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// The used length does not even cover the header.
    #[error("used length {0} is shorter than the {HDR_LEN}-byte virtio_net_hdr_v1")]
    Short(u32),
}

/// A received frame as the device wrote it: the header of its first buffer and the frame
/// bytes of every buffer it occupies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The header.
    pub hdr: NetHdr,
    /// The frame bytes (after the header, over all its buffers).
    pub frame: Vec<u8>,
    /// Used lengths of the buffers, in order.
    pub used_lens: Vec<u32>,
}

/// Parses the first buffer of a received frame (header, then data up to the used length).
///
/// # Errors
/// [`RxError::Short`] when the used length is below the header size.
pub fn parse_rx(first: &Exchanged) -> Result<RxFrame, RxError> {
    let bytes = first.reply();
    if bytes.len() < HDR_LEN {
        return Err(RxError::Short(first.used_len));
    }
    let hdr = NetHdr::read_from_bytes(&bytes[..HDR_LEN]).expect("12 bytes");
    Ok(RxFrame {
        hdr,
        frame: bytes[HDR_LEN..].to_vec(),
        used_lens: vec![first.used_len],
    })
}

impl RxFrame {
    /// Adds a further buffer of a merged frame (MRG_RXBUF: its bytes carry no header).
    pub fn extend(&mut self, more: &Exchanged) {
        self.frame.extend_from_slice(&more.reply());
        self.used_lens.push(more.used_len);
    }
}

/// A control command (5.1.6.5): the class and command in one readable descriptor, the
/// command's data in another (when there is any), and one writable byte for the ack.
pub fn ctrl_chain(class: u8, command: u8, data: &[u8]) -> ChainSpec {
    let mut readable = vec![vec![class, command]];
    if !data.is_empty() {
        readable.push(data.to_vec());
    }
    ChainSpec {
        readable,
        writable: vec![1],
        indirect: false,
    }
}

/// The ack byte a control command's completion carries, if the device wrote one.
pub fn ctrl_ack(done: &Exchanged) -> Option<u8> {
    done.reply().first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_sequence_and_differ() {
        let a = frame(7, 64);
        assert_eq!(a.len(), 64);
        assert_eq!(frame_seq(&a), Some(7));
        assert_ne!(frame(8, 64)[22..], a[22..]);
        assert_eq!(frame_seq(&[0u8; 64]), None);
    }

    #[test]
    fn tx_chains_split_header_and_frame() {
        let f = frame(1, 100);
        let one = tx_chain(&f, 1, false);
        assert_eq!(one.readable.len(), 1);
        assert_eq!(one.readable[0].len(), HDR_LEN + 100);
        let three = tx_chain(&f, 3, true);
        assert_eq!(three.readable.len(), 3);
        assert_eq!(three.readable[0].len(), HDR_LEN);
        assert_eq!(three.readable[1..].concat(), f);
        assert!(three.indirect && three.writable.is_empty());
    }

    #[test]
    fn rx_chains_keep_their_size() {
        let c = rx_chain(1526, 4, false);
        assert_eq!(c.writable.len(), 4);
        assert_eq!(c.writable_len(), 1526);
    }
}
