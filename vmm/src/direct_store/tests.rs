//! Unit tests of the direct-store emulation over an identity-mapped guest and a recording device.

use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use kvm_bindings::kvm_segment;

use super::*;
use crate::pagewalk::{PF_FETCH, PF_PRESENT, PF_USER, PF_WRITE};

const PML4: u64 = 0x10_0000;
const CR0_PE_PG_WP: u64 = 1 | (1 << 16) | (1 << 31);
const EFER_LME_LMA_NXE: u64 = (1 << 8) | (1 << 10) | (1 << 11);
/// A linear page mapped to the recording device at `DEVICE_GPA`.
const DEVICE_VA: u64 = 0xe0_0000;
const DEVICE_GPA: u64 = 0x4000_0000;

/// Records every access the bus routes to it.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

/// 16 MiB of RAM identity-mapped with 4 KiB pages (PTEs at `pte(va)`), and the device page.
struct Guest {
    ram: GuestMemoryMmap,
    bus: Bus,
    device: Arc<Mutex<Recorder>>,
    regs: kvm_regs,
    sregs: kvm_sregs,
}

impl Guest {
    fn new() -> Self {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let w = |v: u64, a: u64| ram.write_obj(v, GuestAddress(a)).unwrap();
        w((PML4 + 0x1000) | 7, PML4);
        w((PML4 + 0x2000) | 7, PML4 + 0x1000);
        for pd in 0..8u64 {
            let pt = PML4 + 0x3000 + pd * 0x1000;
            w(pt | 7, PML4 + 0x2000 + pd * 8);
            for i in 0..512u64 {
                let pa = (pd * 512 + i) * 0x1000;
                w(pa | 7, pt + i * 8);
            }
        }
        let bus = Bus::new();
        let device = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(device.clone(), DEVICE_GPA, 0x1000).unwrap();
        let mut g = Guest {
            ram,
            bus,
            device,
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
        };
        g.set_pte(DEVICE_VA, DEVICE_GPA | 7);
        g.sregs.cr0 = CR0_PE_PG_WP;
        g.sregs.cr3 = PML4;
        g.sregs.efer = EFER_LME_LMA_NXE;
        g.sregs.cs = kvm_segment {
            l: 1,
            ..Default::default()
        };
        g.regs.rip = 0x8000;
        g.regs.rflags = 2;
        g
    }

    fn pte_addr(va: u64) -> u64 {
        PML4 + 0x3000 + (va >> 12) * 8
    }

    fn set_pte(&mut self, va: u64, value: u64) {
        self.ram
            .write_obj(value, GuestAddress(Self::pte_addr(va)))
            .unwrap();
    }

    fn user_mode(&mut self) {
        self.sregs.ss.dpl = 3;
        self.sregs.cs.dpl = 3;
    }

    fn run(&self, bytes: &[u8]) -> Result<Emulated, Fault> {
        let cpu = CpuState {
            regs: &self.regs,
            sregs: &self.sregs,
            features: PagingFeatures {
                max_phys_bits: 46,
                gbpages: true,
                pkru_xsave_offset: None,
            },
        };
        let mem = PhysMemory {
            ram: &self.ram,
            mmio: &self.bus,
        };
        emulate(bytes, &cpu, &mem, &mut || 0)
    }

    fn fill(&self, gpa: u64, len: usize, seed: u8) {
        let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        self.ram.write_slice(&data, GuestAddress(gpa)).unwrap();
    }

    fn bytes(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.ram.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }
}

/// movdir64b rax, [rdx]
const MOVDIR64B_RAX_RDX: [u8; 5] = [0x66, 0x0f, 0x38, 0xf8, 0x02];
/// movdiri [rdi], rax
const MOVDIRI64_RDI_RAX: [u8; 5] = [0x48, 0x0f, 0x38, 0xf9, 0x07];

fn pf(addr: u64, error_code: u32) -> Result<Emulated, Fault> {
    Err(Fault::Pf(PageFault { addr, error_code }))
}

#[test]
fn movdir64b_to_ram_and_to_a_device() {
    let mut g = Guest::new();
    g.fill(0x3_0010, 64, 1);
    g.regs.rdx = 0x3_0010;
    g.regs.rax = 0x5_0000;
    let e = g.run(&MOVDIR64B_RAX_RDX).unwrap();
    assert_eq!((e.next_rip, e.bytes, e.unclaimed), (0x8005, 64, false));
    assert_eq!(g.bytes(0x5_0000, 64), g.bytes(0x3_0010, 64));
    g.regs.rax = DEVICE_VA + 0x40;
    g.run(&MOVDIR64B_RAX_RDX).unwrap();
    let dev = g.device.lock().unwrap();
    assert_eq!(dev.writes.len(), 1, "one 64-byte write, not pieces");
    assert_eq!(dev.writes[0], (0x40, g.bytes(0x3_0010, 64)));
}

#[test]
fn movdir64b_source_crossing_pages_and_from_a_device() {
    let mut g = Guest::new();
    g.fill(0x3_0fe0, 64, 7);
    g.regs.rdx = 0x3_0fe0;
    g.regs.rax = 0x5_0000;
    g.run(&MOVDIR64B_RAX_RDX).unwrap();
    assert_eq!(g.bytes(0x5_0000, 64), g.bytes(0x3_0fe0, 64));
    g.regs.rdx = DEVICE_VA + 0x10;
    g.run(&MOVDIR64B_RAX_RDX).unwrap();
    let expect: Vec<u8> = (0..64u8).map(|i| 0x10 + i).collect();
    assert_eq!(g.bytes(0x5_0000, 64), expect);
}

#[test]
fn misaligned_destination_is_gp_and_stores_nothing() {
    let mut g = Guest::new();
    g.regs.rdx = 0x3_0000;
    g.regs.rax = 0x5_0020;
    assert_eq!(g.run(&MOVDIR64B_RAX_RDX), Err(Fault::Gp));
    assert_eq!(g.bytes(0x5_0000, 128), vec![0; 128]);
}

#[test]
fn user_mode_faults_have_the_mmu_error_codes() {
    let mut g = Guest::new();
    g.fill(0x3_0000, 64, 1);
    g.set_pte(0x6_0000, 0x6_0000 | 3); // supervisor page
    g.set_pte(0x7_0000, 0x7_0000 | 5); // user read-only page
    g.set_pte(0x9_0000, 0); // not present
    g.user_mode();
    g.regs.rdx = 0x3_0000;
    g.regs.rax = 0x6_0000;
    assert_eq!(
        g.run(&MOVDIR64B_RAX_RDX),
        pf(0x6_0000, PF_PRESENT | PF_WRITE | PF_USER)
    );
    g.regs.rax = 0x7_0040;
    assert_eq!(
        g.run(&MOVDIR64B_RAX_RDX),
        pf(0x7_0040, PF_PRESENT | PF_WRITE | PF_USER)
    );
    g.regs.rax = 0x5_0000;
    g.regs.rdx = 0x9_0100;
    assert_eq!(g.run(&MOVDIR64B_RAX_RDX), pf(0x9_0100, PF_USER));
    // A source that runs into the unmapped page faults at that page's first byte.
    g.regs.rdx = 0x8_ffe0;
    assert_eq!(g.run(&MOVDIR64B_RAX_RDX), pf(0x9_0000, PF_USER));
    assert_eq!(g.bytes(0x5_0000, 64), vec![0; 64], "nothing stored");
    // The same supervisor page is fine at CPL 0, the read-only one faults with CR0.WP.
    g.sregs.ss.dpl = 0;
    g.regs.rdx = 0x3_0000;
    g.regs.rax = 0x6_0000;
    assert!(g.run(&MOVDIR64B_RAX_RDX).is_ok());
    g.regs.rax = 0x7_0000;
    assert_eq!(
        g.run(&MOVDIR64B_RAX_RDX),
        pf(0x7_0000, PF_PRESENT | PF_WRITE)
    );
    g.sregs.cr0 &= !(1 << 16);
    assert!(g.run(&MOVDIR64B_RAX_RDX).is_ok());
}

#[test]
fn movdiri_crossing_a_page_writes_both_or_neither() {
    let mut g = Guest::new();
    g.regs.rax = 0x1122_3344_5566_7788;
    g.regs.rdi = 0x5_0ffd;
    let e = g.run(&MOVDIRI64_RDI_RAX).unwrap();
    assert_eq!(e.bytes, 8);
    assert_eq!(g.bytes(0x5_0ffd, 8), 0x1122_3344_5566_7788u64.to_le_bytes());
    // 32-bit form, and a second page that is read-only: #PF at the second page, nothing written.
    g.set_pte(0x7_0000, 0x7_0000 | 5);
    g.regs.rdi = 0x6_fffe;
    assert_eq!(
        g.run(&[0x0f, 0x38, 0xf9, 0x07]),
        pf(0x7_0000, PF_PRESENT | PF_WRITE)
    );
    assert_eq!(g.bytes(0x6_fffe, 2), vec![0, 0]);
    g.regs.rdi = 0x6_0ff0;
    assert_eq!(g.run(&[0x0f, 0x38, 0xf9, 0x07]).unwrap().bytes, 4);
    assert_eq!(g.bytes(0x6_0ff0, 4), 0x5566_7788u32.to_le_bytes());
}

#[test]
fn non_canonical_addresses_are_gp_or_ss() {
    let mut g = Guest::new();
    g.regs.rax = 0x5_0000;
    g.regs.rdx = 0x8000_0000_0000;
    assert_eq!(g.run(&MOVDIR64B_RAX_RDX), Err(Fault::Gp));
    g.regs.rbp = 0x8000_0000_0000;
    // movdir64b rax, [rbp+0]: through SS.
    assert_eq!(g.run(&[0x66, 0x0f, 0x38, 0xf8, 0x45, 0x00]), Err(Fault::Ss));
    g.regs.rdx = 0x3_0000;
    g.regs.rax = 0x8000_0000_0000;
    assert_eq!(g.run(&MOVDIR64B_RAX_RDX), Err(Fault::Gp));
}

#[test]
fn address_size_and_fs_override() {
    let mut g = Guest::new();
    g.fill(0x3_0000, 64, 9);
    // movdir64b eax, [edx]: the high halves of RAX and RDX are ignored.
    g.regs.rax = 0xdead_0000_0005_0000;
    g.regs.rdx = 0xbeef_0000_0003_0000;
    let e = g.run(&[0x67, 0x66, 0x0f, 0x38, 0xf8, 0x02]).unwrap();
    assert_eq!(e.next_rip, 0x8006);
    assert_eq!(g.bytes(0x5_0000, 64), g.bytes(0x3_0000, 64));
    // movdir64b rax, fs:[rdx]
    g.sregs.fs.base = 0x1_0000;
    g.regs.rax = 0x5_1000;
    g.regs.rdx = 0x2_0000;
    g.run(&[0x64, 0x66, 0x0f, 0x38, 0xf8, 0x02]).unwrap();
    assert_eq!(g.bytes(0x5_1000, 64), g.bytes(0x3_0000, 64));
}

#[test]
fn other_instructions_and_modes_are_ud() {
    let mut g = Guest::new();
    // popcnt rax, [rdx]
    assert_eq!(g.run(&[0xf3, 0x48, 0x0f, 0xb8, 0x02]), Err(Fault::Ud));
    assert_eq!(g.run(&[0x0f, 0x0b]), Err(Fault::Ud));
    // Compatibility mode: not emulated.
    g.sregs.cs.l = 0;
    g.regs.rdx = 0x3_0000;
    g.regs.rax = 0x5_0000;
    assert_eq!(g.run(&MOVDIR64B_RAX_RDX), Err(Fault::Ud));
}

#[test]
fn too_long_is_gp() {
    let g = Guest::new();
    let mut b = [0x3e_u8; 15];
    b[12..].copy_from_slice(&[0x66, 0x0f, 0x38]);
    assert_eq!(g.run(&b), Err(Fault::Gp));
}

#[test]
fn missing_bytes_are_fetched_through_the_page_tables() {
    let mut g = Guest::new();
    g.fill(0x3_0000, 64, 3);
    g.regs.rdx = 0x3_0000;
    g.regs.rax = 0x5_0000;
    // The instruction straddles a page boundary; KVM handed over only the first 3 bytes.
    g.regs.rip = 0x8ffd;
    g.ram
        .write_slice(&MOVDIR64B_RAX_RDX, GuestAddress(0x8ffd))
        .unwrap();
    let e = g.run(&MOVDIR64B_RAX_RDX[..3]).unwrap();
    assert_eq!(e.next_rip, 0x9002);
    assert_eq!(g.bytes(0x5_0000, 64), g.bytes(0x3_0000, 64));
    // The second page is not executable: #PF for the fetch at its first byte.
    g.set_pte(0x9000, 0x9000 | 7 | (1 << 63));
    assert_eq!(
        g.run(&MOVDIR64B_RAX_RDX[..3]),
        pf(0x9000, PF_PRESENT | PF_FETCH)
    );
}

#[test]
fn device_source_is_read_in_naturally_aligned_pieces() {
    let mut g = Guest::new();
    g.regs.rdx = DEVICE_VA + 4;
    g.regs.rax = 0x5_0000;
    g.run(&MOVDIR64B_RAX_RDX).unwrap();
    let reads = g.device.lock().unwrap().reads.clone();
    assert_eq!(reads.first(), Some(&(4, 4)));
    assert_eq!(reads.last(), Some(&(0x40, 4)));
    assert!(
        reads.iter().all(|&(o, l)| o % 8 + l as u64 <= 8),
        "{reads:x?}"
    );
    assert_eq!(reads.iter().map(|r| r.1).sum::<usize>(), 64);
}

#[test]
fn a_destination_fault_does_not_read_a_device_source() {
    let mut g = Guest::new();
    g.set_pte(0x6_0000, 0);
    g.regs.rdx = DEVICE_VA;
    g.regs.rax = 0x6_0000;
    assert_eq!(g.run(&MOVDIR64B_RAX_RDX), pf(0x6_0000, PF_WRITE));
    assert!(g.device.lock().unwrap().reads.is_empty());
}

#[test]
fn a_range_that_runs_past_the_canonical_boundary_is_gp_or_ss() {
    let mut g = Guest::new();
    // movdiri [rdi], rax at 0x7fff_ffff_fffc: the last 4 bytes are not canonical.
    g.regs.rdi = 0x7fff_ffff_fffc;
    assert_eq!(g.run(&MOVDIRI64_RDI_RAX), Err(Fault::Gp));
    // movdiri [rsp], rax: the same through SS.
    g.regs.rsp = 0x7fff_ffff_fffc;
    assert_eq!(g.run(&[0x48, 0x0f, 0x38, 0xf9, 0x04, 0x24]), Err(Fault::Ss));
}

#[test]
fn fetching_past_the_canonical_boundary_is_gp() {
    let mut g = Guest::new();
    g.regs.rip = 0x7fff_ffff_fffe;
    // The two bytes before the boundary are not even mapped here: #PF for them comes first.
    assert!(matches!(g.run(&[0x66]), Err(Fault::Pf(_))));
    // An instruction KVM handed over in full needs no fetch.
    g.regs.rdx = 0x3_0000;
    g.regs.rax = 0x5_0000;
    g.regs.rip = 0x8000;
    assert!(g.run(&MOVDIR64B_RAX_RDX).is_ok());
}

#[test]
fn misaligned_movdiri_is_ac_only_with_alignment_checking_at_cpl3() {
    let mut g = Guest::new();
    g.regs.rdi = 0x5_0001;
    g.regs.rax = 1;
    assert!(g.run(&MOVDIRI64_RDI_RAX).is_ok());
    g.user_mode();
    g.sregs.cr0 |= 1 << 18;
    assert!(g.run(&MOVDIRI64_RDI_RAX).is_ok(), "RFLAGS.AC clear");
    g.regs.rflags |= 1 << 18;
    assert_eq!(g.run(&MOVDIRI64_RDI_RAX), Err(Fault::Ac));
    g.regs.rdi = 0x5_0008;
    assert!(g.run(&MOVDIRI64_RDI_RAX).is_ok());
}

#[test]
fn unknown_opcodes_after_valid_prefixes_are_ud() {
    let g = Guest::new();
    // 66 0f 38 f7 02 (an opcode next to MOVDIR64B's), 0f 0b (UD2), 48 0f b8 (no F3: JMPE-ish).
    for bytes in [
        &[0x66, 0x0f, 0x38, 0xf7, 0x02][..],
        &[0x0f, 0x0b],
        &[0x48, 0x0f, 0xb8, 0x02],
    ] {
        assert_eq!(g.run(bytes), Err(Fault::Ud), "{bytes:02x?}");
    }
}
