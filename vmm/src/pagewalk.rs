//! Guest virtual to physical translation by walking the guest's 4-level page tables in guest
//! memory (cheaper than KVM_TRANSLATE's ioctl on the MOVDIR64B exit path: REFERENCE.md 11).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PRESENT: u64 = 1;
const PAGE_SIZE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const CR0_PG: u64 = 1 << 31;

/// Why an address did not translate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalkError {
    /// A table entry was not present.
    #[error("guest virtual address {0:#x} is not mapped")]
    NotMapped(u64),
    /// A table lay outside guest RAM.
    #[error("guest page table for {0:#x} is outside guest memory")]
    BadTable(u64),
}

/// Translates `va` under `cr3` (4-level paging; identity when paging is off).
pub fn translate(mem: &GuestMemoryMmap, cr0: u64, cr3: u64, va: u64) -> Result<u64, WalkError> {
    if cr0 & CR0_PG == 0 {
        return Ok(va);
    }
    let mut table = cr3 & ADDR_MASK;
    // (shift of this level's index, whether a large page may end the walk here)
    for (shift, large_ok) in [(39u32, false), (30, true), (21, true), (12, false)] {
        let idx = (va >> shift) & 0x1ff;
        let entry: u64 = mem
            .read_obj(GuestAddress(table + idx * 8))
            .map_err(|_| WalkError::BadTable(va))?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotMapped(va));
        }
        if shift == 12 || (large_ok && entry & PAGE_SIZE != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Ok((entry & ADDR_MASK & !page_mask) | (va & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    Err(WalkError::NotMapped(va))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_4k_and_2m_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 22)]).unwrap();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000; PD[0] -> PT 0x4000, PD[1] 2M page at 0x20_0000.
        mem.write_obj(0x2000u64 | 3, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x3000u64 | 3, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0x4000u64 | 3, GuestAddress(0x3000)).unwrap();
        mem.write_obj(0x20_0000u64 | 0x83, GuestAddress(0x3008))
            .unwrap();
        mem.write_obj(0x9000u64 | 3, GuestAddress(0x4000 + 5 * 8))
            .unwrap();
        assert_eq!(translate(&mem, CR0_PG, 0x1000, 0x5123), Ok(0x9123));
        assert_eq!(translate(&mem, CR0_PG, 0x1000, 0x20_1234), Ok(0x20_1234));
        assert_eq!(
            translate(&mem, CR0_PG, 0x1000, 0x6000),
            Err(WalkError::NotMapped(0x6000))
        );
        assert_eq!(translate(&mem, 0, 0x1000, 0x6000), Ok(0x6000));
        assert!(translate(&mem, CR0_PG, 0xfff_f000, 0).is_err());
    }
}
