//! `hostile_portal`: the WQ portals (BAR2) written the wrong way and the right way with garbage.
//! Plain stores of 1, 2, 4 and 8 bytes and MOVDIRI of 4 and 8 bytes at random offsets are not
//! descriptors (dropped, docs/dsa-device-model.md §1.4), not even a valid descriptor written as
//! eight qword stores; reads return all ones; a misaligned MOVDIR64B raises #GP(0) in the guest
//! (the VMM's emulation, §11); MOVDIR64B of random (sanitised) descriptors at random 64-byte
//! offsets of every page; a descriptor to a disabled WQ or past the last WQ is dropped with SWERR
//! 0x32 (§10.1), one with bus mastering off is dropped without one (§13).

use super::regs::{mmio_read, mmio_write, ones};
use super::{check_eq, Hostile};
use crate::dsa::*;
use crate::dsatest::{OP_NOP, POLL};

/// Plain stores and loads in `hostile_portal`.
const PLAIN_OPS: u64 = 6_000;
/// MOVDIR64B of random descriptors in `hostile_portal`.
const RANDOM_DESCS: u64 = 3_000;

/// `hostile_portal` (see the module documentation).
pub fn case_portal(h: &mut Hostile) -> Res<u64> {
    let mut ops = 0;
    let (bar2, size) = (h.d.bar2, h.d.bar2_size);
    for _ in 0..PLAIN_OPS {
        let n = h.rng.pick(&[1, 2, 4, 8], 8);
        let off = h.rng.below(size - 8);
        let off = if h.rng.chance(200) {
            off & !(n - 1)
        } else {
            off
        };
        if h.rng.chance(64) {
            let v = mmio_read(bar2 + off, n);
            check_eq("portal read", v, ones(n))?;
        } else {
            mmio_write(bar2 + off, n, h.rng.wild());
        }
        ops += 1;
    }
    // A valid NOP, but as 8- and 4-byte stores: never a descriptor.
    let rec = h.record(0);
    let nop = Desc::new(OP_NOP, POLL, rec);
    let slot = bar2 + 0x1000 + 64 * h.rng.below(64);
    for (k, q) in nop.q.iter().enumerate() {
        mmio_write(slot + 8 * k as u64, 8, *q);
    }
    for (k, q) in nop.q.iter().enumerate() {
        mmio_write(slot + 8 * k as u64, 4, *q);
        mmio_write(slot + 8 * k as u64 + 4, 4, *q >> 32);
    }
    for k in 0..8 {
        let v = if k % 2 == 0 { nop.q[1] } else { nop.q[0] };
        let dst = slot + 8 * k;
        if let Some((vector, error)) = crate::faults::kernel_movdiri(4 + 4 * (k % 2), dst, v) {
            let mut l = err("MOVDIRI to a portal raised vector");
            l.s(" ").dec(vector).s(" error ").hex(error);
            return Err(l);
        }
    }
    ops += 40;
    check_eq(
        "a descriptor from partial stores completed: status",
        rd64(rec) & 0xff,
        0,
    )?;
    // Misaligned MOVDIR64B: #GP(0) from the VMM, as the CPU raises it.
    for k in 1..8u64 {
        let dst = bar2 + 0x1000 + 8 * k;
        let got = crate::faults::kernel_movdir64b(dst, (&nop as *const Desc) as u64);
        if got != Some((13, 0)) {
            let mut l = err("misaligned MOVDIR64B to a portal: want #GP(0), got");
            match got {
                Some((v, e)) => l.s(" vector ").dec(v).s(" error ").hex(e),
                None => l.s(" no exception"),
            };
            return Err(l);
        }
        ops += 1;
    }
    check_eq(
        "misaligned MOVDIR64B completed: status",
        rd64(rec) & 0xff,
        0,
    )?;
    // Random descriptors at random slots of every page of every WQ (and past the last WQ).
    h.fill_list();
    for k in 0..RANDOM_DESCS {
        let desc = h.random_desc();
        let off = 64 * h.rng.below(size / 64);
        movdir64b(bar2 + off, &desc);
        if k % 64 == 0 {
            h.clear_errors();
        }
        ops += 1;
    }
    h.clear_errors();
    // Bus mastering off: dropped, no SWERR, no record (§13).
    let (cfg, dev, func) = (h.d.cfg, h.d.dev, h.d.func);
    let cmd = cfg.r16(dev, func, 4);
    cfg.w16(dev, func, 4, cmd & !crate::pci::CMD_MASTER);
    h.clear_errors();
    let rec = h.record(1);
    movdir64b(bar2 + 0x1000, &Desc::new(OP_NOP, POLL, rec));
    cfg.w16(dev, func, 4, cmd);
    check_eq("SWERR with bus mastering off", h.d.r64(SWERR) & 1, 0)?;
    check_eq("record with bus mastering off", rd64(rec) & 0xff, 0)?;
    // A disabled WQ: SWERR 0x32 with the WQ index, no record (§10.1).
    let w = h.d.num_wqs - 1;
    h.d.unmask(w as u16 + 1, false);
    h.d.cmd_ok(CMD_RESET_WQ, wq_set(1 << w), &[0])?;
    let rec = h.record(2);
    let (q0, _) = h.swerr_of(w, &Desc::new(OP_NOP, POLL, rec))?;
    check_eq("SWERR code for a disabled WQ", (q0 >> 8) & 0xff, 0x32)?;
    check_eq("SWERR wq_idx valid", (q0 >> 3) & 1, 1)?;
    check_eq("SWERR wq index", (q0 >> 16) & 0xff, u64::from(w))?;
    check_eq("record of a dropped descriptor", rd64(rec) & 0xff, 0)?;
    ops += 1;
    // Past the last WQ (BAR2 is rounded up to a power of two): SWERR 0x32, no WQ index.
    let end = 0x4000 * u64::from(h.d.num_wqs);
    if end < size {
        h.clear_errors();
        let v0 = crate::idt::irq_count(h.d.vector(0));
        movdir64b(bar2 + end + 0x1000, &Desc::new(OP_NOP, POLL, rec));
        let q0 = h.d.take_swerr(v0)?;
        check_eq("SWERR code past the last WQ", (q0 >> 8) & 0xff, 0x32)?;
        check_eq("SWERR wq_idx valid past the last WQ", (q0 >> 3) & 1, 0)?;
        ops += 1;
    }
    Ok(ops + 1)
}
