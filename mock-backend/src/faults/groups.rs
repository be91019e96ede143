//! Each device's share of the active faults, as the device crate's fault flags.

use super::{Fault, Faults};

impl Faults {
    /// The net device's share of the faults.
    pub fn net(&self) -> vhu_mock_device::NetFaults {
        vhu_mock_device::NetFaults {
            rx_legacy_header: self.has(Fault::NetRxLegacyHeader),
            num_buffers_0: self.has(Fault::NetNumBuffers0),
            tx_used_len: self.has(Fault::NetTxUsedLen),
            ctrl_no_ack: self.has(Fault::NetCtrlNoAck),
            rx_csum_flag: self.has(Fault::NetRxCsumFlag),
        }
    }

    /// The fs device's share of the faults.
    pub fn fs(&self) -> vhu_mock_device::FsFaults {
        vhu_mock_device::FsFaults {
            unique_not_echoed: self.has(Fault::FsUniqueNotEchoed),
            len_mismatch: self.has(Fault::FsLenMismatch),
            positive_errno: self.has(Fault::FsPositiveErrno),
            forget_reply: self.has(Fault::FsForgetReply),
        }
    }

    /// The vsock device's share of the faults.
    pub fn vsock(&self) -> vhu_mock_device::VsockFaults {
        vhu_mock_device::VsockFaults {
            no_rst: self.has(Fault::VsockNoRst),
            bad_dst_cid: self.has(Fault::VsockBadDstCid),
            credit_overrun: self.has(Fault::VsockCreditOverrun),
        }
    }

    /// The i2c device's share of the faults.
    pub fn i2c(&self) -> vhu_mock_device::I2cFaults {
        vhu_mock_device::I2cFaults {
            bad_status: self.has(Fault::I2cBadStatus),
            no_zero_length: self.has(Fault::I2cNoZeroLength),
        }
    }

    /// The gpio device's share of the faults.
    pub fn gpio(&self) -> vhu_mock_device::GpioFaults {
        vhu_mock_device::GpioFaults {
            value_unset: self.has(Fault::GpioValueUnset),
            past_end_ok: self.has(Fault::GpioPastEndOk),
            names_unterminated: self.has(Fault::GpioNamesUnterminated),
        }
    }

    /// The scmi device's share of the faults.
    pub fn scmi(&self) -> vhu_mock_device::ScmiFaults {
        vhu_mock_device::ScmiFaults {
            token_not_echoed: self.has(Fault::ScmiTokenNotEchoed),
            error_padded: self.has(Fault::ScmiErrorPadded),
            unknown_protocol_success: self.has(Fault::ScmiUnknownProtocolSuccess),
        }
    }

    /// The console device's share of the faults.
    pub fn console(&self) -> vhu_mock_device::ConsoleFaults {
        vhu_mock_device::ConsoleFaults {
            no_device_add: self.has(Fault::ConsoleNoDeviceAdd),
            short_control: self.has(Fault::ConsoleShortControl),
            tx_used_len: self.has(Fault::ConsoleTxUsedLen),
            max_ports_zero: self.has(Fault::ConsoleMaxPortsZero),
        }
    }

    /// The input device's share of the faults.
    pub fn input(&self) -> vhu_mock_device::InputFaults {
        vhu_mock_device::InputFaults {
            devids_size: self.has(Fault::InputDevidsSize),
            unknown_select_size: self.has(Fault::InputUnknownSelectSize),
            empty_events: self.has(Fault::InputEmptyEvents),
        }
    }

    /// The gpu device's share of the faults.
    pub fn gpu(&self) -> vhu_mock_device::GpuFaults {
        vhu_mock_device::GpuFaults {
            display_info_nodata: self.has(Fault::GpuDisplayInfoNodata),
            zero_scanouts: self.has(Fault::GpuZeroScanouts),
            edid_unnegotiated: self.has(Fault::GpuEdidUnnegotiated),
        }
    }

    /// The sound device's share of the faults.
    pub fn sound(&self) -> vhu_mock_device::SoundFaults {
        vhu_mock_device::SoundFaults {
            bad_start_ok: self.has(Fault::SoundBadStartOk),
            no_status: self.has(Fault::SoundNoStatus),
            pcm_padding: self.has(Fault::SoundPcmPadding),
            unknown_ok: self.has(Fault::SoundUnknownOk),
        }
    }

    /// The rng device's share of the faults.
    pub fn rng(&self) -> vhu_mock_device::RngFaults {
        vhu_mock_device::RngFaults {
            used_len_past_buffer: self.has(Fault::RngUsedLenPastBuffer),
            zero_len: self.has(Fault::RngZeroLen),
            constant: self.has(Fault::RngConstant),
        }
    }
}
