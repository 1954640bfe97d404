//! The virtual Intel DSA (PCI 8086:0b25) front end that the unmodified Linux 6.12 `idxd` driver
//! and accel-config 3.5.3 accept. `docs/dsa-device-model.md` is its device model: in this module,
//! "section N" and "trap K" mean that document's §N and §0 trap K.
//!
//! - PCI: class 0x088000, BAR0 (64 KiB, 64-bit prefetchable: registers, tables, MSI-X table at
//!   0x2000 and PBA at 0x3000), BAR2 (portals, 16 KiB per WQ), an MSI-X capability with
//!   num_wqs + 1 vectors (trap 6; a mediated device has the physical count, at most 32). No PCIe/PASID/ATS/PRI capabilities (section 1.5 \[R\]).
//! - BAR0 registers: [`regs`]; GRPCFG/WQCFG: [`config`]; commands: [`command`]; portals and
//!   descriptor intake: [`portal`]; execution: [`backend`].
//! - Completion: the backend writes the completion record (status byte last), then the front end
//!   sends MSI-X entry `int_handle` (trap 7). Descriptor completions never touch INTCAUSE
//!   (section 5).
//!
//! Locking: the device lives in one `Mutex` (it is a [`PciDevice`]). With engine workers
//! ([`workers`], `exec=workers`, the default) a portal write in the vCPU's MMIO exit only
//! validates and queues; the workers execute with no lock held and take the lock only to
//! signal a completion ([`DsaDevice::reap`]). With `exec=inline` (and in `dsa-server`) the
//! descriptor executes in the submitting thread under that lock.

pub mod backend;
pub mod command;
pub mod config;
pub mod descriptor;
pub mod engine;
pub mod portal;
pub mod regs;
pub mod workers;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use vm_memory::GuestMemoryMmap;

use crate::pci::config::{BarKind, BarSpec, PciConfig, PciHeader};
use crate::pci::msix::{MsiInterruptSink, Msix};
use crate::pci::{PciDevice, PciError};
use backend::{DsaBackend, SoftwareBackend};
use config::Tables;
use engine::Outcome;
use regs::{Caps, Registers, GENCTRL_SOFTERR_INT_EN, INTCAUSE_SWERR, STATE_ENABLED};

/// PCI vendor ID (Intel).
pub const DSA_VENDOR_ID: u16 = 0x8086;
/// PCI device ID matched by idxd as DSA_SPR0 (section 1.1).
pub const DSA_DEVICE_ID: u16 = 0x0b25;
/// The most MSI-X vectors a vDSA has: MSIX_PERM's room in BAR0 (8 bytes per vector from
/// 0x300 up to GRPCFG at 0x400), 32. The MSI-X table itself would hold 256.
pub const MAX_MSIX_VECTORS: u16 = ((regs::GRPCFG_OFFSET - regs::MSIX_PERM_OFFSET) / 8) as u16;
/// PCI class: system peripheral, other (section 1.2).
pub const DSA_CLASS: u32 = 0x08_8000;
/// BAR index of the registers.
pub const BAR_REGS: usize = 0;
/// BAR index of the portals.
pub const BAR_PORTALS: usize = 2;

/// log2 of the most bytes of transfers one descriptor may name: a batch of 2^max_batch_shift
/// members of up to 2^max_xfer_shift bytes each, so `max_xfer_shift + max_batch_shift` may not
/// exceed it (the default geometry, 2 MiB x 1024, is exactly 2^31). The engine runs a descriptor
/// synchronously in the submitting vCPU's MMIO exit, under the device lock, so this bounds how
/// long one guest store can hold that vCPU, this device's other users and the API
/// (docs/dsa-device-model.md §15); without it 2 GiB x 1024 = 2 TiB would be allowed.
pub const MAX_WORK_SHIFT: u8 = 31;

/// Where the software engine executes descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    /// On one worker thread per engine; the portal write only queues (the default).
    #[default]
    Workers,
    /// In the thread that wrote the portal (a vCPU's exit), under the device lock.
    Inline,
}

/// Geometry of a vDSA (the CLI's `--dsa backend=software,wqs=N,...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DsaConfig {
    /// Work queues, 1..=8.
    pub wqs: u8,
    /// Engines, 1..=4.
    pub engines: u8,
    /// Groups, 1..=4.
    pub groups: u8,
    /// Sum of all WQ sizes, wqs..=128 (WQCAP.total_wq_size).
    pub total_wq_size: u16,
    /// log2 of the device max transfer size, 21..=26 (trap 11: at least 2 MiB; with
    /// `max_batch_shift` at most [`MAX_WORK_SHIFT`]).
    pub max_xfer_shift: u8,
    /// log2 of the device max batch size, 5..=10 (trap 11: at least 32; real DSA: 10).
    pub max_batch_shift: u8,
    /// Where descriptors execute (`exec=workers|inline`).
    pub exec: Execution,
}

impl Default for DsaConfig {
    /// The section 9.1 device: 8 WQs, 4 engines, 4 groups, 128 entries, 2 MiB, batch 1024.
    fn default() -> Self {
        Self {
            wqs: 8,
            engines: 4,
            groups: 4,
            total_wq_size: 128,
            max_xfer_shift: 21,
            max_batch_shift: 10,
            exec: Execution::Workers,
        }
    }
}

/// A rejected [`DsaConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsaConfigError {
    /// `wqs` out of 1..=8.
    #[error("wqs must be 1..=8, got {0}")]
    Wqs(u8),
    /// `engines` out of 1..=4.
    #[error("engines must be 1..=4, got {0}")]
    Engines(u8),
    /// `groups` out of 1..=4.
    #[error("groups must be 1..=4, got {0}")]
    Groups(u8),
    /// `total_wq_size` out of wqs..=128.
    #[error("total WQ size must be between the number of WQs and 128, got {0}")]
    TotalWqSize(u16),
    /// `max_xfer_shift` out of 21..=26.
    #[error("max transfer shift must be 21..=26 (2 MiB..64 MiB), got {0}")]
    MaxXferShift(u8),
    /// `max_batch_shift` out of 5..=10.
    #[error("max batch shift must be 5..=10 (32..1024 descriptors, as on a real DSA), got {0}")]
    MaxBatchShift(u8),
    /// `max_xfer_shift + max_batch_shift` above [`MAX_WORK_SHIFT`].
    #[error(
        "max transfer shift + max batch shift must be at most 31 (one batch descriptor may name \
         at most 2 GiB of transfers), got {0} + {1}"
    )]
    WorkPerDescriptor(u8, u8),
    /// A `key=value` option string could not be parsed.
    #[error("bad DSA option: {0}")]
    Parse(String),
}

impl DsaConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), DsaConfigError> {
        if !(1..=8).contains(&self.wqs) {
            return Err(DsaConfigError::Wqs(self.wqs));
        }
        if !(1..=4).contains(&self.engines) {
            return Err(DsaConfigError::Engines(self.engines));
        }
        if !(1..=4).contains(&self.groups) {
            return Err(DsaConfigError::Groups(self.groups));
        }
        if self.total_wq_size < u16::from(self.wqs) || self.total_wq_size > 128 {
            return Err(DsaConfigError::TotalWqSize(self.total_wq_size));
        }
        if !(21..=26).contains(&self.max_xfer_shift) {
            return Err(DsaConfigError::MaxXferShift(self.max_xfer_shift));
        }
        // GENCAP's field holds up to 15, but a batch of 1024 is what real devices offer, what
        // the API documents, and what bounds the work one batch descriptor can queue.
        if !(5..=10).contains(&self.max_batch_shift) {
            return Err(DsaConfigError::MaxBatchShift(self.max_batch_shift));
        }
        if self.max_xfer_shift + self.max_batch_shift > MAX_WORK_SHIFT {
            return Err(DsaConfigError::WorkPerDescriptor(
                self.max_xfer_shift,
                self.max_batch_shift,
            ));
        }
        Ok(())
    }

    /// MSI-X vectors of the device: num_wqs + 1 (trap 6). A KVM sink must have this many (or
    /// the count given to [`DsaDevice::with_backend_and_vectors`]).
    pub fn msix_vectors(&self) -> u16 {
        u16::from(self.wqs) + 1
    }

    /// Size of BAR2: 16 KiB per WQ, rounded up to a power of two.
    pub fn portal_bar_size(&self) -> u64 {
        (u64::from(self.wqs) * portal::PORTAL_STRIDE).next_power_of_two()
    }
}

impl std::str::FromStr for DsaConfig {
    type Err = DsaConfigError;

    /// Parses the CLI form `backend=software,wqs=8,engines=4,groups=4,wq_size=128,
    /// max_xfer_shift=21,max_batch_shift=10,exec=workers` (every key optional, defaults from
    /// [`DsaConfig::default`]; `backend` must be `software`), then validates.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = DsaConfig::default();
        for kv in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| DsaConfigError::Parse(kv.to_string()))?;
            let num = |v: &str| {
                v.parse::<u16>()
                    .map_err(|_| DsaConfigError::Parse(kv.to_string()))
            };
            let byte = |v: &str| {
                v.parse::<u8>()
                    .map_err(|_| DsaConfigError::Parse(kv.to_string()))
            };
            match k {
                "backend" if v == "software" => {}
                "wqs" => c.wqs = byte(v)?,
                "engines" => c.engines = byte(v)?,
                "groups" => c.groups = byte(v)?,
                "wq_size" | "wq-size" | "total_wq_size" => c.total_wq_size = num(v)?,
                "max_xfer_shift" | "max-xfer-shift" => c.max_xfer_shift = byte(v)?,
                "max_batch_shift" | "max-batch-shift" => c.max_batch_shift = byte(v)?,
                "exec" => {
                    c.exec = match v {
                        "workers" => Execution::Workers,
                        "inline" => Execution::Inline,
                        _ => return Err(DsaConfigError::Parse(kv.to_string())),
                    }
                }
                _ => return Err(DsaConfigError::Parse(kv.to_string())),
            }
        }
        c.validate()?;
        Ok(c)
    }
}

/// Errors creating a vDSA.
#[derive(Debug, thiserror::Error)]
pub enum DsaError {
    /// Bad geometry.
    #[error("invalid DSA configuration: {0}")]
    Config(#[from] DsaConfigError),
    /// PCI configuration space could not be built.
    #[error("PCI: {0}")]
    Pci(#[from] PciError),
    /// An engine worker thread could not be started.
    #[error("cannot start a DSA engine thread: {0}")]
    Thread(std::io::Error),
}

/// Device counters (for the API; a vfio-user client reads them back from the server).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DsaStats {
    /// Descriptors executed (or rejected) by the backend.
    pub descriptors: u64,
    /// Per opcode name.
    pub by_opcode: BTreeMap<String, u64>,
    /// Bytes processed.
    pub bytes: u64,
    /// Completion statuses, by hex code ("0x01").
    pub completion_status: BTreeMap<String, u64>,
    /// Completion records written.
    pub records_written: u64,
    /// Descriptor completion interrupts sent (or left pending while masked).
    pub completion_interrupts: u64,
    /// Vector-0 interrupts (commands, SWERR).
    pub misc_interrupts: u64,
    /// Portal writes dropped (disabled/absent WQ, WQ full, bus mastering off).
    pub dropped_portal_writes: u64,
    /// Of those, because the dedicated WQ was full.
    pub wq_full_drops: u64,
    /// Portal writes that were not one aligned 64-byte write.
    pub bad_portal_writes: u64,
    /// SWERR reports.
    pub software_errors: u64,
    /// Commands executed.
    pub commands: u64,
    /// Commands that ended with a non-zero CMDSTS error.
    pub command_errors: u64,
    /// BAR0 accesses of an unsupported size or alignment.
    pub bad_register_accesses: u64,
    /// Descriptors executed in the thread that wrote the portal (a vCPU's MMIO exit for the
    /// in-process device): all of them with `exec=inline`, none with engine workers.
    pub inline_descriptors: u64,
    /// Descriptors each engine worker executed (empty with `exec=inline`).
    pub engine_descriptors: Vec<u64>,
    /// CMD writes ignored because a command was still active (CMDSTS bit 31).
    pub commands_while_active: u64,
}

#[derive(Clone, Debug)]
struct Counters {
    base: DsaStats,
    by_opcode: Box<[u64; 256]>,
    by_status: Box<[u64; 256]>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            base: DsaStats::default(),
            by_opcode: Box::new([0; 256]),
            by_status: Box::new([0; 256]),
        }
    }
}

impl std::ops::Deref for Counters {
    type Target = DsaStats;
    fn deref(&self) -> &DsaStats {
        &self.base
    }
}

impl std::ops::DerefMut for Counters {
    fn deref_mut(&mut self) -> &mut DsaStats {
        &mut self.base
    }
}

/// One WQ in a [`DsaState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WqState {
    /// WQ index.
    pub id: usize,
    /// "enabled" or "disabled".
    pub state: &'static str,
    /// "dedicated" or "shared".
    pub mode: &'static str,
    /// WQ size.
    pub size: u16,
    /// Priority.
    pub priority: u8,
    /// Group, if any.
    pub group: Option<usize>,
    /// Descriptors in flight.
    pub occupancy: u16,
    /// Max transfer size in bytes.
    pub max_transfer_size: u64,
    /// Max batch size.
    pub max_batch_size: u32,
}

/// Snapshot of the device's state (for the API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DsaState {
    /// Backend name.
    pub backend: &'static str,
    /// Geometry.
    pub config: DsaConfig,
    /// GENSTS.state is enabled.
    pub enabled: bool,
    /// "disabled", "enabled", "draining" or "halted".
    pub state: &'static str,
    /// MSI-X enabled by the guest.
    pub msix_enabled: bool,
    /// Groups.
    pub groups: Vec<config::GroupState>,
    /// Number of engines.
    pub engines: usize,
    /// WQs.
    pub wqs: Vec<WqState>,
}

/// The vDSA PCI function.
pub struct DsaDevice {
    cfg: DsaConfig,
    pci: PciConfig,
    msix_cap: usize,
    pub(crate) msix: Msix,
    pub(crate) caps: Caps,
    pub(crate) regs: Registers,
    pub(crate) tables: Tables,
    pub(crate) backend: Box<dyn DsaBackend>,
    /// A command waiting for work submitted before it (CMDSTS active), see `command.rs`.
    pub(crate) pending: Option<command::Pending>,
    stats: Counters,
}

impl DsaDevice {
    /// A vDSA with the software backend over `mem`, interrupts to `sink`.
    pub fn new(
        cfg: DsaConfig,
        mem: Arc<GuestMemoryMmap<()>>,
        sink: Arc<dyn MsiInterruptSink>,
    ) -> Result<Self, DsaError> {
        Self::with_backend(cfg, Box::new(SoftwareBackend::new(mem)), sink)
    }

    /// A vDSA with any backend.
    pub fn with_backend(
        cfg: DsaConfig,
        backend: Box<dyn DsaBackend>,
        sink: Arc<dyn MsiInterruptSink>,
    ) -> Result<Self, DsaError> {
        Self::with_backend_and_vectors(cfg, backend, sink, cfg.msix_vectors())
    }

    /// A vDSA with any backend and an MSI-X table of `vectors` entries: at least num_wqs + 1
    /// (trap 6: the driver needs that many and accepts more), at most [`MAX_MSIX_VECTORS`].
    /// A mediated device has as many as the physical one, so that an interrupt handle is valid
    /// exactly when the hardware that checks it says so.
    pub fn with_backend_and_vectors(
        cfg: DsaConfig,
        backend: Box<dyn DsaBackend>,
        sink: Arc<dyn MsiInterruptSink>,
        vectors: u16,
    ) -> Result<Self, DsaError> {
        cfg.validate()?;
        let vectors = vectors.clamp(cfg.msix_vectors(), MAX_MSIX_VECTORS);
        let msix = Msix::new(vectors, sink);
        let mut pci = PciConfig::new(PciHeader {
            vendor: DSA_VENDOR_ID,
            device: DSA_DEVICE_ID,
            class: DSA_CLASS,
            revision: 0,
            subsystem_vendor: DSA_VENDOR_ID,
            subsystem: 0,
        });
        pci.add_bar(BarSpec {
            index: BAR_REGS,
            kind: BarKind::Mem64,
            size: regs::BAR0_SIZE,
            prefetchable: true,
        })?;
        pci.add_bar(BarSpec {
            index: BAR_PORTALS,
            kind: BarKind::Mem64,
            size: cfg.portal_bar_size(),
            prefetchable: true,
        })?;
        let (body, wmask) = msix.capability(
            BAR_REGS as u8,
            regs::MSIX_TABLE_OFFSET as u32,
            BAR_REGS as u8,
            regs::MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = pci.add_capability(crate::pci::msix::MSIX_CAP_ID, &body, &wmask)?;
        let caps = Caps::new(&cfg, &backend.opcodes());
        Ok(Self {
            cfg,
            pci,
            msix_cap,
            msix,
            caps,
            regs: Registers::new(usize::from(vectors)),
            tables: Tables::new(
                usize::from(cfg.groups),
                usize::from(cfg.wqs),
                usize::from(cfg.engines),
            ),
            backend,
            pending: None,
            stats: Counters::default(),
        })
    }

    /// The geometry.
    pub fn dsa_config(&self) -> DsaConfig {
        self.cfg
    }

    /// Serves MSI-X as a device behind (vfio-)user VFIO does: every interrupt goes to the
    /// vector's eventfd; the client masks and pends.
    pub fn set_msix_passthrough(&mut self) {
        self.msix.set_passthrough();
    }

    /// The capability registers.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    pub(crate) fn stats_mut(&mut self) -> &mut DsaStats {
        &mut self.stats
    }

    /// Counters.
    pub fn stats(&self) -> DsaStats {
        let mut s = self.stats.base.clone();
        s.engine_descriptors = self.backend.engine_descriptors();
        for (op, n) in self.stats.by_opcode.iter().enumerate() {
            if *n > 0 {
                let name = engine::opcode_name(op as u8);
                let key = if name == "unknown" {
                    format!("{op:#04x}")
                } else {
                    name.to_string()
                };
                *s.by_opcode.entry(key).or_default() += n;
            }
        }
        for (st, n) in self.stats.by_status.iter().enumerate() {
            if *n > 0 {
                s.completion_status.insert(format!("{st:#04x}"), *n);
            }
        }
        s
    }

    /// State snapshot.
    pub fn state(&self) -> DsaState {
        let wqs = self
            .tables
            .wqs
            .iter()
            .enumerate()
            .map(|(id, w)| WqState {
                id,
                state: if w.enabled { "enabled" } else { "disabled" },
                mode: if w.dedicated() { "dedicated" } else { "shared" },
                size: w.size(),
                priority: w.priority(),
                group: self.tables.group_of_wq(id),
                occupancy: w.occupancy,
                max_transfer_size: 1 << w.max_xfer_shift().min(31),
                max_batch_size: 1 << w.max_batch_shift().min(15),
            })
            .collect();
        DsaState {
            backend: self.backend.name(),
            config: self.cfg,
            enabled: self.regs.state == STATE_ENABLED,
            state: ["disabled", "enabled", "draining", "halted"][(self.regs.state & 3) as usize],
            msix_enabled: self.msix.enabled(),
            groups: self.tables.group_states(),
            engines: self.tables.num_engines,
            wqs,
        }
    }

    /// Sets INTCAUSE `cause` and sends vector 0 (section 2.12).
    pub(crate) fn raise_misc(&mut self, cause: u32) {
        self.regs.intcause |= cause;
        self.stats.misc_interrupts += 1;
        self.msix.trigger(0);
    }

    /// Records a software error (section 10.1) and, if GENCTRL.softerr_int_en, raises
    /// INTCAUSE bit 0 on vector 0.
    pub(crate) fn report_swerr(&mut self, q0: u64, q1: u64, addr: u64) {
        self.stats.software_errors += 1;
        tracing::debug!("DSA SWERR {q0:#x} {q1:#x} {addr:#x}");
        self.regs.record_swerr(q0, q1, addr);
        if self.regs.genctrl & GENCTRL_SOFTERR_INT_EN != 0 {
            self.raise_misc(INTCAUSE_SWERR);
        }
    }

    /// Signals the descriptors the backend finished on its own threads, refreshes the WQs'
    /// occupancy, and finishes a pending command whose work is done. The engine workers call
    /// it (under the device lock) after each descriptor.
    pub fn reap(&mut self) {
        for (wq, out) in self.backend.completed() {
            self.complete(wq, out);
        }
        for (i, w) in self.tables.wqs.iter_mut().enumerate() {
            if w.enabled {
                w.occupancy = self.backend.occupancy(i);
            }
        }
        self.finish_pending();
    }

    /// Accounts a finished descriptor of `wq` and signals it: SWERR if the engine could not use
    /// the completion record, then the completion interrupt (record already written, trap 7).
    pub(crate) fn complete(&mut self, wq: usize, out: Outcome) {
        self.stats.descriptors += 1;
        self.stats.bytes += out.bytes;
        self.stats.by_opcode[usize::from(out.opcode)] += 1;
        self.stats.by_status[usize::from(out.status)] += 1;
        if out.record_written {
            self.stats.records_written += 1;
        }
        if let Some(e) = out.swerr {
            // Section 10.1: qword 0 desc valid (2), wq_idx valid (3), batch (4), fault on a
            // write (5), error [15:8], wq [23:16], opcode [39:32]; qword 1 batch index [15:0],
            // invalid flags [63:32]. priv (6) and the PASID stay 0: there are no PASIDs.
            let q0 = (1 << 2)
                | (1 << 3)
                | (u64::from(e.batch_index.is_some()) << 4)
                | (u64::from(e.write) << 5)
                | (u64::from(e.status) << 8)
                | ((wq as u64 & 0xff) << 16)
                | (u64::from(e.opcode) << 32);
            let q1 =
                u64::from(e.batch_index.unwrap_or(0) & 0xffff) | (u64::from(e.invalid_flags) << 32);
            self.report_swerr(q0, q1, e.addr);
        }
        // Batch members that asked for an interrupt are signalled before the batch itself.
        for h in out.member_interrupts.iter().copied().chain(out.interrupt) {
            if h < self.msix.num_vectors() {
                self.stats.completion_interrupts += 1;
                self.msix.trigger(h);
            }
        }
    }
}

impl PciDevice for DsaDevice {
    fn config(&self) -> &PciConfig {
        &self.pci
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.pci
    }

    fn config_written(&mut self, reg: usize) {
        // Bus mastering off (PCI command, dword 1): the device may not start DMA, so work no
        // engine has taken is dropped (what runs finishes).
        if reg == 1 && !self.pci.bus_master_enabled() {
            let all: Vec<usize> = (0..self.tables.wqs.len()).collect();
            self.backend.abort(&all);
        }
        if reg == self.msix_cap / 4 {
            let ctrl = self.pci.read_word(self.msix_cap + 2);
            self.msix.set_control(ctrl);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            BAR_REGS => self.bar0_read(offset, data),
            _ => data.fill(0xff), // portal reads return all ones (section 1.4)
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            BAR_REGS => self.bar0_write(offset, data),
            BAR_PORTALS => self.portal_write(offset, data),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
