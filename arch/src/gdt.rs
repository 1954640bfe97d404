//! The boot GDT for a 64-bit entry and its KVM segment descriptors.
//!
//! Linux's 64-bit boot protocol wants `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18, so the table is
//! null, null, code64, data, TSS.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const BOOT_CS: u16 = 0x10;
/// Selector of the data segment.
pub const BOOT_DS: u16 = 0x18;
/// Selector of the (dummy) TSS.
pub const BOOT_TSS: u16 = 0x20;

/// Packs a segment descriptor from its flags (access byte in bits 0-7, flags nibble in 12-15),
/// base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT, in selector order.
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: code, 64-bit, present, DPL0, G
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, 32-bit, present, writable, G
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS, busy
];

fn field(entry: u64, shift: u32, mask: u64) -> u64 {
    (entry >> shift) & mask
}

/// The KVM view of descriptor `entry` loaded with `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = (field(entry, 56, 0xff) << 24) | field(entry, 16, 0xff_ffff);
    let limit = ((field(entry, 48, 0xf) << 16) | field(entry, 0, 0xffff)) as u32;
    let g = field(entry, 55, 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if g == 1 { (limit << 12) | 0xfff } else { limit };
    kvm_segment {
        base,
        limit,
        selector,
        type_: field(entry, 40, 0xf) as u8,
        present: field(entry, 47, 1) as u8,
        dpl: field(entry, 45, 0x3) as u8,
        db: field(entry, 54, 1) as u8,
        s: field(entry, 44, 1) as u8,
        l: field(entry, 53, 1) as u8,
        g,
        avl: field(entry, 52, 1) as u8,
        padding: 0,
        unusable: u8::from(field(entry, 47, 1) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_long_mode() {
        let cs = segment_from_gdt(BOOT_GDT[2], BOOT_CS);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn data_and_tss() {
        let ds = segment_from_gdt(BOOT_GDT[3], BOOT_DS);
        assert_eq!((ds.type_, ds.db, ds.l, ds.unusable), (3, 1, 0, 0));
        let tss = segment_from_gdt(BOOT_GDT[4], BOOT_TSS);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
    }

    #[test]
    fn roundtrip_base_limit() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 0);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
    }
}
