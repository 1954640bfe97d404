//! `hostile_descriptors`: for every operation the device advertises, the error completions
//! docs/dsa-device-model.md §6.3, §7 and §10 define for sizes 0, 2^32 - 1 and max + 1, sources and
//! destinations outside RAM, in MMIO (registers, ECAM), across the end of RAM and wrapping the
//! address space, completion records outside RAM, in MMIO and misaligned (SWERR), a record
//! requested without an address, overlapping buffers, every undefined opcode; then thousands of
//! random descriptors whose records, when written, must hold a defined status.

use super::{check_eq, valid_status, Hostile, BAD_ADDR};
use crate::dsa::*;
use crate::dsatest::*;
use crate::fmt::Line;

/// Random descriptors in `hostile_descriptors`.
const RANDOM_DESCS: u64 = 4_000;

/// What field 0x18 is for an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum F18 {
    /// Not an address.
    None,
    /// Read (second source).
    Read,
    /// Written (destination).
    Write,
}

/// An operation with a valid size and what its address fields are.
#[derive(Clone, Copy)]
struct Op {
    op: u8,
    /// Field 0x10 is a source address.
    src: bool,
    f18: F18,
    /// A size the operation accepts.
    unit: u32,
}

const OPS: [Op; 14] = [
    Op {
        op: OP_MEMMOVE,
        src: true,
        f18: F18::Write,
        unit: 64,
    },
    Op {
        op: OP_FILL,
        src: false,
        f18: F18::Write,
        unit: 64,
    },
    Op {
        op: OP_COMPARE,
        src: true,
        f18: F18::Read,
        unit: 64,
    },
    Op {
        op: OP_COMPVAL,
        src: true,
        f18: F18::None,
        unit: 64,
    },
    Op {
        op: OP_CR_DELTA,
        src: true,
        f18: F18::Read,
        unit: 64,
    },
    Op {
        op: OP_AP_DELTA,
        src: true,
        f18: F18::Write,
        unit: 64,
    },
    Op {
        op: OP_DUALCAST,
        src: true,
        f18: F18::Write,
        unit: 64,
    },
    Op {
        op: OP_CRCGEN,
        src: true,
        f18: F18::None,
        unit: 64,
    },
    Op {
        op: OP_COPY_CRC,
        src: true,
        f18: F18::Write,
        unit: 64,
    },
    Op {
        op: OP_DIF_CHECK,
        src: true,
        f18: F18::None,
        unit: 520,
    },
    Op {
        op: OP_DIF_INS,
        src: true,
        f18: F18::Write,
        unit: 512,
    },
    Op {
        op: OP_DIF_STRP,
        src: true,
        f18: F18::Write,
        unit: 520,
    },
    Op {
        op: OP_DIF_UPDT,
        src: true,
        f18: F18::Write,
        unit: 520,
    },
    Op {
        op: OP_CFLUSH,
        src: false,
        f18: F18::Read,
        unit: 64,
    },
];

/// A descriptor of `o` that would succeed (or fail only on its data): buffers in the sandbox,
/// delta record and second destination there too.
fn base(h: &mut Hostile, o: &Op, rec: u64) -> Desc {
    let s = h.sandbox.0;
    let d = Desc::new(o.op, POLL, rec)
        .src(if o.op == OP_FILL { h.rng.next() } else { s })
        .dst(s + 0x10_0000)
        .size(o.unit);
    match o.op {
        OP_CR_DELTA => d.set(0x28, 8, s + 0x20_0000).set(0x30, 4, 80),
        OP_AP_DELTA => d.set(0x28, 4, 10),
        OP_DUALCAST => d.set(0x28, 8, s + 0x20_0000),
        _ => d,
    }
}

/// Checks a fault completion: 0x03 (bit 7 for a write) with the fault address, or the
/// translation-failure codes §10.2 also allows.
fn expect_fault(what: &str, c: &Cr, write: bool, addr: u64) -> Res<()> {
    let code = c.status & 0x7f;
    let ok = match code {
        0x03 => (c.status & 0x80 != 0) == write && c.fault == addr,
        0x20 | 0x22 => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let mut l = Line::new();
    l.s(what)
        .s(": status ")
        .hex(u64::from(c.status))
        .s(" fault ")
        .hex(c.fault)
        .s(" (want 0x03");
    l.s(if write { "|0x80" } else { "" })
        .s(" at ")
        .hex(addr)
        .s(")");
    Err(l)
}

/// Runs `desc` on `wq` and names the operation in a failure.
fn run(h: &mut Hostile, wq: u32, op: u8, what: &str, desc: &Desc) -> Res<Cr> {
    h.d.run(wq, desc).map_err(|mut l| {
        l.s(" (").s(what).s(", opcode ").hex(u64::from(op)).s(")");
        l
    })
}

/// Names the opcode in a failure of `r`.
fn tag<T>(r: Res<T>, op: u8) -> Res<T> {
    r.map_err(|mut l| {
        l.s(" (opcode ").hex(u64::from(op)).s(")");
        l
    })
}

/// The error cases of one operation; returns the descriptors submitted.
fn op_errors(h: &mut Hostile, o: &Op, wq: u32) -> Res<u64> {
    let (end, mmio) = (h.sandbox.1, h.d.bar0 + 0x80);
    let wq_max = 1u64 << (h.d.wqcfg_dword(wq, 3) & 0x1f);
    let mut n = 0;
    let rec = h.record(2);
    // Sizes 0, 2^32 - 1, max + 1: 0x13.
    for size in [0u64, u64::from(u32::MAX), wq_max + 1] {
        if size > u64::from(u32::MAX) {
            continue;
        }
        let d = base(h, o, rec).size(size as u32);
        let c = run(h, wq, o.op, "bad size", &d)?;
        tag(expect("size", &c, 0x13), o.op).map_err(|mut l| {
            l.s(" for size ").hex(size);
            l
        })?;
        n += 1;
    }
    // Sources: outside RAM, registers, ECAM, across the end of RAM, wrapping.
    let srcs = [BAD_ADDR, mmio, h.ecam(), end - 8, u64::MAX - 15];
    let faults = [BAD_ADDR, mmio, h.ecam(), end, u64::MAX - 15];
    if o.src {
        for (&a, &f) in srcs.iter().zip(faults.iter()) {
            let d = base(h, o, rec).src(a);
            let c = run(h, wq, o.op, "bad source", &d)?;
            tag(expect_fault("source", &c, false, f), o.op)?;
            n += 1;
        }
    }
    if o.f18 != F18::None {
        for (&a, &f) in srcs.iter().zip(faults.iter()) {
            let mut d = base(h, o, rec).dst(a);
            if o.op == OP_DUALCAST {
                // Both destinations share bits 11:0, or the answer is 0x17.
                d = d.set(0x28, 8, h.sandbox.0 + 0x20_0000 + (a & 0xfff));
            }
            let c = run(h, wq, o.op, "bad destination", &d)?;
            // CACHE FLUSH touches no data: the direction of its fault is not defined here.
            let write = if o.op == OP_CFLUSH {
                c.status & 0x80 != 0
            } else {
                o.f18 == F18::Write
            };
            tag(expect_fault("field 0x18", &c, write, f), o.op)?;
            n += 1;
        }
    }
    // The completion record outside RAM, in MMIO, misaligned: SWERR 0x1A/0x1A/0x1B with its
    // address (§10.1), nothing executed.
    for (cr, code) in [
        (BAD_ADDR, 0x1a),
        (mmio & !31, 0x1a),
        (h.sandbox.0 + 8, 0x1b),
    ] {
        let d = base(h, o, cr);
        let (q0, q2) = h.swerr_of(wq, &d)?;
        tag(
            check_eq("SWERR code for a bad record", (q0 >> 8) & 0xff, code),
            o.op,
        )?;
        tag(
            check_eq("SWERR opcode", (q0 >> 32) & 0xff, u64::from(o.op)),
            o.op,
        )?;
        tag(check_eq("SWERR address of a bad record", q2, cr), o.op)?;
        n += 1;
    }
    Ok(n)
}

/// Overlapping buffers: MEMMOVE in both directions succeeds with the right data
/// (GENCAP.overlap_copy); COPY_CRC, DUALCAST, DIF INSERT and a CREATE DELTA record over its
/// sources give 0x16.
fn overlaps(h: &mut Hostile) -> Res<u64> {
    let s = h.sandbox.0;
    let mut n = 0;
    if h.d.supports(OP_MEMMOVE) && h.d.gencap & 2 != 0 {
        for (src, dst) in [(s, s + 24), (s + 24, s)] {
            pattern(s, 512, h.rng.next());
            copy(s + 0x30_0000, src, 256);
            let c = h.d.run(
                0,
                &Desc::new(OP_MEMMOVE, POLL, h.record(3))
                    .src(src)
                    .dst(dst)
                    .size(256),
            )?;
            expect("overlapping memmove", &c, 1)?;
            same("overlapping memmove", s + 0x30_0000, dst, 256)?;
            n += 1;
        }
    }
    let cases = [
        (
            OP_COPY_CRC,
            Desc::new(OP_COPY_CRC, POLL, 0).src(s).dst(s + 32).size(64),
        ),
        (
            OP_DUALCAST,
            Desc::new(OP_DUALCAST, POLL, 0)
                .src(s)
                .dst(s + 32)
                .size(64)
                .set(0x28, 8, s + 0x1020),
        ),
        (
            OP_DIF_INS,
            Desc::new(OP_DIF_INS, POLL, 0).src(s).dst(s + 8).size(512),
        ),
        (
            OP_CR_DELTA,
            Desc::new(OP_CR_DELTA, POLL, 0)
                .src(s)
                .dst(s + 0x1000)
                .size(64)
                .set(0x28, 8, s + 16)
                .set(0x30, 4, 80),
        ),
    ];
    for (op, mut d) in cases {
        if !h.d.supports(op) {
            continue;
        }
        d.q[1] = h.record(4);
        let c = h.d.run(1 % h.d.num_wqs, &d)?;
        tag(expect("overlapping buffers", &c, 0x16), op)?;
        n += 1;
    }
    Ok(n)
}

/// `hostile_descriptors` (see the module documentation).
pub fn case_descriptors(h: &mut Hostile) -> Res<u64> {
    let mut ops = 0;
    for (k, o) in OPS.iter().enumerate() {
        if h.d.supports(o.op) {
            ops += op_errors(h, o, wq_for(h.d, k as u32))?;
        }
    }
    ops += overlaps(h)?;
    // RCR without CRAV: SWERR 0x11 (§10.2).
    let (q0, _) = h.swerr_of(0, &Desc::new(OP_NOP, F_RCR, 0))?;
    check_eq("RCR without CRAV: SWERR code", (q0 >> 8) & 0xff, 0x11)?;
    // NOOP and DRAIN ignore their other fields.
    for op in [OP_NOP, OP_DRAIN] {
        let d = Desc::new(op, POLL, h.record(5))
            .src(BAD_ADDR)
            .dst(u64::MAX)
            .size(u32::MAX);
        let c = h.d.run(0, &d)?;
        tag(expect("NOOP/DRAIN with garbage fields", &c, 1), op)?;
    }
    ops += 3;
    // Every opcode the device does not advertise: 0x10.
    for op in 0..=255u8 {
        if h.d.supports(op) {
            continue;
        }
        let d = Desc::new(op, POLL, h.record(6)).src(BAD_ADDR).size(64);
        let c = h.d.run(wq_for(h.d, u32::from(op)), &d)?;
        tag(expect("undefined opcode", &c, 0x10), op)?;
        ops += 1;
    }
    // Random descriptors: any record written holds a defined status.
    h.fill_list();
    for k in 0..RANDOM_DESCS {
        let mut desc = h.random_desc();
        let rec = at(super::RECORDS) + 32 * (k % 256);
        if h.rng.chance(160) {
            desc.q[1] = rec;
            clear_cr(rec);
        }
        let wq = h.rng.below(u64::from(h.d.num_wqs)) as u32;
        h.d.submit(wq, &desc);
        if desc.q[1] == rec {
            let s = rd64(rec) as u8;
            if s != 0 && !valid_status(s) {
                let mut l = err_hex(
                    "random descriptor: undefined completion status",
                    u64::from(s),
                );
                l.s(" for q0 ").hex(desc.q[0]);
                return Err(l);
            }
        }
        if k % 64 == 0 {
            h.clear_errors();
        }
        ops += 1;
    }
    h.clear_errors();
    Ok(ops)
}
