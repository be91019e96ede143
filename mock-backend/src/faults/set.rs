//! The set of active faults, and the device each fault needs.

use super::{Fault, name};
use crate::cli::DeviceKind;

/// The only device a fault makes sense with (`None`: every device). The data-path faults of
/// blk, and those of the blk-only SHMEM, inflight and device state features, are blk's.
pub fn device(f: Fault) -> Option<DeviceKind> {
    use Fault::*;
    match f {
        WrongUsedLen | WritePastDescriptor | BadDeviceState | ShmemConfigCount
        | ShmemOutOfRange | NoInflightResubmit | ShmemUnnegotiated | ShmemNoNeedReply
        | CrashOnShmemRefusal | ShmemSizeUnaligned | ConfigWriteInvisible | SkipDrainDrops => {
            Some(DeviceKind::Blk)
        }
        NetRxLegacyHeader | NetNumBuffers0 | NetTxUsedLen | NetCtrlNoAck | NetRxCsumFlag => {
            Some(DeviceKind::Net)
        }
        RngUsedLenPastBuffer | RngZeroLen | RngConstant => Some(DeviceKind::Rng),
        ScmiTokenNotEchoed | ScmiErrorPadded | ScmiUnknownProtocolSuccess => Some(DeviceKind::Scmi),
        GpioValueUnset | GpioPastEndOk | GpioNamesUnterminated => Some(DeviceKind::Gpio),
        I2cBadStatus | I2cNoZeroLength => Some(DeviceKind::I2c),
        SoundBadStartOk | SoundNoStatus | SoundPcmPadding | SoundUnknownOk => {
            Some(DeviceKind::Sound)
        }
        GpuDisplayInfoNodata | GpuZeroScanouts | GpuEdidUnnegotiated => Some(DeviceKind::Gpu),
        FsUniqueNotEchoed | FsLenMismatch | FsPositiveErrno | FsForgetReply => Some(DeviceKind::Fs),
        VsockNoRst | VsockBadDstCid | VsockCreditOverrun => Some(DeviceKind::Vsock),
        ConsoleNoDeviceAdd | ConsoleShortControl | ConsoleTxUsedLen | ConsoleMaxPortsZero => {
            Some(DeviceKind::Console)
        }
        InputDevidsSize | InputUnknownSelectSize | InputEmptyEvents => Some(DeviceKind::Input),
        _ => None,
    }
}

/// The set of active faults.
#[derive(Clone, Debug, Default)]
pub struct Faults(Vec<Fault>);

impl Faults {
    /// From parsed faults.
    pub fn new(f: Vec<Fault>) -> Self {
        Self(f)
    }

    /// Whether a fault is active.
    pub fn has(&self, f: Fault) -> bool {
        self.0.contains(&f)
    }

    /// Refuses a fault made for another device than `kind`.
    ///
    /// # Errors
    /// The first such fault, with the device it needs.
    pub fn check_device(&self, kind: DeviceKind) -> Result<(), String> {
        match self
            .0
            .iter()
            .find(|&&f| device(f).is_some_and(|d| d != kind))
        {
            Some(&f) => Err(format!(
                "fault {} needs --device {}, not --device {}",
                name(f),
                device(f).map_or("?", DeviceKind::name),
                kind.name()
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::ALL;

    #[test]
    fn device_faults_say_their_device_and_are_refused_with_another() {
        for (fault, name, _, what) in ALL {
            if let Some(d) = device(*fault).filter(|&d| d != DeviceKind::Blk) {
                assert!(what.contains(&format!("--device {}", d.name())), "{name}");
                assert!(name.starts_with(d.name()), "{name}");
                let one = Faults::new(vec![*fault]);
                assert!(one.check_device(d).is_ok());
                let other = if d == DeviceKind::Net {
                    DeviceKind::Rng
                } else {
                    DeviceKind::Net
                };
                let e = one.check_device(other).unwrap_err();
                assert!(e.contains(name) && e.contains(d.name()), "{e}");
            }
        }
        let blk_only = Faults::new(vec![Fault::WrongUsedLen]);
        assert!(blk_only.check_device(DeviceKind::Net).is_err());
        assert!(
            Faults::new(vec![Fault::NoAck])
                .check_device(DeviceKind::Rng)
                .is_ok()
        );
    }
}
