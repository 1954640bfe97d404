//! The MOVDIR64B/MOVDIRI decoder, the guest page walk and the direct-store emulation of
//! `vmm/src/{insn,pagewalk,direct_store}.rs`, over guest RAM holding 4-level page tables the
//! input may corrupt, and an MMIO bus with one recording device.
//!
//! Input: a mode byte, a CR4/MAXPHYADDR byte, PKRU, the 16 general registers, RIP, the FS and
//! GS bases, an access to translate directly, up to 8 page-table patches (entry, value), a raw
//! CR3, then the instruction (a count of bytes KVM "fetched" and 15 bytes, also stored at RIP),
//! then RAM contents. With mode bit 4 every address is folded near the mapped range.
//!
//! Checks: the decoder's length is within the instruction and the input, and decoding that
//! prefix again gives the same answer; a translation keeps the page offset; a fault stores
//! nothing (RAM changes only in page-table accessed/dirty bits, the device sees no write); a
//! completed store is 4, 8 or 64 bytes, each device write stays within the device's page.

use std::sync::{Arc, Mutex};

use arch::cpuid::PagingFeatures;
use devices::bus::{Bus, BusDevice};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::direct_store::{emulate, CpuState, PhysMemory};
use crate::insn::{self, MAX_INSN_LEN};
use crate::pagewalk::{self, Access, PagingState};
use crate::Input;

/// Guest RAM at 0.
pub const RAM: usize = 64 << 10;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
/// The table area the patches may hit (the four tables).
const TABLES: std::ops::Range<u64> = PML4..PT + 0x1000;
/// The recording device's page, mapped at VA `DEVICE_VA`.
const DEVICE_GPA: u64 = 0x4000_0000;
const DEVICE_VA: u64 = 0x1f_f000;
/// Addresses folded "near": the 4-level 2 MiB PT range, the 2 MiB large page above, and the
/// 1 GiB page at 1 GiB (bit 30).
const NEAR: u64 = 0x403f_ffff;

const CR0_PE: u64 = 1;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;

#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, usize)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.len()));
    }
}

/// Identity map of the first 2 MiB with 4 KiB pages (RAM is the first 64 KiB of it, the rest
/// unclaimed) except the device page; a 2 MiB page at VA 2 MiB and a 1 GiB page at VA 1 GiB,
/// both onto GPA 0.
fn build_tables(ram: &GuestMemoryMmap) {
    let w = |v: u64, a: u64| ram.write_obj(v, GuestAddress(a)).unwrap();
    w(PDPT | 7, PML4);
    w(PD | 7, PDPT);
    w(0x87, PDPT + 8);
    w(PT | 7, PD);
    w(0x87, PD + 8);
    for i in 0..512u64 {
        w((i << 12) | 7, PT + 8 * i);
    }
    w(DEVICE_GPA | 7, PT + 8 * (DEVICE_VA >> 12));
}

fn snapshot(ram: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; RAM];
    ram.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

/// Runs one input.
pub fn run(data: &[u8]) {
    outcome(data);
}

/// Runs one input; what it did, in a few words (the stable harness counts these).
pub fn outcome(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let mode = input.u8();
    let cr4_byte = input.u8();
    let near = |v: u64| if mode & 16 != 0 { v & NEAR } else { v };
    let pkru = input.u32();

    let mut regs = kvm_regs::default();
    for r in [
        &mut regs.rax,
        &mut regs.rcx,
        &mut regs.rdx,
        &mut regs.rbx,
        &mut regs.rsp,
        &mut regs.rbp,
        &mut regs.rsi,
        &mut regs.rdi,
        &mut regs.r8,
        &mut regs.r9,
        &mut regs.r10,
        &mut regs.r11,
        &mut regs.r12,
        &mut regs.r13,
        &mut regs.r14,
        &mut regs.r15,
    ] {
        *r = near(input.u64());
    }
    regs.rip = near(input.u64());
    regs.rflags = 2 | if mode & 128 != 0 { RFLAGS_AC } else { 0 };

    let mut sregs = kvm_sregs::default();
    let dpl = if mode & 4 != 0 { 3 } else { 0 };
    sregs.cs = kvm_segment {
        l: u8::from(mode & 1 == 0),
        dpl,
        ..Default::default()
    };
    sregs.ss.dpl = dpl;
    sregs.fs.base = near(input.u64());
    sregs.gs.base = near(input.u64());
    sregs.cr0 =
        CR0_PE | if mode & 2 == 0 { CR0_PG } else { 0 } | if mode & 32 == 0 { CR0_WP } else { 0 };
    sregs.cr4 = [12, 20, 21, 22]
        .iter()
        .enumerate()
        .filter(|(i, _)| cr4_byte & (1 << i) != 0)
        .fold(0, |a, (_, bit)| a | (1u64 << bit));
    sregs.efer = EFER_LME | EFER_LMA | if mode & 64 == 0 { EFER_NXE } else { 0 };
    let max_phys_bits = 32 + (cr4_byte >> 4) % 21;
    let features = PagingFeatures {
        max_phys_bits,
        gbpages: cr4_byte & 0x10 != 0,
        pkru_xsave_offset: Some(0xa80),
    };

    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    build_tables(&ram);
    let bus = Bus::new();
    let device = Arc::new(Mutex::new(Recorder::default()));
    bus.insert(device.clone(), DEVICE_GPA, 0x1000).unwrap();

    // A direct translation.
    let va = near(input.u64());
    let access = [Access::Read, Access::Write, Access::Fetch][usize::from(input.u8() % 3)];

    for _ in 0..input.u8() % 9 {
        let entry = TABLES.start + u64::from(input.u16() % 0x800) * 8;
        ram.write_obj(input.u64(), GuestAddress(entry)).unwrap();
    }
    sregs.cr3 = if mode & 8 != 0 { input.u64() } else { PML4 };

    let fetched = usize::from(input.u8()) % (MAX_INSN_LEN + 1);
    let insn_bytes = input.array::<MAX_INSN_LEN>();
    let rip_gpa = regs.rip & (RAM as u64 - 1);
    if !TABLES.contains(&rip_gpa) && rip_gpa + MAX_INSN_LEN as u64 <= RAM as u64 {
        ram.write_slice(&insn_bytes, GuestAddress(rip_gpa)).unwrap();
    }
    let payload = input.take(RAM - 0x8000);
    ram.write_slice(payload, GuestAddress(0x8000)).unwrap();

    // The decoder alone.
    let given = &insn_bytes[..fetched];
    let decoded = insn::decode(given);
    if let Ok(d) = &decoded {
        assert!(d.len <= given.len() && d.len <= MAX_INSN_LEN, "{d:?}");
        assert_eq!(insn::decode(&given[..d.len]), decoded);
    }

    let paging = PagingState {
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        rflags: regs.rflags,
        cpl: dpl,
        max_phys_bits,
        gbpages: features.gbpages,
    };
    if let Ok(gpa) = pagewalk::translate(&ram, &paging, va, access, &mut || pkru) {
        assert_eq!(gpa & 0xfff, va & 0xfff, "va {va:#x} -> gpa {gpa:#x}");
        if sregs.cr0 & CR0_PG == 0 {
            assert_eq!(gpa, va);
        }
    }

    let before = snapshot(&ram);
    let cpu = CpuState {
        regs: &regs,
        sregs: &sregs,
        features,
    };
    let mem = PhysMemory {
        ram: &ram,
        mmio: &bus,
    };
    let result = emulate(given, &cpu, &mem, &mut || pkru);
    let after = snapshot(&ram);
    let writes = std::mem::take(&mut device.lock().unwrap().writes);
    for &(offset, len) in &writes {
        assert!(
            offset + len as u64 <= 0x1000,
            "device write {offset:#x}+{len}"
        );
    }
    match result {
        Ok(e) => {
            assert!(matches!(e.bytes, 4 | 8 | 64), "{e:?}");
            let len = e.next_rip.wrapping_sub(regs.rip);
            assert!((1..=MAX_INSN_LEN as u64).contains(&len), "{e:?}");
            assert!(writes.iter().map(|w| w.1).sum::<usize>() <= e.bytes);
            let to = if !writes.is_empty() {
                "device"
            } else if e.unclaimed {
                "unclaimed"
            } else {
                "RAM"
            };
            format!("stored {} bytes to {to}", e.bytes)
        }
        Err(fault) => {
            assert!(writes.is_empty(), "{fault}: device written {writes:?}");
            let label = match fault {
                crate::direct_store::Fault::Pf(pf) => format!("#PF({:#x})", pf.error_code),
                other => other.to_string(),
            };
            if before == after {
                return label;
            }
            for (i, (a, b)) in before.chunks(8).zip(after.chunks(8)).enumerate() {
                let a = u64::from_le_bytes(a.try_into().unwrap());
                let b = u64::from_le_bytes(b.try_into().unwrap());
                // Only accessed (5) and dirty (6) bits of page-table entries may change.
                assert_eq!(a & !0x60, b & !0x60, "{fault}: RAM changed at {:#x}", i * 8);
            }
            label
        }
    }
}
