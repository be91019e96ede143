//! The wire format: codes, header, payloads and feature bits (spec "Message specification").
//!
//! All integers are in the host's native byte order (checklist 1.1). Every payload type derives
//! zerocopy's traits so its byte layout is fixed by `#[repr(C)]` and checked by tests that pin each
//! size and offset to checklist section 1.5.

// enumn's derive adds an undocumented `n` constructor; `from_code` is the documented way in.
#[allow(missing_docs)]
mod codes;
mod features;
mod header;
pub mod payload;
mod validate;

pub use codes::{BackendReq, FrontendReq, ReplyKind};
pub use features::{ProtocolFeatures, VirtioFeatures};
pub use header::{HEADER_SIZE, Header, HeaderFlags, VERSION};
pub use validate::{Violation, WireError};
