//! The PCI function a guest of `backend=vfio` sees: the vDSA front end (configuration space,
//! BAR0 registers, MSI-X table and PBA, all emulated and mediated), with the data path on the
//! physical device:
//!
//! - Portals: guest WQ `i`'s 16 KiB of BAR2 is a KVM memory slot on physical WQ `wqs[i]`'s
//!   portal pages (mmapped from VFIO), moved with the BAR, so a guest MOVDIR64B goes to the
//!   device with no exit.
//! - Interrupts: the guest's idxd puts `int_handle = wq + 1` in descriptors (no interrupt
//!   handles: CMDCAP bit 13 is 0), so the physical device raises its vector `i + 1` for
//!   guest WQ `i`: physical vector `v` is bound by VFIO_DEVICE_SET_IRQS to the KVM irqfd of
//!   guest vector `v` while the guest has that vector unmasked, and to a parking eventfd
//!   otherwise; what a parked vector catches becomes the guest's PBA bit and is delivered on
//!   unmask. No dsavmm thread is on the completion path.
//! - Physical vector 0 (the device's errors and command completions) stays parked: commands
//!   are polled, and the guest's own vector 0 is the front end's. A software error the
//!   physical device signals there is read by [`VfioDsa::poll_misc`] and becomes the guest's
//!   SWERR and misc interrupt (`super::swerr`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use serde::Serialize;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mediated::{MediatedBackend, MediationCounters, PhysicalPort};
use super::physical::{PhysicalDsa, PORTAL_STRIDE};
use super::swerr::{self, Forward};
use super::VfioError;
use crate::dsa::regs::{self, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET};
use crate::dsa::{DsaConfig, DsaDevice, DsaState, DsaStats};
use crate::pci::config::PciConfig;
use crate::pci::kvm_msi::KvmMsiSink;
use crate::pci::PciDevice;

/// The guest-visible geometry for `wqs.len()` WQs of `phys`.
pub fn guest_config(
    caps: &super::physical::PhysicalCaps,
    wqs: usize,
) -> Result<DsaConfig, VfioError> {
    let xfer = caps.max_xfer_shift.clamp(21, 26);
    let cfg = DsaConfig {
        wqs: u8::try_from(wqs).unwrap_or(u8::MAX),
        engines: caps.engines.clamp(1, 4) as u8,
        groups: caps.groups.clamp(1, 4) as u8,
        total_wq_size: caps.total_wq_size.min(128).max(wqs.min(128) as u16),
        max_xfer_shift: xfer,
        max_batch_shift: caps.max_batch_shift.clamp(5, 10).min(31 - xfer),
        // Not used: the hardware executes.
        exec: crate::dsa::Execution::Inline,
    };
    cfg.validate()
        .map_err(|e| VfioError::Front(format!("{e} (device geometry {caps:?})")))?;
    Ok(cfg)
}

/// The guest's MSI-X vectors: as many as the physical device has (the hardware checks a
/// descriptor's interrupt handle against its own table, so the guest's table is the same size),
/// and never fewer than its WQs need.
pub fn guest_vectors(phys_vectors: u32, cfg: &DsaConfig) -> u16 {
    u16::try_from(phys_vectors)
        .unwrap_or(u16::MAX)
        .clamp(cfg.msix_vectors(), crate::dsa::MAX_MSIX_VECTORS)
}

/// Checks a `wqs=` list against the device: each WQ exists, none twice, 1..=8 of them.
pub fn check_wqs(list: &[usize], device_wqs: usize) -> Result<(), VfioError> {
    let text = list
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(":");
    if list.is_empty() || list.len() > 8 {
        return Err(VfioError::Wqs(text, "give 1 to 8 WQs".into()));
    }
    for (i, w) in list.iter().enumerate() {
        if *w >= device_wqs {
            return Err(VfioError::Wqs(
                text,
                format!("the device has WQs 0..{}", device_wqs.saturating_sub(1)),
            ));
        }
        if list[..i].contains(w) {
            return Err(VfioError::Wqs(text, format!("WQ {w} is given twice")));
        }
    }
    Ok(())
}

/// The mediation's counters as the API shows them.
#[derive(Clone, Debug, Serialize)]
pub struct VfioStats {
    /// The physical function.
    pub device: String,
    /// Physical WQ of each guest WQ.
    pub wqs: Vec<usize>,
    /// Whether the portal pages are memory slots in the guest now.
    pub portals_mapped_in_guest: bool,
    /// Guest commands carried out on the physical device.
    pub physical_commands: u64,
    /// Of those, refused by it.
    pub physical_errors: u64,
    /// Portal stores that exited to dsavmm (0 while the pages are mapped).
    pub portal_exits: u64,
    /// VFIO_DEVICE_SET_IRQS calls made for masking and unmasking.
    pub irq_switches: u64,
    /// Physical software errors forwarded to the guest's SWERR.
    pub swerrs_forwarded: u64,
    /// Physical software errors on WQs the guest was not given (not forwarded).
    pub swerrs_foreign: u64,
}

/// A mediated DSA on dsavmm's PCI bus.
pub struct VfioDsa {
    front: DsaDevice,
    phys: Arc<PhysicalDsa>,
    wqs: Vec<usize>,
    sink: Arc<KvmMsiSink>,
    parked: Vec<EventFd>,
    /// Per physical vector: bound to the guest's irqfd (true) or parked.
    bound: Vec<bool>,
    vm: Arc<VmFd>,
    slot_base: u32,
    portal_gpa: Option<u64>,
    counters: Arc<MediationCounters>,
    irq_switches: u64,
}

impl VfioDsa {
    /// The guest's view of `phys`'s WQs `wqs`; interrupts to `sink` (guest_config's vectors),
    /// portal pages in KVM slots `slot_base..slot_base + wqs.len()`.
    pub fn new(
        phys: Arc<PhysicalDsa>,
        wqs: Vec<usize>,
        sink: Arc<KvmMsiSink>,
        vm: Arc<VmFd>,
        slot_base: u32,
    ) -> Result<Self, VfioError> {
        check_wqs(&wqs, phys.caps().wqs)?;
        let cfg = guest_config(&phys.caps(), wqs.len())?;
        if phys.vectors() < u32::from(cfg.msix_vectors()) {
            return Err(VfioError::NotDsa(
                phys.bdf().to_string(),
                format!(
                    "{} MSI-X vectors, fewer than the {} the guest's WQs need",
                    phys.vectors(),
                    cfg.msix_vectors()
                ),
            ));
        }
        let counters = Arc::new(MediationCounters::default());
        let backend = MediatedBackend::new(phys.clone(), wqs.clone(), counters.clone());
        let vectors = guest_vectors(phys.vectors(), &cfg);
        let front =
            DsaDevice::with_backend_and_vectors(cfg, Box::new(backend), sink.clone(), vectors)
                .map_err(|e| VfioError::Front(e.to_string()))?;
        let mut parked = Vec::new();
        for _ in 0..phys.vectors() {
            parked.push(
                EventFd::new(EFD_NONBLOCK).map_err(|e| VfioError::Interrupts(e.to_string()))?,
            );
        }
        let mut dev = Self {
            front,
            bound: vec![false; parked.len()],
            parked,
            phys,
            wqs,
            sink,
            vm,
            slot_base,
            portal_gpa: None,
            counters,
            irq_switches: 0,
        };
        dev.bind()?;
        Ok(dev)
    }

    /// State snapshot (the front end's: what the guest configured).
    pub fn state(&self) -> DsaState {
        self.front.state()
    }

    /// The front end's counters (commands, register accesses; descriptors run on the device).
    pub fn stats(&self) -> DsaStats {
        self.front.stats()
    }

    /// The mediation's counters.
    pub fn vfio_stats(&self) -> VfioStats {
        let c = &self.counters;
        VfioStats {
            device: self.phys.bdf().to_string(),
            wqs: self.wqs.clone(),
            portals_mapped_in_guest: self.portal_gpa.is_some(),
            physical_commands: c.commands.load(Ordering::Relaxed),
            physical_errors: c.physical_errors.load(Ordering::Relaxed),
            portal_exits: c.portal_exits.load(Ordering::Relaxed),
            irq_switches: self.irq_switches,
            swerrs_forwarded: c.swerrs_forwarded.load(Ordering::Relaxed),
            swerrs_foreign: c.swerrs_foreign.load(Ordering::Relaxed),
        }
    }

    /// What the physical misc vector (0, never bound to the guest) caught: a software error
    /// becomes the guest's SWERR, WQ index translated, with the guest's misc interrupt when its
    /// GENCTRL asks for one (`super::swerr`). The VMM's event loop calls this at least every
    /// 200 ms, and the guest's reads of INTCAUSE and SWERR call it first.
    pub fn poll_misc(&mut self) {
        // The eventfd only says the vector fired; SWERR.valid is what counts (an error logged
        // after an earlier take fires again, but checking costs two register reads).
        if let Some(fd) = self.parked.first() {
            let _ = fd.read();
        }
        // A few entries at most per call: each take clears one, a guest's faulty stream could
        // otherwise keep this loop going.
        for _ in 0..4 {
            let Some(q) = PhysicalPort::take_swerr(&*self.phys) else {
                return;
            };
            self.forward_swerr(q);
        }
    }

    fn forward_swerr(&mut self, q: [u64; 4]) {
        match swerr::translate(q, &self.wqs) {
            Forward::Guest(q0, q1, addr) => {
                self.counters
                    .swerrs_forwarded
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "physical DSA {}: software error {q0:#x} {q1:#x} at {addr:#x} forwarded",
                    self.phys.bdf()
                );
                self.front.report_swerr(q0, q1, addr);
            }
            Forward::Foreign(wq) => {
                self.counters.swerrs_foreign.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "physical DSA {}: software error on WQ {wq}, which this guest was not given",
                    self.phys.bdf()
                );
            }
            Forward::Lost => {
                if let Some(q0) = self.front.regs.swerr.first_mut() {
                    if *q0 & swerr::SWERR_VALID != 0 {
                        *q0 |= swerr::SWERR_OVERFLOW;
                    }
                }
            }
            Forward::Nothing => {}
        }
    }

    /// The eventfd physical vector `v` should signal now.
    fn target(&self, v: usize) -> (bool, &EventFd) {
        let guest = u16::try_from(v).unwrap_or(u16::MAX);
        // Vector 0 is the device's own (its causes are mediated, see poll_misc); every other
        // one is the guest's vector of the same number.
        let guest_vector = v >= 1 && guest < self.front.msix.num_vectors();
        if guest_vector && self.front.msix.deliverable(guest) {
            if let Some(fd) = self.sink.eventfd(guest) {
                return (true, fd);
            }
        }
        (false, &self.parked[v])
    }

    fn bind(&mut self) -> Result<(), VfioError> {
        let targets: Vec<&EventFd> = (0..self.parked.len()).map(|v| self.target(v).1).collect();
        self.phys.bind_vectors(&targets)?;
        self.bound = (0..self.parked.len()).map(|v| self.target(v).0).collect();
        Ok(())
    }

    /// What a parked vector caught becomes the guest's pending bit (or an interrupt).
    fn collect_parked(&mut self) {
        let guest = usize::from(self.front.msix.num_vectors());
        for v in 1..guest.min(self.parked.len()) {
            if !self.bound[v] && self.parked[v].read().is_ok_and(|n| n > 0) {
                self.front.msix.trigger(v as u16);
            }
        }
    }

    /// Rebinds the vectors whose target changed (mask, unmask, MSI-X enable).
    fn sync_vectors(&mut self) {
        let changed = (0..self.parked.len()).any(|v| self.target(v).0 != self.bound[v]);
        if !changed {
            return;
        }
        let was = self.bound.clone();
        self.irq_switches += 1;
        if let Err(e) = self.bind() {
            tracing::error!("physical DSA {}: rebinding vectors: {e}", self.phys.bdf());
            return;
        }
        // Caught while parked, now deliverable: deliver it.
        let caught: Vec<u16> = (0..self.parked.len())
            .filter(|&v| self.bound[v] && !was[v] && self.parked[v].read().is_ok_and(|n| n > 0))
            .map(|v| v as u16)
            .collect();
        for v in caught {
            self.front.msix.trigger(v);
        }
    }

    fn in_msix(offset: u64, len: usize, base: u64) -> bool {
        offset >= base && offset + len as u64 <= base + 0x1000
    }

    /// The KVM slot of guest WQ `i`'s portal pages at `gpa` (size 0 deletes it).
    fn portal_region(
        &self,
        i: usize,
        gpa: u64,
        size: u64,
        host: u64,
    ) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: self.slot_base + i as u32,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        }
    }

    /// Deletes the portal slots of guest WQs `0..count` installed at `base`.
    fn remove_portals(&self, base: u64, count: usize) {
        for i in 0..count {
            let at = base + i as u64 * PORTAL_STRIDE;
            // SAFETY: deleting (size 0) a slot this device installed.
            if let Err(e) = unsafe {
                self.vm
                    .set_user_memory_region(self.portal_region(i, at, 0, 0))
            } {
                tracing::error!("removing the portal slot at {at:#x}: {e}");
            }
        }
    }

    /// Moves the portal slots to the BAR at `gpa` (`None`: removes them). All or none: a slot
    /// that cannot be installed removes the ones installed before it, and every store then
    /// exits to dsavmm, which posts it.
    fn install_portals(&mut self, gpa: Option<u64>) {
        if let Some(old) = self.portal_gpa.take() {
            self.remove_portals(old, self.wqs.len());
        }
        let Some(gpa) = gpa else {
            return;
        };
        for (i, w) in self.wqs.iter().enumerate() {
            let Some(host) = self.phys.portal(*w) else {
                tracing::warn!(
                    "physical WQ {w} has no portal pages: WQ {i}'s stores exit to dsavmm"
                );
                self.remove_portals(gpa, i);
                return;
            };
            let at = gpa + i as u64 * PORTAL_STRIDE;
            // SAFETY: `host` is physical WQ `w`'s 16 KiB inside the BAR2 mapping that
            // `self.phys` holds for as long as this device lives; the slot is removed before
            // (Drop) and whenever the BAR moves.
            if let Err(e) = unsafe {
                self.vm
                    .set_user_memory_region(self.portal_region(i, at, PORTAL_STRIDE, host))
            } {
                tracing::warn!(
                    "cannot map WQ {i}'s portal at {at:#x} ({e}): every portal store exits to dsavmm"
                );
                self.remove_portals(gpa, i);
                return;
            }
        }
        self.portal_gpa = Some(gpa);
    }
}

impl Drop for VfioDsa {
    fn drop(&mut self) {
        self.install_portals(None);
    }
}

impl PciDevice for VfioDsa {
    fn config(&self) -> &PciConfig {
        self.front.config()
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        self.front.config_mut()
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.collect_parked();
        self.front.config_write(reg, offset, data);
        self.sync_vectors();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 && Self::in_msix(offset, data.len(), MSIX_PBA_OFFSET) {
            self.collect_parked();
        }
        if bar == 0
            && (offset == regs::INTCAUSE || (regs::SWERR..regs::SWERR + 32).contains(&offset))
        {
            self.poll_misc();
        }
        self.front.bar_read(bar, offset, data);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let table = bar == 0 && Self::in_msix(offset, data.len(), MSIX_TABLE_OFFSET);
        if table {
            self.collect_parked();
        }
        self.front.bar_write(bar, offset, data);
        if table {
            self.sync_vectors();
        }
    }

    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
        if bar == crate::dsa::BAR_PORTALS {
            self.install_portals(addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::physical::PhysicalCaps;

    #[test]
    fn the_guest_gets_the_physical_vector_count() {
        let cfg = DsaConfig {
            wqs: 2,
            ..DsaConfig::default()
        };
        assert_eq!(guest_vectors(9, &cfg), 9, "a real DSA: 8 WQs + 1");
        assert_eq!(guest_vectors(2, &cfg), 3, "never fewer than the WQs need");
        assert_eq!(
            guest_vectors(2049, &cfg),
            32,
            "MSIX_PERM's room below GRPCFG"
        );
    }

    #[test]
    fn wq_lists_are_checked() {
        assert!(check_wqs(&[0, 3], 8).is_ok());
        assert!(check_wqs(&[], 8).is_err());
        assert!(check_wqs(&[8], 8).is_err());
        assert!(check_wqs(&[1, 1], 8).is_err());
        assert!(check_wqs(&(0..9).collect::<Vec<_>>(), 16).is_err());
    }

    #[test]
    fn the_guest_geometry_fits_the_front_end() {
        let real = PhysicalCaps {
            wqs: 8,
            groups: 4,
            engines: 4,
            total_wq_size: 128,
            max_xfer_shift: 31,
            max_batch_shift: 10,
            ..PhysicalCaps::default()
        };
        let c = guest_config(&real, 2).unwrap();
        assert_eq!(
            (c.wqs, c.engines, c.groups, c.total_wq_size),
            (2, 4, 4, 128)
        );
        assert_eq!((c.max_xfer_shift, c.max_batch_shift), (26, 5));
        let vdsa = PhysicalCaps {
            max_xfer_shift: 21,
            ..real
        };
        let c = guest_config(&vdsa, 1).unwrap();
        assert_eq!((c.max_xfer_shift, c.max_batch_shift), (21, 10));
    }
}
