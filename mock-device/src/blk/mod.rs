//! A virtio-blk device on a RAM disk (virtio 1.2 section 5.2): feature bits, the config space,
//! and request execution (5.2.6: header, data, status byte) with deliberate data-path faults.
//!
//! A request is read as two byte streams: the driver-readable buffers (header, then write data)
//! and the device-writable buffers (read data, then the status byte, the very last writable
//! byte). Anything malformed completes with `S_IOERR` (or `S_UNSUPP` for an unknown type, unless
//! the back-end's [`VendorRequests`] hook serves it) when a status byte can be written, and
//! writes nothing at all when it cannot.

mod config;
pub(crate) mod iov;
mod state;
mod touched;
mod vendor;

use vhu_protocol::virtio::{BlkReqHeader, blk};
use vhu_protocol::wire::VirtioFeatures;
use zerocopy::FromBytes;

use crate::chain::Chain;
use crate::memory::GuestMemory;
use config::BlkConfig;
use iov::Iov;
use touched::Touched;

pub use config::{CONFIG_SIZE, ConfigError, FLAGS_GUEST_WRITE, FLAGS_MIGRATION, SEG_MAX};
pub use state::StateError;
use vendor::NoVendor;
pub use vendor::{VENDOR_BODY_MAX, VendorRequests};

/// The GET_ID answer: "vhu-mock-blk", NUL-padded to 20 bytes.
pub const DEVICE_ID: [u8; blk::ID_BYTES as usize] = *b"vhu-mock-blk\0\0\0\0\0\0\0\0";
/// Size of the request header.
const HEADER_LEN: u64 = size_of::<BlkReqHeader>() as u64;
/// Bytes the `write_past_descriptor` fault writes beyond a buffer.
pub const OVERRUN_BYTES: usize = 16;
/// The byte the `write_past_descriptor` fault writes.
pub const OVERRUN_FILL: u8 = 0xEE;

/// Deliberate data-path faults, set by the back-end's fault modes (default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPathFaults {
    /// Writes [`OVERRUN_BYTES`] bytes of [`OVERRUN_FILL`] just past the end of the last
    /// writable data segment of a request that returns data.
    pub write_past_descriptor: bool,
    /// Reports a used length one more than the bytes written.
    pub wrong_used_len: bool,
    /// A read (T_IN) also copies its data into the driver-readable buffers, header first.
    pub ignore_writable_flag: bool,
}

/// The outcome of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The used length: bytes written into device-writable buffers (data + status byte).
    pub used_len: u32,
    /// The status (`S_IOERR` also when no status byte could be written).
    pub status: u8,
}

/// A virtio-blk device on a RAM disk.
#[derive(Clone, Debug)]
pub struct BlkDevice {
    disk: Vec<u8>,
    /// The blocks of `disk` that may hold a non-zero byte.
    touched: Touched,
    config: BlkConfig,
    num_queues: u16,
}

/// A request's two streams once the status byte is set aside.
struct Parsed {
    header: BlkReqHeader,
    /// Driver-readable bytes after the header.
    out: Iov,
    /// Device-writable bytes before the status byte.
    data_in: Iov,
    status_at: u64,
}

/// Why a request fails before or during execution (becomes a status byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    IoErr,
    Unsupp,
    /// A vendor request's own non-zero status.
    Vendor(u8),
}

impl Fail {
    fn status(self) -> u8 {
        match self {
            Fail::IoErr => blk::S_IOERR,
            Fail::Unsupp => blk::S_UNSUPP,
            Fail::Vendor(s) => s,
        }
    }
}

impl BlkDevice {
    /// A zeroed disk of `capacity_bytes` (capacity in config rounds down to whole sectors) with
    /// `num_queues` queues (0 counts as 1). The disk is allocated at once (zeroed pages are
    /// only touched when written), so the caller bounds `capacity_bytes`.
    pub fn new(capacity_bytes: u64, num_queues: u16) -> Self {
        let num_queues = num_queues.max(1);
        let disk = vec![0; usize::try_from(capacity_bytes).unwrap_or(usize::MAX)];
        Self {
            touched: Touched::new(disk.len()),
            disk,
            config: BlkConfig::new(capacity_bytes, num_queues),
            num_queues,
        }
    }

    /// The queues the device has.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// FLUSH, BLK_SIZE, SEG_MAX, CONFIG_WCE, MQ (with more than one queue), VERSION_1,
    /// INDIRECT_DESC, EVENT_IDX and RING_PACKED.
    pub fn device_features(&self) -> u64 {
        let mut f = blk::F_FLUSH | blk::F_BLK_SIZE | blk::F_SEG_MAX | blk::F_CONFIG_WCE;
        if self.num_queues > 1 {
            f |= blk::F_MQ;
        }
        let ring = VirtioFeatures::VERSION_1
            | VirtioFeatures::INDIRECT_DESC
            | VirtioFeatures::EVENT_IDX
            | VirtioFeatures::RING_PACKED;
        f | ring.bits()
    }

    /// The whole config space ([`CONFIG_SIZE`] bytes, `struct virtio_blk_config` layout).
    pub fn config(&self) -> Vec<u8> {
        self.config.bytes.to_vec()
    }

    /// `len` bytes of config space at `offset` (GET_CONFIG), or why not.
    pub fn read_config(&self, offset: u32, len: usize) -> Result<Vec<u8>, ConfigError> {
        self.config.read(offset, len)
    }

    /// SET_CONFIG: flags 0 = guest write (only `writeback` @32, value 0 or 1), flags 1 =
    /// migration restore (any field). Anything else, or a range outside the space, is refused
    /// and changes nothing.
    pub fn write_config(
        &mut self,
        offset: u32,
        data: &[u8],
        flags: u32,
    ) -> Result<(), ConfigError> {
        self.config.write(offset, data, flags)
    }

    /// Whether the write-back cache is on (`writeback` config field).
    pub fn writeback(&self) -> bool {
        self.config.writeback()
    }

    /// The disk contents.
    pub fn disk(&self) -> &[u8] {
        &self.disk
    }

    /// The disk contents, for tests and tools that preload data.
    pub fn disk_mut(&mut self) -> &mut [u8] {
        self.touched.mark_all();
        &mut self.disk
    }

    /// Bytes requests may address: the config capacity, bounded by the disk.
    fn usable_bytes(&self) -> u64 {
        let cap = self
            .config
            .capacity_sectors()
            .saturating_mul(blk::SECTOR_SIZE);
        cap.min(self.disk.len() as u64)
    }

    /// Executes one request (T_IN, T_OUT, T_FLUSH, T_GET_ID; others get `S_UNSUPP`). Never
    /// panics and never writes outside device-writable buffers unless a fault says so.
    pub fn process(
        &mut self,
        mem: &dyn GuestMemory,
        chain: &Chain,
        faults: &DataPathFaults,
    ) -> Completion {
        self.process_with(mem, chain, faults, &mut NoVendor)
    }

    /// Like [`BlkDevice::process`], with the types `vendor` serves handed to it (the body
    /// copied out, at most [`VENDOR_BODY_MAX`] bytes, else `S_IOERR`) instead of `S_UNSUPP`.
    pub fn process_with(
        &mut self,
        mem: &dyn GuestMemory,
        chain: &Chain,
        faults: &DataPathFaults,
        vendor: &mut dyn VendorRequests,
    ) -> Completion {
        let Some((data_in, status_at)) =
            Iov::of(chain.segments.iter().filter(|s| s.writable)).split_last_byte()
        else {
            return Completion {
                used_len: 0,
                status: blk::S_IOERR,
            };
        };
        let outcome = self.execute(mem, chain, data_in, status_at, faults, vendor);
        let (status, data_len) = match outcome {
            Ok(n) => (blk::S_OK, n),
            Err(f) => (f.status(), 0),
        };
        let used = match mem.write(status_at, &[status]) {
            Ok(()) => data_len + 1,
            Err(_) => 0,
        };
        let used = if faults.wrong_used_len {
            used + 1
        } else {
            used
        };
        Completion {
            used_len: u32::try_from(used).unwrap_or(u32::MAX),
            status,
        }
    }

    /// Parses and runs the request; returns the data bytes written.
    fn execute(
        &mut self,
        mem: &dyn GuestMemory,
        chain: &Chain,
        data_in: Iov,
        status_at: u64,
        faults: &DataPathFaults,
        vendor: &mut dyn VendorRequests,
    ) -> Result<u64, Fail> {
        let readable = Iov::of(chain.segments.iter().filter(|s| !s.writable));
        if readable.len() < HEADER_LEN {
            return Err(Fail::IoErr);
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        readable.read(mem, &mut raw).map_err(|_| Fail::IoErr)?;
        let header = BlkReqHeader::read_from_bytes(&raw).map_err(|_| Fail::IoErr)?;
        let req = Parsed {
            header,
            out: readable.skip(HEADER_LEN),
            data_in,
            status_at,
        };
        let n = self.dispatch(mem, &req, vendor)?;
        self.apply_faults(mem, &req, &readable, faults);
        Ok(n)
    }

    fn dispatch(
        &mut self,
        mem: &dyn GuestMemory,
        req: &Parsed,
        vendor: &mut dyn VendorRequests,
    ) -> Result<u64, Fail> {
        match req.header.kind {
            blk::T_IN => self.read(mem, req),
            blk::T_OUT => self.write(mem, req),
            blk::T_FLUSH => Ok(0),
            blk::T_GET_ID => get_id(mem, req),
            kind if vendor.serves(kind) => vendor_request(mem, req, vendor),
            _ => Err(Fail::Unsupp),
        }
    }

    /// The disk byte range of a request moving `len` bytes, if it is whole sectors on the disk.
    fn disk_range(&self, sector: u64, len: u64) -> Result<std::ops::Range<usize>, Fail> {
        if len % blk::SECTOR_SIZE != 0 {
            return Err(Fail::IoErr);
        }
        let start = sector.checked_mul(blk::SECTOR_SIZE).ok_or(Fail::IoErr)?;
        let end = start.checked_add(len).ok_or(Fail::IoErr)?;
        if end > self.usable_bytes() {
            return Err(Fail::IoErr);
        }
        Ok(start as usize..end as usize)
    }

    /// T_IN: disk to the writable data buffers. Readable data after the header is refused
    /// (a read into a read-only buffer).
    fn read(&self, mem: &dyn GuestMemory, req: &Parsed) -> Result<u64, Fail> {
        if req.out.len() != 0 {
            return Err(Fail::IoErr);
        }
        let range = self.disk_range(req.header.sector, req.data_in.len())?;
        req.data_in
            .write(mem, &self.disk[range.clone()])
            .map_err(|_| Fail::IoErr)?;
        Ok(range.len() as u64)
    }

    /// T_OUT: readable data buffers to disk. Writable data besides the status byte is refused.
    fn write(&mut self, mem: &dyn GuestMemory, req: &Parsed) -> Result<u64, Fail> {
        if req.data_in.len() != 0 {
            return Err(Fail::IoErr);
        }
        let range = self.disk_range(req.header.sector, req.out.len())?;
        let mut buf = vec![0u8; range.len()];
        req.out.read(mem, &mut buf).map_err(|_| Fail::IoErr)?;
        self.disk[range.clone()].copy_from_slice(&buf);
        self.touched.mark(range);
        Ok(0)
    }

    /// The faults that act after a successful request.
    fn apply_faults(
        &self,
        mem: &dyn GuestMemory,
        req: &Parsed,
        readable: &Iov,
        faults: &DataPathFaults,
    ) {
        if faults.write_past_descriptor && req.data_in.len() > 0 {
            write_past_end(mem, req);
        }
        if faults.ignore_writable_flag && req.header.kind == blk::T_IN {
            let n = readable.len().min(req.data_in.len()) as usize;
            let mut data = vec![0u8; n];
            // Deliberately broken behaviour: errors are as irrelevant as the write is wrong.
            if req.data_in.read(mem, &mut data).is_ok() {
                let _ = readable.write(mem, &data);
            }
        }
    }
}

/// A vendor type: the body goes to the back-end's hook, which decides the status.
fn vendor_request(
    mem: &dyn GuestMemory,
    req: &Parsed,
    vendor: &mut dyn VendorRequests,
) -> Result<u64, Fail> {
    let body = vendor::read_body(mem, &req.out).ok_or(Fail::IoErr)?;
    match vendor.serve(req.header.kind, &body, req.data_in.len()) {
        blk::S_OK => Ok(0),
        status => Err(Fail::Vendor(status)),
    }
}

/// T_GET_ID: up to 20 bytes of [`DEVICE_ID`] into the writable data buffers.
fn get_id(mem: &dyn GuestMemory, req: &Parsed) -> Result<u64, Fail> {
    let n = req.data_in.len().min(DEVICE_ID.len() as u64) as usize;
    req.data_in
        .write(mem, &DEVICE_ID[..n])
        .map_err(|_| Fail::IoErr)?;
    Ok(n as u64)
}

/// The `write_past_descriptor` fault: 16 bytes right after the buffer holding the last data
/// byte (after the status byte when data and status share that buffer).
fn write_past_end(mem: &dyn GuestMemory, req: &Parsed) {
    let Some(end) = req.data_in.end() else {
        return;
    };
    let at = if end == req.status_at { end + 1 } else { end };
    let _ = mem.write(at, &[OVERRUN_FILL; OVERRUN_BYTES]);
}
