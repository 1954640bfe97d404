//! Guest linear to physical translation by walking the guest's page tables in guest memory, with
//! the checks the MMU makes (Intel SDM vol. 3A ch. 4.5-4.8, AMD APM vol. 2 ch. 5): the MOVDIR64B /
//! MOVDIRI emulation path (`direct_store.rs`) uses it instead of KVM_TRANSLATE (6-8 µs saved per
//! descriptor, and KVM_TRANSLATE checks no permission).
//!
//! Honoured: 4- and 5-level paging (CR4.LA57), 1 GiB and 2 MiB pages, present, R/W with CR0.WP,
//! U/S against the access's privilege, NX with EFER.NXE, SMAP (CR4.SMAP with RFLAGS.AC) and SMEP
//! (CR4.SMEP), protection keys (CR4.PKE, PKRU supplied by the caller on demand), reserved bits
//! (physical-address bits above MAXPHYADDR, PS in PML5E/PML4E, PS in a PDPTE without 1 GiB pages
//! in CPUID, the reserved low bits of large pages, XD without NXE). On success the accessed bit is
//! set in every entry used and the dirty bit in the leaf for a write, each by a compare-and-swap
//! against the value the walk read, as the MMU's locked update does: if another vCPU changed an
//! entry in between, the walk starts again (bounded). A table that lies outside guest RAM reads as
//! all ones (what an unbacked bus returns), which is a reserved-bit fault, never a VMM error.
//!
//! Not modelled: legacy 32-bit and PAE paging (the caller only walks in IA-32e mode), CET shadow
//! stack pages (a plain store to one already faults as R/W=0), HLAT, LAM (hidden in CPUID), AMD's
//! reserved bit 8 of non-leaf PML4Es.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const PAGE_SIZE: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Bits 51:12 of an entry: the next table's or the page frame's address (before MAXPHYADDR).
const FRAME_MASK: u64 = 0x000f_ffff_ffff_f000;

const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const CR4_PKE: u64 = 1 << 22;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;

/// #PF error code: the fault was a protection violation on a present page (clear: not present).
pub const PF_PRESENT: u32 = 1 << 0;
/// #PF error code: the access was a write.
pub const PF_WRITE: u32 = 1 << 1;
/// #PF error code: the access was a user-mode access (CPL 3).
pub const PF_USER: u32 = 1 << 2;
/// #PF error code: a reserved bit was set in a paging-structure entry.
pub const PF_RSVD: u32 = 1 << 3;
/// #PF error code: the access was an instruction fetch.
pub const PF_FETCH: u32 = 1 << 4;
/// #PF error code: a protection-key violation.
pub const PF_PK: u32 = 1 << 5;

/// What the access does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// The paging state of the vCPU at the time of the access (from its control registers).
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingState {
    /// CR0 (PG, WP).
    pub cr0: u64,
    /// CR3 (the root table; PCID and other low/high control bits are ignored).
    pub cr3: u64,
    /// CR4 (LA57, SMEP, SMAP, PKE).
    pub cr4: u64,
    /// IA32_EFER (NXE).
    pub efer: u64,
    /// RFLAGS (AC, for SMAP).
    pub rflags: u64,
    /// Current privilege level (3 = user-mode accesses).
    pub cpl: u8,
    /// MAXPHYADDR the guest's CPUID reports (leaf 0x8000_0008 EAX[7:0]).
    pub max_phys_bits: u8,
    /// 1 GiB pages in the guest's CPUID (leaf 0x8000_0001 EDX[26]); without them PS in a PDPTE is
    /// reserved.
    pub gbpages: bool,
}

impl PagingState {
    /// Whether linear addresses are 57 bits wide (5-level paging).
    pub fn la57(&self) -> bool {
        self.cr4 & CR4_LA57 != 0
    }

    /// Whether `va` is canonical in the current paging mode (48 or 57 bits, sign-extended).
    pub fn is_canonical(&self, va: u64) -> bool {
        let bits = if self.la57() { 57 } else { 48 };
        let shift = 64 - bits;
        ((va << shift) as i64 >> shift) as u64 == va
    }

    /// Physical-address bits of an entry beyond MAXPHYADDR (reserved), within bits 51:12.
    fn phys_reserved(&self) -> u64 {
        let bits = u32::from(self.max_phys_bits.clamp(32, 52));
        FRAME_MASK & !((1u64 << bits) - 1)
    }
}

/// A page fault: what the CPU would deliver as #PF (CR2 = `addr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address.
    pub addr: u64,
    /// The #PF error code (`PF_*` bits).
    pub error_code: u32,
}

/// How often a walk starts again when another vCPU changed an entry under it, before the
/// accessed/dirty update falls back to a plain atomic OR (a guest rewriting its tables in a loop
/// must not hold the vCPU here).
const MAX_WALK_RETRIES: usize = 8;

/// Translates linear address `va` for `access` under `state`, setting accessed/dirty bits on
/// success. `pkru` is asked for the PKRU register only when a protection-key check needs it.
pub fn translate(
    mem: &GuestMemoryMmap,
    state: &PagingState,
    va: u64,
    access: Access,
    pkru: &mut dyn FnMut() -> u32,
) -> Result<u64, PageFault> {
    if state.cr0 & CR0_PG == 0 {
        return Ok(va);
    }
    let mut attempt = 0;
    loop {
        let walk = walk(mem, state, va, access, pkru)?;
        if walk.update_accessed_dirty(mem, access, attempt >= MAX_WALK_RETRIES) {
            return Ok(walk.gpa);
        }
        attempt += 1;
    }
}

/// A successful walk: the entries it used (address and the value read) and the result.
struct Walk {
    used: [(u64, u64); 5],
    n_used: usize,
    gpa: u64,
}

impl Walk {
    /// Sets A in every entry used and D in the leaf for a write, each only if the entry still
    /// holds what the walk read; false if one changed (the walk must be redone). With `force`,
    /// ORs the bits in whatever the entries hold and never fails.
    fn update_accessed_dirty(&self, mem: &GuestMemoryMmap, access: Access, force: bool) -> bool {
        for (i, &(gpa, old)) in self.used[..self.n_used].iter().enumerate() {
            let leaf_write = i + 1 == self.n_used && access == Access::Write;
            let bits = if leaf_write {
                ACCESSED | DIRTY
            } else {
                ACCESSED
            };
            if old & bits == bits {
                continue;
            }
            let Ok(slice) = mem.get_slice(GuestAddress(gpa), 8) else {
                continue;
            };
            let Ok(entry) = slice.get_atomic_ref::<AtomicU64>(0) else {
                continue;
            };
            if force {
                entry.fetch_or(bits, Ordering::AcqRel);
            } else if entry
                .compare_exchange(old, old | bits, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

/// One walk of the tables with every check; no entry is modified.
fn walk(
    mem: &GuestMemoryMmap,
    state: &PagingState,
    va: u64,
    access: Access,
    pkru: &mut dyn FnMut() -> u32,
) -> Result<Walk, PageFault> {
    let user_access = state.cpl == 3;
    let nxe = state.efer & EFER_NXE != 0;
    let mut code = match access {
        Access::Read => 0,
        Access::Write => PF_WRITE,
        // I/D is reported only where fetches can fault for being fetches (SDM 4.7).
        Access::Fetch if nxe || state.cr4 & CR4_SMEP != 0 => PF_FETCH,
        Access::Fetch => 0,
    };
    if user_access {
        code |= PF_USER;
    }
    let fault = |extra: u32| PageFault {
        addr: va,
        error_code: code | extra,
    };
    let phys_reserved = state.phys_reserved();
    let top_shift: u32 = if state.la57() { 48 } else { 39 };

    let mut used = [(0u64, 0u64); 5];
    let mut n_used = 0;
    let (mut writable, mut user, mut no_exec) = (true, true, false);
    let mut table = state.cr3 & FRAME_MASK & !phys_reserved;
    let mut shift = top_shift;
    let (leaf, leaf_shift) = loop {
        let entry_gpa = table + ((va >> shift) & 0x1ff) * 8;
        let entry = read_entry(mem, entry_gpa);
        if entry & PRESENT == 0 {
            return Err(fault(0));
        }
        let large = entry & PAGE_SIZE != 0;
        let mut reserved = entry & phys_reserved;
        if !nxe {
            reserved |= entry & XD;
        }
        match shift {
            // PML5E / PML4E: PS is reserved.
            48 | 39 => reserved |= entry & PAGE_SIZE,
            // PDPTE: PS is reserved without 1 GiB pages; in a 1 GiB page bits 29:13 are (bit 12
            // is PAT).
            30 if large && !state.gbpages => reserved |= PAGE_SIZE,
            30 if large => reserved |= entry & 0x3fff_e000,
            // A 2 MiB page: bits 20:13 are reserved.
            21 if large => reserved |= entry & 0x001f_e000,
            _ => {}
        }
        if reserved != 0 {
            return Err(fault(PF_PRESENT | PF_RSVD));
        }
        if let Some(slot) = used.get_mut(n_used) {
            *slot = (entry_gpa, entry);
            n_used += 1;
        }
        writable &= entry & WRITABLE != 0;
        user &= entry & USER != 0;
        no_exec |= nxe && entry & XD != 0;
        if shift == 12 || large {
            break (entry, shift);
        }
        table = entry & FRAME_MASK & !phys_reserved;
        shift -= 9;
    };

    // Permissions of the whole walk (SDM 4.6). A protection-key violation is reported (PK) with
    // any other protection violation of the same access, as the MMU reports it.
    let mut violation = false;
    let mut pk = 0;
    match access {
        Access::Fetch => {
            violation |= no_exec || (user_access && !user);
            violation |= !user_access && user && state.cr4 & CR4_SMEP != 0;
        }
        Access::Read | Access::Write => {
            let write = access == Access::Write;
            if user_access {
                violation |= !user || (write && !writable);
            } else {
                violation |= user && state.cr4 & CR4_SMAP != 0 && state.rflags & RFLAGS_AC == 0;
                violation |= write && !writable && state.cr0 & CR0_WP != 0;
            }
            if user && state.cr4 & CR4_PKE != 0 {
                let key = (leaf >> 59) & 0xf;
                let rights = pkru() >> (2 * key);
                let access_disabled = rights & 1 != 0;
                let write_disabled = rights & 2 != 0;
                if access_disabled
                    || (write && write_disabled && (user_access || state.cr0 & CR0_WP != 0))
                {
                    pk = PF_PK;
                }
            }
        }
    }
    if violation || pk != 0 {
        return Err(fault(PF_PRESENT | pk));
    }
    let page_mask = (1u64 << leaf_shift) - 1;
    Ok(Walk {
        used,
        n_used,
        gpa: (leaf & FRAME_MASK & !phys_reserved & !page_mask) | (va & page_mask),
    })
}

/// Reads a paging-structure entry; one outside guest RAM reads as all ones.
fn read_entry(mem: &GuestMemoryMmap, gpa: u64) -> u64 {
    mem.load::<u64>(GuestAddress(gpa), Ordering::Acquire)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
