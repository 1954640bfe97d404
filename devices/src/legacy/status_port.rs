//! The guest status port (I/O 0xF4, as QEMU's `isa-debug-exit`): a one-byte write ends the VM and
//! becomes dsavmm's exit status. The built-in self-test guest reports its failure count here.

use std::sync::Arc;

use super::{ExitReason, ExitSignal};
use crate::bus::BusDevice;

/// I/O port of the status device.
pub const STATUS_PORT: u16 = 0xf4;

/// The status port device.
pub struct StatusPort {
    exit: Arc<ExitSignal>,
}

impl StatusPort {
    /// A status port that ends the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for StatusPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if let Some(v) = data.first() {
            tracing::info!("guest reported exit status {v}");
            self.exit.request(ExitReason::GuestStatus(*v));
        }
    }
}
