//! The interrupt descriptor table and the exception handler.
//!
//! Vectors 0..31 go to per-vector stubs that report the exception and power
//! the VM off with a failure (unless a probe of `faults.rs` is running: then
//! the exception is recorded and the probe resumes); vector 0xe0 is the DPL-3
//! gate the user routines of `usermode.rs` return through; the LAPIC timer and spurious vectors have their
//! own stubs (see `entry.rs`); vectors 0x50..0x9f go to counting stubs
//! (device MSI-X completions and the AP wake IPI, see [`irq_count`]). Vectors 0x20..0x2f (a legacy PIC's usual range)
//! go to the spurious stub, too, so a stray PIC interrupt is harmless.

use core::cell::UnsafeCell;

use crate::entry::{
    selftest_exc_stubs, selftest_irq_stubs, selftest_spurious_isr, selftest_timer_isr,
    EXC_STUB_SIZE, IRQ_FIRST_VECTOR, IRQ_STUBS, IRQ_STUB_SIZE, KERNEL_CS, SPURIOUS_VECTOR,
    TIMER_VECTOR,
};
use crate::fmt::Line;

#[repr(C, align(16))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: written only by the BSP in `init`, before interrupts are enabled
// and before any AP runs; read by the CPU afterwards.
unsafe impl Sync for Table {}

// In .data, not .bss: the entry code clears .bss with `rep stosq`, which this
// KVM's emulator executes one memory write at a time.
#[link_section = ".data.idt"]
static IDT: Table = Table(UnsafeCell::new([0; 512]));

fn set_gate(vector: u8, handler: u64) {
    set_gate_dpl(vector, handler, 0);
}

/// Sets an interrupt gate that code at CPL <= `dpl` may invoke with `int`.
fn set_gate_dpl(vector: u8, handler: u64, dpl: u64) {
    let lo = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | ((0x8e | (dpl & 3) << 5) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    let hi = handler >> 32;
    let i = usize::from(vector) * 2;
    // SAFETY: see `Table`; i + 1 < 512 for any u8 vector.
    unsafe {
        let t = &mut *IDT.0.get();
        if let Some(s) = t.get_mut(i) {
            *s = lo;
        }
        if let Some(s) = t.get_mut(i + 1) {
            *s = hi;
        }
    }
}

/// Fills the IDT (BSP, once) and loads it.
pub fn init() {
    let (exc, timer, spurious) = (
        core::ptr::addr_of!(selftest_exc_stubs) as u64,
        core::ptr::addr_of!(selftest_timer_isr) as u64,
        core::ptr::addr_of!(selftest_spurious_isr) as u64,
    );
    for v in 0..32u8 {
        set_gate(v, exc + u64::from(v) * EXC_STUB_SIZE);
    }
    for v in 0x20..0x30u8 {
        set_gate(v, spurious);
    }
    let irq = core::ptr::addr_of!(selftest_irq_stubs) as u64;
    for i in 0..IRQ_STUBS as u8 {
        set_gate(IRQ_FIRST_VECTOR + i, irq + u64::from(i) * IRQ_STUB_SIZE);
    }
    // #UD: skips a MOVDIR64B the CPU lacks (see `entry.rs`), else reports.
    set_gate(6, core::ptr::addr_of!(crate::entry::selftest_ud_isr) as u64);
    // The user routines of the fault cases return through a DPL-3 gate.
    set_gate_dpl(
        crate::usermode::USER_RETURN_VECTOR,
        core::ptr::addr_of!(crate::faults::selftest_user_return_isr) as u64,
        3,
    );
    set_gate(TIMER_VECTOR, timer);
    set_gate(SPURIOUS_VECTOR, spurious);
    load();
}

/// Loads the IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let ptr = Ptr {
        limit: 4095,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is a static 4 KiB table of valid (or not-present) gates.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags))
    };
}

/// Called by the exception stubs with a pointer to
/// `[vector, error code, rip, cs, rflags, rsp, ss]`.
#[no_mangle]
extern "C" fn selftest_exception(frame: *const u64) -> ! {
    // SAFETY: the stub passes its stack pointer, below which it pushed the
    // vector and error code on top of the CPU's 5-word interrupt frame.
    let f = unsafe { core::slice::from_raw_parts(frame, 7) };
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let mut l = Line::new();
    l.s("selftest: exception: FAIL vector ")
        .dec(get(0))
        .s(" error ")
        .hex(get(1))
        .s(" rip ")
        .hex(get(2))
        .s(" rsp ")
        .hex(get(5));
    if get(0) == 14 {
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe {
            core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
        };
        l.s(" cr2 ").hex(cr2);
    }
    crate::serial::line(&l);
    crate::poweroff::abort()
}

/// How many times vector `vector` (a counting-stub vector) has fired.
pub fn irq_count(vector: u8) -> u64 {
    let i = usize::from(vector.wrapping_sub(IRQ_FIRST_VECTOR));
    // SAFETY: only a shared reference to the atomic counters is taken.
    let counts = unsafe { &crate::entry::selftest_irq_counts };
    counts
        .get(i)
        .map_or(0, |c| c.load(core::sync::atomic::Ordering::Acquire))
}

/// TSC at the last run of vector `vector`'s handler (a counting-stub vector).
pub fn irq_tsc(vector: u8) -> u64 {
    let i = usize::from(vector.wrapping_sub(IRQ_FIRST_VECTOR));
    // SAFETY: only a shared reference to the atomic timestamps is taken.
    let tsc = unsafe { &crate::entry::selftest_irq_tsc };
    tsc.get(i)
        .map_or(0, |c| c.load(core::sync::atomic::Ordering::Acquire))
}
