//! Type-0 PCI configuration space of one function: 256 bytes of registers with per-bit
//! read-only / writable / write-1-to-clear masks, the BAR sizing protocol, and a capability list.
//!
//! Devices embed a [`PciConfig`] and let [`super::PciBus`] drive it; they only react to the
//! registers they own (for example the MSI-X message control word) in
//! [`super::PciDevice::config_written`].

use super::PciError;

/// Number of dwords in the standard configuration header plus capability area.
pub const CONFIG_DWORDS: usize = 64;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Offset of the command register.
pub const COMMAND_REG: usize = 0x04;
/// Command register: memory space decode enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Status register: capability list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of BAR0.
pub const BAR0_REG: usize = 0x10;
/// Offset of the capability pointer.
pub const CAP_PTR_REG: usize = 0x34;
/// First byte of the capability area.
const CAP_START: usize = 0x40;

/// Kind of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR (one register).
    Mem32,
    /// 64-bit memory BAR (two registers: this one and the next).
    Mem64,
}

/// A BAR as the device declared it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// BAR register index (0..=5); a 64-bit BAR also uses `index + 1`.
    pub index: usize,
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// Size in bytes (a power of two, at least 4 KiB here so a BAR owns whole pages).
    pub size: u64,
    /// Prefetchable bit.
    pub prefetchable: bool,
}

/// Identity fields of a type-0 header.
#[derive(Clone, Copy, Debug)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base << 16 | sub << 8 | prog-if).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// One function's configuration space.
#[derive(Clone, Debug)]
pub struct PciConfig {
    regs: [u32; CONFIG_DWORDS],
    /// Bits the guest may change.
    wmask: [u32; CONFIG_DWORDS],
    /// Bits a guest write of 1 clears.
    w1c: [u32; CONFIG_DWORDS],
    bars: [Option<BarSpec>; NUM_BARS],
    /// Byte offset of the last capability added (its "next" byte is patched by the next one).
    last_cap: Option<usize>,
    /// First free byte in the capability area.
    next_cap: usize,
}

impl PciConfig {
    /// A type-0 header with the given identity, no BARs, no capabilities, everything disabled.
    pub fn new(h: PciHeader) -> Self {
        let mut c = Self {
            regs: [0; CONFIG_DWORDS],
            wmask: [0; CONFIG_DWORDS],
            w1c: [0; CONFIG_DWORDS],
            bars: [None; NUM_BARS],
            last_cap: None,
            next_cap: CAP_START,
        };
        c.regs[0] = u32::from(h.vendor) | (u32::from(h.device) << 16);
        c.regs[2] = u32::from(h.revision) | ((h.class & 0x00ff_ffff) << 8);
        c.regs[11] = u32::from(h.subsystem_vendor) | (u32::from(h.subsystem) << 16);
        // Command: I/O, memory, bus master, parity, SERR#, INTx disable are guest-writable.
        // Status (upper half): the error bits 15..11 and 8 are RW1C; the device never sets them.
        c.wmask[1] = 0x0547;
        c.w1c[1] = 0xf900_0000;
        // Cache line size and latency timer are plain read/write storage.
        c.wmask[3] = 0x0000_ffff;
        // Interrupt line is storage; interrupt pin stays 0 (no INTx).
        c.wmask[15] = 0x0000_00ff;
        c
    }

    /// Declares a memory BAR. The address is programmed later (firmware-style allocation by the
    /// bus, or the guest).
    pub fn add_bar(&mut self, spec: BarSpec) -> Result<(), PciError> {
        let slots = if spec.kind == BarKind::Mem64 { 2 } else { 1 };
        let bad = spec.index + slots > NUM_BARS
            || !spec.size.is_power_of_two()
            || spec.size < 0x1000
            || (spec.kind == BarKind::Mem32 && spec.size > 1 << 31)
            || (spec.index..spec.index + slots).any(|i| self.bar_slot_used(i));
        if bad {
            return Err(PciError::BadBar(spec.index));
        }
        let reg = BAR0_REG / 4 + spec.index;
        let mut flags = 0u32;
        if spec.kind == BarKind::Mem64 {
            flags |= 0b100;
        }
        if spec.prefetchable {
            flags |= 0b1000;
        }
        self.regs[reg] = flags;
        // Sizing protocol: address bits below the size are hard-wired to 0.
        self.wmask[reg] = (!(spec.size - 1) as u32) & !0xf;
        if spec.kind == BarKind::Mem64 {
            self.wmask[reg + 1] = (!(spec.size - 1) >> 32) as u32;
        }
        self.bars[spec.index] = Some(spec);
        Ok(())
    }

    fn bar_slot_used(&self, i: usize) -> bool {
        self.bars[i].is_some()
            || (i > 0 && matches!(self.bars[i - 1], Some(b) if b.kind == BarKind::Mem64))
    }

    /// Appends a capability: `id`, then `body` (bytes after the id/next header). `body_wmask`
    /// gives the guest-writable bits of `body` (same length or shorter; missing bytes read-only).
    /// Returns the capability's offset in configuration space.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        body_wmask: &[u8],
    ) -> Result<usize, PciError> {
        let off = self.next_cap;
        let len = 2 + body.len();
        // Keep capabilities dword aligned.
        let end = off + len.div_ceil(4) * 4;
        if end > CONFIG_DWORDS * 4 || body_wmask.len() > body.len() {
            return Err(PciError::CapabilitySpace);
        }
        self.set_byte(off, id);
        self.set_byte(off + 1, 0);
        for (i, b) in body.iter().enumerate() {
            self.set_byte(off + 2 + i, *b);
        }
        for (i, m) in body_wmask.iter().enumerate() {
            let at = off + 2 + i;
            let shift = (at % 4) * 8;
            self.wmask[at / 4] |= u32::from(*m) << shift;
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, off as u8),
            None => {
                self.set_byte(CAP_PTR_REG, off as u8);
                self.regs[1] |= u32::from(STATUS_CAP_LIST) << 16;
            }
        }
        self.last_cap = Some(off);
        self.next_cap = end;
        Ok(off)
    }

    fn set_byte(&mut self, off: usize, v: u8) {
        let shift = (off % 4) * 8;
        if let Some(r) = self.regs.get_mut(off / 4) {
            *r = (*r & !(0xff << shift)) | (u32::from(v) << shift);
        }
    }

    /// Reads dword `reg` (0..64); dwords past the header read 0 (no extended capabilities).
    pub fn read_dword(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Writes `data` (1..=4 bytes) at byte `offset` within dword `reg`, honouring the masks.
    /// Accesses that cross the dword or fall outside the header are ignored.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg >= CONFIG_DWORDS || data.is_empty() || offset + data.len() > 4 {
            return;
        }
        let mut val = 0u32;
        let mut enable = 0u32;
        for (i, b) in data.iter().enumerate() {
            let shift = (offset + i) * 8;
            val |= u32::from(*b) << shift;
            enable |= 0xff << shift;
        }
        let wm = self.wmask[reg] & enable;
        let c = self.w1c[reg] & enable & val;
        self.regs[reg] = ((self.regs[reg] & !wm) | (val & wm)) & !c;
    }

    /// Device-side store that bypasses the guest masks (for example a read-only field the
    /// device updates, or firmware BAR placement).
    pub fn set_dword(&mut self, reg: usize, v: u32) {
        if let Some(r) = self.regs.get_mut(reg) {
            *r = v;
        }
    }

    /// Reads the 16-bit word at byte offset `off`.
    pub fn read_word(&self, off: usize) -> u16 {
        (self.read_dword(off / 4) >> ((off % 4) * 8)) as u16
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[1] as u16
    }

    /// Memory space decode is on.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Bus mastering is on.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// The declared BARs.
    pub fn bars(&self) -> Vec<BarSpec> {
        self.bars.iter().flatten().copied().collect()
    }

    /// The BAR declared at `index`.
    pub fn bar(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// The address currently programmed in BAR `index` (whatever the guest wrote, sizing
    /// pattern included).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let spec = self.bar(index)?;
        let reg = BAR0_REG / 4 + index;
        let lo = u64::from(self.regs[reg] & !0xf);
        let hi = if spec.kind == BarKind::Mem64 {
            u64::from(self.regs[reg + 1])
        } else {
            0
        };
        Some(lo | (hi << 32))
    }

    /// Programs BAR `index` (firmware-style placement); the address must be size-aligned.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        let spec = self.bar(index).ok_or(PciError::BadBar(index))?;
        if addr & (spec.size - 1) != 0
            || (spec.kind == BarKind::Mem32 && addr > u64::from(u32::MAX))
        {
            return Err(PciError::BadBar(index));
        }
        let reg = BAR0_REG / 4 + index;
        self.regs[reg] = (self.regs[reg] & 0xf) | (addr as u32 & !0xf);
        if spec.kind == BarKind::Mem64 {
            self.regs[reg + 1] = (addr >> 32) as u32;
        }
        Ok(())
    }

    /// Where BAR `index` decodes right now: `Some((address, size))` when memory decode is on
    /// and the address is usable (non-zero, no wrap), else `None`.
    pub fn bar_decode(&self, index: usize) -> Option<(u64, u64)> {
        if !self.memory_enabled() {
            return None;
        }
        let spec = self.bar(index)?;
        let addr = self.bar_address(index)?;
        (addr != 0 && addr.checked_add(spec.size).is_some()).then_some((addr, spec.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfig {
        PciConfig::new(PciHeader {
            vendor: 0x8086,
            device: 0x0b25,
            class: 0x088000,
            revision: 0,
            subsystem_vendor: 0x8086,
            subsystem: 0,
        })
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = cfg();
        assert_eq!(c.read_dword(0), 0x0b25_8086);
        c.write(0, 0, &[0xff; 4]);
        assert_eq!(c.read_dword(0), 0x0b25_8086);
        assert_eq!(c.read_dword(2), 0x0880_0000);
    }

    #[test]
    fn command_and_status_masks() {
        let mut c = cfg();
        c.write(1, 0, &[0xff, 0xff]);
        assert_eq!(c.command(), 0x0547);
        assert!(c.memory_enabled() && c.bus_master_enabled());
        c.set_dword(1, c.read_dword(1) | 0x8000_0000);
        // W1C of status bit 15 via a 2-byte write at offset 2.
        c.write(1, 2, &[0x00, 0x80]);
        assert_eq!(c.read_dword(1) >> 16, 0);
        // A write crossing the dword is ignored.
        c.write(1, 3, &[1, 2]);
        assert_eq!(c.command(), 0x0547);
    }

    #[test]
    fn bar_sizing_64() {
        let mut c = cfg();
        c.add_bar(BarSpec {
            index: 0,
            kind: BarKind::Mem64,
            size: 0x10000,
            prefetchable: true,
        })
        .unwrap();
        assert_eq!(c.read_dword(4) & 0xf, 0xc);
        c.write(4, 0, &[0xff; 4]);
        c.write(5, 0, &[0xff; 4]);
        assert_eq!(c.read_dword(4), 0xffff_000c);
        assert_eq!(c.read_dword(5), 0xffff_ffff);
        c.set_bar_address(0, 0x1_2345_0000).unwrap();
        assert_eq!(c.bar_address(0), Some(0x1_2345_0000));
        assert_eq!(c.bar_decode(0), None, "decode off");
        c.write(1, 0, &[2]);
        assert_eq!(c.bar_decode(0), Some((0x1_2345_0000, 0x10000)));
        assert!(c.set_bar_address(0, 0x1000).is_err());
        // BAR 1 is the upper half; declaring it again fails.
        assert!(c
            .add_bar(BarSpec {
                index: 1,
                kind: BarKind::Mem32,
                size: 0x1000,
                prefetchable: false
            })
            .is_err());
    }

    #[test]
    fn bar_sizing_32() {
        let mut c = cfg();
        c.add_bar(BarSpec {
            index: 2,
            kind: BarKind::Mem32,
            size: 0x4000,
            prefetchable: false,
        })
        .unwrap();
        c.write(6, 0, &[0xff; 4]);
        assert_eq!(c.read_dword(6), 0xffff_c000);
        // Unimplemented BARs read 0 and ignore writes.
        c.write(7, 0, &[0xff; 4]);
        assert_eq!(c.read_dword(7), 0);
        assert!(c
            .add_bar(BarSpec {
                index: 3,
                kind: BarKind::Mem32,
                size: 0x3000,
                prefetchable: false
            })
            .is_err());
    }

    #[test]
    fn capability_chain() {
        let mut c = cfg();
        let a = c
            .add_capability(0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 0xc0])
            .unwrap();
        let b = c.add_capability(0x10, &[0; 2], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x4c);
        assert_eq!(c.read_dword(CAP_PTR_REG / 4) & 0xff, 0x40);
        assert_eq!(
            c.read_dword(1) >> 16 & u32::from(STATUS_CAP_LIST),
            u32::from(STATUS_CAP_LIST)
        );
        assert_eq!(c.read_dword(0x40 / 4), 0x0201_4c11);
        c.write(0x40 / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.read_word(0x42), 0xc201);
        assert!(c.add_capability(9, &[0; 250], &[]).is_err());
    }
}
