//! CPUID policy: what each vCPU sees, derived from `KVM_GET_SUPPORTED_CPUID`.
//!
//! Per vCPU: the APIC ID in leaves 1, 0xB and 0x1F, the hypervisor bit, a flat topology (one
//! thread per core, all cores in one package), VMX/SVM and LAM hidden, and MOVDIR64B/MOVDIRI forced
//! on when requested — the Linux idxd driver refuses to load without MOVDIR64B
//! (docs/dsa-device-model.md §0, trap 3).

use kvm_bindings::CpuId;

/// Leaf 7.0 ECX bit: MOVDIRI.
pub const LEAF7_ECX_MOVDIRI: u32 = 1 << 27;
/// Leaf 7.0 ECX bit: MOVDIR64B.
pub const LEAF7_ECX_MOVDIR64B: u32 = 1 << 28;
/// Leaf 1 ECX bit: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit: VMX (hidden: no nested virtualisation).
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX bit: SVM (hidden: no nested virtualisation).
const LEAF_8000_0001_ECX_SVM: u32 = 1 << 2;
/// Leaf 7.1 EAX bit: linear address masking (hidden: not modelled).
const LEAF7_1_EAX_LAM: u32 = 1 << 26;
/// Leaf 1 EDX bit: HTT (logical processor count in EBX[23:16] is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// What the policy needs to know about one vCPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuidParams {
    /// This vCPU's APIC ID (its index).
    pub apic_id: u8,
    /// Number of vCPUs in the VM.
    pub vcpus: u8,
    /// Force MOVDIR64B and MOVDIRI on in leaf 7.
    pub force_movdir64b: bool,
}

/// Bits needed to number `n` items.
fn width(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// Applies the policy to `cpuid` (a copy of the supported set) for one vCPU.
pub fn apply_policy(cpuid: &mut CpuId, p: &CpuidParams) {
    let shift = width(u32::from(p.vcpus));
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | (u32::from(p.apic_id) << 24)
                    | (u32::from(p.vcpus) << 16);
                e.ecx = (e.ecx | LEAF1_ECX_HYPERVISOR) & !LEAF1_ECX_VMX;
                e.edx |= LEAF1_EDX_HTT;
            }
            4 => {
                // EAX[31:26] = cores per package - 1; keep the cache description.
                e.eax = (e.eax & 0x03ff_ffff) | ((u32::from(p.vcpus) - 1) << 26);
            }
            7 if e.index == 0 && p.force_movdir64b => {
                e.ecx |= LEAF7_ECX_MOVDIR64B | LEAF7_ECX_MOVDIRI;
            }
            // LAM is not modelled by the VMM's page walk (tagged pointers would get #GP there).
            7 if e.index == 1 => e.eax &= !LEAF7_1_EAX_LAM,
            // No nested virtualisation: an L2 guest's emulation failure would reach dsavmm with
            // L2's registers, which it must not emulate against L1's memory.
            0x8000_0001 => e.ecx &= !LEAF_8000_0001_ECX_SVM,
            0xb | 0x1f => {
                e.edx = u32::from(p.apic_id);
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: all vCPUs.
                        e.eax = shift;
                        e.ebx = u32::from(p.vcpus);
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

/// What the guest's CPUID says about paging, for the VMM's own page walk (the MOVDIR64B path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingFeatures {
    /// MAXPHYADDR (leaf 0x8000_0008 EAX[7:0]; 36 when the leaf is absent, as the SDM specifies).
    pub max_phys_bits: u8,
    /// 1 GiB pages (leaf 0x8000_0001 EDX[26]).
    pub gbpages: bool,
    /// Byte offset of PKRU in the standard-format XSAVE image (leaf 0xD subleaf 9 EBX), when the
    /// CPU has the PKRU state component.
    pub pkru_xsave_offset: Option<u32>,
}

/// The paging facts of `cpuid` (the set given to the guest).
pub fn paging_features(cpuid: &CpuId) -> PagingFeatures {
    let leaf = |function: u32, index: u32| {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
    };
    PagingFeatures {
        max_phys_bits: leaf(0x8000_0008, 0).map_or(36, |e| (e.eax & 0xff) as u8),
        gbpages: leaf(0x8000_0001, 0).is_some_and(|e| e.edx & (1 << 26) != 0),
        pkru_xsave_offset: leaf(0xd, 9).filter(|e| e.eax != 0).map(|e| e.ebx),
    }
}

/// Whether leaf 7.0 of `cpuid` advertises MOVDIR64B.
pub fn has_movdir64b(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 7 && e.index == 0 && e.ecx & LEAF7_ECX_MOVDIR64B != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn sample() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0001_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn apic_id_and_movdir64b() {
        let mut c = sample();
        assert!(!has_movdir64b(&c));
        apply_policy(
            &mut c,
            &CpuidParams {
                apic_id: 3,
                vcpus: 4,
                force_movdir64b: true,
            },
        );
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert!(has_movdir64b(&c));
        assert_eq!((s[2].eax, s[2].ebx, s[2].edx), (2, 4, 3));
    }

    #[test]
    fn no_force_leaves_leaf7() {
        let mut c = sample();
        apply_policy(
            &mut c,
            &CpuidParams {
                apic_id: 0,
                vcpus: 1,
                force_movdir64b: false,
            },
        );
        assert!(!has_movdir64b(&c));
    }

    #[test]
    fn nested_virtualisation_and_lam_are_hidden() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: LEAF1_ECX_VMX | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 1,
                eax: LEAF7_1_EAX_LAM | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0001,
                ecx: LEAF_8000_0001_ECX_SVM | 1,
                edx: 1 << 26,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        apply_policy(
            &mut c,
            &CpuidParams {
                apic_id: 0,
                vcpus: 1,
                force_movdir64b: false,
            },
        );
        let s = c.as_slice();
        assert_eq!(s[0].ecx & (LEAF1_ECX_VMX | 1), 1);
        assert_eq!(s[1].eax, 1);
        assert_eq!(s[2].ecx, 1);
        let f = paging_features(&c);
        assert!(f.gbpages);
        assert_eq!(
            f.max_phys_bits, 36,
            "no leaf 0x8000_0008: the SDM's default"
        );
        assert_eq!(f.pkru_xsave_offset, None);
    }

    #[test]
    fn paging_features_from_leaves() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                eax: 0x3030,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                index: 9,
                eax: 8,
                ebx: 2440,
                ..Default::default()
            },
        ];
        let f = paging_features(&CpuId::from_entries(&entries).unwrap());
        assert_eq!(
            f,
            PagingFeatures {
                max_phys_bits: 48,
                gbpages: false,
                pkru_xsave_offset: Some(2440)
            }
        );
    }

    #[test]
    fn widths() {
        assert_eq!(
            (width(1), width(2), width(3), width(4), width(5)),
            (0, 1, 2, 2, 3)
        );
    }
}
