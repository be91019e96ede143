//! Request types the device does not implement itself, handed to the back-end (vhu-conform's
//! SHMEM map/unmap requests, `blk::T_VHU_SHMEM_MAP`). The device still parses the chain (header,
//! streams, status byte), so a back-end never walks descriptors of its own.

use super::iov::Iov;
use crate::memory::GuestMemory;

/// Largest driver-readable body a vendor request may carry. Why: the body is copied out whole
/// before the hook runs, and a bound keeps a hostile chain from asking for gigabytes.
pub const VENDOR_BODY_MAX: usize = 4096;

/// A back-end's handler of vendor request types, for [`super::BlkDevice::process_with`].
pub trait VendorRequests {
    /// Whether requests of type `kind` are served here (others get `S_UNSUPP`).
    fn serves(&self, kind: u32) -> bool;
    /// Serves one request of type `kind`: `body` is the whole driver-readable payload after the
    /// header, `writable` the number of device-writable bytes before the status byte. Returns
    /// the status byte to write.
    fn serve(&mut self, kind: u32, body: &[u8], writable: u64) -> u8;
}

/// No vendor types: every unknown type is unsupported.
pub(crate) struct NoVendor;

impl VendorRequests for NoVendor {
    fn serves(&self, _kind: u32) -> bool {
        false
    }

    fn serve(&mut self, _kind: u32, _body: &[u8], _writable: u64) -> u8 {
        vhu_protocol::virtio::blk::S_UNSUPP
    }
}

/// Copies the body out of guest memory, or `None` when it is too long or unreadable.
pub(crate) fn read_body(mem: &dyn GuestMemory, out: &Iov) -> Option<Vec<u8>> {
    let len = usize::try_from(out.len())
        .ok()
        .filter(|&n| n <= VENDOR_BODY_MAX)?;
    let mut body = vec![0u8; len];
    out.read(mem, &mut body).ok()?;
    Some(body)
}
