//! CPUID queries.

use crate::cpu::cpuid;

/// Whether CPUID.(EAX=7,ECX=0):ECX bit 28 (MOVDIR64B) is set; `None` when
/// leaf 7 does not exist.
pub fn movdir64b() -> Option<bool> {
    let (max, ..) = cpuid(0, 0);
    if max < 7 {
        return None;
    }
    let (_, _, ecx, _) = cpuid(7, 0);
    Some(ecx & (1 << 28) != 0)
}

/// Whether CPUID.(EAX=7,ECX=0):ECX bit 27 (MOVDIRI) is set.
pub fn movdiri() -> bool {
    let (max, ..) = cpuid(0, 0);
    max >= 7 && cpuid(7, 0).2 & (1 << 27) != 0
}

/// The 12-byte hypervisor vendor signature (CPUID 0x40000000), if any.
pub fn hypervisor() -> Option<[u8; 12]> {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 31) == 0 {
        return None;
    }
    let (_, b, c, d) = cpuid(0x4000_0000, 0);
    let mut s = [0u8; 12];
    for (dst, src) in s.iter_mut().zip(
        b.to_le_bytes()
            .iter()
            .chain(c.to_le_bytes().iter())
            .chain(d.to_le_bytes().iter()),
    ) {
        *dst = *src;
    }
    Some(s)
}

/// TSC frequency in Hz from CPUID 0x15 or the KVM/VMware leaf 0x40000010;
/// `None` when neither says.
pub fn tsc_hz() -> Option<u64> {
    let (max, ..) = cpuid(0, 0);
    if max >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return Some(u64::from(crystal) * u64::from(num) / u64::from(den));
        }
    }
    if hypervisor().is_some() {
        let (hmax, ..) = cpuid(0x4000_0000, 0);
        if hmax >= 0x4000_0010 {
            let (khz, ..) = cpuid(0x4000_0010, 0);
            if khz != 0 {
                return Some(u64::from(khz) * 1000);
            }
        }
    }
    None
}
