//! Unit tests of the page walk: 4- and 5-level tables, large pages and every permission bit.

use super::*;

const MIB: u64 = 1 << 20;
const RW: u64 = PRESENT | WRITABLE;
const URW: u64 = PRESENT | WRITABLE | USER;

/// Guest memory with a bump allocator for page tables from 1 MiB up.
struct Tables {
    mem: GuestMemoryMmap,
    next: u64,
    root: u64,
    levels: u32,
}

impl Tables {
    fn new(levels: u32) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut t = Tables {
            mem,
            next: MIB,
            root: 0,
            levels,
        };
        t.root = t.alloc();
        t
    }

    fn alloc(&mut self) -> u64 {
        let p = self.next;
        self.next += 0x1000;
        p
    }

    fn entry(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    /// Maps `va` to `pa` with a leaf at `leaf_shift` (12, 21 or 30); `upper` are the flags of
    /// every non-leaf entry it adds, `leaf` of the leaf. Returns the leaf entry's address.
    fn map(&mut self, va: u64, pa: u64, leaf_shift: u32, upper: u64, leaf: u64) -> u64 {
        let mut table = self.root;
        let mut shift = if self.levels == 5 { 48 } else { 39 };
        loop {
            let gpa = table + ((va >> shift) & 0x1ff) * 8;
            if shift == leaf_shift {
                let ps = if leaf_shift > 12 { PAGE_SIZE } else { 0 };
                self.mem
                    .write_obj(pa | leaf | ps, GuestAddress(gpa))
                    .unwrap();
                return gpa;
            }
            let e = self.entry(gpa);
            // An existing entry keeps its flags: `upper` applies to the entries this call adds.
            table = if e & PRESENT != 0 {
                e & FRAME_MASK
            } else {
                let t = self.alloc();
                self.mem.write_obj(t | upper, GuestAddress(gpa)).unwrap();
                t
            };
            shift -= 9;
        }
    }

    fn state(&self) -> PagingState {
        PagingState {
            cr0: CR0_PG | CR0_WP,
            cr3: self.root,
            cr4: if self.levels == 5 { CR4_LA57 } else { 0 },
            efer: EFER_NXE,
            rflags: 0,
            cpl: 0,
            max_phys_bits: 46,
            gbpages: true,
        }
    }

    fn walk(&self, s: &PagingState, va: u64, a: Access) -> Result<u64, PageFault> {
        translate(&self.mem, s, va, a, &mut || 0)
    }
}

fn pf(addr: u64, error_code: u32) -> Result<u64, PageFault> {
    Err(PageFault { addr, error_code })
}

#[test]
fn four_level_4k_sets_accessed_and_dirty() {
    let mut t = Tables::new(4);
    let va = 0x7f12_3456_7000;
    let leaf = t.map(va, 0x9000, 12, RW, RW);
    let s = t.state();
    assert_eq!(t.walk(&s, va + 0x123, Access::Read), Ok(0x9123));
    assert_eq!(t.entry(leaf) & (ACCESSED | DIRTY), ACCESSED);
    assert_eq!(
        t.entry(t.root + ((va >> 39) & 0x1ff) * 8) & ACCESSED,
        ACCESSED
    );
    assert_eq!(t.walk(&s, va, Access::Write), Ok(0x9000));
    assert_eq!(t.entry(leaf) & (ACCESSED | DIRTY), ACCESSED | DIRTY);
}

#[test]
fn faults_leave_accessed_and_dirty_alone() {
    let mut t = Tables::new(4);
    let leaf = t.map(0x5000, 0x9000, 12, RW, PRESENT);
    let s = t.state();
    assert_eq!(
        t.walk(&s, 0x5000, Access::Write),
        pf(0x5000, PF_PRESENT | PF_WRITE)
    );
    assert_eq!(t.entry(leaf) & (ACCESSED | DIRTY), 0);
}

#[test]
fn five_level_tables_use_bits_56_to_48() {
    let mut t = Tables::new(5);
    // An address only 5-level paging can reach (bit 50 set, canonical in 57 bits).
    let va = 0x0004_1234_5678_9000;
    t.map(va, 0xa000, 12, RW, RW);
    let s = t.state();
    assert!(s.is_canonical(va));
    assert_eq!(t.walk(&s, va + 8, Access::Read), Ok(0xa008));
    // The same tables read as 4-level give a different walk: not mapped there.
    let four = PagingState { cr4: 0, ..s };
    assert!(!four.is_canonical(va));
    assert!(t
        .walk(&four, va & 0x0000_ffff_ffff_ffff, Access::Read)
        .is_err());
    // A different PML5 slot is not present.
    assert_eq!(
        t.walk(&s, 0x0008_0000_0000_0000, Access::Read),
        pf(0x0008_0000_0000_0000, 0)
    );
}

#[test]
fn canonical_forms() {
    let s4 = PagingState::default();
    assert!(s4.is_canonical(0x0000_7fff_ffff_ffff));
    assert!(s4.is_canonical(0xffff_8000_0000_0000));
    assert!(!s4.is_canonical(0x0000_8000_0000_0000));
    let s5 = PagingState {
        cr4: CR4_LA57,
        ..s4
    };
    assert!(s5.is_canonical(0x00ff_ffff_ffff_ffff));
    assert!(!s5.is_canonical(0x0100_0000_0000_0000));
    assert!(s5.is_canonical(0xff00_0000_0000_0000));
}

#[test]
fn large_pages_2m_and_1g() {
    for levels in [4, 5] {
        let mut t = Tables::new(levels);
        t.map(0x4000_0000, 0x20_0000, 21, RW, RW);
        t.map(0x80_0000_0000, 0x4000_0000, 30, RW, RW);
        let s = t.state();
        assert_eq!(t.walk(&s, 0x4012_3456, Access::Read), Ok(0x32_3456));
        assert_eq!(t.walk(&s, 0x80_1234_5678, Access::Write), Ok(0x5234_5678));
    }
}

#[test]
fn large_page_reserved_low_bits() {
    let mut t = Tables::new(4);
    // 2 MiB page with bit 13 set: reserved. PAT (bit 12) is allowed.
    t.map(0x20_0000, 0x40_0000 | (1 << 13), 21, RW, RW);
    t.map(0x60_0000, 0x40_0000 | (1 << 12), 21, RW, RW);
    t.map(0x4000_0000, 0x4000_0000 | (1 << 20), 30, RW, RW);
    let s = t.state();
    assert_eq!(
        t.walk(&s, 0x20_0000, Access::Read),
        pf(0x20_0000, PF_PRESENT | PF_RSVD)
    );
    assert_eq!(t.walk(&s, 0x60_0010, Access::Read), Ok(0x40_0010));
    assert_eq!(
        t.walk(&s, 0x4000_0000, Access::Read),
        pf(0x4000_0000, PF_PRESENT | PF_RSVD)
    );
}

#[test]
fn not_present_at_each_level_and_error_code_bits() {
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000, 12, URW, URW);
    let mut s = t.state();
    // PT entry missing (next page), PD entry missing (next 2 MiB), PDPT and PML4 entries missing.
    for va in [0x2000, 0x20_0000, 0x4000_0000, 0x80_0000_0000] {
        assert_eq!(t.walk(&s, va, Access::Read), pf(va, 0));
        assert_eq!(t.walk(&s, va, Access::Write), pf(va, PF_WRITE));
        assert_eq!(t.walk(&s, va, Access::Fetch), pf(va, PF_FETCH));
    }
    s.cpl = 3;
    assert_eq!(
        t.walk(&s, 0x2000, Access::Write),
        pf(0x2000, PF_WRITE | PF_USER)
    );
    assert_eq!(t.walk(&s, 0x2000, Access::Read), pf(0x2000, PF_USER));
}

#[test]
fn user_supervisor_and_smap() {
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000, 12, URW, RW); // supervisor page
    t.map(0x2000, 0xa000, 12, URW, URW); // user page
    t.map(0x40_0000, 0xb000, 12, RW, URW); // user leaf under a supervisor PDE: supervisor
    let mut s = t.state();
    assert!(t.walk(&s, 0x1000, Access::Write).is_ok());
    assert!(t.walk(&s, 0x2000, Access::Write).is_ok());
    s.cpl = 3;
    assert_eq!(
        t.walk(&s, 0x1000, Access::Write),
        pf(0x1000, PF_PRESENT | PF_WRITE | PF_USER)
    );
    assert_eq!(
        t.walk(&s, 0x1000, Access::Read),
        pf(0x1000, PF_PRESENT | PF_USER)
    );
    assert_eq!(
        t.walk(&s, 0x40_0000, Access::Read),
        pf(0x40_0000, PF_PRESENT | PF_USER)
    );
    assert_eq!(t.walk(&s, 0x2000, Access::Write), Ok(0xa000));
    // SMAP: a supervisor data access to a user page faults unless RFLAGS.AC.
    s.cpl = 0;
    s.cr4 |= CR4_SMAP;
    assert_eq!(
        t.walk(&s, 0x2000, Access::Write),
        pf(0x2000, PF_PRESENT | PF_WRITE)
    );
    s.rflags |= RFLAGS_AC;
    assert_eq!(t.walk(&s, 0x2000, Access::Write), Ok(0xa000));
    // SMEP: a supervisor fetch from a user page faults whatever AC says.
    s.cr4 |= CR4_SMEP;
    assert_eq!(
        t.walk(&s, 0x2000, Access::Fetch),
        pf(0x2000, PF_PRESENT | PF_FETCH)
    );
    assert!(t.walk(&s, 0x1000, Access::Fetch).is_ok());
}

#[test]
fn read_only_and_cr0_wp() {
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000, 12, URW, PRESENT | USER); // read-only leaf
    t.map(0x20_0000, 0xa000, 12, PRESENT | USER, URW); // read-only PDE above a writable leaf
    let mut s = t.state();
    for va in [0x1000, 0x20_0000] {
        assert_eq!(t.walk(&s, va, Access::Write), pf(va, PF_PRESENT | PF_WRITE));
        assert!(t.walk(&s, va, Access::Read).is_ok());
    }
    // CR0.WP clear: supervisor writes ignore R/W; user writes never do.
    s.cr0 &= !CR0_WP;
    assert_eq!(t.walk(&s, 0x1000, Access::Write), Ok(0x9000));
    s.cpl = 3;
    assert_eq!(
        t.walk(&s, 0x1000, Access::Write),
        pf(0x1000, PF_PRESENT | PF_WRITE | PF_USER)
    );
}

#[test]
fn nx_with_and_without_nxe() {
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000, 12, RW, RW | XD);
    let mut s = t.state();
    assert_eq!(
        t.walk(&s, 0x1000, Access::Fetch),
        pf(0x1000, PF_PRESENT | PF_FETCH)
    );
    assert_eq!(t.walk(&s, 0x1000, Access::Write), Ok(0x9000));
    s.efer = 0;
    assert_eq!(
        t.walk(&s, 0x1000, Access::Read),
        pf(0x1000, PF_PRESENT | PF_RSVD)
    );
}

#[test]
fn reserved_physical_bits_and_ps_in_pml4e() {
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000 | (1 << 47), 12, RW, RW); // above MAXPHYADDR 46
    let s = t.state();
    assert_eq!(
        t.walk(&s, 0x1000, Access::Read),
        pf(0x1000, PF_PRESENT | PF_RSVD)
    );
    // With MAXPHYADDR 48 the same bit is an address bit (outside this RAM, but translatable).
    let wide = PagingState {
        max_phys_bits: 48,
        ..s
    };
    assert_eq!(t.walk(&wide, 0x1000, Access::Read), Ok(0x8000_0000_9000));
    // PS in a PML4E is reserved.
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000, 12, RW, RW);
    let e = t.entry(t.root);
    t.mem
        .write_obj(e | PAGE_SIZE, GuestAddress(t.root))
        .unwrap();
    assert_eq!(
        t.walk(&t.state(), 0x1000, Access::Read),
        pf(0x1000, PF_PRESENT | PF_RSVD)
    );
}

#[test]
fn table_outside_ram_is_a_reserved_bit_fault_not_an_error() {
    let t = Tables::new(4);
    let s = PagingState {
        cr3: 0xffff_f000,
        ..t.state()
    };
    assert_eq!(
        t.walk(&s, 0x1000, Access::Read),
        pf(0x1000, PF_PRESENT | PF_RSVD)
    );
}

#[test]
fn protection_keys_on_user_pages() {
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000, 12, URW, URW | (3 << 59)); // key 3
    t.map(0x2000, 0xa000, 12, URW, RW | (3 << 59)); // supervisor page: keys do not apply
    let mut s = t.state();
    s.cr4 |= CR4_PKE;
    let mut asked = 0;
    let mut access_disabled = || {
        asked += 1;
        1 << 6
    };
    s.cpl = 3;
    assert_eq!(
        translate(&t.mem, &s, 0x1000, Access::Read, &mut access_disabled),
        pf(0x1000, PF_PRESENT | PF_USER | PF_PK)
    );
    assert_eq!(asked, 1);
    s.cpl = 0;
    assert!(translate(&t.mem, &s, 0x2000, Access::Write, &mut || u32::MAX).is_ok());
    // Write-disable: user writes fault, supervisor writes fault only with CR0.WP.
    let wd = 2 << 6;
    s.cpl = 3;
    assert_eq!(
        translate(&t.mem, &s, 0x1000, Access::Write, &mut || wd),
        pf(0x1000, PF_PRESENT | PF_WRITE | PF_USER | PF_PK)
    );
    assert!(translate(&t.mem, &s, 0x1000, Access::Read, &mut || wd).is_ok());
    s.cpl = 0;
    s.cr0 &= !CR0_WP;
    assert!(translate(&t.mem, &s, 0x1000, Access::Write, &mut || wd).is_ok());
}

#[test]
fn paging_off_is_identity() {
    let t = Tables::new(4);
    let s = PagingState {
        cr0: 0,
        ..t.state()
    };
    assert_eq!(t.walk(&s, 0x1234_5678, Access::Write), Ok(0x1234_5678));
}

#[test]
fn fetch_error_code_has_i_d_only_with_nxe_or_smep() {
    let t = Tables::new(4);
    let mut s = t.state();
    s.efer = 0;
    assert_eq!(t.walk(&s, 0x5000, Access::Fetch), pf(0x5000, 0));
    s.cr4 |= CR4_SMEP;
    assert_eq!(t.walk(&s, 0x5000, Access::Fetch), pf(0x5000, PF_FETCH));
}

#[test]
fn protection_key_bit_comes_with_other_protection_faults() {
    let mut t = Tables::new(4);
    t.map(0x1000, 0x9000, 12, URW, PRESENT | USER | (3 << 59)); // read-only, key 3
    let mut s = t.state();
    s.cr4 |= CR4_PKE;
    s.cpl = 3;
    let wd = 2 << 6;
    assert_eq!(
        translate(&t.mem, &s, 0x1000, Access::Write, &mut || wd),
        pf(0x1000, PF_PRESENT | PF_WRITE | PF_USER | PF_PK)
    );
    assert_eq!(
        translate(&t.mem, &s, 0x1000, Access::Write, &mut || 0),
        pf(0x1000, PF_PRESENT | PF_WRITE | PF_USER)
    );
    // Supervisor access to a user page with access-disable.
    s.cpl = 0;
    assert_eq!(
        translate(&t.mem, &s, 0x1000, Access::Read, &mut || 1 << 6),
        pf(0x1000, PF_PRESENT | PF_PK)
    );
}

#[test]
fn one_gib_pages_need_cpuid_gbpages() {
    let mut t = Tables::new(4);
    t.map(0x4000_0000, 0x4000_0000, 30, RW, RW);
    let s = PagingState {
        gbpages: false,
        ..t.state()
    };
    assert_eq!(
        t.walk(&s, 0x4000_0000, Access::Read),
        pf(0x4000_0000, PF_PRESENT | PF_RSVD)
    );
}

#[test]
fn ps_in_a_pml5e_is_reserved() {
    let mut t = Tables::new(5);
    t.map(0x1000, 0x9000, 12, RW, RW);
    let e = t.entry(t.root);
    t.mem
        .write_obj(e | PAGE_SIZE, GuestAddress(t.root))
        .unwrap();
    assert_eq!(
        t.walk(&t.state(), 0x1000, Access::Read),
        pf(0x1000, PF_PRESENT | PF_RSVD)
    );
}

#[test]
fn accessed_dirty_update_fails_when_an_entry_changed_under_the_walk() {
    let mut t = Tables::new(4);
    let leaf = t.map(0x1000, 0x9000, 12, RW, RW);
    let s = t.state();
    let w = walk(&t.mem, &s, 0x1000, Access::Write, &mut || 0).unwrap();
    // Another vCPU remaps the page before the A/D update.
    t.mem.write_obj(0xa000u64 | RW, GuestAddress(leaf)).unwrap();
    assert!(!w.update_accessed_dirty(&t.mem, Access::Write, false));
    assert_eq!(
        t.entry(leaf),
        0xa000 | RW,
        "the new entry is not marked dirty"
    );
    // The retried walk sees the new frame and marks it.
    assert_eq!(t.walk(&s, 0x1000, Access::Write), Ok(0xa000));
    assert_eq!(t.entry(leaf), 0xa000 | RW | ACCESSED | DIRTY);
    // Forced (the last retry), the bits are ORed in whatever is there.
    t.mem.write_obj(0xb000u64 | RW, GuestAddress(leaf)).unwrap();
    assert!(w.update_accessed_dirty(&t.mem, Access::Write, true));
    assert_eq!(t.entry(leaf), 0xb000 | RW | ACCESSED | DIRTY);
}
