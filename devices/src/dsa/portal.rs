//! BAR2: the WQ portals (docs/dsa-device-model.md §1.4) and descriptor intake.
//!
//! WQ n owns BAR2 + n * 0x4000: four 4 KiB pages (unlimited MSI-X, limited MSI-X, unlimited
//! IMS, limited IMS). A submission is one 64-byte write (MOVDIR64B, delivered by the VMM's
//! emulation-failure path as a single 64-byte bus write) at any 64-byte aligned offset of any
//! of the four pages. For a dedicated WQ limited and unlimited behave the same.
//!
//! Rules applied here (\[S\] DSA spec as encoded by Intel's VDCM; \[R\] where marked):
//! - Writes of another size or alignment are not descriptors: dropped and counted.
//! - Reads return all ones.
//! - A descriptor for a WQ that does not exist or is not enabled (or a disabled device) is
//!   dropped and reported in SWERR with wq_idx valid \[R, section 10.1\].
//! - A dedicated WQ that is full (occupancy = size) drops the descriptor silently, as a
//!   dedicated WQ gives no feedback to MOVDIR64B; it is counted in the stats.
//! - Bus mastering off: the device cannot DMA; the descriptor is dropped and counted. So is one
//!   for a WQ that a pending DISABLE_WQ, RESET_WQ, DISABLE_DEVICE or RESET_DEVICE closes.
//! - RCI with an interrupt handle outside the MSI-X table, or from an IMS page (no IMS here),
//!   completes with status 0x19 "invalid interrupt handle" (section 5).

use super::backend::Submitted;
use super::descriptor::{Descriptor, DESC_SIZE};
use super::engine::EngineLimits;
use super::regs::STATE_ENABLED;
use super::DsaDevice;

/// Bytes of BAR2 per WQ.
pub const PORTAL_STRIDE: u64 = 0x4000;
/// Bytes of one portal page.
pub const PORTAL_PAGE: u64 = 0x1000;

/// Which portal a BAR2 offset hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortalAddr {
    /// WQ index.
    pub wq: usize,
    /// Page 0..4: unlimited MSI-X, limited MSI-X, unlimited IMS, limited IMS.
    pub page: u8,
    /// Offset within the page.
    pub offset: u64,
}

impl PortalAddr {
    /// The completion interrupt handle indexes IMS (pages 2 and 3).
    pub fn is_ims(&self) -> bool {
        self.page >= 2
    }
}

/// Decodes a BAR2 offset.
pub fn decode(offset: u64) -> PortalAddr {
    PortalAddr {
        wq: (offset / PORTAL_STRIDE) as usize,
        page: ((offset % PORTAL_STRIDE) / PORTAL_PAGE) as u8,
        offset: offset % PORTAL_PAGE,
    }
}

/// SWERR error code used for a descriptor written to a disabled or absent WQ \[R\]: no code for
/// this case is documented where we could check; the 6.12 driver only logs SWERR contents.
pub const SWERR_WQ_NOT_ENABLED: u8 = 0x32;
/// Completion status: invalid interrupt handle.
pub const STATUS_INVALID_INT_HANDLE: u8 = 0x19;

impl DsaDevice {
    /// A write to BAR2.
    pub(crate) fn portal_write(&mut self, offset: u64, data: &[u8]) {
        let Ok(raw) = <&[u8; DESC_SIZE]>::try_from(data) else {
            self.stats.bad_portal_writes += 1;
            return;
        };
        if !offset.is_multiple_of(DESC_SIZE as u64) {
            self.stats.bad_portal_writes += 1;
            return;
        }
        let p = decode(offset);
        let desc = Descriptor::parse(raw);
        let wq_ok = self.regs.state == STATE_ENABLED
            && self.tables.wqs.get(p.wq).is_some_and(|w| w.enabled);
        if !wq_ok {
            self.stats.dropped_portal_writes += 1;
            let wq_valid = if p.wq < self.tables.wqs.len() {
                (1 << 3) | ((p.wq as u64 & 0xff) << 16)
            } else {
                0
            };
            // Section 10.1 qword 0: desc valid (2), wq_idx valid (3), error [15:8], wq [23:16],
            // opcode [39:32].
            let q0 = (1 << 2)
                | wq_valid
                | (u64::from(SWERR_WQ_NOT_ENABLED) << 8)
                | (u64::from(desc.opcode()) << 32);
            self.report_swerr(q0, 0, 0);
            return;
        }
        if !self.pci.bus_master_enabled() || self.pending.as_ref().is_some_and(|c| c.closes(p.wq)) {
            self.stats.dropped_portal_writes += 1;
            return;
        }
        let (size, occupancy) = match self.tables.wqs.get(p.wq) {
            Some(w) => (w.size(), w.occupancy.max(self.backend.occupancy(p.wq))),
            None => return,
        };
        if occupancy >= size {
            self.stats.wq_full_drops += 1;
            self.stats.dropped_portal_writes += 1;
            return;
        }
        let Some(w) = self.tables.wqs.get(p.wq) else {
            return;
        };
        // The bounds on one descriptor's work (docs/dsa-device-model.md §15): the WQ's max
        // transfer and max batch sizes, which ENABLE_WQ keeps at or below GENCAP's, so at most
        // 2^max_batch_shift members of at most 2^max_xfer_shift bytes each. `int_handles`
        // makes a batch member's interrupt handle outside the MSI-X table 0x19, as the
        // descriptor's own is below (section 5).
        let limits = EngineLimits {
            max_xfer_size: 1u64 << w.max_xfer_shift().min(31),
            max_batch_size: 1u32 << w.max_batch_shift().min(15),
            int_handles: self.msix.num_vectors(),
            ..EngineLimits::default()
        };
        let bad_handle = desc.wants_completion_interrupt()
            && (p.is_ims() || desc.int_handle() >= self.msix.num_vectors());
        if bad_handle {
            let out = self.backend.reject(p.wq, raw, STATUS_INVALID_INT_HANDLE);
            self.complete(p.wq, out);
            return;
        }
        match self.backend.submit(p.wq, raw, &limits) {
            Submitted::Done(out) => {
                self.stats.inline_descriptors += 1;
                self.complete(p.wq, out);
            }
            Submitted::Queued => {
                let n = self.backend.occupancy(p.wq);
                if let Some(w) = self.tables.wqs.get_mut(p.wq) {
                    w.occupancy = n;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_pages() {
        assert_eq!(
            decode(0x1000),
            PortalAddr {
                wq: 0,
                page: 1,
                offset: 0
            }
        );
        assert_eq!(
            decode(0x4000 * 3 + 0x2fc0),
            PortalAddr {
                wq: 3,
                page: 2,
                offset: 0xfc0
            }
        );
        assert!(decode(0x3000).is_ims());
        assert!(!decode(0x1040).is_ims());
    }
}
