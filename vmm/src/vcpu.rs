//! One vCPU thread: the KVM_RUN loop and the dispatch of its exits onto the PIO and MMIO buses,
//! including the MOVDIR64B/MOVDIRI emulation-failure path (docs/dsa-device-model.md §0 trap 2, §11).
//!
//! Registers needed on that path come from `KVM_CAP_SYNC_REGS` (no extra ioctl per exit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use devices::bus::Bus;
use devices::legacy::{ExitReason, ExitSignal};
use kvm_bindings::{
    KVM_RUN_X86_GUEST_MODE, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
    KVM_VCPUEVENT_VALID_PAYLOAD,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

use crate::direct_store::{self, CpuState, Fault, PhysMemory};
use crate::seccomp::Filter;

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_RF: u64 = 1 << 16;
const DB_VECTOR: u8 = 1;
const PF_VECTOR: u8 = 14;
/// DR6.BS: the #DB was a single step.
const DR6_BS: u64 = 1 << 14;
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
    /// Exceptions delivered for instructions that failed KVM's emulation (#UD, #GP, #SS, #PF).
    pub injected_exceptions: AtomicU64,
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
    /// What the guest's CPUID says about paging (for the page walk of the emulation path).
    pub features: arch::cpuid::PagingFeatures,
    /// KVM_CAP_EXCEPTION_PAYLOAD is enabled: exceptions are queued as pending, with payload.
    pub exception_payload: bool,
    /// A #UD was logged at warn level already.
    pub warned_ud: bool,
}

/// What to do after an exit, decided while the exit data is borrowed.
enum Next {
    Continue,
    Interrupted,
    InternalError,
    Stop(ExitReason),
}

impl Vcpu {
    /// Installs the vCPU thread's seccomp filter, then runs the guest until the VM ends.
    pub fn run(mut self, filter: &Filter) {
        if let Err(e) = filter.install() {
            tracing::error!("vCPU {}: {e}", self.id);
            eprintln!("dsavmm: error: vCPU {}: {e}", self.id);
            self.exit.request(ExitReason::VcpuError);
            return;
        }
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

    /// Handles `KVM_EXIT_INTERNAL_ERROR`. An emulation failure is the guest's instruction: it is
    /// emulated (MOVDIR64B/MOVDIRI) or gets the exception the CPU would raise, and the VM runs on.
    /// Only a failure of KVM or of dsavmm itself (another suberror, an ioctl error) stops the VM,
    /// and so does one dsavmm cannot attribute to an instruction of this guest (no instruction
    /// bytes: task switch or invalid state emulation; or a nested guest's instruction).
    fn handle_internal_error(&mut self) -> Result<(), String> {
        let run = self.fd.get_kvm_run();
        let guest_mode = u32::from(run.flags) & KVM_RUN_X86_GUEST_MODE != 0;
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal` /
        // `emulation_failure` member of the union; both are plain integers.
        let fail = unsafe { run.__bindgen_anon_1.emulation_failure };
        let suberror = fail.suberror;
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Err(format!("KVM internal error, suberror {suberror}"));
        }
        if fail.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES == 0 {
            return Err(
                "KVM emulation failure without instruction bytes (not an instruction \
                        dsavmm can act on)"
                    .to_string(),
            );
        }
        // SAFETY: the instruction-bytes flag says this union member is valid.
        let raw = unsafe { fail.__bindgen_anon_1.__bindgen_anon_1 };
        let n = usize::from(raw.insn_size).min(raw.insn_bytes.len());
        let mut insn = [0u8; 15];
        insn[..n].copy_from_slice(&raw.insn_bytes[..n]);
        let sync = self.fd.sync_regs();
        let (regs, sregs) = (sync.regs, sync.sregs);
        if guest_mode {
            // A nested guest's instruction: its registers and page tables are not this guest's
            // (dsavmm hides VMX/SVM, so only a guest that enabled them anyway gets here).
            return Err(format!(
                "emulation failure in a nested guest at RIP {:#x}: not emulated",
                regs.rip
            ));
        }
        let cpu = CpuState {
            regs: &regs,
            sregs: &sregs,
            features: self.features,
        };
        let mem = PhysMemory {
            ram: &self.mem,
            mmio: &self.mmio,
        };
        let (fd, offset) = (&self.fd, self.features.pkru_xsave_offset);
        let mut cached_pkru = None;
        let mut pkru = || *cached_pkru.get_or_insert_with(|| read_pkru(fd, offset));
        match direct_store::emulate(&insn[..n], &cpu, &mem, &mut pkru) {
            Ok(done) => {
                self.stats.direct_stores.fetch_add(1, Ordering::Relaxed);
                if done.unclaimed {
                    self.stats
                        .unhandled_accesses
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("direct store at RIP {:#x} to an unbacked address", regs.rip);
                }
                self.complete(done.next_rip, regs.rflags)
            }
            Err(fault) => {
                self.stats
                    .injected_exceptions
                    .fetch_add(1, Ordering::Relaxed);
                // The first #UD per vCPU is worth a user's attention (a guest that uses an
                // instruction this KVM cannot emulate); faults are the guest's business.
                if fault == Fault::Ud && !self.warned_ud {
                    self.warned_ud = true;
                    tracing::warn!(
                        "vCPU {}: #UD delivered for an instruction KVM could not emulate, at RIP \
                         {:#x} (bytes {:02x?}); further ones are logged at debug level",
                        self.id,
                        regs.rip,
                        &insn[..n]
                    );
                } else {
                    tracing::debug!(
                        "vCPU {}: {fault} for the instruction at RIP {:#x} (bytes {:02x?})",
                        self.id,
                        regs.rip,
                        &insn[..n]
                    );
                }
                self.inject(fault)
            }
        }
    }

    /// Retires an emulated instruction as the CPU does: RIP advanced, RFLAGS.RF cleared, and with
    /// RFLAGS.TF the single-step #DB trap (DR6.BS) delivered after it.
    fn complete(&mut self, next_rip: u64, rflags: u64) -> Result<(), String> {
        if rflags & RFLAGS_TF == 0 {
            let regs = &mut self.fd.sync_regs_mut().regs;
            regs.rip = next_rip;
            regs.rflags &= !RFLAGS_RF;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            return Ok(());
        }
        // Setting registers drops a pending exception, so they are set (by ioctl, not through
        // the sync area that KVM_RUN would apply after) before the #DB is queued.
        let mut regs = self.fd.sync_regs().regs;
        regs.rip = next_rip;
        regs.rflags &= !RFLAGS_RF;
        self.fd
            .set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        self.queue_exception(DB_VECTOR, None, Some(DR6_BS))
    }

    /// Delivers `fault` at the current RIP (not advanced), as the CPU would.
    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        let payload = match fault {
            Fault::Pf(pf) => Some(pf.addr),
            _ => None,
        };
        self.queue_exception(fault.vector(), fault.error_code(), payload)
    }

    /// Queues exception `vector` through KVM_SET_VCPU_EVENTS. `payload` is CR2 for #PF and the
    /// DR6 bits for #DB. With KVM_CAP_EXCEPTION_PAYLOAD the exception is queued as pending, so
    /// KVM delivers it as a CPU would (RFLAGS.RF for a fault, nested-exception rules, CR2/DR6
    /// written at delivery); without it, it is injected as is, CR2/DR6 set beforehand and RF set
    /// in RFLAGS for a fault.
    fn queue_exception(
        &mut self,
        vector: u8,
        error_code: Option<u32>,
        payload: Option<u64>,
    ) -> Result<(), String> {
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(|e| format!("KVM_GET_VCPU_EVENTS: {e}"))?;
        if events.exception.injected != 0
            || events.exception.pending != 0
            || events.interrupt.injected != 0
            || events.nmi.injected != 0
        {
            // The failure happened while KVM was delivering an event: there is nothing correct
            // to raise on top of it (the CPU would have nested it as a double fault).
            return Err(format!(
                "emulation failure at RIP {:#x} during event delivery (exception {}, interrupt {})",
                self.fd.sync_regs().regs.rip,
                events.exception.nr,
                events.interrupt.nr
            ));
        }
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(error_code.is_some());
        events.exception.error_code = error_code.unwrap_or(0);
        if self.exception_payload {
            events.exception.pending = 1;
            events.exception.injected = 0;
            events.exception_has_payload = u8::from(payload.is_some());
            events.exception_payload = payload.unwrap_or(0);
            events.flags = KVM_VCPUEVENT_VALID_PAYLOAD;
        } else {
            self.set_payload_by_hand(vector, payload)?;
            events.exception.pending = 0;
            events.exception.injected = 1;
            events.exception_has_payload = 0;
            events.exception_payload = 0;
            events.flags = 0;
        }
        self.fd
            .set_vcpu_events(&events)
            .map_err(|e| format!("KVM_SET_VCPU_EVENTS: {e}"))
    }

    /// Without KVM_CAP_EXCEPTION_PAYLOAD: writes CR2 (#PF) or DR6 (#DB) and sets RFLAGS.RF for a
    /// fault, what KVM would do when delivering a pending exception.
    fn set_payload_by_hand(&mut self, vector: u8, payload: Option<u64>) -> Result<(), String> {
        match (vector, payload) {
            (PF_VECTOR, Some(cr2)) => {
                let mut sregs = self
                    .fd
                    .get_sregs()
                    .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
                sregs.cr2 = cr2;
                self.fd
                    .set_sregs(&sregs)
                    .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
            }
            (DB_VECTOR, Some(bits)) => {
                let mut dregs = self
                    .fd
                    .get_debug_regs()
                    .map_err(|e| format!("KVM_GET_DEBUGREGS: {e}"))?;
                dregs.dr6 |= bits;
                self.fd
                    .set_debug_regs(&dregs)
                    .map_err(|e| format!("KVM_SET_DEBUGREGS: {e}"))?;
            }
            _ => {}
        }
        if vector != DB_VECTOR {
            // #UD, #GP, #SS, #PF, #AC are faults: the CPU sets RF in the RFLAGS it pushes.
            self.fd.sync_regs_mut().regs.rflags |= RFLAGS_RF;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
        }
        Ok(())
    }
}

/// The guest's PKRU, from its XSAVE image at `offset` (leaf 0xD subleaf 9; 0, the init state,
/// when the PKRU component is not in use, the CPU has none, or the image cannot be read).
fn read_pkru(fd: &VcpuFd, offset: Option<u32>) -> u32 {
    /// XSTATE_BV, the XSAVE header's bitmap of components in use, at byte 512.
    const XSTATE_BV_WORD: usize = 512 / 4;
    let Some(offset) = offset else {
        return 0;
    };
    match fd.get_xsave() {
        Ok(x) if x.region[XSTATE_BV_WORD] & (1 << 9) != 0 => {
            x.region.get(offset as usize / 4).copied().unwrap_or(0)
        }
        Ok(_) => 0,
        Err(e) => {
            tracing::warn!("KVM_GET_XSAVE for PKRU: {e}; taking PKRU as 0");
            0
        }
    }
}
