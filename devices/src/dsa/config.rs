//! GRPCFG and WQCFG tables (docs/dsa-device-model.md §3) and their lock/reset rules.
//!
//! - GRPCFG is writable only while the device is disabled; writes while enabled are silently
//!   ignored, because the 6.12 driver rewrites every group at each enable-wq (trap 9).
//! - A WQ's WQCFG entry is writable only while that WQ is disabled; dword 0 (size) is also frozen
//!   while the device is enabled (section 3.2 \[R\]). Writes to read-only fields (occupancy,
//!   mode_support, wq_state) are ignored, and resets clear the writable fields, because the
//!   driver ORs the current contents into its shadow before writing back (trap 10).

use serde::Serialize;

/// Bytes per GRPCFG entry.
pub const GRPCFG_SIZE: u64 = 64;
/// Bytes per WQCFG entry (WQCAP.wqcfg_size = 0 → 32 bytes).
pub const WQCFG_SIZE: u64 = 32;
/// Dwords per WQCFG entry.
pub const WQCFG_DWORDS: usize = 8;

/// Writable bits of each WQCFG dword (section 3.2). Dword 2 leaves out ats_disable (bit 2) and
/// prs_disable (bit 3): WQCAP bits 50/55 are 0. Dword 6 has only the RW1C occupancy-interrupt
/// bit; dword 7 is reserved.
const WQCFG_WMASK: [u32; WQCFG_DWORDS] =
    [0xffff, 0xffff, 0x3fff_fff3, 0x1ff, 0x1_ffff, 0x1_ffff, 0, 0];
/// Dword 6 bit 16: occupancy interrupt pending (RW1C, never set by this device).
const WQCFG6_OCC_INT: u32 = 1 << 16;

/// Implemented GRPFLGCFG bits: TC A (2:0), TC B (5:3), use_rdbuf_limit (7), rdbufs_reserved
/// (15:8), rdbufs_allowed (27:20). The progress limits (33:32, 37:36) need GRPCAP bit 18 = 0.
pub const GRPFLG_MASK: u64 = 0x0ff0_ffbf;

/// One group's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCfg {
    /// GRPWQCFG: bitmap of WQs (qword q = WQs 64q..64q+63).
    pub wqs: [u64; 4],
    /// GRPENGCFG: bitmap of engines.
    pub engines: u64,
    /// GRPFLGCFG.
    pub flags: u64,
}

impl GroupCfg {
    /// rdbufs_reserved.
    pub fn rdbufs_reserved(&self) -> u64 {
        (self.flags >> 8) & 0xff
    }
    /// rdbufs_allowed.
    pub fn rdbufs_allowed(&self) -> u64 {
        (self.flags >> 20) & 0xff
    }
    fn has_wqs(&self) -> bool {
        self.wqs.iter().any(|q| *q != 0)
    }
    fn has_wq(&self, wq: usize) -> bool {
        self.wqs
            .get(wq / 64)
            .is_some_and(|q| q & (1 << (wq % 64)) != 0)
    }
}

/// One WQ: its WQCFG dwords plus device-owned state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wq {
    /// WQCFG dwords 0..8 as stored (read-only fields kept at 0 here).
    pub cfg: [u32; WQCFG_DWORDS],
    /// wq_state: enabled.
    pub enabled: bool,
    /// Descriptors accepted and not yet completed.
    pub occupancy: u16,
}

impl Wq {
    /// wq_size.
    pub fn size(&self) -> u16 {
        self.cfg[0] as u16
    }
    /// wq_thresh.
    pub fn threshold(&self) -> u16 {
        self.cfg[1] as u16
    }
    /// mode = 1: dedicated.
    pub fn dedicated(&self) -> bool {
        self.cfg[2] & 1 != 0
    }
    /// Block on fault enable.
    pub fn bof(&self) -> bool {
        self.cfg[2] & 2 != 0
    }
    /// Priority (1..=15 valid).
    pub fn priority(&self) -> u8 {
        ((self.cfg[2] >> 4) & 0xf) as u8
    }
    /// pasid_en.
    pub fn pasid_en(&self) -> bool {
        self.cfg[2] & (1 << 28) != 0
    }
    /// max_xfer_shift.
    pub fn max_xfer_shift(&self) -> u8 {
        (self.cfg[3] & 0x1f) as u8
    }
    /// max_batch_shift.
    pub fn max_batch_shift(&self) -> u8 {
        ((self.cfg[3] >> 5) & 0xf) as u8
    }

    /// Reads dword `d` as the guest sees it (dword 6 carries occupancy and wq_state).
    pub fn read_dword(&self, d: usize) -> u32 {
        match d {
            6 => {
                u32::from(self.occupancy)
                    | (u32::from(self.enabled) << 30)
                    | (self.cfg[6] & WQCFG6_OCC_INT)
            }
            _ => self.cfg.get(d).copied().unwrap_or(0),
        }
    }

    /// Guest write of dword `d`; returns whether anything could change (false when locked).
    pub fn write_dword(&mut self, d: usize, v: u32, device_enabled: bool) -> bool {
        if self.enabled || d >= WQCFG_DWORDS || (d == 0 && device_enabled) {
            return false;
        }
        if d == 6 {
            self.cfg[6] &= !(v & WQCFG6_OCC_INT);
            return true;
        }
        let m = WQCFG_WMASK[d];
        self.cfg[d] = (self.cfg[d] & !m) | (v & m);
        true
    }

    /// Clears the writable fields (RESET_WQ / RESET_DEVICE, trap 10). `keep_size` keeps dword 0
    /// (RESET_WQ while the device is enabled: the size is frozen then, and the 6.12 driver keeps
    /// its size across disable-wq/enable-wq and cannot rewrite it, section 4.8).
    pub fn clear(&mut self, keep_size: bool) {
        let size = self.cfg[0];
        self.cfg = [0; WQCFG_DWORDS];
        if keep_size {
            self.cfg[0] = size;
        }
        self.enabled = false;
        self.occupancy = 0;
    }
}

/// The group/WQ/engine tables of one device.
#[derive(Clone, Debug)]
pub struct Tables {
    /// Groups.
    pub groups: Vec<GroupCfg>,
    /// WQs.
    pub wqs: Vec<Wq>,
    /// Number of engines.
    pub num_engines: usize,
}

/// Snapshot of one group for the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupState {
    /// Group index.
    pub id: usize,
    /// WQs in the group.
    pub wqs: Vec<usize>,
    /// Engines in the group.
    pub engines: Vec<usize>,
    /// Raw GRPFLGCFG.
    pub flags: u64,
}

impl Tables {
    /// Empty tables for the given geometry.
    pub fn new(groups: usize, wqs: usize, engines: usize) -> Self {
        Self {
            groups: vec![GroupCfg::default(); groups],
            wqs: vec![Wq::default(); wqs],
            num_engines: engines,
        }
    }

    fn wq_mask(&self, q: usize) -> u64 {
        let n = self.wqs.len();
        let lo = q * 64;
        if n <= lo {
            0
        } else if n - lo >= 64 {
            u64::MAX
        } else {
            (1u64 << (n - lo)) - 1
        }
    }

    fn engine_mask(&self) -> u64 {
        if self.num_engines >= 64 {
            u64::MAX
        } else {
            (1u64 << self.num_engines) - 1
        }
    }

    /// Reads qword `q` (0..8) of group `g`; reserved qwords and absent groups read 0.
    pub fn group_read(&self, g: usize, q: usize) -> u64 {
        let Some(grp) = self.groups.get(g) else {
            return 0;
        };
        match q {
            0..=3 => grp.wqs[q],
            4 => grp.engines,
            5 => grp.flags,
            _ => 0,
        }
    }

    /// Guest write of a GRPCFG dword: group `g`, qword `q`, `high` half. Ignored while the device
    /// is enabled (trap 9). Bits for WQs/engines that do not exist are dropped.
    pub fn group_write_dword(
        &mut self,
        g: usize,
        q: usize,
        high: bool,
        v: u32,
        device_enabled: bool,
    ) {
        if device_enabled || g >= self.groups.len() {
            return;
        }
        let mask = match q {
            0..=3 => self.wq_mask(q),
            4 => self.engine_mask(),
            5 => GRPFLG_MASK,
            _ => return,
        };
        let Some(grp) = self.groups.get_mut(g) else {
            return;
        };
        let field = match q {
            0..=3 => &mut grp.wqs[q],
            4 => &mut grp.engines,
            _ => &mut grp.flags,
        };
        let (shift, half) = if high {
            (32, 0xffff_ffff_0000_0000u64)
        } else {
            (0, 0xffff_ffffu64)
        };
        let m = mask & half;
        *field = (*field & !m) | ((u64::from(v) << shift) & m);
    }

    /// The group of `wq` (the first one listing it).
    pub fn group_of_wq(&self, wq: usize) -> Option<usize> {
        self.groups.iter().position(|g| g.has_wq(wq))
    }

    /// The ENABLE_DEVICE configuration checks of section 3.1, after the size check. Returns the
    /// CMDSTS error code.
    pub fn check(&self, total_wq_size: u32, total_rdbufs: u64) -> Result<(), u8> {
        let sum: u32 = self.wqs.iter().map(|w| u32::from(w.size())).sum();
        if sum > total_wq_size {
            return Err(0x14);
        }
        for g in &self.groups {
            if g.has_wqs() != (g.engines != 0) {
                return Err(0x15);
            }
        }
        for (i, w) in self.wqs.iter().enumerate() {
            let n = self.groups.iter().filter(|g| g.has_wq(i)).count();
            if n > 1 || (n == 0 && w.size() > 0) {
                return Err(0x16);
            }
        }
        for e in 0..self.num_engines {
            if self
                .groups
                .iter()
                .filter(|g| g.engines & (1 << e) != 0)
                .count()
                > 1
            {
                return Err(0x17);
            }
        }
        let reserved: u64 = self.groups.iter().map(GroupCfg::rdbufs_reserved).sum();
        if reserved > total_rdbufs
            || self
                .groups
                .iter()
                .any(|g| g.rdbufs_allowed() < g.rdbufs_reserved())
        {
            return Err(0x18);
        }
        Ok(())
    }

    /// Power-on / RESET_DEVICE values: GRPCFG 0, WQCFG writable fields 0, WQs disabled
    /// (section 2.19).
    pub fn reset(&mut self) {
        self.groups
            .iter_mut()
            .for_each(|g| *g = GroupCfg::default());
        self.wqs.iter_mut().for_each(|w| w.clear(false));
    }

    /// Group snapshot.
    pub fn group_states(&self) -> Vec<GroupState> {
        self.groups
            .iter()
            .enumerate()
            .map(|(id, g)| GroupState {
                id,
                wqs: (0..self.wqs.len()).filter(|w| g.has_wq(*w)).collect(),
                engines: (0..self.num_engines)
                    .filter(|e| g.engines & (1 << e) != 0)
                    .collect(),
                flags: g.flags,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wqcfg_rules() {
        let mut w = Wq::default();
        // accel-config example (section 3.2): {0x10, 0, 0xA1, 0xB5, 0, 0, 0, 0}.
        for (d, v) in [0x10u32, 0, 0xa1, 0xb5, 0, 0, 0, 0].iter().enumerate() {
            assert!(w.write_dword(d, *v, false));
        }
        assert_eq!(
            (
                w.size(),
                w.dedicated(),
                w.priority(),
                w.max_xfer_shift(),
                w.max_batch_shift()
            ),
            (16, true, 10, 21, 5)
        );
        // Read-only fields ignored (trap 10): state/occupancy/mode_support.
        w.write_dword(6, 0xffff_ffff, false);
        assert_eq!(w.read_dword(6), 0);
        // Unsupported dword-2 bits (ats/prs disable) and reserved bits.
        w.write_dword(2, 0xffff_ffff, false);
        assert_eq!(w.read_dword(2), 0x3fff_fff3);
        w.write_dword(7, 0xffff_ffff, false);
        assert_eq!(w.read_dword(7), 0);
        // Size frozen while the device is enabled, other dwords not (trap 9).
        assert!(!w.write_dword(0, 0x20, true));
        assert_eq!(w.size(), 16);
        assert!(w.write_dword(2, 0xa1, true));
        assert_eq!(w.read_dword(2), 0xa1);
        // Enabled WQ: everything locked; state visible in dword 6.
        w.enabled = true;
        w.occupancy = 3;
        assert!(!w.write_dword(2, 0, true));
        assert_eq!(w.read_dword(6), 0x4000_0003);
        // Reset clears the writable fields (trap 10).
        w.clear(true);
        assert_eq!(w.cfg, [0x10, 0, 0, 0, 0, 0, 0, 0]);
        w.clear(false);
        assert_eq!(w.cfg, [0; 8]);
        assert!(!w.enabled);
    }

    #[test]
    fn grpcfg_lock_and_masks() {
        let mut t = Tables::new(4, 8, 4);
        t.group_write_dword(0, 0, false, 0xffff_ffff, false);
        t.group_write_dword(0, 0, true, 0xffff_ffff, false);
        t.group_write_dword(0, 4, false, 0xff, false);
        t.group_write_dword(0, 5, false, 0xffff_ffff, false);
        t.group_write_dword(0, 5, true, 0xffff_ffff, false);
        assert_eq!(t.group_read(0, 0), 0xff);
        assert_eq!(t.group_read(0, 4), 0xf);
        assert_eq!(t.group_read(0, 5), GRPFLG_MASK);
        // Locked while enabled: silently ignored (trap 9).
        t.group_write_dword(0, 0, false, 0x1, true);
        assert_eq!(t.group_read(0, 0), 0xff);
        t.group_write_dword(9, 0, false, 1, false);
        t.group_write_dword(0, 7, false, 1, false);
        assert_eq!(t.group_read(0, 7), 0);
        t.reset();
        assert_eq!(t.group_read(0, 0), 0);
    }

    #[test]
    fn enable_device_checks() {
        let mut t = Tables::new(4, 8, 4);
        assert_eq!(t.check(128, 64), Ok(()));
        t.wqs[0].write_dword(0, 16, false);
        assert_eq!(t.check(128, 64), Err(0x16), "sized WQ in no group");
        assert_eq!(t.check(8, 64), Err(0x14));
        t.group_write_dword(0, 0, false, 1, false);
        assert_eq!(t.check(128, 64), Err(0x15), "WQs but no engine");
        t.group_write_dword(0, 4, false, 1, false);
        t.group_write_dword(0, 5, false, 0x0400_0009, false);
        t.group_write_dword(1, 5, false, 0x0400_0009, false);
        assert_eq!(t.check(128, 64), Ok(()));
        t.group_write_dword(1, 4, false, 1, false);
        assert_eq!(t.check(128, 64), Err(0x15), "engines but no WQ");
        t.group_write_dword(1, 0, false, 2, false);
        assert_eq!(t.check(128, 64), Err(0x17));
        t.group_write_dword(1, 4, false, 2, false);
        t.group_write_dword(1, 0, false, 3, false);
        assert_eq!(t.check(128, 64), Err(0x16));
        t.group_write_dword(1, 0, false, 2, false);
        t.group_write_dword(1, 5, false, 0x0400_4009, false);
        t.group_write_dword(2, 5, false, 0x0ff0_3f00, false);
        assert_eq!(t.check(128, 64), Err(0x18), "reserved sum > total");
        t.group_write_dword(1, 5, false, 0x0400_0009, false);
        t.group_write_dword(2, 5, false, 0x0010_2000, false);
        assert_eq!(t.check(128, 64), Err(0x18), "allowed < reserved");
        t.group_write_dword(2, 5, false, 0, false);
        assert_eq!(t.check(128, 64), Ok(()));
        assert_eq!(t.group_of_wq(1), Some(1));
        let s = t.group_states();
        assert_eq!((s[0].wqs.clone(), s[0].engines.clone()), (vec![0], vec![0]));
    }
}
