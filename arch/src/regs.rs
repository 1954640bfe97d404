//! Initial vCPU register state for the Linux 64-bit boot protocol entry: long mode with paging,
//! the boot GDT, RSI = zero page, interrupts off.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::gdt::{segment_from_gdt, BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_TSS};
use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, ZERO_PAGE_START};
use crate::paging::write_identity_tables;
use crate::Error;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_MP: u64 = 1 << 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const X86_CR4_OSFXSR: u64 = 1 << 9;
const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// General registers at entry: RIP = `entry`, RSI = zero page, RFLAGS with only the fixed bit.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state: default control words.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes the GDT, an empty IDT and the identity page tables to guest memory (once per VM).
pub fn write_boot_structures(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(|_| Error::BootStructure("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| Error::BootStructure("IDT"))?;
    write_identity_tables(mem)
}

/// Fills `sregs` (as read from the vCPU) for 64-bit mode with the tables at `cr3`.
pub fn setup_long_mode_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    let code = segment_from_gdt(BOOT_GDT[2], BOOT_CS);
    let data = segment_from_gdt(BOOT_GDT[3], BOOT_DS);
    let tss = segment_from_gdt(BOOT_GDT[4], BOOT_TSS);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    sregs.cr0 =
        (sregs.cr0 | X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE | X86_CR0_MP) & !(1 << 2); // clear EM so SSE works
    sregs.efer |= EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_bits() {
        let mut s = kvm_sregs::default();
        setup_long_mode_sregs(&mut s, 0x9000);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi), (0x100_0000, ZERO_PAGE_START));
    }
}
