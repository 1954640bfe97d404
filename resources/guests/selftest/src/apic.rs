//! The local APIC in xAPIC mode at 0xfee00000: ID, EOI, IPIs, timer.

use crate::cpu::{pause, rdmsr};

/// Default xAPIC MMIO base.
pub const LAPIC_BASE: u64 = 0xfee0_0000;

const ID: u64 = 0x20;
const SVR: u64 = 0xf0;
const ICR_LO: u64 = 0x300;
const ICR_HI: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const LVT_LINT0: u64 = 0x350;
const TIMER_INIT: u64 = 0x380;
const TIMER_CUR: u64 = 0x390;
const TIMER_DIV: u64 = 0x3e0;

const ICR_PENDING: u32 = 1 << 12;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;

fn read(off: u64) -> u32 {
    // SAFETY: the LAPIC page is identity mapped (uncached) by the boot page
    // tables; xAPIC registers are 32-bit and 16-byte aligned.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + off) as *const u32) }
}

fn write(off: u64, v: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + off) as *mut u32, v) }
}

/// IA32_APIC_BASE: (base address, enabled, x2APIC mode).
pub fn base_msr() -> (u64, bool, bool) {
    let v = rdmsr(0x1b);
    (
        v & 0x000f_ffff_ffff_f000,
        v & (1 << 11) != 0,
        v & (1 << 10) != 0,
    )
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Software-enables the LAPIC with the given spurious vector.
pub fn enable(spurious_vector: u8) {
    write(SVR, 0x100 | u32::from(spurious_vector));
}

/// Masks LINT0 (ExtINT from a legacy PIC).
pub fn mask_lint0() {
    write(LVT_LINT0, LVT_MASKED);
}

/// Sends an IPI with ICR low word `lo` to APIC ID `dest`; returns false when
/// the delivery status did not clear.
pub fn send_ipi(dest: u32, lo: u32) -> bool {
    write(ICR_HI, dest << 24);
    write(ICR_LO, lo);
    for _ in 0..10_000 {
        if read(ICR_LO) & ICR_PENDING == 0 {
            return true;
        }
        pause();
    }
    false
}

/// INIT IPI (assert, level-triggered).
pub const IPI_INIT: u32 = 0x4500;
/// STARTUP IPI; OR in the vector (trampoline page number).
pub const IPI_SIPI: u32 = 0x4600;

/// Starts the timer in periodic mode: `count` bus clocks divided by 16.
pub fn timer_periodic(vector: u8, count: u32) {
    write(TIMER_DIV, 0x3);
    write(LVT_TIMER, LVT_PERIODIC | u32::from(vector));
    write(TIMER_INIT, count);
}

/// Starts a masked one-shot countdown from `u32::MAX` at the bus clock
/// (divide by 1), for calibration with [`timer_current`].
pub fn timer_free_run() {
    write(TIMER_DIV, 0xb);
    write(LVT_TIMER, LVT_MASKED);
    write(TIMER_INIT, u32::MAX);
}

/// The timer's current count.
pub fn timer_current() -> u32 {
    read(TIMER_CUR)
}

/// Stops and masks the timer.
pub fn timer_stop() {
    write(LVT_TIMER, LVT_MASKED);
    write(TIMER_INIT, 0);
}
