//! The messages a connection carries: a received [`Message`] and the unvalidated bytes of a
//! [`RawMessage`] to send.

use std::os::fd::OwnedFd;

use crate::wire::payload::{Body, BodyKind};
use crate::wire::{HEADER_SIZE, Header, Violation};

/// A received message: header, payload and the fds that came with it.
#[derive(Debug)]
pub struct Message {
    /// The header, as received.
    pub header: Header,
    /// The payload, exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// The fds attached to the message's first read.
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// Decodes the payload as the given layout.
    pub fn body(&self, kind: BodyKind) -> Result<Body, Violation> {
        Body::decode(kind, &self.payload)
    }

    /// The payload as a u64, if it is exactly 8 bytes.
    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.payload.as_slice().try_into().ok()?))
    }
}

/// Bytes to send as they are, without any validation: for malformed-input scenarios.
#[derive(Clone, Debug, Default)]
pub struct RawMessage {
    /// The 12 header bytes (may lie about anything).
    pub header: [u8; HEADER_SIZE],
    /// The payload bytes (need not match the header's size).
    pub body: Vec<u8>,
}

impl RawMessage {
    /// A raw message from a header that may lie and arbitrary payload bytes.
    pub fn new(header: Header, body: Vec<u8>) -> Self {
        Self {
            header: header.to_bytes(),
            body,
        }
    }

    /// Header and payload as one byte string.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        out.extend_from_slice(&self.body);
        out
    }
}
