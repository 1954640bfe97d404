//! One vCPU thread: the KVM_RUN loop and the dispatch of its exits onto the PIO and MMIO buses,
//! including the MOVDIR64B/MOVDIRI emulation-failure path (docs/dsa-device-model.md §0 trap 2, §11).
//!
//! Registers needed on that path come from `KVM_CAP_SYNC_REGS` (no extra ioctl per exit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use devices::bus::Bus;
use devices::legacy::{ExitReason, ExitSignal};
use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

use crate::direct_store::{self, CpuState, Fault, PhysMemory};

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
    /// MAXPHYADDR of the guest's CPUID (reserved-bit checks of the page walk).
    pub max_phys_bits: u8,
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

    /// Handles `KVM_EXIT_INTERNAL_ERROR`. An emulation failure is the guest's instruction: it is
    /// emulated (MOVDIR64B/MOVDIRI) or gets the exception the CPU would raise, and the VM runs on.
    /// Only a failure of KVM or of dsavmm itself (another suberror, an ioctl error) stops the VM.
    fn handle_internal_error(&mut self) -> Result<(), String> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal` /
        // `emulation_failure` member of the union; both are plain integers.
        let fail = unsafe { run.__bindgen_anon_1.emulation_failure };
        let suberror = fail.suberror;
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Err(format!("KVM internal error, suberror {suberror}"));
        }
        let mut insn = [0u8; 15];
        let mut n = 0;
        if fail.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES != 0 {
            // SAFETY: the instruction-bytes flag says this union member is valid.
            let raw = unsafe { fail.__bindgen_anon_1.__bindgen_anon_1 };
            n = usize::from(raw.insn_size).min(raw.insn_bytes.len());
            insn[..n].copy_from_slice(&raw.insn_bytes[..n]);
        }
        let sync = self.fd.sync_regs();
        let (regs, sregs) = (sync.regs, sync.sregs);
        let cpu = CpuState {
            regs: &regs,
            sregs: &sregs,
            max_phys_bits: self.max_phys_bits,
        };
        let mem = PhysMemory {
            ram: &self.mem,
            mmio: &self.mmio,
        };
        let fd = &self.fd;
        let mut pkru = || read_pkru(fd);
        match direct_store::emulate(&insn[..n], &cpu, &mem, &mut pkru) {
            Ok(done) => {
                self.stats.direct_stores.fetch_add(1, Ordering::Relaxed);
                if done.unclaimed {
                    self.stats
                        .unhandled_accesses
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("direct store at RIP {:#x} to an unbacked address", regs.rip);
                }
                self.fd.sync_regs_mut().regs.rip = done.next_rip;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
                Ok(())
            }
            Err(fault) => {
                let before = self
                    .stats
                    .injected_exceptions
                    .fetch_add(1, Ordering::Relaxed);
                // The first one per vCPU is worth a user's attention (a guest that uses an
                // instruction this KVM cannot emulate); the rest are the guest's business.
                if before == 0 {
                    tracing::warn!(
                        "vCPU {}: {fault} delivered for the instruction at RIP {:#x} (bytes \
                         {:02x?}); further ones are logged at debug level",
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

    /// Delivers `fault` at the current RIP (not advanced), as the CPU would: CR2 first for #PF,
    /// then the exception through KVM_SET_VCPU_EVENTS.
    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(|e| format!("KVM_GET_VCPU_EVENTS: {e}"))?;
        if events.exception.injected != 0
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
        if let Fault::Pf(pf) = fault {
            let mut sregs = self
                .fd
                .get_sregs()
                .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
            sregs.cr2 = pf.addr;
            self.fd
                .set_sregs(&sregs)
                .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        }
        events.exception.injected = 1;
        events.exception.pending = 0;
        events.exception.nr = fault.vector();
        events.exception.has_error_code = u8::from(fault.error_code().is_some());
        events.exception.error_code = fault.error_code().unwrap_or(0);
        events.exception_has_payload = 0;
        events.exception_payload = 0;
        events.flags = 0;
        self.fd
            .set_vcpu_events(&events)
            .map_err(|e| format!("KVM_SET_VCPU_EVENTS: {e}"))
    }
}

/// The guest's PKRU, from its XSAVE image (0, the init state, when the PKRU component is not in
/// use or the image cannot be read).
fn read_pkru(fd: &VcpuFd) -> u32 {
    /// XSAVE component 9 (PKRU): byte 2688 of the standard-format image; XSTATE_BV at byte 512.
    const PKRU_WORD: usize = 2688 / 4;
    const XSTATE_BV_WORD: usize = 512 / 4;
    match fd.get_xsave() {
        Ok(x) if x.region[XSTATE_BV_WORD] & (1 << 9) != 0 => x.region[PKRU_WORD],
        Ok(_) => 0,
        Err(e) => {
            tracing::warn!("KVM_GET_XSAVE for PKRU: {e}; taking PKRU as 0");
            0
        }
    }
}
