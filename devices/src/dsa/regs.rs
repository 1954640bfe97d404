//! BAR0 register file of the vDSA (docs/dsa-device-model.md §2) and its access rules.
//!
//! Layout (section 9.1): registers 0x000-0x0FF, MSIX_PERM 0x300, GRPCFG 0x400, WQCFG 0x500, a
//! zero-filled PERFMON window at 0x1000, the MSI-X table at 0x2000 and the PBA at 0x3000.
//!
//! Access sizes (section 2.1): the driver issues naturally aligned 4- and 8-byte accesses. Reads
//! of any size up to 8 bytes that stay inside one qword are served; writes must be 4 bytes
//! (dword aligned) or 8 bytes (qword aligned, handled as low then high dword). Other writes are
//! ignored and counted, never a panic.

use super::config::{GRPCFG_SIZE, WQCFG_SIZE};
use super::{DsaConfig, DsaDevice};

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x1_0000;

/// VERSION (section 2.2).
pub const VERSION: u64 = 0x00;
/// GENCAP (2.3).
pub const GENCAP: u64 = 0x10;
/// WQCAP (2.4).
pub const WQCAP: u64 = 0x20;
/// GRPCAP (2.5).
pub const GRPCAP: u64 = 0x30;
/// ENGCAP (2.6).
pub const ENGCAP: u64 = 0x38;
/// OPCAP, 4 qwords (2.7).
pub const OPCAP: u64 = 0x40;
/// TABLE OFFSETS, 2 qwords (2.8).
pub const OFFSETS: u64 = 0x60;
/// GENCFG (2.9).
pub const GENCFG: u64 = 0x80;
/// GENCTRL (2.10).
pub const GENCTRL: u64 = 0x88;
/// GENSTS (2.11).
pub const GENSTS: u64 = 0x90;
/// INTCAUSE (2.12).
pub const INTCAUSE: u64 = 0x98;
/// CMD (4.1).
pub const CMD: u64 = 0xa0;
/// CMDSTS (4.1).
pub const CMDSTS: u64 = 0xa8;
/// CMDCAP (4.1).
pub const CMDCAP: u64 = 0xb0;
/// SWERR, 4 qwords (10.1).
pub const SWERR: u64 = 0xc0;
/// EVLCFG, 2 qwords (2.15).
pub const EVLCFG: u64 = 0xe0;
/// EVLSTATUS (2.15).
pub const EVLSTATUS: u64 = 0xf0;
/// MSIX_PERM table (2.16).
pub const MSIX_PERM_OFFSET: u64 = 0x300;
/// GRPCFG table (3.1).
pub const GRPCFG_OFFSET: u64 = 0x400;
/// WQCFG table (3.2).
pub const WQCFG_OFFSET: u64 = 0x500;
/// PERFMON window (2.18): reads 0, so PERFCAP reports no counters and the driver gives up
/// silently instead of logging "No PMU support".
pub const PERFMON_OFFSET: u64 = 0x1000;
/// MSI-X table (1.5 \[R\]).
pub const MSIX_TABLE_OFFSET: u64 = 0x2000;
/// MSI-X PBA (1.5 \[R\]).
pub const MSIX_PBA_OFFSET: u64 = 0x3000;

/// GENSTS.state values.
pub const STATE_DISABLED: u32 = 0;
/// Device enabled.
pub const STATE_ENABLED: u32 = 1;

/// INTCAUSE bit 0: software error.
pub const INTCAUSE_SWERR: u32 = 1 << 0;
/// INTCAUSE bit 1: command completion (only for CMD bit 31, traps 4/5).
pub const INTCAUSE_CMD: u32 = 1 << 1;
/// Bits of INTCAUSE that are defined (and RW1C).
const INTCAUSE_MASK: u32 = 0x8000_003f;

/// GENCFG implemented bits: rdbuf_limit (7:0), user_int_en (12), evl_en (13). rdbuf_limit and
/// user_int_en are stored and never acted on (trap 1: the driver can write stack garbage).
const GENCFG_MASK: u32 = 0x30ff;
/// GENCTRL: softerr_int_en, halt_int_en, evl_int_en.
pub const GENCTRL_SOFTERR_INT_EN: u32 = 1 << 0;
const GENCTRL_MASK: u32 = 0x7;
/// EVLCFG qword 0: pasid_en, priv, base \[63:12\].
const EVLCFG0_MASK: u64 = 0xffff_ffff_ffff_f003;
/// EVLCFG qword 1: size \[15:0\], pasid \[35:16\].
const EVLCFG1_MASK: u64 = 0xf_ffff_ffff;
/// MSIX_PERM low dword: ignore (2), pasid_en (3), pasid \[31:12\].
const MSIX_PERM_MASK: u32 = 0xffff_f00c;

/// VERSION value (section 2.2 \[R\]).
pub const VERSION_VALUE: u32 = 0x100;
/// CMDCAP: commands 1-12, no interrupt handles (section 4.1 \[R\]).
pub const CMDCAP_VALUE: u32 = 0x1ffe;
/// GRPCAP.total_rdbufs.
pub const TOTAL_RDBUFS: u64 = 64;

/// Capability registers derived from the geometry (never change after creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// GENCAP.
    pub gencap: u64,
    /// WQCAP.
    pub wqcap: u64,
    /// GRPCAP.
    pub grpcap: u64,
    /// ENGCAP.
    pub engcap: u64,
    /// OPCAP bitmap.
    pub opcap: [u64; 4],
    /// TABLE OFFSETS qwords.
    pub offsets: [u64; 2],
}

impl Caps {
    /// Capabilities for `cfg` and the opcodes the backend executes.
    pub fn new(cfg: &DsaConfig, opcodes: &[u8]) -> Self {
        // GENCAP (2.3): overlap_copy (1), cache_control_mem (2), cmd_cap (4), evl_support = 1
        // (64-byte entries, trap 1), max_xfer_shift, max_batch_shift, config_en (31, trap 13).
        let gencap = (1 << 1)
            | (1 << 2)
            | (1 << 4)
            | (1 << 13)
            | (u64::from(cfg.max_xfer_shift & 0x1f) << 16)
            | (u64::from(cfg.max_batch_shift & 0xf) << 21)
            | (1 << 31);
        // WQCAP (2.4): total size, num_wqs, wqcfg_size 0 (32 B), dedicated (49), priority (51),
        // occupancy (52). No shared mode (KVM never shows ENQCMD, trap 3), no op_config.
        let wqcap = u64::from(cfg.total_wq_size)
            | (u64::from(cfg.wqs) << 16)
            | (1 << 49)
            | (1 << 51)
            | (1 << 52);
        let grpcap = u64::from(cfg.groups) | (TOTAL_RDBUFS << 8);
        let mut opcap = [0u64; 4];
        for op in opcodes {
            opcap[usize::from(op / 64)] |= 1 << (op % 64);
        }
        // Units of 0x100: GRPCFG 0x400, WQCFG 0x500, MSIX_PERM 0x300; PERFMON 0x1000.
        let offsets = [
            (GRPCFG_OFFSET >> 8) | ((WQCFG_OFFSET >> 8) << 16) | ((MSIX_PERM_OFFSET >> 8) << 32),
            PERFMON_OFFSET >> 8,
        ];
        Self {
            gencap,
            wqcap,
            grpcap,
            engcap: u64::from(cfg.engines),
            opcap,
            offsets,
        }
    }

    /// Reads the capability dword at `off` (0x00..0x70), if it is one.
    fn read(&self, off: u64) -> Option<u32> {
        let q = |v: u64| {
            Some(if off & 4 == 0 {
                v as u32
            } else {
                (v >> 32) as u32
            })
        };
        match off & !7 {
            VERSION => Some(if off == VERSION { VERSION_VALUE } else { 0 }),
            GENCAP => q(self.gencap),
            WQCAP => q(self.wqcap),
            GRPCAP => q(self.grpcap),
            ENGCAP => q(self.engcap),
            0x40..=0x58 => q(self.opcap[((off - OPCAP) / 8) as usize]),
            0x60 | 0x68 => q(self.offsets[((off - OFFSETS) / 8) as usize]),
            _ => None,
        }
    }
}

/// The writable and status registers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// GENCFG.
    pub gencfg: u32,
    /// GENCTRL.
    pub genctrl: u32,
    /// GENSTS.state.
    pub state: u32,
    /// INTCAUSE.
    pub intcause: u32,
    /// Last CMD written.
    pub cmd: u32,
    /// CMDSTS.
    pub cmdsts: u32,
    /// SWERR qwords.
    pub swerr: [u64; 4],
    /// EVLCFG qwords.
    pub evlcfg: [u64; 2],
    /// EVLSTATUS.
    pub evlstatus: u64,
    /// MSIX_PERM low dwords, one per MSI-X entry.
    pub msix_perm: Vec<u32>,
}

impl Registers {
    /// Power-on values (section 2.19).
    pub fn new(vectors: usize) -> Self {
        Self {
            msix_perm: vec![0; vectors],
            ..Self::default()
        }
    }

    /// RESET_DEVICE values (section 2.19): everything but CMDSTS (set by the command itself).
    pub fn reset(&mut self) {
        let n = self.msix_perm.len();
        let (cmd, cmdsts) = (self.cmd, self.cmdsts);
        *self = Self::new(n);
        self.cmd = cmd;
        self.cmdsts = cmdsts;
    }
}

fn merge_half(old: u64, v: u32, high: bool, mask: u64) -> u64 {
    let (shift, half) = if high {
        (32, 0xffff_ffff_0000_0000u64)
    } else {
        (0, 0xffff_ffffu64)
    };
    let m = mask & half;
    (old & !m) | ((u64::from(v) << shift) & m)
}

fn half(v: u64, high: bool) -> u32 {
    if high {
        (v >> 32) as u32
    } else {
        v as u32
    }
}

impl DsaDevice {
    /// BAR0 read of any size up to 8 bytes inside one qword.
    pub(crate) fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if len == 0 || len > 8 || (offset % 8) + len > 8 || offset.saturating_add(len) > BAR0_SIZE {
            self.stats_mut().bad_register_accesses += 1;
            data.fill(0xff);
            return;
        }
        let (t, p) = (MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET);
        if (t..t + self.msix.table_size()).contains(&offset) {
            self.msix.table_read(offset - t, data);
            return;
        }
        if (p..p + self.msix.pba_size()).contains(&offset) {
            self.msix.pba_read(offset - p, data);
            return;
        }
        let base = offset & !3;
        let lo = self.reg_read_dword(base);
        let hi = if (offset % 4) + len > 4 {
            self.reg_read_dword(base + 4)
        } else {
            0
        };
        let bytes = (u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes();
        let s = (offset % 4) as usize;
        data.copy_from_slice(&bytes[s..s + data.len()]);
    }

    /// BAR0 write: 4 bytes dword-aligned or 8 bytes qword-aligned (table accesses of any size).
    pub(crate) fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let (t, p) = (MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET);
        if len > 0 && len <= 8 && (t..t + self.msix.table_size()).contains(&offset) {
            self.msix.table_write(offset - t, data);
            return;
        }
        if (p..p + self.msix.pba_size()).contains(&offset) {
            return; // PBA is read-only.
        }
        match (len, data) {
            (4, &[a, b, c, d]) if offset.is_multiple_of(4) && offset < BAR0_SIZE => {
                self.reg_write_dword(offset, u32::from_le_bytes([a, b, c, d]));
            }
            (8, &[a, b, c, d, e, f, g, h]) if offset.is_multiple_of(8) && offset < BAR0_SIZE => {
                self.reg_write_dword(offset, u32::from_le_bytes([a, b, c, d]));
                self.reg_write_dword(offset + 4, u32::from_le_bytes([e, f, g, h]));
            }
            _ => self.stats_mut().bad_register_accesses += 1,
        }
    }

    /// Reads the register dword at `off` (dword aligned).
    fn reg_read_dword(&self, off: u64) -> u32 {
        if let Some(v) = self.caps.read(off) {
            return v;
        }
        let high = off & 4 != 0;
        let r = &self.regs;
        match off {
            GENCFG => r.gencfg,
            GENCTRL => r.genctrl,
            GENSTS => r.state,
            INTCAUSE => r.intcause,
            CMD => r.cmd,
            CMDSTS => r.cmdsts,
            CMDCAP => CMDCAP_VALUE,
            0xc0..=0xdc => half(r.swerr[((off - SWERR) / 8) as usize], high),
            0xe0..=0xec => half(r.evlcfg[((off - EVLCFG) / 8) as usize], high),
            0xf0 | 0xf4 => half(r.evlstatus, high),
            _ => self.table_read_dword(off),
        }
    }

    fn table_read_dword(&self, off: u64) -> u32 {
        let high = off & 4 != 0;
        let perm_end = MSIX_PERM_OFFSET + 8 * self.regs.msix_perm.len() as u64;
        let grp_end = GRPCFG_OFFSET + GRPCFG_SIZE * self.tables.groups.len() as u64;
        let wq_end = WQCFG_OFFSET + WQCFG_SIZE * self.tables.wqs.len() as u64;
        if (MSIX_PERM_OFFSET..perm_end).contains(&off) {
            if high {
                return 0;
            }
            let i = ((off - MSIX_PERM_OFFSET) / 8) as usize;
            return self.regs.msix_perm.get(i).copied().unwrap_or(0);
        }
        if (GRPCFG_OFFSET..grp_end).contains(&off) {
            let rel = off - GRPCFG_OFFSET;
            let (g, q) = (
                (rel / GRPCFG_SIZE) as usize,
                ((rel % GRPCFG_SIZE) / 8) as usize,
            );
            return half(self.tables.group_read(g, q), high);
        }
        if (WQCFG_OFFSET..wq_end).contains(&off) {
            let rel = off - WQCFG_OFFSET;
            let (n, d) = (
                (rel / WQCFG_SIZE) as usize,
                ((rel % WQCFG_SIZE) / 4) as usize,
            );
            return self.tables.wqs.get(n).map_or(0, |w| w.read_dword(d));
        }
        0
    }

    /// Writes the register dword at `off` (dword aligned). Unimplemented offsets ignore writes.
    fn reg_write_dword(&mut self, off: u64, v: u32) {
        let high = off & 4 != 0;
        let enabled = self.regs.state == STATE_ENABLED;
        match off {
            // Section 2.9 [R]: GENCFG accepted only while disabled; store implemented bits only.
            GENCFG if !enabled => self.regs.gencfg = v & GENCFG_MASK,
            GENCTRL => self.regs.genctrl = v & GENCTRL_MASK,
            INTCAUSE => self.regs.intcause &= !(v & INTCAUSE_MASK),
            CMD => self.write_cmd(v),
            // SWERR qword 0: bits 1:0 (valid, overflow) are RW1C (10.1).
            SWERR => self.regs.swerr[0] &= !u64::from(v & 3),
            0xe0 | 0xe4 => {
                self.regs.evlcfg[0] = merge_half(self.regs.evlcfg[0], v, high, EVLCFG0_MASK)
            }
            0xe8 | 0xec => {
                self.regs.evlcfg[1] = merge_half(self.regs.evlcfg[1], v, high, EVLCFG1_MASK)
            }
            // EVLSTATUS: head in the low dword; int_pending (bit 62) RW1C via the high dword.
            0xf0 => self.regs.evlstatus = merge_half(self.regs.evlstatus, v, false, 0xffff),
            0xf4 => self.regs.evlstatus &= !(u64::from(v & (1 << 30)) << 32),
            _ => self.table_write_dword(off, v, enabled),
        }
    }

    fn table_write_dword(&mut self, off: u64, v: u32, enabled: bool) {
        let high = off & 4 != 0;
        let perm_end = MSIX_PERM_OFFSET + 8 * self.regs.msix_perm.len() as u64;
        let grp_end = GRPCFG_OFFSET + GRPCFG_SIZE * self.tables.groups.len() as u64;
        let wq_end = WQCFG_OFFSET + WQCFG_SIZE * self.tables.wqs.len() as u64;
        if (MSIX_PERM_OFFSET..perm_end).contains(&off) {
            // Stored and ignored (2.16).
            if !high {
                if let Some(p) = self
                    .regs
                    .msix_perm
                    .get_mut(((off - MSIX_PERM_OFFSET) / 8) as usize)
                {
                    *p = v & MSIX_PERM_MASK;
                }
            }
        } else if (GRPCFG_OFFSET..grp_end).contains(&off) {
            let rel = off - GRPCFG_OFFSET;
            let (g, q) = (
                (rel / GRPCFG_SIZE) as usize,
                ((rel % GRPCFG_SIZE) / 8) as usize,
            );
            self.tables.group_write_dword(g, q, high, v, enabled);
        } else if (WQCFG_OFFSET..wq_end).contains(&off) {
            let rel = off - WQCFG_OFFSET;
            let (n, d) = (
                (rel / WQCFG_SIZE) as usize,
                ((rel % WQCFG_SIZE) / 4) as usize,
            );
            if let Some(w) = self.tables.wqs.get_mut(n) {
                w.write_dword(d, v, enabled);
            }
        }
        // Everything else (capabilities, PERFMON, holes): read-only, writes ignored.
    }
}
