//! `hostile_flood`: every online CPU (the BSP and the APs of [`crate::smp`]) submits descriptors
//! to the same WQ, through the same portal slots, as fast as it can and without waiting for
//! completions. A dedicated WQ that is full drops a descriptor silently
//! (docs/dsa-device-model.md §10.2); every record that is written must say success, and the
//! device must work normally afterwards.

use core::sync::atomic::{AtomicU64, Ordering};

use super::{check_eq, Hostile, FLOOD};
use crate::dsa::*;
use crate::dsatest::{at, OP_MEMMOVE, OP_NOP, POLL};
use crate::entry::MAX_CPUS;

/// Descriptors each CPU submits.
const PER_CPU: u64 = 4_000;
/// Records per CPU (a ring: a slot is checked and cleared before its reuse).
const RING: u64 = 64;

/// BAR2 of the device flooded (0: none).
static BAR2: AtomicU64 = AtomicU64::new(0);
/// Sandbox start (MEMMOVE buffers).
static SANDBOX: AtomicU64 = AtomicU64::new(0);
/// Per CPU index: submitted | completed << 21 | bad status << 42 (all < 2^21).
static RESULT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The flood of one CPU (index 0 is the BSP): [`PER_CPU`] NOPs and small MEMMOVEs to WQ 0.
pub fn ap_flood(index: usize) {
    let bar2 = BAR2.load(Ordering::Acquire);
    let Some(res) = RESULT.get(index) else {
        return;
    };
    if bar2 == 0 {
        return;
    }
    let s = SANDBOX.load(Ordering::Acquire);
    let ring = at(FLOOD) + 0x800 * index as u64;
    let (mut done, mut bad) = (0u64, 0u64);
    let mut check = |rec: u64| match rd64(rec) as u8 {
        0 => {}
        1 => done += 1,
        _ => bad += 1,
    };
    for k in 0..PER_CPU {
        let rec = ring + 32 * (k % RING);
        if k >= RING {
            check(rec);
        }
        wr64(rec, 0);
        let d = if k % 3 == 2 {
            Desc::new(OP_MEMMOVE, POLL, rec)
                .src(s)
                .dst(s + 0x1000 * (1 + index as u64))
                .size(256)
        } else {
            Desc::new(OP_NOP, POLL, rec)
        };
        // Every CPU walks the same 64 slots of the limited page.
        movdir64b(bar2 + 0x1000 + 64 * (k % 64), &d);
    }
    for k in 0..RING.min(PER_CPU) {
        check(ring + 32 * k);
    }
    res.store(PER_CPU | (done << 21) | (bad << 42), Ordering::Release);
}

/// `hostile_flood` (see the module documentation).
pub fn case_flood(h: &mut Hostile) -> Res<u64> {
    BAR2.store(h.d.bar2, Ordering::Release);
    SANDBOX.store(h.sandbox.0, Ordering::Release);
    for r in RESULT.iter() {
        r.store(0, Ordering::Relaxed);
    }
    let mut aps = 0u64;
    crate::smp::for_each_online_index(|i| aps += u64::from(i != 0));
    let t0 = crate::cpu::rdtsc();
    let finished =
        crate::smp::run_job_on_aps(crate::smp::Job::HostileFlood, 10_000, || ap_flood(0));
    let us = crate::time::us_between(t0, crate::cpu::rdtsc());
    BAR2.store(0, Ordering::Release);
    let (mut sent, mut done, mut bad) = (0, 0, 0);
    for r in RESULT.iter() {
        let v = r.load(Ordering::Acquire);
        sent += v & 0x1f_ffff;
        done += (v >> 21) & 0x1f_ffff;
        bad += v >> 42;
    }
    crate::tests::info(|l| {
        l.s("dsa")
            .dec(h.d.index as u64)
            .s(" hostile flood: cpus=")
            .dec(aps + 1)
            .s(" submitted=")
            .dec(sent)
            .s(" completed=")
            .dec(done)
            .s(" dropped=")
            .dec(sent - done - bad)
            .s(" in ")
            .dec(us)
            .s("us");
    });
    check_eq("APs that finished the flood", finished as u64, aps)?;
    check_eq("flood: records with a status other than success", bad, 0)?;
    check_eq("flood: descriptors submitted", sent, PER_CPU * (aps + 1))?;
    if done == 0 {
        return Err(err("flood: no descriptor completed"));
    }
    // Still usable: occupancy back to 0, a copy works.
    check_eq(
        "WQ 0 occupancy after the flood",
        u64::from(h.d.wqcfg_dword(0, 6) & 0xffff),
        0,
    )?;
    let rec = h.record(7);
    let c = h.d.run(0, &Desc::new(OP_NOP, POLL, rec))?;
    check_eq("NOP after the flood: status", u64::from(c.status), 1)?;
    Ok(sent + 1)
}
