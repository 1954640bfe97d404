//! i8042 at 0x60..0x64, reduced to what a guest uses to reboot: command 0xFE on port 0x64 ends
//! the VM (the `vm-superio` device does the decoding).

use std::sync::Arc;

use vm_superio::I8042Device;

use super::{ExitReason, ExitSignal};
use crate::bus::BusDevice;

struct ResetTrigger(Arc<ExitSignal>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// The i8042 bus device (register it for 5 ports at 0x60).
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 whose reset command raises `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = self.inner.read(offset as u8);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let [v] = data {
            let _ = self.inner.write(offset as u8, *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_vm() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = I8042::new(exit.clone());
        d.write(0x60, 4, &[0x11]);
        assert_eq!(exit.reason(), None);
        d.write(0x60, 4, &[0xfe, 0]); // wrong size: ignored
        assert_eq!(exit.reason(), None);
        d.write(0x60, 4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
