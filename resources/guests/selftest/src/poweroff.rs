//! Ending the run: the failure count on the debug-exit port 0xf4 (dsavmm,
//! QEMU `isa-debug-exit`), then ACPI S5 (HW-reduced SLEEP_CONTROL_REG, else
//! PM1a_CNT), then an i8042 reset, then `cli; hlt` forever.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::acpi::{AcpiInfo, Gas};
use crate::cpu::{halt_forever, outb, outl, outw};
use crate::fmt::Line;
use crate::phys;

/// I/O port of the exit byte.
pub const EXIT_PORT: u16 = 0xf4;
/// SLP_TYP used when the DSDT has no readable `_S5_` (the value dsavmm,
/// Cloud Hypervisor and QEMU's GED use).
const DEFAULT_S5: u8 = 5;

struct Reg {
    valid: AtomicBool,
    space: AtomicU8,
    width: AtomicU8,
    addr: AtomicU64,
}

impl Reg {
    const fn new() -> Self {
        Self {
            valid: AtomicBool::new(false),
            space: AtomicU8::new(0),
            width: AtomicU8::new(0),
            addr: AtomicU64::new(0),
        }
    }

    fn set(&self, g: Option<Gas>) {
        if let Some(g) = g {
            self.space.store(g.space, Ordering::Relaxed);
            self.width.store(g.bit_width, Ordering::Relaxed);
            self.addr.store(g.addr, Ordering::Relaxed);
            self.valid.store(true, Ordering::Release);
        }
    }

    /// Writes `v` with the register's width (default `default_width` bits).
    fn write(&self, v: u32, default_width: u8) {
        if !self.valid.load(Ordering::Acquire) {
            return;
        }
        let addr = self.addr.load(Ordering::Relaxed);
        let width = match self.width.load(Ordering::Relaxed) {
            0 => default_width,
            w => w,
        };
        match self.space.load(Ordering::Relaxed) {
            1 => {
                let Ok(port) = u16::try_from(addr) else {
                    return;
                };
                match width {
                    8 => outb(port, v as u8),
                    32 => outl(port, v),
                    _ => outw(port, v as u16),
                }
            }
            0 => {
                if let Some(va) = phys::map(addr, 4) {
                    // SAFETY: a register the FADT describes as system memory;
                    // mapped by `phys::map`.
                    unsafe {
                        match width {
                            8 => core::ptr::write_volatile(va as *mut u8, v as u8),
                            32 => core::ptr::write_volatile(va as *mut u32, v),
                            _ => core::ptr::write_volatile(va as *mut u16, v as u16),
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

static SLEEP_CONTROL: Reg = Reg::new();
static PM1A_CNT: Reg = Reg::new();
static HW_REDUCED: AtomicBool = AtomicBool::new(false);
static S5: AtomicU8 = AtomicU8::new(DEFAULT_S5);

/// Remembers the ACPI registers needed to power off.
pub fn configure(a: &AcpiInfo) {
    SLEEP_CONTROL.set(a.sleep_control);
    PM1A_CNT.set(a.pm1a_cnt);
    HW_REDUCED.store(a.hw_reduced, Ordering::Relaxed);
    if let Some(t) = a.s5_slp_typ {
        S5.store(t, Ordering::Relaxed);
    }
}

/// Reports `failures` on the exit port and powers off.
pub fn exit(failures: u64) -> ! {
    outb(EXIT_PORT, failures.min(255) as u8);
    // Still running: no exit device. ACPI S5.
    let typ = u32::from(S5.load(Ordering::Relaxed) & 7);
    if HW_REDUCED.load(Ordering::Relaxed) || !PM1A_CNT.valid.load(Ordering::Acquire) {
        SLEEP_CONTROL.write((typ << 2) | (1 << 5), 8);
    }
    PM1A_CNT.write((typ << 10) | (1 << 13), 16);
    // i8042 pulse reset line.
    outb(0x64, 0xfe);
    let mut l = Line::new();
    l.s("selftest: info could not power off; halting");
    crate::serial::line(&l);
    halt_forever()
}

/// Ends the run after an unexpected event (exception, panic).
pub fn abort() -> ! {
    let mut l = Line::new();
    l.s("selftest: aborted");
    crate::serial::line(&l);
    exit(255)
}
