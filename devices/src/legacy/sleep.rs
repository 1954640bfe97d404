//! The hardware-reduced ACPI sleep control/status register (FADT SLEEP_CONTROL_REG, one I/O byte):
//! writing SLP_EN with the `_S5_` sleep type powers the VM off.

use std::sync::Arc;

use super::{ExitReason, ExitSignal};
use crate::bus::BusDevice;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The sleep register device.
pub struct AcpiSleep {
    exit: Arc<ExitSignal>,
    s5_type: u8,
}

impl AcpiSleep {
    /// A sleep register that powers off on sleep type `s5_type` (the DSDT `_S5_` value).
    pub fn new(exit: Arc<ExitSignal>, s5_type: u8) -> Self {
        Self { exit, s5_type }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set; we never resume.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (0, [v]) = (offset, data) else { return };
        if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK == self.s5_type {
            tracing::info!("guest entered ACPI S5");
            self.exit.request(ExitReason::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_other_states_do_not() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = AcpiSleep::new(exit.clone(), 5);
        d.write(0, 0, &[(3 << 2) | SLP_EN]);
        d.write(0, 0, &[5 << 2]);
        assert_eq!(exit.reason(), None);
        d.write(0, 0, &[(5 << 2) | SLP_EN]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }
}
