//! `hostile_config`: random writes and reads of 1, 2 and 4 bytes to the whole configuration space
//! of the DSA function (4 KiB through ECAM, 256 bytes through 0xCF8/0xCFC) and of functions that
//! do not exist; BARs moved over RAM, over each other, over ECAM, the LAPIC and the IOAPIC, to 0
//! and to the sizing pattern; memory decode and bus mastering toggled. The read-only header
//! fields (IDs, class, header type, capability pointer, interrupt pin, BAR type bits, the
//! capability list) must not change, BAR sizing must report 64 KiB, the extended space must read
//! 0, absent functions all ones, and BAR0 must answer at its address only while it is there.

use super::regs::mmio_read;
use super::{check_eq, Hostile, IOAPIC, LAPIC};
use crate::dsa::*;
use crate::pci::{CMD_MASTER, CMD_MEM};

/// Configuration accesses in `hostile_config`.
const CONFIG_OPS: u64 = 8_000;

/// Dwords of the header whose value is read-only (IDs, class/revision, subsystem, capability
/// pointer) and must read as saved after any writes.
const READ_ONLY: [usize; 4] = [0, 2, 11, 13];

/// An address to move a BAR to: RAM (the sandbox, this image), the other BAR, another device's
/// window, ECAM, the LAPIC, the IOAPIC, 0, the sizing pattern, or random.
fn bar_target(h: &mut Hostile) -> u64 {
    let image = core::ptr::addr_of!(crate::entry::__kernel_start) as u64;
    let targets = [
        h.sandbox.0,
        image,
        h.d.bar0,
        h.d.bar2,
        h.d.bar0 + 0x10_0000,
        h.ecam(),
        LAPIC,
        IOAPIC,
        0,
        u64::MAX,
        0x1_0000_0000,
    ];
    if h.rng.chance(192) {
        h.rng.pick(&targets, 0)
    } else {
        h.rng.next()
    }
}

/// `hostile_config` (see the module documentation).
pub fn case_config(h: &mut Hostile) -> Res<u64> {
    let (cfg, dev, func) = (h.d.cfg, h.d.dev, h.d.func);
    let mut ops = 0;
    for _ in 0..CONFIG_OPS {
        let ports = h.rng.chance(64) || cfg.ecam.is_none();
        let span = if ports { 0x100 } else { 0x1000 };
        let reg = if h.rng.chance(160) {
            h.rng.below(0x50)
        } else {
            h.rng.below(span)
        } as u16;
        let size = h.rng.pick(&[1u8, 2, 4], 4);
        // Now and then a function that does not exist: writes vanish, reads are all ones.
        let f = if h.rng.chance(16) {
            1 + h.rng.below(7) as u8
        } else {
            func
        };
        match h.rng.below(16) {
            0..=3 => {
                let v = cfg.read_sized(dev, f, reg, size, ports);
                if f != func && v != super::regs::ones(u64::from(size)) as u32 {
                    return Err(err_hex("absent function read", u64::from(v)));
                }
            }
            4 => {
                // BAR0 answers at its own address, or nothing does.
                let v = mmio_read(h.d.bar0, 4);
                if v != 0x100 && v != 0xffff_ffff {
                    return Err(err_hex("VERSION at BAR0's address while BARs move:", v));
                }
            }
            5..=7 => {
                let bar = 0x10 + 8 * h.rng.below(3) as u16 + 4 * h.rng.below(2) as u16;
                let a = bar_target(h);
                let v = if bar & 4 == 0 {
                    a as u32
                } else {
                    (a >> 32) as u32
                };
                cfg.write_sized(dev, func, bar, 4, v, ports);
            }
            8 => {
                let v = h.rng.next() as u32 & u32::from(CMD_MEM | CMD_MASTER | 0x0545);
                cfg.write_sized(dev, func, 4, 2, v, ports);
            }
            9 => {
                // The sizing protocol: all ones, read back, then a random address.
                cfg.write_sized(dev, func, 0x10, 4, 0xffff_ffff, ports);
                let v = cfg.read_sized(dev, func, 0x10, 4, ports);
                check_eq(
                    "BAR0 sizing (64 KiB, 64-bit prefetchable)",
                    u64::from(v),
                    0xffff_000c,
                )?;
                let a = bar_target(h);
                cfg.write_sized(dev, func, 0x10, 4, a as u32, ports);
            }
            _ => {
                let v = h.rng.wild() as u32;
                cfg.write_sized(dev, f, reg, size, v, ports);
            }
        }
        ops += 1;
    }
    for &k in READ_ONLY.iter() {
        check_eq(
            "read-only configuration dword changed",
            u64::from(cfg.r32(dev, func, 4 * k as u16)),
            u64::from(h.saved_cfg.get(k).copied().unwrap_or(0)),
        )
        .map_err(|mut l| {
            l.s(" at ").hex(4 * k as u64);
            l
        })?;
    }
    let status = cfg.r32(dev, func, 4) >> 16;
    check_eq(
        "status: capability list bit",
        u64::from(status & 0x10),
        0x10,
    )?;
    check_eq(
        "interrupt pin",
        u64::from((cfg.r32(dev, func, 0x3c) >> 8) & 0xff),
        0,
    )?;
    check_eq(
        "BAR0 type bits",
        u64::from(cfg.r32(dev, func, 0x10) & 0xf),
        0xc,
    )?;
    check_eq(
        "BAR2 type bits",
        u64::from(cfg.r32(dev, func, 0x18) & 0xf),
        0xc,
    )?;
    check_eq("BAR4 (none)", u64::from(cfg.r32(dev, func, 0x20)), 0)?;
    if cfg.ecam.is_some() {
        for reg in [0x100u16, 0x400, 0xffc] {
            check_eq(
                "extended configuration space",
                u64::from(cfg.r32(dev, func, reg)),
                0,
            )?;
        }
    }
    Ok(ops + 12)
}

/// Writes the saved header back: decode off, cache line and latency, BARs, interrupt line and
/// the MSI-X control word (function mask set: the table is reprogrammed next), then the command
/// register.
pub fn restore(h: &Hostile) -> Res<()> {
    let (cfg, dev, func) = (h.d.cfg, h.d.dev, h.d.func);
    let saved = |reg: u16| h.saved_cfg.get(usize::from(reg / 4)).copied().unwrap_or(0);
    cfg.w16(dev, func, 4, 0);
    for reg in [0x0c, 0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x3c] {
        cfg.w32(dev, func, reg, saved(reg));
    }
    let c = h.d.msix_cap;
    cfg.w16(dev, func, c + 2, (saved(c) >> 16) as u16 | 0x4000);
    cfg.w16(dev, func, 4, saved(4) as u16);
    // Leave CONFIG_ADDRESS disabled.
    crate::cpu::outl(0xcf8, 0);
    Ok(())
}

/// Fails unless configuration space reads exactly as saved.
pub fn check_saved(h: &Hostile) -> Res<()> {
    let (cfg, dev, func) = (h.d.cfg, h.d.dev, h.d.func);
    for (k, &want) in h.saved_cfg.iter().enumerate() {
        let got = cfg.r32(dev, func, 4 * k as u16);
        check_eq(
            "configuration space not restored",
            u64::from(got),
            u64::from(want),
        )
        .map_err(|mut l| {
            l.s(" at ").hex(4 * k as u64);
            l
        })?;
    }
    Ok(())
}
