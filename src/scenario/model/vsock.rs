//! The vsock steps: host listeners, connections either way, data, credit and the requests a
//! device must reset.

use serde::{Deserialize, Serialize};

/// The vsock steps that name only a connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortArgs {
    /// The host port.
    pub port: u32,
}

/// `vsock_listen`: a host-side listener.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockListenArgs {
    /// The host port.
    pub port: u32,
    /// Bytes the listener writes first, before echoing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
}

/// `vsock_connect`: a connection from the guest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConnectArgs {
    /// The host port.
    pub port: u32,
    /// The receive space the driver announces (default 65536).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buf_alloc: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// RX buffers with the header in its own 44-byte descriptor (default one buffer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_split: Option<bool>,
}

/// `vsock_send`: bytes on a connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSendArgs {
    /// The host port.
    pub port: u32,
    /// How many payload bytes.
    pub bytes: u32,
    /// Seed of the byte sequence (default 0x11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<u8>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `vsock_recv`: bytes the host listener wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockRecvArgs {
    /// The host port.
    pub port: u32,
    /// How many payload bytes.
    pub bytes: u32,
}

/// `vsock_unknown_type`: a REQUEST of a socket type vsock does not define.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockUnknownTypeArgs {
    /// The host port.
    pub port: u32,
    /// The header's type (default 0x7fff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_type: Option<u16>,
}

/// `vsock_host_connect`: a connection from the host side.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockHostConnectArgs {
    /// The guest port.
    pub port: u32,
    /// Bytes the host side writes first, before echoing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
    /// The receive space the driver announces (default 65536).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buf_alloc: Option<u32>,
}
