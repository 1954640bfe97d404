//! `hostile_batches`: batch descriptors (docs/dsa-device-model.md §6.3 BATCH) with counts 0, 1,
//! max + 1 and 2^32 - 1 (0x14), misaligned lists (0x18), lists outside RAM, in MMIO and across the
//! end of RAM (0x06 with the fault address), a batch whose list is itself, a list of other
//! batches and of drains (each member 0x10: batches do not nest), lists of random sanitised
//! descriptors, a fence after a failure, a member whose record is outside RAM (SWERR 0x1A), a
//! member interrupt handle outside the MSI-X table (0x19), and a batch of the WQ's maximum size
//! at the maximum transfer size: the largest unit of work one descriptor can be (its time is
//! printed).

use super::{check_eq, write_desc, Hostile, BAD_ADDR, BATCHES, LIST};
use crate::dsa::*;
use crate::dsatest::*;

/// Batches of random members.
const GARBAGE_BATCHES: u64 = 24;

/// Runs a batch of `count` members at `list` on WQ 0; returns its record.
fn batch(h: &mut Hostile, list: u64, count: u32) -> Res<Cr> {
    let rec = h.record(200);
    h.d.run(0, &Desc::new(OP_BATCH, POLL, rec).src(list).size(count))
}

/// Fails unless the batch ended with `status` after `done` members.
fn expect_batch(what: &str, c: &Cr, status: u8, done: u32) -> Res<()> {
    expect(what, c, status)?;
    check_eq(what, u64::from(c.bytes), u64::from(done)).map_err(|mut l| {
        l.s(" (descriptors completed)");
        l
    })
}

/// Raises WQ 0's max batch size to the device's (GENCAP): DISABLE_WQ, WQCFG dword 3,
/// ENABLE_WQ. Returns it.
fn widen_wq0(h: &mut Hostile) -> Res<u32> {
    let shift = ((h.d.gencap >> 21) & 0xf) as u32;
    h.d.cmd_ok(CMD_DISABLE_WQ, wq_set(1), &[0])?;
    let reg = h.d.wq_reg(0, 3);
    h.d.w32(reg, (h.d.r32(reg) & 0x1f) | (shift << 5));
    h.d.cmd_ok(CMD_ENABLE_WQ, 0, &[0])?;
    Ok(1 << shift)
}

/// `hostile_batches` (see the module documentation).
pub fn case_batches(h: &mut Hostile) -> Res<u64> {
    if !h.d.supports(OP_BATCH) {
        return Err(err("BATCH not advertised"));
    }
    let max = widen_wq0(h)?;
    let (s, end) = h.sandbox;
    let mut ops = 0;
    h.fill_list();
    // Counts out of range, misaligned lists, lists that are not RAM.
    for count in [0, 1, max + 1, u32::MAX] {
        expect(
            "batch count out of range",
            &batch(h, at(LIST), count)?,
            0x14,
        )?;
        ops += 1;
    }
    for off in [8, 32] {
        expect("misaligned batch list", &batch(h, at(LIST) + off, 2)?, 0x18)?;
        ops += 1;
    }
    write_desc(end - 64, &Desc::new(OP_NOP, POLL, s));
    for (list, fault) in [(BAD_ADDR, BAD_ADDR), (h.d.bar0, h.d.bar0), (end - 64, end)] {
        let c = batch(h, list, 2)?;
        expect("batch list outside RAM", &c, 0x06)?;
        check_eq("batch list fault address", c.fault, fault)?;
        ops += 1;
    }
    // A batch whose list is itself: member 0 is a batch (0x10), member 1 a NOP.
    let me = at(BATCHES);
    let rec = h.record(201);
    let rec1 = h.record(202);
    let selfish = Desc::new(OP_BATCH, POLL, rec).src(me).size(2);
    write_desc(me, &selfish);
    write_desc(me + 64, &Desc::new(OP_NOP, POLL, rec1));
    let mut c = h.d.run(0, &selfish)?;
    // Member 0 is this very descriptor, so its 0x10 lands in the batch's own record before the
    // batch's 0x05 does; an engine on another thread (as on hardware) lets the guest see the
    // first one. Wait (bounded) for the batch's.
    let mut spins = 0u32;
    while c.status == 0x10 && spins < 10_000_000 {
        core::hint::spin_loop();
        spins += 1;
        c = read_cr(rec);
    }
    expect_batch("batch listing itself", &c, 0x05, 2)?;
    expect("NOP after the self-listing member", &read_cr(rec1), 1)?;
    ops += 1;
    // A list of batches (valid ones, over LIST) and drains: every member 0x10, nothing nested.
    let others = me + 128;
    for k in 0..8u64 {
        let op = if k % 4 == 3 { OP_DRAIN } else { OP_BATCH };
        let d = Desc::new(op, POLL, h.record(210 + k))
            .src(at(LIST))
            .size(2 + h.rng.below(u64::from(max) - 1) as u32);
        write_desc(others + 64 * k, &d);
    }
    expect_batch("batch of batches", &batch(h, others, 8)?, 0x05, 8)?;
    for k in 0..8u64 {
        expect(
            "a batch or drain inside a batch",
            &read_cr(at(super::RECORDS) + 32 * (210 + k)),
            0x10,
        )?;
    }
    ops += 1;
    // Lists of garbage.
    for k in 0..GARBAGE_BATCHES {
        if k % 8 == 7 {
            h.fill_list();
        }
        let count = 2 + h.rng.below(u64::from(max) - 1) as u32;
        let c = batch(h, at(LIST), count)?;
        if !matches!(c.status, 0x01 | 0x05) || c.bytes > count {
            let mut l = err_hex("batch of random members: status", u64::from(c.status));
            l.s(" completed ")
                .dec(u64::from(c.bytes))
                .s(" of ")
                .dec(u64::from(count));
            return Err(l);
        }
        h.clear_errors();
        ops += 1 + u64::from(c.bytes);
    }
    // A fence after a failure: the fenced member and those after it are abandoned.
    let recs = [h.record(220), h.record(221), h.record(222)];
    write_desc(at(LIST), &Desc::new(0x0b, POLL, recs[0]));
    write_desc(at(LIST) + 64, &Desc::new(OP_NOP, POLL | 1, recs[1]));
    write_desc(at(LIST) + 128, &Desc::new(OP_NOP, POLL, recs[2]));
    expect_batch(
        "fence after a failed member",
        &batch(h, at(LIST), 3)?,
        0x05,
        1,
    )?;
    expect("member before the fence", &read_cr(recs[0]), 0x10)?;
    check_eq("fenced member's record", rd64(recs[1]) & 0xff, 0)?;
    check_eq("record after the fence", rd64(recs[2]) & 0xff, 0)?;
    ops += 1;
    // A member whose record is not RAM: SWERR 0x1A with its address, the batch bit and the
    // member's index (§10.1); the batch goes on.
    write_desc(at(LIST), &Desc::new(OP_NOP, POLL, recs[1]));
    write_desc(at(LIST) + 64, &Desc::new(OP_NOP, POLL, BAD_ADDR));
    write_desc(at(LIST) + 128, &Desc::new(OP_NOP, POLL, recs[2]));
    h.clear_errors();
    let v0 = crate::idt::irq_count(h.d.vector(0));
    let c = batch(h, at(LIST), 3)?;
    expect_batch("member with its record outside RAM", &c, 0x05, 3)?;
    let q0 = h.d.take_swerr(v0)?;
    let (q1, q2) = (h.d.r64(SWERR + 8), h.d.r64(SWERR + 16));
    check_eq(
        "SWERR code of a member's bad record",
        (q0 >> 8) & 0xff,
        0x1a,
    )?;
    check_eq("SWERR batch bit of a member", (q0 >> 4) & 1, 1)?;
    check_eq("SWERR batch index of a member", q1 & 0xffff, 1)?;
    check_eq("SWERR address of a member's bad record", q2, BAD_ADDR)?;
    expect("member before the bad record", &read_cr(recs[1]), 1)?;
    expect("member after the bad record", &read_cr(recs[2]), 1)?;
    ops += 1;
    // A member interrupt handle outside the MSI-X table: 0x19 for that member (§5).
    let bad = h.d.msix_entries + 3;
    write_desc(
        at(LIST),
        &Desc::new(OP_NOP, POLL | F_RCI, recs[0]).handle(bad),
    );
    write_desc(at(LIST) + 64, &Desc::new(OP_NOP, POLL, recs[1]));
    expect_batch(
        "member with a bad interrupt handle",
        &batch(h, at(LIST), 2)?,
        0x05,
        2,
    )?;
    expect(
        "member with a bad interrupt handle",
        &read_cr(recs[0]),
        0x19,
    )?;
    ops += 1;
    // The largest batch: max NOPs, then max memmoves of the WQ's max transfer size.
    for i in 0..u64::from(max) {
        write_desc(at(LIST) + 64 * i, &Desc::new(OP_NOP, F_CRAV, s + 32 * i));
    }
    expect_batch("batch of max NOPs", &batch(h, at(LIST), max)?, 0x01, max)?;
    ops += 1 + u64::from(max);
    let xfer = 1u64 << (h.d.wqcfg_dword(0, 3) & 0x1f);
    if h.d.supports(OP_MEMMOVE) && 2 * xfer <= end - s {
        for i in 0..u64::from(max) {
            let m = Desc::new(OP_MEMMOVE, F_CRAV, s)
                .src(s)
                .dst(s + xfer)
                .size(xfer as u32);
            write_desc(at(LIST) + 64 * i, &m);
        }
        let t0 = crate::cpu::rdtsc();
        let c = batch(h, at(LIST), max)?;
        let us = crate::time::us_between(t0, crate::cpu::rdtsc());
        expect_batch("batch of max memmoves of max size", &c, 0x01, max)?;
        crate::tests::info(|l| {
            l.s("dsa")
                .dec(h.d.index as u64)
                .s(" hostile: one batch of ")
                .dec(u64::from(max))
                .s(" x ")
                .dec(xfer >> 10)
                .s(" KiB memmove (the largest descriptor) took ")
                .dec(us)
                .s(" us in the guest");
        });
        ops += 1 + u64::from(max);
    }
    Ok(ops)
}
