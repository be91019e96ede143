//! IOTLB_MSG (and the back-end's IOTLB miss): `struct vhost_iotlb_msg`.

use crate::wire::validate::{Violation, check_add};

wire_struct!(
    /// An IOTLB message (`struct vhost_iotlb_msg`).
    IotlbMsg {
        /// I/O virtual address.
        iova: u64,
        /// Size of the range at `iova`.
        size: u64,
        /// Front-end user address `iova` maps to (updates only).
        uaddr: u64,
        /// Permission: 0 none, 1 read, 2 write, 3 read-write.
        perm: u8,
        /// Type: 1 miss, 2 update, 3 invalidate, 4 access fail.
        kind: u8,
        /// C struct padding, 0.
        padding: [u8; 6],
    }
);

impl IotlbMsg {
    /// Permission 0 to 3 and type 1 to 4.
    pub fn validate(&self) -> Result<(), Violation> {
        if self.perm > 3 {
            return Err(Violation::OutOfRange {
                field: "iotlb perm",
                value: self.perm.into(),
                max: 3,
            });
        }
        if !(1..=4).contains(&self.kind) {
            return Err(Violation::OutOfRange {
                field: "iotlb type",
                value: self.kind.into(),
                max: 4,
            });
        }
        check_add("iotlb iova + size", self.iova, self.size).map(drop)
    }
}
