//! SET_DEVICE_STATE_FD: the direction and phase of a device state transfer.

use crate::wire::validate::Violation;

wire_struct!(
    /// SET_DEVICE_STATE_FD's transfer parameters.
    DeviceStateParams {
        /// 0 save (back-end → front-end), 1 load.
        direction: u32,
        /// 0 stopped; no other phase is defined.
        phase: u32,
    }
);

impl DeviceStateParams {
    /// Direction 0 or 1; phase 0.
    pub fn validate(&self) -> Result<(), Violation> {
        if self.direction > 1 {
            return Err(Violation::OutOfRange {
                field: "transfer direction",
                value: self.direction.into(),
                max: 1,
            });
        }
        if self.phase != 0 {
            return Err(Violation::OutOfRange {
                field: "transfer phase",
                value: self.phase.into(),
                max: 0,
            });
        }
        Ok(())
    }
}
