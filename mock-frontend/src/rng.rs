//! virtio-rng driver requests on the device-neutral [`exchange`](crate::exchange) path
//! (virtio 1.2 section 5.4): an entropy request is one device-writable buffer, optionally over
//! several descriptors or an indirect table. Facts only: the engine judges the bytes.

use crate::exchange::{ChainSpec, Exchanged};

/// An entropy request of `size` bytes over `segments` descriptors.
pub fn entropy_chain(size: u32, segments: u32, indirect: bool) -> ChainSpec {
    ChainSpec::writable_split(size, segments, indirect)
}

/// The random bytes a completion says it wrote (its used length).
pub fn entropy(done: &Exchanged) -> Vec<u8> {
    done.reply()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_writable_only_and_keeps_its_size() {
        let c = entropy_chain(65536, 3, true);
        assert!(c.readable.is_empty() && c.indirect);
        assert_eq!(c.writable.len(), 3);
        assert_eq!(c.writable_len(), 65536);
        assert_eq!(entropy_chain(1, 4, false).writable, vec![1]);
    }
}
