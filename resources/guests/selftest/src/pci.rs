//! PCI configuration access on bus 0: the MCFG ECAM window (memory mapped,
//! in the uncached 3..4 GiB identity range) and the legacy type-1 ports
//! 0xCF8/0xCFC, plus BAR sizing and MSI-X capability lookup, the way the
//! Linux PCI core does them (`__pci_read_base`, `pci_find_capability`).

use crate::cpu::{inl, outl};

/// Configuration access for bus 0 through ECAM or the type-1 ports.
#[derive(Clone, Copy)]
pub struct PciCfg {
    /// ECAM base for bus 0 (from MCFG), if any.
    pub ecam: Option<u64>,
}

/// Command register bits.
pub const CMD_MEM: u16 = 1 << 1;
/// Bus master enable.
pub const CMD_MASTER: u16 = 1 << 2;

impl PciCfg {
    fn ecam_addr(&self, dev: u8, func: u8, reg: u16) -> Option<u64> {
        self.ecam.map(|b| {
            b + (u64::from(dev & 31) << 15) + (u64::from(func & 7) << 12) + u64::from(reg & 0xffc)
        })
    }

    /// Reads a dword through ECAM (or the ports without ECAM).
    pub fn r32(&self, dev: u8, func: u8, reg: u16) -> u32 {
        match self.ecam_addr(dev, func, reg) {
            // SAFETY: the ECAM window is MMIO inside the identity-mapped,
            // uncached 3..4 GiB range; aligned dword access.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u32) },
            None => self.io_r32(dev, func, reg),
        }
    }

    /// Writes a dword through ECAM (or the ports without ECAM).
    pub fn w32(&self, dev: u8, func: u8, reg: u16, v: u32) {
        match self.ecam_addr(dev, func, reg) {
            // SAFETY: as in `r32`.
            Some(a) => unsafe { core::ptr::write_volatile(a as *mut u32, v) },
            None => self.io_w32(dev, func, reg, v),
        }
    }

    /// Reads a word (the dword containing it, shifted).
    pub fn r16(&self, dev: u8, func: u8, reg: u16) -> u16 {
        (self.r32(dev, func, reg & !3) >> (8 * u32::from(reg & 2))) as u16
    }

    /// Writes a word with a 16-bit access (ECAM) or a 16-bit port write.
    pub fn w16(&self, dev: u8, func: u8, reg: u16, v: u16) {
        self.write_sized(dev, func, reg, 2, u32::from(v), false);
    }

    /// Reads a dword through the type-1 ports.
    pub fn io_r32(&self, dev: u8, func: u8, reg: u16) -> u32 {
        outl(0xcf8, type1(dev, func, reg));
        inl(0xcfc)
    }

    /// Writes a dword through the type-1 ports.
    pub fn io_w32(&self, dev: u8, func: u8, reg: u16, v: u32) {
        outl(0xcf8, type1(dev, func, reg));
        outl(0xcfc, v);
    }

    /// Writes `size` (1, 2 or 4) bytes of `v` at byte `reg` (naturally aligned down), through
    /// ECAM or, with `ports` or without ECAM, through 0xCF8/0xCFC; `reg` up to 0xfff (ECAM) or
    /// 0xff (ports).
    pub fn write_sized(&self, dev: u8, func: u8, reg: u16, size: u8, v: u32, ports: bool) {
        let reg = reg & !(u16::from(size).max(1) - 1);
        match self.ecam_addr(dev, func, reg).filter(|_| !ports) {
            // SAFETY: as in `r32`; `a` keeps the low bits of `reg`, aligned to `size`.
            Some(a) => unsafe {
                let a = a + u64::from(reg & 3);
                match size {
                    1 => core::ptr::write_volatile(a as *mut u8, v as u8),
                    2 => core::ptr::write_volatile(a as *mut u16, v as u16),
                    _ => core::ptr::write_volatile(a as *mut u32, v),
                }
            },
            None => {
                outl(0xcf8, type1(dev, func, reg));
                let port = 0xcfc + (reg & 3);
                match size {
                    1 => crate::cpu::outb(port, v as u8),
                    2 => crate::cpu::outw(port, v as u16),
                    _ => outl(port, v),
                }
            }
        }
    }

    /// Reads `size` (1, 2 or 4) bytes at byte `reg`, as [`Self::write_sized`] writes them.
    pub fn read_sized(&self, dev: u8, func: u8, reg: u16, size: u8, ports: bool) -> u32 {
        let reg = reg & !(u16::from(size).max(1) - 1);
        match self.ecam_addr(dev, func, reg).filter(|_| !ports) {
            // SAFETY: as in `write_sized`.
            Some(a) => unsafe {
                let a = a + u64::from(reg & 3);
                match size {
                    1 => u32::from(core::ptr::read_volatile(a as *const u8)),
                    2 => u32::from(core::ptr::read_volatile(a as *const u16)),
                    _ => core::ptr::read_volatile(a as *const u32),
                }
            },
            None => {
                outl(0xcf8, type1(dev, func, reg));
                let port = 0xcfc + (reg & 3);
                match size {
                    1 => u32::from(crate::cpu::inb(port)),
                    2 => u32::from(crate::cpu::inw(port)),
                    _ => inl(port),
                }
            }
        }
    }

    /// Finds capability `id` in the list; returns its offset.
    pub fn find_cap(&self, dev: u8, func: u8, id: u8) -> Option<u16> {
        if self.r16(dev, func, 0x06) & 0x10 == 0 {
            return None;
        }
        let mut p = (self.r32(dev, func, 0x34) & 0xfc) as u16;
        let mut hops = 0;
        while p != 0 && hops < 48 {
            let hdr = self.r32(dev, func, p);
            if hdr & 0xff == u32::from(id) {
                return Some(p);
            }
            p = ((hdr >> 8) & 0xfc) as u16;
            hops += 1;
        }
        None
    }

    /// Sizes BAR `bar` (memory decode must be off): returns (address, size,
    /// 64-bit, prefetchable) or None for an unimplemented or I/O BAR.
    pub fn size_bar(&self, dev: u8, func: u8, bar: u8) -> Option<(u64, u64, bool, bool)> {
        let reg = 0x10 + 4 * u16::from(bar);
        let lo = self.r32(dev, func, reg);
        if lo & 1 != 0 {
            return None;
        }
        let is64 = (lo >> 1) & 3 == 2;
        let hi = if is64 {
            self.r32(dev, func, reg + 4)
        } else {
            0
        };
        self.w32(dev, func, reg, 0xffff_ffff);
        let slo = self.r32(dev, func, reg) & !0xf;
        let shi = if is64 {
            self.w32(dev, func, reg + 4, 0xffff_ffff);
            let v = self.r32(dev, func, reg + 4);
            self.w32(dev, func, reg + 4, hi);
            v
        } else {
            0xffff_ffff
        };
        self.w32(dev, func, reg, lo);
        let mask = u64::from(slo) | (u64::from(shi) << 32);
        if mask == 0 {
            return None;
        }
        let size = (!mask).wrapping_add(1);
        let addr = u64::from(lo & !0xf) | (u64::from(hi) << 32);
        Some((addr, size, is64, lo & 8 != 0))
    }

    /// Programs BAR `bar` (64-bit when `is64`) to `addr`.
    pub fn set_bar(&self, dev: u8, func: u8, bar: u8, addr: u64, is64: bool) {
        let reg = 0x10 + 4 * u16::from(bar);
        let lo = self.r32(dev, func, reg) & 0xf;
        self.w32(dev, func, reg, (addr as u32 & !0xf) | lo);
        if is64 {
            self.w32(dev, func, reg + 4, (addr >> 32) as u32);
        }
    }
}

/// The 0xCF8 address of a bus-0 register.
fn type1(dev: u8, func: u8, reg: u16) -> u32 {
    0x8000_0000 | (u32::from(dev & 31) << 11) | (u32::from(func & 7) << 8) | u32::from(reg & 0xfc)
}
