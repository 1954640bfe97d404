//! ACPI table discovery and parsing: RSDP (boot-provided address, else a scan
//! of 0xe0000..0xfffff), XSDT (or RSDT), MADT, FADT (+ DSDT `_S5_`), MCFG.
//! Every table's checksum is verified.

use crate::entry::MAX_CPUS;
use crate::fmt::Line;
use crate::phys;

/// An ACPI Generic Address Structure.
#[derive(Clone, Copy, Default)]
pub struct Gas {
    /// 0 = system memory, 1 = system I/O.
    pub space: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Address.
    pub addr: u64,
}

/// One MCFG allocation (PCIe ECAM window).
#[derive(Clone, Copy, Default)]
pub struct Mcfg {
    /// ECAM base address.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus.
    pub bus_start: u8,
    /// Last bus.
    pub bus_end: u8,
}

/// What the ACPI tables say.
pub struct AcpiInfo {
    /// First problem found (None when all tables parsed and checksummed).
    pub error: Option<Line>,
    /// RSDP address used (0 when none found).
    pub rsdp: u64,
    /// Where the RSDP came from.
    pub rsdp_source: &'static str,
    /// XSDT (or RSDT) address.
    pub xsdt: u64,
    /// Enabled processors' APIC IDs from the MADT (first `cpu_count`).
    pub cpus: [u32; MAX_CPUS],
    /// Number of enabled processors listed (may exceed [`MAX_CPUS`]).
    pub cpu_count: usize,
    /// Local APIC address from the MADT.
    pub lapic_addr: u64,
    /// First I/O APIC address.
    pub ioapic: Option<u64>,
    /// Whether a MADT was found.
    pub have_madt: bool,
    /// Whether a FADT was found.
    pub have_fadt: bool,
    /// First MCFG allocation.
    pub mcfg: Option<Mcfg>,
    /// FADT flags bit 20.
    pub hw_reduced: bool,
    /// FADT SLEEP_CONTROL_REG.
    pub sleep_control: Option<Gas>,
    /// FADT X_PM1a_CNT_BLK (or PM1a_CNT_BLK as an I/O GAS).
    pub pm1a_cnt: Option<Gas>,
    /// SLP_TYPa of `\_S5_` from the DSDT.
    pub s5_slp_typ: Option<u8>,
    /// Signatures of the tables the XSDT lists (first `table_count`).
    pub tables: [[u8; 4]; 16],
    /// Number of tables the XSDT lists.
    pub table_count: usize,
}

const SIG_RSDP: u64 = u64::from_le_bytes(*b"RSD PTR ");

fn sig(b: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*b)
}

/// Byte sum of a physical range (None where unmapped). Sums 8 bytes per
/// step in 16-bit lanes (every instruction costs ~1 µs in this KVM).
fn checksum(addr: u64, len: u64) -> Option<u8> {
    let mut sum = 0u8;
    phys::for_each_chunk(addr, len, |c| sum = sum.wrapping_add(byte_sum(c))).then_some(sum)
}

/// Sum of the bytes of `c`, modulo 256.
pub fn byte_sum(c: &[u8]) -> u8 {
    const LANES: u64 = 0x00ff_00ff_00ff_00ff;
    let words = c.chunks_exact(8);
    let tail = words.remainder();
    let mut total: u64 = 0;
    let mut acc: u64 = 0;
    for (i, w) in words.enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b);
        acc += (x & LANES) + ((x >> 8) & LANES);
        // Each 16-bit lane grows by at most 510 per step: fold before overflow.
        if i % 64 == 63 {
            total += fold(acc);
            acc = 0;
        }
    }
    total += fold(acc);
    for &t in tail {
        total += u64::from(t);
    }
    total as u8
}

fn fold(acc: u64) -> u64 {
    (acc & 0xffff) + ((acc >> 16) & 0xffff) + ((acc >> 32) & 0xffff) + (acc >> 48)
}

fn read_gas(addr: u64) -> Gas {
    Gas {
        space: phys::read_u8(addr),
        bit_width: phys::read_u8(addr + 1),
        addr: phys::read_u64(addr + 4),
    }
}

impl AcpiInfo {
    fn fail(&mut self, what: &str, addr: u64) {
        if self.error.is_none() {
            let mut l = Line::new();
            l.s(what).s(" at ").hex(addr);
            self.error = Some(l);
        }
    }

    /// Finds and parses the tables; `hint` is the boot-provided RSDP address.
    /// Without `need_mcfg` a missing MCFG is not an error.
    pub fn parse(hint: u64, need_mcfg: bool) -> Self {
        let mut a = AcpiInfo {
            error: None,
            rsdp: 0,
            rsdp_source: "none",
            xsdt: 0,
            cpus: [0; MAX_CPUS],
            cpu_count: 0,
            lapic_addr: 0,
            ioapic: None,
            have_madt: false,
            have_fadt: false,
            mcfg: None,
            hw_reduced: false,
            sleep_control: None,
            pm1a_cnt: None,
            s5_slp_typ: None,
            tables: [[0; 4]; 16],
            table_count: 0,
        };
        if hint != 0 && phys::read_u64(hint) == SIG_RSDP {
            a.rsdp = hint;
            a.rsdp_source = "boot";
        } else {
            if hint != 0 {
                a.fail("no RSDP signature at the boot-provided address", hint);
            }
            if let Some(found) = scan_rsdp() {
                a.rsdp = found;
                a.rsdp_source = "scan";
            }
        }
        if a.rsdp == 0 {
            a.fail("no RSDP (boot info and 0xe0000..0xfffff scan)", 0);
            return a;
        }
        a.parse_rsdp(need_mcfg);
        a
    }

    fn parse_rsdp(&mut self, need_mcfg: bool) {
        let r = self.rsdp;
        if checksum(r, 20) != Some(0) {
            self.fail("RSDP checksum bad", r);
            return;
        }
        let revision = phys::read_u8(r + 15);
        let (root, entry_size) = if revision >= 2 {
            let len = u64::from(phys::read_u32(r + 20));
            if !(36..=4096).contains(&len) || checksum(r, len) != Some(0) {
                self.fail("RSDP extended checksum or length bad", r);
                return;
            }
            (phys::read_u64(r + 24), 8)
        } else {
            (u64::from(phys::read_u32(r + 16)), 4)
        };
        self.xsdt = root;
        let want = if entry_size == 8 {
            sig(b"XSDT")
        } else {
            sig(b"RSDT")
        };
        let Some(len) = self.table(root, want, "XSDT/RSDT") else {
            return;
        };
        let mut off = 36;
        while off + entry_size <= len {
            let t = if entry_size == 8 {
                phys::read_u64(root + off)
            } else {
                u64::from(phys::read_u32(root + off))
            };
            off += entry_size;
            let s = phys::read_u32(t);
            if let Some(slot) = self.tables.get_mut(self.table_count) {
                *slot = s.to_le_bytes();
            }
            self.table_count += 1;
            if s == sig(b"APIC") {
                self.parse_madt(t);
            } else if s == sig(b"FACP") {
                self.parse_fadt(t);
            } else if s == sig(b"MCFG") {
                self.parse_mcfg(t);
            } else {
                // Other tables: only the checksum.
                let _ = self.table(t, s, "table");
            }
        }
        if !self.have_madt {
            self.fail("no MADT in XSDT", root);
        }
        if !self.have_fadt {
            self.fail("no FADT in XSDT", root);
        }
        if need_mcfg && self.mcfg.is_none() {
            self.fail("no MCFG in XSDT", root);
        }
    }

    /// Checks a table's signature, length and checksum; returns its length.
    fn table(&mut self, addr: u64, signature: u32, name: &str) -> Option<u64> {
        if addr == 0 || phys::read_u32(addr) != signature {
            let mut l = Line::new();
            l.s(name).s(" signature bad");
            self.fail_line(l, addr);
            return None;
        }
        let len = u64::from(phys::read_u32(addr + 4));
        if !(36..=(1 << 20)).contains(&len) {
            let mut l = Line::new();
            l.s(name).s(" length ").dec(len).s(" bad");
            self.fail_line(l, addr);
            return None;
        }
        if checksum(addr, len) != Some(0) {
            let mut l = Line::new();
            l.raw(&signature.to_le_bytes()).s(" checksum bad");
            self.fail_line(l, addr);
            return None;
        }
        Some(len)
    }

    fn fail_line(&mut self, mut l: Line, addr: u64) {
        if self.error.is_none() {
            l.s(" at ").hex(addr);
            self.error = Some(l);
        }
    }

    fn parse_madt(&mut self, t: u64) {
        let Some(len) = self.table(t, sig(b"APIC"), "MADT") else {
            return;
        };
        self.have_madt = true;
        self.lapic_addr = u64::from(phys::read_u32(t + 36));
        let mut off = 44;
        while off + 2 <= len {
            let e = t + off;
            let kind = phys::read_u8(e);
            let elen = u64::from(phys::read_u8(e + 1));
            if elen < 2 || off + elen > len {
                self.fail("MADT entry length bad", e);
                return;
            }
            match (kind, elen) {
                (0, 8..) if phys::read_u32(e + 4) & 1 != 0 => {
                    self.add_cpu(u32::from(phys::read_u8(e + 3)))
                }
                (9, 16..) if phys::read_u32(e + 8) & 1 != 0 => self.add_cpu(phys::read_u32(e + 4)),
                (1, 12..) if self.ioapic.is_none() => {
                    self.ioapic = Some(u64::from(phys::read_u32(e + 4)))
                }
                (5, 12..) => self.lapic_addr = phys::read_u64(e + 4),
                _ => {}
            }
            off += elen;
        }
    }

    fn add_cpu(&mut self, apic_id: u32) {
        if let Some(slot) = self.cpus.get_mut(self.cpu_count) {
            *slot = apic_id;
        }
        self.cpu_count += 1;
    }

    fn parse_fadt(&mut self, t: u64) {
        let Some(len) = self.table(t, sig(b"FACP"), "FADT") else {
            return;
        };
        self.have_fadt = true;
        if len >= 116 {
            self.hw_reduced = phys::read_u32(t + 112) & (1 << 20) != 0;
        }
        let pm1a = phys::read_u32(t + 64);
        if len >= 184 && phys::read_u64(t + 176) != 0 {
            self.pm1a_cnt = Some(read_gas(t + 172));
        } else if pm1a != 0 {
            self.pm1a_cnt = Some(Gas {
                space: 1,
                bit_width: 16,
                addr: u64::from(pm1a),
            });
        }
        if len >= 256 {
            let g = read_gas(t + 244);
            if g.addr != 0 {
                self.sleep_control = Some(g);
            }
        }
        let mut dsdt = u64::from(phys::read_u32(t + 40));
        if len >= 148 {
            let x = phys::read_u64(t + 140);
            if x != 0 {
                dsdt = x;
            }
        }
        let Some(dlen) = self.table(dsdt, sig(b"DSDT"), "DSDT") else {
            return;
        };
        self.s5_slp_typ = find_s5(dsdt, dlen);
    }

    fn parse_mcfg(&mut self, t: u64) {
        let Some(len) = self.table(t, sig(b"MCFG"), "MCFG") else {
            return;
        };
        if len < 44 + 16 {
            self.fail("MCFG has no allocation", t);
            return;
        }
        if self.mcfg.is_none() {
            self.mcfg = Some(Mcfg {
                base: phys::read_u64(t + 44),
                segment: phys::read_u16(t + 52),
                bus_start: phys::read_u8(t + 54),
                bus_end: phys::read_u8(t + 55),
            });
        }
    }
}

/// Scans 0xe0000..0x100000 on 16-byte boundaries for "RSD PTR ".
fn scan_rsdp() -> Option<u64> {
    let mut found = None;
    let base = 0xe0000u64;
    phys::for_each_chunk(base, 0x20000, |c| {
        let mut off = 0;
        while off + 8 <= c.len() {
            let word = c
                .get(off..off + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
                .map(u64::from_le_bytes);
            if found.is_none() && word == Some(SIG_RSDP) {
                found = Some(base + off as u64);
            }
            off += 16;
        }
    });
    found
}

/// Finds `_S5_` in AML and returns the first element (SLP_TYPa) of its package.
fn find_s5(dsdt: u64, len: u64) -> Option<u8> {
    let mut res = None;
    phys::for_each_chunk(dsdt, len, |c| {
        if res.is_some() {
            return;
        }
        // Look for the '5' of "_S5_" a word at a time, then check around it.
        const ONES: u64 = 0x0101_0101_0101_0101;
        let mut i = 0;
        while i + 4 <= c.len() {
            if i % 8 == 2 && i + 6 <= c.len() {
                // Bytes i..i+8 hold no '5' at all: skip them (the '5' sits at
                // offset 2 of "_S5_").
                let mut b = [0u8; 8];
                if let Some(w) = c.get(i..i + 8) {
                    b.copy_from_slice(w);
                    let x = u64::from_le_bytes(b) ^ (ONES * u64::from(b'5'));
                    if (x.wrapping_sub(ONES) & !x & (ONES << 7)) == 0 {
                        i += 8;
                        continue;
                    }
                }
            }
            if c.get(i..i + 4) != Some(b"_S5_".as_slice()) {
                i += 1;
                continue;
            }
            // NameOp "_S5_" PackageOp(0x12) PkgLength NumElements element...
            let mut p = i + 4;
            if c.get(p) != Some(&0x12) {
                i += 1;
                continue;
            }
            p += 1;
            let lead = c.get(p).copied().unwrap_or(0);
            p += 1 + usize::from(lead >> 6);
            p += 1; // NumElements
            res = match c.get(p).copied() {
                Some(0x0a) => c.get(p + 1).copied(),
                Some(0x00) => Some(0),
                Some(0x01) => Some(1),
                Some(v) if v < 0x0a => Some(v),
                _ => None,
            };
            if res.is_some() {
                break;
            }
            i += 1;
        }
    });
    res
}
