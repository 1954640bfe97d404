//! dsavmm self-test guest: a freestanding 64-bit program that checks the boot
//! contract of the VMM it runs under (memory map, command line, initrd, ACPI
//! tables, CPUID, SMP bring-up, RAM, LAPIC timer interrupts) and reports on
//! the serial console, one line per case:
//! `selftest: <case>: ok|FAIL <reason>|skipped <reason>`, then
//! `selftest: N passed, M failed, K skipped`, then exits with M on port 0xf4
//! (or ACPI S5 power-off).
//!
//! Boots through the Linux 64-bit boot protocol (ELF entry) or PVH (Xen ELF
//! note). See README.md in this directory.

#![no_std]
#![no_main]
// Failure reasons are fixed-size `Line`s returned by value: there is no heap.
#![allow(clippy::result_large_err)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod acpi;
mod apic;
mod bootinfo;
mod cpu;
mod cpuid;
mod dsa;
mod dsatest;
mod e820;
mod entry;
mod faults;
mod fmt;
mod hostile;
mod idt;
mod mem;
mod pci;
mod phys;
mod poweroff;
mod serial;
mod smp;
mod tests;
mod time;
mod usermode;

use bootinfo::{BootInfo, BootKind};

/// Rust entry of the bootstrap processor, called from `entry.rs` with the
/// entry kind and the boot structure's address.
#[no_mangle]
extern "C" fn rust_main(kind: u32, arg: u64) -> ! {
    let start = cpu::rdtsc();
    stack_paint();
    serial::init();
    let kind = if kind == entry::BOOT_PVH {
        BootKind::Pvh
    } else {
        BootKind::Linux64
    };
    let mut l = fmt::Line::new();
    l.s("selftest: info boot=").s(if kind == BootKind::Pvh {
        "pvh"
    } else {
        "linux64"
    });
    l.s(" at=").hex(arg);
    if let Some(h) = cpuid::hypervisor() {
        l.s(" hypervisor=\"").printable(&h).s("\"");
    }
    serial::line(&l);
    // Copy everything needed out of the boot structures before low memory is reused.
    let mut boot = BootInfo::read(kind, arg);
    idt::init();
    time::init();
    tests::info(|l| {
        l.s("tsc_mhz=")
            .dec(time::tsc_hz() / 1_000_000)
            .s(" (")
            .s(time::source())
            .s(")");
    });
    let kernel = (
        core::ptr::addr_of!(entry::__kernel_start) as u64,
        core::ptr::addr_of!(entry::__kernel_end) as u64,
    );
    let mut runner = tests::run_all(&mut boot, kernel, start);
    let used = stack_used();
    tests::info(|l| {
        l.s("bsp_stack_used=")
            .dec(used as u64)
            .s(" of ")
            .dec(entry::BSP_STACK_SIZE as u64);
    });
    if used > entry::BSP_STACK_SIZE * 3 / 4 {
        runner.report(
            "stack",
            tests::Outcome::Fail({
                let mut l = fmt::Line::new();
                l.s("BSP stack use above 3/4 of its size");
                l
            }),
        );
    }
    runner.summary();
    poweroff::exit(runner.failed)
}

/// Value the unused BSP stack is painted with.
const STACK_PAINT: u64 = 0x5354_4143_4b50_4e54;

/// Paints the BSP stack below the current frame (minus a margin) with
/// [`STACK_PAINT`] (one `rep stosq`).
fn stack_paint() {
    let bottom = core::ptr::addr_of!(entry::selftest_bsp_stack) as u64;
    let rsp: u64;
    // SAFETY: reads RSP only.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags))
    };
    let end = rsp.saturating_sub(512) & !7;
    if end > bottom {
        // SAFETY: [bottom, end) is the unused part of this CPU's own stack,
        // below the live frames; DF is clear.
        unsafe {
            core::arch::asm!("rep stosq", inout("rcx") (end - bottom) / 8 => _,
                inout("rdi") bottom => _, in("rax") STACK_PAINT, options(nostack, preserves_flags));
        }
    }
}

/// Deepest BSP stack use so far, in bytes (the first overwritten paint word).
fn stack_used() -> usize {
    let bottom = core::ptr::addr_of!(entry::selftest_bsp_stack) as u64;
    let rem: u64;
    // SAFETY: scans the BSP stack from its bottom (readable memory); DF is clear.
    unsafe {
        core::arch::asm!("repe scasq", inout("rcx") (entry::BSP_STACK_SIZE / 8) as u64 => rem,
            inout("rdi") bottom => _, in("rax") STACK_PAINT, options(nostack, readonly));
    }
    // rcx counts the qwords left after the first mismatch.
    ((rem + 1) * 8) as usize
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut l = fmt::Line::new();
    l.s("selftest: panic: FAIL");
    if let Some(loc) = info.location() {
        l.s(" at ").s(loc.file()).s(":").dec(u64::from(loc.line()));
    }
    serial::line(&l);
    poweroff::abort()
}
