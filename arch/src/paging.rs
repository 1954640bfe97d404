//! Identity page tables for the 64-bit entry: 0..4 GiB with 2 MiB pages.
//!
//! Four page directories cover the low 4 GiB so that the kernel, the MMIO hole (PCI, ECAM, IOAPIC,
//! LAPIC) and the boot structures are all reachable before the guest builds its own tables.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::Error;

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes the PML4, PDPT and four PDs; returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    let w = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|_| Error::BootStructure("page tables"))
    };
    w(PML4_START, PDPTE_START | PRESENT_RW)?;
    for pd in 0..4u64 {
        let pd_addr = PDE_START + pd * 0x1000;
        w(PDPTE_START + pd * 8, pd_addr | PRESENT_RW)?;
        for i in 0..512u64 {
            let phys = ((pd << 9) + i) << 21;
            w(pd_addr + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M)?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lapic_identity() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let cr3 = write_identity_tables(&mem).unwrap();
        let va: u64 = 0xfee0_0000;
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 511) * 8))
            .unwrap();
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .unwrap();
        assert_eq!(pde & !0xfff, va & !0x1f_ffff);
        assert_eq!(pde & 0x83, 0x83);
    }
}
