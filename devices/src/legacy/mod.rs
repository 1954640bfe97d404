//! Legacy platform devices: the 16550 console, the i8042 reset line, the ACPI sleep register and
//! the guest status port, all ending the VM through one [`ExitSignal`].

pub mod exit;
pub mod i8042;
pub mod serial;
pub mod sleep;
pub mod status_port;

pub use exit::{ExitReason, ExitSignal};

use std::io;
use vmm_sys_util::eventfd::EventFd;

/// An `EventFd` that satisfies `vm_superio::Trigger` (an irqfd or a VMM event).
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
