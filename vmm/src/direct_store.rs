//! Emulation of the direct stores that reach dsavmm as KVM emulation failures (MOVDIR64B,
//! MOVDIRI), as the CPU defines them (Intel SDM vol. 2B "MOVDIR64B", "MOVDIRI"), and the fault
//! the CPU would raise for anything else: #UD for an instruction dsavmm does not emulate, #GP(0)
//! for a misaligned MOVDIR64B destination or a non-canonical address (#SS(0) through SS), #PF
//! with the MMU's error code for a translation that fails (`pagewalk.rs`).
//!
//! KVM's emulator has neither instruction (docs/dsa-device-model.md §0, trap 2), so with
//! `KVM_CAP_EXIT_ON_EMULATION_FAILURE` every emulation failure comes here with the instruction
//! bytes; this module turns one into either a completed store or a [`Fault`] to inject. It is pure
//! over guest RAM and the MMIO bus, so it is tested without KVM.
//!
//! Order of checks (the SDM leaves it to the implementation): the MOVDIR64B alignment (#AC for a
//! misaligned MOVDIRI where alignment checking is on), then the canonical form of every byte of
//! source and destination, then the source and the destination are translated, and only then is
//! the source read (a device read may have side effects, so it is not repeated when the
//! destination faults) and the destination written. A MOVDIRI that crosses a page is translated
//! on both pages before either part is written. Only 64-bit mode is emulated; in any other mode
//! the instruction gets #UD.

use arch::cpuid::PagingFeatures;
use devices::bus::Bus;
use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::insn::{self, DecodeError, DirectStore, MemOperand, Segment, MAX_INSN_LEN};
use crate::pagewalk::{self, Access, PageFault, PagingState};

const EFER_LMA: u64 = 1 << 10;
const CR0_AM: u64 = 1 << 18;
const RFLAGS_AC: u64 = 1 << 18;
const PAGE: u64 = 0x1000;

/// An exception to deliver to the guest instead of completing the instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// #UD (invalid opcode): not an instruction dsavmm emulates (or not in this mode).
    Ud,
    /// #GP(0) (general protection): misaligned MOVDIR64B destination, non-canonical address, or
    /// an instruction over 15 bytes.
    Gp,
    /// #SS(0) (stack-segment fault): a non-canonical address through the stack segment.
    Ss,
    /// #PF (page fault): a translation failed; CR2 = `addr`.
    Pf(PageFault),
    /// #AC(0) (alignment check): a misaligned MOVDIRI at CPL 3 with CR0.AM and RFLAGS.AC.
    Ac,
}

impl Fault {
    /// Exception vector.
    pub fn vector(self) -> u8 {
        match self {
            Fault::Ud => 6,
            Fault::Ss => 12,
            Fault::Gp => 13,
            Fault::Pf(_) => 14,
            Fault::Ac => 17,
        }
    }

    /// Error code pushed by the exception, if it has one.
    pub fn error_code(self) -> Option<u32> {
        match self {
            Fault::Ud => None,
            Fault::Gp | Fault::Ss | Fault::Ac => Some(0),
            Fault::Pf(pf) => Some(pf.error_code),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Ud => write!(f, "#UD"),
            Fault::Gp => write!(f, "#GP(0)"),
            Fault::Ss => write!(f, "#SS(0)"),
            Fault::Pf(pf) => write!(f, "#PF({:#x}) at {:#x}", pf.error_code, pf.addr),
            Fault::Ac => write!(f, "#AC(0)"),
        }
    }
}

/// The vCPU state the emulation reads.
pub struct CpuState<'a> {
    /// General registers and RIP.
    pub regs: &'a kvm_regs,
    /// Segment and control registers.
    pub sregs: &'a kvm_sregs,
    /// What the guest's CPUID says about paging.
    pub features: PagingFeatures,
}

impl CpuState<'_> {
    /// Whether the vCPU is in 64-bit mode (IA-32e mode with a 64-bit code segment).
    fn long_mode(&self) -> bool {
        self.sregs.efer & EFER_LMA != 0 && self.sregs.cs.l == 1
    }

    /// The paging state; the CPL is SS.DPL, which KVM reports as the CPL on VMX and SVM alike.
    fn paging(&self) -> PagingState {
        PagingState {
            cr0: self.sregs.cr0,
            cr3: self.sregs.cr3,
            cr4: self.sregs.cr4,
            efer: self.sregs.efer,
            rflags: self.regs.rflags,
            cpl: self.sregs.ss.dpl & 3,
            max_phys_bits: self.features.max_phys_bits,
            gbpages: self.features.gbpages,
        }
    }
}

/// Where the store went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emulated {
    /// RIP after the instruction.
    pub next_rip: u64,
    /// Bytes stored.
    pub bytes: usize,
    /// Some part went to a guest-physical address that neither RAM nor a device backs (dropped,
    /// as the bus drops it on hardware).
    pub unclaimed: bool,
}

/// Guest RAM and the MMIO bus, as the emulated instruction sees physical memory.
pub struct PhysMemory<'a> {
    /// Guest RAM.
    pub ram: &'a GuestMemoryMmap,
    /// The MMIO bus.
    pub mmio: &'a Bus,
}

impl PhysMemory<'_> {
    /// Reads `out` at `gpa` (within one page): RAM, a device, or all ones where nothing answers.
    fn read(&self, gpa: u64, out: &mut [u8]) {
        if self.ram.find_region(GuestAddress(gpa)).is_some()
            && self.ram.read_slice(out, GuestAddress(gpa)).is_ok()
        {
            return;
        }
        // Naturally aligned pieces of at most 8 bytes, the accesses a device register file takes.
        let mut done = 0;
        while done < out.len() {
            let addr = gpa + done as u64;
            let len = ((8 - (addr & 7)) as usize).min(out.len() - done);
            let piece = &mut out[done..done + len];
            if !self.mmio.read(addr, piece) {
                piece.fill(0xff);
            }
            done += len;
        }
    }

    /// Writes `data` at `gpa` (within one page); false when nothing backs the address.
    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        if self.ram.find_region(GuestAddress(gpa)).is_some() {
            return self.ram.write_slice(data, GuestAddress(gpa)).is_ok();
        }
        self.mmio.write(gpa, data)
    }
}

/// Emulates the instruction at the vCPU's RIP. `bytes` are the instruction bytes KVM fetched
/// (possibly fewer than the instruction: the rest is fetched here through the page tables);
/// `pkru` reads the guest's PKRU when a protection-key check needs it.
pub fn emulate(
    bytes: &[u8],
    cpu: &CpuState,
    mem: &PhysMemory,
    pkru: &mut dyn FnMut() -> u32,
) -> Result<Emulated, Fault> {
    if !cpu.long_mode() {
        return Err(Fault::Ud);
    }
    let paging = cpu.paging();
    let rip = cpu.regs.rip;
    let decoded = match insn::decode(bytes) {
        Err(DecodeError::Truncated) => decode_fetched(mem, &paging, rip, pkru)?,
        other => other.map_err(decode_fault)?,
    };
    let next_rip = rip.wrapping_add(decoded.len as u64);
    let mut unclaimed = false;
    let bytes = match decoded.op {
        DirectStore::Movdir64b {
            dst_reg,
            addr32,
            src,
        } => {
            // The destination is ES:[reg] (ES has no base in 64-bit mode), register width = address size.
            let mut dst = reg(cpu.regs, dst_reg);
            if addr32 {
                dst &= 0xffff_ffff;
            }
            if !dst.is_multiple_of(64) {
                return Err(Fault::Gp);
            }
            let src_va = linear(cpu, &src, next_rip)?;
            if !paging.is_canonical(dst) {
                return Err(Fault::Gp);
            }
            let src_fault = non_canonical_fault(&src);
            let src_pages =
                translate_range(mem, &paging, src_va, 64, Access::Read, src_fault, pkru)?;
            let dst_gpa = pagewalk::translate(mem.ram, &paging, dst, Access::Write, pkru)
                .map_err(Fault::Pf)?;
            let mut payload = [0u8; 64];
            let mut off = 0;
            for (gpa, len) in src_pages.iter().flatten() {
                mem.read(*gpa, &mut payload[off..off + len]);
                off += len;
            }
            unclaimed |= !mem.write(dst_gpa, &payload);
            64
        }
        DirectStore::Movdiri { src_reg, dst, size } => {
            let size = usize::from(size);
            let value = reg(cpu.regs, src_reg).to_le_bytes();
            let va = linear(cpu, &dst, next_rip)?;
            if !va.is_multiple_of(size as u64)
                && paging.cpl == 3
                && paging.cr0 & CR0_AM != 0
                && paging.rflags & RFLAGS_AC != 0
            {
                return Err(Fault::Ac);
            }
            let fault = non_canonical_fault(&dst);
            let pages = translate_range(mem, &paging, va, size, Access::Write, fault, pkru)?;
            let mut off = 0;
            for (gpa, len) in pages.iter().flatten() {
                unclaimed |= !mem.write(*gpa, &value[off..off + len]);
                off += len;
            }
            size
        }
    };
    Ok(Emulated {
        next_rip,
        bytes,
        unclaimed,
    })
}

/// Translates `[va, va + len)` (len <= 4096) for `access`: one or two (GPA, length) pieces. A
/// range whose last byte is not canonical raises `non_canonical` before any walk.
fn translate_range(
    mem: &PhysMemory,
    paging: &PagingState,
    va: u64,
    len: usize,
    access: Access,
    non_canonical: Fault,
    pkru: &mut dyn FnMut() -> u32,
) -> Result<[Option<(u64, usize)>; 2], Fault> {
    if !paging.is_canonical(va.wrapping_add(len as u64 - 1)) {
        return Err(non_canonical);
    }
    let first = ((PAGE - (va & (PAGE - 1))) as usize).min(len);
    let gpa = pagewalk::translate(mem.ram, paging, va, access, pkru).map_err(Fault::Pf)?;
    if first == len {
        return Ok([Some((gpa, len)), None]);
    }
    let next_va = va.wrapping_add(first as u64);
    let next = pagewalk::translate(mem.ram, paging, next_va, access, pkru).map_err(Fault::Pf)?;
    Ok([Some((gpa, first)), Some((next, len - first))])
}

/// The fault a non-canonical address raises through operand `m`'s segment.
fn non_canonical_fault(m: &MemOperand) -> Fault {
    if m.uses_stack_segment() {
        Fault::Ss
    } else {
        Fault::Gp
    }
}

/// What the guest gets for bytes the decoder refused.
fn decode_fault(e: DecodeError) -> Fault {
    match e {
        DecodeError::TooLong => Fault::Gp,
        DecodeError::Truncated | DecodeError::Unsupported => Fault::Ud,
    }
}

/// Decodes the instruction at `rip` from guest memory, fetching through the page tables one page
/// at a time and only as far as the decoder needs (at most 15 bytes): a fetch fault or a
/// non-canonical byte is raised only if the instruction reaches it.
fn decode_fetched(
    mem: &PhysMemory,
    paging: &PagingState,
    rip: u64,
    pkru: &mut dyn FnMut() -> u32,
) -> Result<insn::Decoded, Fault> {
    let mut buf = [0u8; MAX_INSN_LEN];
    let mut n = 0;
    loop {
        let va = rip.wrapping_add(n as u64);
        if !paging.is_canonical(va) {
            return Err(Fault::Gp);
        }
        let chunk = ((PAGE - (va & (PAGE - 1))) as usize).min(MAX_INSN_LEN - n);
        let gpa =
            pagewalk::translate(mem.ram, paging, va, Access::Fetch, pkru).map_err(Fault::Pf)?;
        mem.read(gpa, &mut buf[n..n + chunk]);
        n += chunk;
        match insn::decode(&buf[..n]) {
            Err(DecodeError::Truncated) if n < MAX_INSN_LEN => {}
            other => return other.map_err(decode_fault),
        }
    }
}

/// The linear address of a memory operand, or the fault a non-canonical one raises.
fn linear(cpu: &CpuState, m: &MemOperand, next_rip: u64) -> Result<u64, Fault> {
    let mut a = m.disp as u64;
    if m.rip_relative {
        a = a.wrapping_add(next_rip);
    }
    if let Some(b) = m.base {
        a = a.wrapping_add(reg(cpu.regs, b));
    }
    if let Some((i, scale)) = m.index {
        a = a.wrapping_add(reg(cpu.regs, i).wrapping_mul(u64::from(scale)));
    }
    if m.addr32 {
        a &= 0xffff_ffff;
    }
    a = match m.segment {
        Some(Segment::Fs) => a.wrapping_add(cpu.sregs.fs.base),
        Some(Segment::Gs) => a.wrapping_add(cpu.sregs.gs.base),
        _ => a,
    };
    if cpu.paging().is_canonical(a) {
        Ok(a)
    } else {
        Err(non_canonical_fault(m))
    }
}

/// General register `n` (0 = RAX ... 15 = R15).
fn reg(r: &kvm_regs, n: u8) -> u64 {
    match n & 15 {
        0 => r.rax,
        1 => r.rcx,
        2 => r.rdx,
        3 => r.rbx,
        4 => r.rsp,
        5 => r.rbp,
        6 => r.rsi,
        7 => r.rdi,
        8 => r.r8,
        9 => r.r9,
        10 => r.r10,
        11 => r.r11,
        12 => r.r12,
        13 => r.r13,
        14 => r.r14,
        _ => r.r15,
    }
}

#[cfg(test)]
mod tests;
