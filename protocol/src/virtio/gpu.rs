//! virtio-gpu layouts (virtio 1.2 section 5.7; Linux `include/uapi/linux/virtio_gpu.h`) and the
//! vhost-user-gpu protocol a back-end speaks to its front-end on the socket GPU_SET_SOCKET
//! hands it (QEMU `docs/interop/vhost-user-gpu.rst`). Layouts and constants only.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The virtio device id of a GPU.
pub const DEVICE_ID: u32 = 16;

/// Control queue.
pub const CONTROL_QUEUE: u16 = 0;
/// Cursor queue.
pub const CURSOR_QUEUE: u16 = 1;

/// Bytes of the config space: events_read, events_clear, num_scanouts, num_capsets.
pub const CONFIG_SIZE: usize = 16;
/// Most scanouts a device may have (`VIRTIO_GPU_MAX_SCANOUTS`).
pub const MAX_SCANOUTS: usize = 16;

/// `VIRTIO_GPU_CMD_GET_DISPLAY_INFO`.
pub const CMD_GET_DISPLAY_INFO: u32 = 0x0100;
/// `VIRTIO_GPU_CMD_RESOURCE_CREATE_2D`.
pub const CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
/// `VIRTIO_GPU_CMD_RESOURCE_UNREF`.
pub const CMD_RESOURCE_UNREF: u32 = 0x0102;
/// `VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM`.
pub const FORMAT_B8G8R8A8_UNORM: u32 = 1;
/// `VIRTIO_GPU_CMD_GET_EDID`.
pub const CMD_GET_EDID: u32 = 0x010a;
/// `VIRTIO_GPU_RESP_OK_NODATA`.
pub const RESP_OK_NODATA: u32 = 0x1100;
/// `VIRTIO_GPU_RESP_OK_DISPLAY_INFO`.
pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
/// `VIRTIO_GPU_RESP_OK_EDID`.
pub const RESP_OK_EDID: u32 = 0x1104;
/// `VIRTIO_GPU_RESP_ERR_UNSPEC`: the first error type.
pub const RESP_ERR_UNSPEC: u32 = 0x1200;
/// `VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER`: the last error type of virtio 1.2.
pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

/// Bytes of `struct virtio_gpu_ctrl_hdr`.
pub const CTRL_HDR_SIZE: usize = 24;
/// Bytes of `struct virtio_gpu_resp_display_info`.
pub const DISPLAY_INFO_SIZE: usize = 408;

/// The name of a control type, for reports.
pub fn type_name(t: u32) -> &'static str {
    match t {
        CMD_GET_DISPLAY_INFO => "GET_DISPLAY_INFO",
        CMD_RESOURCE_CREATE_2D => "RESOURCE_CREATE_2D",
        CMD_RESOURCE_UNREF => "RESOURCE_UNREF",
        CMD_GET_EDID => "GET_EDID",
        RESP_OK_NODATA => "OK_NODATA",
        RESP_OK_DISPLAY_INFO => "OK_DISPLAY_INFO",
        RESP_OK_EDID => "OK_EDID",
        RESP_ERR_UNSPEC..=RESP_ERR_INVALID_PARAMETER => "an error",
        _ => "unknown type",
    }
}

/// `struct virtio_gpu_config`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Config {
    /// Pending events.
    pub events_read: u32,
    /// Events the driver clears.
    pub events_clear: u32,
    /// Scanouts the device supports (1 to 16).
    pub num_scanouts: u32,
    /// Capability sets.
    pub num_capsets: u32,
}

/// `struct virtio_gpu_ctrl_hdr`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct CtrlHdr {
    /// `VIRTIO_GPU_CMD_*` or `VIRTIO_GPU_RESP_*`.
    pub type_: u32,
    /// `VIRTIO_GPU_FLAG_*`.
    pub flags: u32,
    /// The fence, with `VIRTIO_GPU_FLAG_FENCE`.
    pub fence_id: u64,
    /// The 3D context.
    pub ctx_id: u32,
    /// The context's ring, with `VIRTIO_GPU_FLAG_INFO_RING_IDX`.
    pub ring_idx: u8,
    /// 0.
    pub padding: [u8; 3],
}

/// `struct virtio_gpu_rect`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// One scanout of `struct virtio_gpu_resp_display_info`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DisplayOne {
    /// The preferred position and size.
    pub r: Rect,
    /// 1 when a display is connected.
    pub enabled: u32,
    /// Per-scanout flags (none defined; zero).
    pub flags: u32,
}

/// `struct virtio_gpu_resp_display_info`: 408 bytes.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RespDisplayInfo {
    /// `RESP_OK_DISPLAY_INFO`.
    pub hdr: CtrlHdr,
    /// Every scanout, connected or not.
    pub pmodes: [DisplayOne; MAX_SCANOUTS],
}

/// The vhost-user-gpu protocol (QEMU `docs/interop/vhost-user-gpu.rst`): messages the
/// back-end sends on the GPU_SET_SOCKET socket, and the front-end's replies.
pub mod vugpu {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    /// `VHOST_USER_GPU_GET_PROTOCOL_FEATURES` (reply: u64).
    pub const GET_PROTOCOL_FEATURES: u32 = 1;
    /// `VHOST_USER_GPU_SET_PROTOCOL_FEATURES` (u64, no reply).
    pub const SET_PROTOCOL_FEATURES: u32 = 2;
    /// `VHOST_USER_GPU_GET_DISPLAY_INFO` (reply: virtio_gpu_resp_display_info).
    pub const GET_DISPLAY_INFO: u32 = 3;
    /// `VHOST_USER_GPU_CURSOR_POS`.
    pub const CURSOR_POS: u32 = 4;
    /// `VHOST_USER_GPU_CURSOR_POS_HIDE`.
    pub const CURSOR_POS_HIDE: u32 = 5;
    /// `VHOST_USER_GPU_CURSOR_UPDATE`.
    pub const CURSOR_UPDATE: u32 = 6;
    /// `VHOST_USER_GPU_SCANOUT`.
    pub const SCANOUT: u32 = 7;
    /// `VHOST_USER_GPU_UPDATE` (header, then the pixels).
    pub const UPDATE: u32 = 8;
    /// `VHOST_USER_GPU_DMABUF_SCANOUT` (one fd).
    pub const DMABUF_SCANOUT: u32 = 9;
    /// `VHOST_USER_GPU_DMABUF_UPDATE` (reply: empty).
    pub const DMABUF_UPDATE: u32 = 10;
    /// `VHOST_USER_GPU_GET_EDID` (with F_EDID; reply: virtio_gpu_resp_edid).
    pub const GET_EDID: u32 = 11;
    /// `VHOST_USER_GPU_DMABUF_SCANOUT2` (with F_DMABUF2).
    pub const DMABUF_SCANOUT2: u32 = 12;

    /// `VHOST_USER_GPU_MSG_FLAG_REPLY`.
    pub const FLAG_REPLY: u32 = 0x4;
    /// `VHOST_USER_GPU_PROTOCOL_F_EDID`.
    pub const F_EDID: u64 = 1 << 0;
    /// `VHOST_USER_GPU_PROTOCOL_F_DMABUF2`.
    pub const F_DMABUF2: u64 = 1 << 1;

    /// Bytes of the message header.
    pub const HDR_SIZE: usize = 12;
    /// Bytes of `struct virtio_gpu_resp_edid` (header, size, padding, 1024 bytes).
    pub const RESP_EDID_SIZE: usize = 24 + 8 + 1024;

    /// The message header.
    #[derive(
        Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    #[repr(C)]
    pub struct Hdr {
        /// The request code.
        pub request: u32,
        /// `FLAG_REPLY` on replies.
        pub flags: u32,
        /// Payload bytes after the header.
        pub size: u32,
    }

    /// The name of a request, for reports.
    pub fn request_name(code: u32) -> &'static str {
        match code {
            GET_PROTOCOL_FEATURES => "GET_PROTOCOL_FEATURES",
            SET_PROTOCOL_FEATURES => "SET_PROTOCOL_FEATURES",
            GET_DISPLAY_INFO => "GET_DISPLAY_INFO",
            CURSOR_POS => "CURSOR_POS",
            CURSOR_POS_HIDE => "CURSOR_POS_HIDE",
            CURSOR_UPDATE => "CURSOR_UPDATE",
            SCANOUT => "SCANOUT",
            UPDATE => "UPDATE",
            DMABUF_SCANOUT => "DMABUF_SCANOUT",
            DMABUF_UPDATE => "DMABUF_UPDATE",
            GET_EDID => "GET_EDID",
            DMABUF_SCANOUT2 => "DMABUF_SCANOUT2",
            _ => "unknown request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_spec_sizes() {
        assert_eq!(size_of::<Config>(), CONFIG_SIZE);
        assert_eq!(size_of::<CtrlHdr>(), CTRL_HDR_SIZE);
        assert_eq!(size_of::<RespDisplayInfo>(), DISPLAY_INFO_SIZE);
        assert_eq!(size_of::<vugpu::Hdr>(), vugpu::HDR_SIZE);
        assert_eq!(type_name(RESP_OK_DISPLAY_INFO), "OK_DISPLAY_INFO");
    }
}
