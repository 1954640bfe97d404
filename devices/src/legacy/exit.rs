//! The one-shot signal by which devices (reset, power-off, guest status) and the VMM itself ask
//! the VM to stop, with the first reason kept.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the CPU (i8042 0xFE, triple fault): treated as a clean stop, as Firecracker does.
    Reset,
    /// The guest entered ACPI S5.
    PowerOff,
    /// The guest wrote its own exit status to the status port.
    GuestStatus(u8),
    /// The VMM was asked to stop (API, signal).
    Requested,
    /// A vCPU failed; the VMM logged why.
    VcpuError,
    /// A device's backend failed (a vfio-user server went away); the device logged why.
    DeviceError,
}

impl ExitReason {
    /// The process exit code this reason maps to.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Requested => 0,
            ExitReason::GuestStatus(s) => i32::from(s),
            ExitReason::VcpuError | ExitReason::DeviceError => 1,
        }
    }
}

/// Shared by every device that can end the VM and by the VMM loop that waits for it.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    set: AtomicBool,
}

impl ExitSignal {
    /// Creates the signal (a non-blocking eventfd the event loop polls).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            set: AtomicBool::new(false),
        })
    }

    /// Records `reason` unless one was recorded already, and wakes the waiter.
    pub fn request(&self, reason: ExitReason) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.set.store(true, Ordering::Release);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("cannot signal VM exit: {e}");
        }
    }

    /// Whether an exit was requested (cheap: checked on every vCPU exit).
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// The first reason recorded.
    pub fn reason(&self) -> Option<ExitReason> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd to poll.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        assert!(!s.is_set());
        s.request(ExitReason::GuestStatus(3));
        s.request(ExitReason::PowerOff);
        assert_eq!(s.reason(), Some(ExitReason::GuestStatus(3)));
        assert_eq!(s.reason().unwrap().exit_code(), 3);
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }
}
