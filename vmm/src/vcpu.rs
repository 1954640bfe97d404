//! One vCPU thread: the KVM_RUN loop and the dispatch of its exits onto the PIO and MMIO buses,
//! including the MOVDIR64B/MOVDIRI emulation-failure path (REFERENCE.md section 0 trap 2, 11).
//!
//! Registers needed on that path come from `KVM_CAP_SYNC_REGS` (no extra ioctl per exit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use devices::bus::Bus;
use devices::legacy::{ExitReason, ExitSignal};
use kvm_bindings::{kvm_regs, kvm_sregs, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::insn::{self, DirectStore, MemOperand, Segment};
use crate::pagewalk;

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
const KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;

/// Counters of one vCPU's exits, readable by the API.
#[derive(Default)]
pub struct VcpuStats {
    /// Port I/O exits.
    pub pio_exits: AtomicU64,
    /// MMIO exits.
    pub mmio_exits: AtomicU64,
    /// MOVDIR64B/MOVDIRI stores emulated.
    pub direct_stores: AtomicU64,
    /// Accesses no device claimed.
    pub unhandled_accesses: AtomicU64,
}

/// Pause control shared by all vCPUs of a VM.
#[derive(Default)]
pub struct PauseGate {
    paused: Mutex<bool>,
    cond: Condvar,
    parked: Mutex<usize>,
    parked_cond: Condvar,
}

impl PauseGate {
    /// Sets the pause state; vCPUs park at their next exit (the caller kicks them).
    pub fn set(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = paused;
        self.cond.notify_all();
    }

    /// Whether pause is requested.
    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `n` vCPUs are parked or `exit` is set (bounded polling, never spins hot).
    pub fn wait_parked(&self, n: usize, exit: &ExitSignal) -> bool {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        while *parked < n && !exit.is_set() {
            let (p, timeout) = self
                .parked_cond
                .wait_timeout(parked, std::time::Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner());
            parked = p;
            if timeout.timed_out() {
                return *parked >= n;
            }
        }
        *parked >= n
    }

    fn park(&self, exit: &ExitSignal) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !*paused {
            return;
        }
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.parked_cond.notify_all();
        while *paused && !exit.is_set() {
            paused = self
                .cond
                .wait_timeout(paused, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}

/// Everything a vCPU thread owns or shares.
pub struct Vcpu {
    /// vCPU index (= APIC ID).
    pub id: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Where to report the end of the VM.
    pub exit: Arc<ExitSignal>,
    /// Pause control.
    pub pause: Arc<PauseGate>,
    /// Exit counters.
    pub stats: Arc<VcpuStats>,
}

/// What to do after an exit, decided while the exit data is borrowed.
enum Next {
    Continue,
    Interrupted,
    InternalError,
    Stop(ExitReason),
}

impl Vcpu {
    /// Runs the guest until the VM ends.
    pub fn run(mut self) {
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        while !self.exit.is_set() {
            if self.pause.is_paused() {
                self.pause.park(&self.exit);
                continue;
            }
            let next = self.run_once();
            match next {
                Next::Continue => {}
                Next::Interrupted => self.fd.set_kvm_immediate_exit(0),
                Next::InternalError => {
                    if let Err(msg) = self.handle_internal_error() {
                        tracing::error!("vCPU {}: {msg}", self.id);
                        eprintln!("dsavmm: error: vCPU {}: {msg}", self.id);
                        self.exit.request(ExitReason::VcpuError);
                    }
                }
                Next::Stop(reason) => self.exit.request(reason),
            }
        }
        tracing::debug!("vCPU {} stopped", self.id);
    }

    fn run_once(&mut self) -> Next {
        let (pio, mmio, stats, id) = (&self.pio, &self.mmio, &self.stats, self.id);
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.pio_exits.fetch_add(1, Ordering::Relaxed);
                if !pio.read(u64::from(port), data) {
                    stats.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!("unhandled in {port:#x}");
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                stats.pio_exits.fetch_add(1, Ordering::Relaxed);
                if !pio.write(u64::from(port), data) {
                    stats.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!("unhandled out {port:#x} {data:x?}");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
                if !mmio.read(addr, data) {
                    stats.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!("unhandled MMIO read {addr:#x}");
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
                if !mmio.write(addr, data) {
                    stats.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!("unhandled MMIO write {addr:#x}");
                }
                Next::Continue
            }
            Ok(VcpuExit::Hlt) => {
                tracing::info!("vCPU {id} halted");
                Next::Stop(ExitReason::PowerOff)
            }
            Ok(VcpuExit::Shutdown) => {
                tracing::warn!("vCPU {id}: guest shutdown (triple fault or reset)");
                Next::Stop(ExitReason::Reset)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(ExitReason::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Next::Stop(ExitReason::Reset),
                other => {
                    tracing::warn!("vCPU {id}: ignored system event {other}");
                    Next::Continue
                }
            },
            Ok(VcpuExit::InternalError) => Next::InternalError,
            Ok(VcpuExit::Intr) => Next::Interrupted,
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                eprintln!("dsavmm: error: vCPU {id}: KVM entry failed, reason {reason:#x} on host CPU {cpu}");
                Next::Stop(ExitReason::VcpuError)
            }
            Ok(other) => {
                eprintln!("dsavmm: error: vCPU {id}: unexpected exit {other:?}");
                Next::Stop(ExitReason::VcpuError)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Interrupted,
            Err(e) => {
                eprintln!("dsavmm: error: vCPU {id}: KVM_RUN failed: {e}");
                Next::Stop(ExitReason::VcpuError)
            }
        }
    }

    /// Handles `KVM_EXIT_INTERNAL_ERROR`: emulates MOVDIR64B/MOVDIRI, and reports anything else.
    fn handle_internal_error(&mut self) -> Result<(), String> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal` /
        // `emulation_failure` member of the union; both are plain integers.
        let fail = unsafe { run.__bindgen_anon_1.emulation_failure };
        let suberror = fail.suberror;
        if suberror != KVM_INTERNAL_ERROR_EMULATION
            || fail.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES == 0
        {
            return Err(format!("KVM internal error, suberror {suberror}"));
        }
        // SAFETY: the instruction-bytes flag says this union member is valid.
        let raw = unsafe { fail.__bindgen_anon_1.__bindgen_anon_1 };
        let n = usize::from(raw.insn_size).min(raw.insn_bytes.len());
        let bytes = &raw.insn_bytes[..n];
        let sync = self.fd.sync_regs();
        let (regs, sregs) = (sync.regs, sync.sregs);
        let decoded = insn::decode(bytes).map_err(|e| {
            format!(
                "emulation failure at RIP {:#x}: bytes {bytes:02x?} ({e})",
                regs.rip
            )
        })?;
        let next_rip = regs.rip.wrapping_add(decoded.len as u64);
        match decoded.op {
            DirectStore::Movdir64b {
                dst_reg,
                addr32,
                src,
            } => {
                let mut dst = reg(&regs, dst_reg);
                if addr32 {
                    dst &= 0xffff_ffff;
                }
                if !dst.is_multiple_of(64) {
                    return Err(format!(
                        "MOVDIR64B at RIP {:#x} to unaligned address {dst:#x}",
                        regs.rip
                    ));
                }
                let src_va = effective_address(&src, &regs, &sregs, next_rip);
                let mut payload = [0u8; 64];
                self.read_virt(&sregs, src_va, &mut payload)?;
                self.store(&sregs, dst, &payload)?;
            }
            DirectStore::Movdiri { src_reg, dst, size } => {
                let value = reg(&regs, src_reg).to_le_bytes();
                let va = effective_address(&dst, &regs, &sregs, next_rip);
                self.store(&sregs, va, &value[..usize::from(size)])?;
            }
        }
        self.stats.direct_stores.fetch_add(1, Ordering::Relaxed);
        self.fd.sync_regs_mut().regs.rip = next_rip;
        self.fd.set_sync_dirty_reg(SyncReg::Register);
        Ok(())
    }

    fn translate(&self, sregs: &kvm_sregs, va: u64) -> Result<u64, String> {
        pagewalk::translate(&self.mem, sregs.cr0, sregs.cr3, va).map_err(|e| e.to_string())
    }

    /// Reads guest-virtual memory page by page.
    fn read_virt(&self, sregs: &kvm_sregs, va: u64, out: &mut [u8]) -> Result<(), String> {
        let mut done = 0;
        while done < out.len() {
            let cur = va.wrapping_add(done as u64);
            let chunk = ((0x1000 - (cur & 0xfff)) as usize).min(out.len() - done);
            let gpa = self.translate(sregs, cur)?;
            self.mem
                .read_slice(&mut out[done..done + chunk], GuestAddress(gpa))
                .map_err(|_| format!("MOVDIR64B source {cur:#x} (GPA {gpa:#x}) is not RAM"))?;
            done += chunk;
        }
        Ok(())
    }

    /// Performs a direct store to guest-virtual `va`: RAM directly, a device by one bus write.
    fn store(&self, sregs: &kvm_sregs, va: u64, data: &[u8]) -> Result<(), String> {
        let gpa = self.translate(sregs, va)?;
        if self.mem.find_region(GuestAddress(gpa)).is_some() {
            // MOVDIR64B and MOVDIRI destinations are naturally aligned: never cross a page.
            return self
                .mem
                .write_slice(data, GuestAddress(gpa))
                .map_err(|e| format!("direct store to {gpa:#x}: {e}"));
        }
        if !self.mmio.write(gpa, data) {
            self.stats
                .unhandled_accesses
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("direct store to unbacked GPA {gpa:#x} dropped");
        }
        Ok(())
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

fn effective_address(m: &MemOperand, r: &kvm_regs, s: &kvm_sregs, next_rip: u64) -> u64 {
    let mut a = m.disp as u64;
    if m.rip_relative {
        a = a.wrapping_add(next_rip);
    }
    if let Some(b) = m.base {
        a = a.wrapping_add(reg(r, b));
    }
    if let Some((i, scale)) = m.index {
        a = a.wrapping_add(reg(r, i).wrapping_mul(u64::from(scale)));
    }
    match m.segment {
        Some(Segment::Fs) => a.wrapping_add(s.fs.base),
        Some(Segment::Gs) => a.wrapping_add(s.gs.base),
        None => a,
    }
}
