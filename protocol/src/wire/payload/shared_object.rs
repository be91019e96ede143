//! SHARED_OBJECT_ADD / _REMOVE / _LOOKUP: a virtio shared object's UUID.

wire_struct!(
    /// A shared object UUID (its first three fields big-endian).
    SharedObject {
        /// The UUID's 16 bytes, in wire order.
        uuid: [u8; 16],
    }
);
