//! Engine tests: every opcode with its error cases, against independently computed references
//! (CRC-32C and CRC16 T10-DIF from the `crc` crate, DIF tuples built by hand per T10, delta
//! records built by hand), batch with fence and a failing member, the completion-record write
//! rules, and property tests over random descriptors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::dsa::descriptor::{CompletionRecord, DESC_SIZE};

const MEM: u64 = 1 << 20;
const CR: u64 = 0x1000;
const SRC: u64 = 0x10000;
const DST: u64 = 0x40000;
const AUX: u64 = 0x80000;
const STD: u32 = flags::CRAV | flags::RCR;

fn gm() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// Builds raw descriptors field by field (uapi `struct dsa_hw_desc` offsets).
#[derive(Clone, Copy, Debug)]
struct D([u8; DESC_SIZE]);

impl D {
    fn new(op: u8, f: u32) -> Self {
        let mut d = D([0; DESC_SIZE]);
        d.0[4..8].copy_from_slice(&((u32::from(op) << 24) | (f & 0xFF_FFFF)).to_le_bytes());
        d.u64(0x08, CR)
    }
    fn u8(mut self, off: usize, v: u8) -> Self {
        self.0[off] = v;
        self
    }
    fn u16(mut self, off: usize, v: u16) -> Self {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn cr(self, a: u64) -> Self {
        self.u64(0x08, a)
    }
    fn src(self, a: u64) -> Self {
        self.u64(0x10, a)
    }
    fn dst(self, a: u64) -> Self {
        self.u64(0x18, a)
    }
    fn size(self, n: u32) -> Self {
        self.u32(0x20, n)
    }
    fn handle(self, h: u16) -> Self {
        self.u16(0x24, h)
    }
    fn desc(&self) -> Descriptor {
        Descriptor::parse(&self.0)
    }
}

fn run(m: &GuestMemoryMmap<()>, d: D) -> Outcome {
    execute(m, &d.desc(), &EngineLimits::default())
}

fn run_l(m: &GuestMemoryMmap<()>, d: D, l: &EngineLimits) -> Outcome {
    execute(m, &d.desc(), l)
}

fn cr_at(m: &GuestMemoryMmap<()>, a: u64) -> CompletionRecord {
    let mut b = [0u8; 32];
    m.read_slice(&mut b, GuestAddress(a)).unwrap();
    CompletionRecord::from_bytes(&b)
}

fn cr(m: &GuestMemoryMmap<()>) -> CompletionRecord {
    cr_at(m, CR)
}

fn put(m: &GuestMemoryMmap<()>, a: u64, data: &[u8]) {
    m.write_slice(data, GuestAddress(a)).unwrap();
}

fn get(m: &GuestMemoryMmap<()>, a: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    m.read_slice(&mut v, GuestAddress(a)).unwrap();
    v
}

/// Deterministic pseudo-random bytes (xorshift), independent of the code under test.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Asserts a status-only error completion with a record written.
fn assert_err(m: &GuestMemoryMmap<()>, d: D, st: u8) {
    put(m, CR, &[0u8; 32]);
    let o = run(m, d);
    assert_eq!(o.status, st, "outcome status");
    assert!(o.record_written);
    assert_eq!(cr(m).status, st, "record status");
}

// ---------------------------------------------------------------- capability helpers

#[test]
fn opcap_matches_spr() {
    // §2.7: real SPR OPCAP[0] = 0x1_003F_03FF.
    assert_eq!(opcap(), [0x1_003F_03FF, 0, 0, 0]);
    assert_eq!(opcode_name(opcode::MEMMOVE), "memmove");
    assert_eq!(opcode_name(0x77), "unknown");
    for &op in SUPPORTED_OPCODES {
        assert_ne!(opcode_name(op), "unknown");
    }
}

// ---------------------------------------------------------------- NOOP / DRAIN / record rules

#[test]
fn noop_record_and_interrupt() {
    let m = gm();
    let o = run(&m, D::new(opcode::NOOP, STD | flags::RCI).handle(3));
    assert_eq!(o.status, status::SUCCESS);
    assert!(o.record_written);
    assert_eq!(o.interrupt, Some(3));
    assert_eq!(o.swerr, None);
    let r = cr(&m);
    assert_eq!(
        (r.status, r.result, r.bytes_completed, r.fault_addr),
        (1, 0, 0, 0)
    );
}

#[test]
fn invalid_interrupt_handle() {
    let m = gm();
    let l = EngineLimits {
        int_handles: 9,
        ..Default::default()
    };
    let o = run_l(&m, D::new(opcode::NOOP, STD | flags::RCI).handle(9), &l);
    assert_eq!((o.status, o.interrupt), (status::INT_HANDLE_INVAL, None));
    assert_eq!(cr(&m).status, status::INT_HANDLE_INVAL);
    let o = run_l(&m, D::new(opcode::NOOP, STD | flags::RCI).handle(8), &l);
    assert_eq!((o.status, o.interrupt), (status::SUCCESS, Some(8)));
    // Without RCI the handle is not looked at.
    let o = run_l(&m, D::new(opcode::NOOP, STD).handle(100), &l);
    assert_eq!(o.status, status::SUCCESS);
}

#[test]
fn no_record_on_success_without_rcr_but_on_error() {
    let m = gm();
    let o = run(&m, D::new(opcode::NOOP, flags::CRAV));
    assert!(!o.record_written);
    assert_eq!(cr(&m).status, 0);
    // Error without RCR: the record is written (§7).
    let o = run(&m, D::new(0x30, flags::CRAV));
    assert!(o.record_written);
    assert_eq!(cr(&m).status, status::BAD_OPCODE);
}

#[test]
fn completion_address_errors_go_to_swerr() {
    let m = gm();
    put(&m, SRC, &[7u8; 64]);
    // Misaligned: 0x1B, nothing executed, no record, no interrupt.
    let o = run(
        &m,
        D::new(opcode::MEMMOVE, STD | flags::RCI)
            .cr(CR + 8)
            .src(SRC)
            .dst(DST)
            .size(64),
    );
    assert_eq!(o.status, status::CRA_ALIGN);
    assert!(!o.record_written);
    assert_eq!(o.interrupt, None);
    let e = o.swerr.unwrap();
    assert_eq!(
        (e.status, e.opcode, e.addr),
        (status::CRA_ALIGN, opcode::MEMMOVE, CR + 8)
    );
    assert_eq!(get(&m, DST, 64), vec![0u8; 64]);
    // Outside RAM: 0x1A.
    let o = run(&m, D::new(opcode::NOOP, STD).cr(MEM));
    assert_eq!(
        o.swerr.map(|e| (e.status, e.addr)),
        Some((status::CRA_XLAT, MEM))
    );
    // Straddling the end of RAM.
    let o = run(&m, D::new(opcode::NOOP, STD).cr(MEM - 32));
    assert_eq!(o.swerr, None);
    // RCR without CRAV: invalid flags via SWERR.
    let o = run(&m, D::new(opcode::NOOP, flags::RCR));
    assert_eq!(
        o.swerr.map(|e| (e.status, e.invalid_flags)),
        Some((status::INVALID_FLAGS, flags::RCR))
    );
    // CRAV = 0 with an error: SWERR carries the status (§10.1).
    let o = run(&m, D::new(opcode::MEMMOVE, 0).src(MEM).dst(DST).size(8));
    let e = o.swerr.unwrap();
    assert_eq!(
        (e.status, e.addr, e.write),
        (status::PAGE_FAULT_NOBOF, MEM, false)
    );
    assert!(!o.record_written);
}

#[test]
fn drain_completes_and_checks_readback() {
    let m = gm();
    let o = run(&m, D::new(opcode::DRAIN, STD));
    assert_eq!(o.status, status::SUCCESS);
    // Readback flags need GENCAP.drain_readback.
    assert_err(
        &m,
        D::new(opcode::DRAIN, STD | flags::DRAIN_READBACK1),
        status::INVALID_FLAGS,
    );
    let l = EngineLimits {
        drain_readback: true,
        ..Default::default()
    };
    let o = run_l(
        &m,
        D::new(opcode::DRAIN, STD | flags::DRAIN_READBACK2).dst(MEM + 0x100),
        &l,
    );
    assert_eq!(o.status, status::PFAULT_RDBA);
    assert_eq!(cr(&m).fault_addr, MEM + 0x100);
    let o = run_l(
        &m,
        D::new(opcode::DRAIN, STD | flags::DRAIN_READBACK1).src(SRC),
        &l,
    );
    assert_eq!(o.status, status::SUCCESS);
}

#[test]
fn common_validation_order_and_codes() {
    let m = gm();
    // Unsupported opcodes (translation fetch 0x0A is DSA 2.0, 0x17 DIX is 2.0).
    for op in [0x0A, 0x0B, 0x16, 0x17, 0x21, 0xFF] {
        assert_err(&m, D::new(op, STD), status::BAD_OPCODE);
    }
    // Reserved flag bit 6 -> 0x11 with the offending bits at record 0x10.
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD | 0x40)
            .src(SRC)
            .dst(DST)
            .size(8),
        status::INVALID_FLAGS,
    );
    assert_eq!(cr(&m).u32_at(0x10), 0x40);
    // Cache control / strict ordering on a no-destination op (dsa-perf-micros resv_flags).
    assert_err(
        &m,
        D::new(opcode::COMPARE, STD | flags::CC)
            .src(SRC)
            .dst(DST)
            .size(8),
        status::INVALID_FLAGS,
    );
    assert_eq!(cr(&m).u32_at(0x10), flags::CC);
    // ... but allowed on memmove (the Linux driver sets CC).
    let o = run(
        &m,
        D::new(opcode::MEMMOVE, STD | flags::CC)
            .src(SRC)
            .dst(DST)
            .size(8),
    );
    assert_eq!(o.status, status::SUCCESS);
    // DSA 2.0 steering-tag flags and destination readback are not offered.
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD | flags::DSTS)
            .src(SRC)
            .dst(DST)
            .size(8),
        status::INVALID_FLAGS,
    );
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD | flags::DRDBK)
            .src(SRC)
            .dst(DST)
            .size(8),
        status::INVALID_FLAGS,
    );
    // Op-specific flags on an op without any.
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD | (1 << 16))
            .src(SRC)
            .dst(DST)
            .size(8),
        status::INVALID_FLAGS,
    );
    // Flags are checked before reserved fields (§10.2 order).
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD | 0x40)
            .src(SRC)
            .dst(DST)
            .size(8)
            .u16(0x26, 1),
        status::INVALID_FLAGS,
    );
    // Reserved fields.
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(SRC)
            .dst(DST)
            .size(8)
            .u16(0x26, 1),
        status::NOZERO_RESERVE,
    );
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(SRC)
            .dst(DST)
            .size(8)
            .u8(0x3F, 1),
        status::NOZERO_RESERVE,
    );
    assert_err(
        &m,
        D::new(opcode::COMPARE, STD)
            .src(SRC)
            .dst(DST)
            .size(8)
            .u8(0x29, 1),
        status::NOZERO_RESERVE,
    );
    // Reserved before size (0x12 before 0x13).
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD).u8(0x30, 1),
        status::NOZERO_RESERVE,
    );
}

// ---------------------------------------------------------------- MEMMOVE

#[test]
fn memmove_copies_and_reports_success() {
    let m = gm();
    let data = bytes(1, 70_001);
    put(&m, SRC + 3, &data);
    let o = run(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(SRC + 3)
            .dst(DST + 5)
            .size(70_001),
    );
    assert_eq!((o.status, o.bytes), (status::SUCCESS, 70_001));
    assert_eq!(get(&m, DST + 5, 70_001), data);
    let r = cr(&m);
    assert_eq!((r.status, r.result, r.bytes_completed), (1, 0, 0));
}

#[test]
fn memmove_overlap_both_directions() {
    let m = gm();
    for (s, d) in [(SRC, SRC + 100), (SRC + 100, SRC)] {
        let data = bytes(2, 4096);
        put(&m, SRC, &data);
        put(&m, SRC + 4096, &data);
        let mut host = get(&m, SRC, 8192);
        host.copy_within(
            (s - SRC) as usize..(s - SRC) as usize + 4000,
            (d - SRC) as usize,
        );
        let o = run(&m, D::new(opcode::MEMMOVE, STD).src(s).dst(d).size(4000));
        assert_eq!(o.status, status::SUCCESS);
        assert_eq!(get(&m, SRC, 8192), host);
    }
    // Without GENCAP.overlap_copy: 0x16.
    let l = EngineLimits {
        overlap_copy: false,
        ..Default::default()
    };
    let o = run_l(
        &m,
        D::new(opcode::MEMMOVE, STD).src(SRC).dst(SRC + 8).size(16),
        &l,
    );
    assert_eq!(o.status, status::OVERLAP_BUFFERS);
}

#[test]
fn memmove_size_and_fault_errors() {
    let m = gm();
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD).src(SRC).dst(DST).size(0),
        status::XFER_ERANGE,
    );
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(SRC)
            .dst(DST)
            .size((2 << 20) + 1),
        status::XFER_ERANGE,
    );
    // Source outside RAM: read fault, fault address reported, nothing written.
    put(&m, DST, &[0u8; 64]);
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD).src(MEM - 16).dst(DST).size(64),
        status::PAGE_FAULT_NOBOF,
    );
    assert_eq!(cr(&m).fault_addr, MEM);
    assert_eq!(cr(&m).bytes_completed, 0);
    // Destination outside RAM: write fault, status bit 7.
    assert_err(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(SRC)
            .dst(MEM + 0x5000)
            .size(64),
        0x80 | status::PAGE_FAULT_NOBOF,
    );
    assert_eq!(cr(&m).fault_addr, MEM + 0x5000);
    // Address wrapping the 64-bit space.
    let o = run(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(u64::MAX - 3)
            .dst(DST)
            .size(64),
    );
    assert_eq!(o.status & status::CODE_MASK, status::PAGE_FAULT_NOBOF);
    // A configurable status for non-RAM (§10.2 allows 0x22).
    let l = EngineLimits {
        fault_status: status::TRANSLATION_FAIL,
        ..Default::default()
    };
    let o = run_l(
        &m,
        D::new(opcode::MEMMOVE, STD).src(SRC).dst(MEM).size(64),
        &l,
    );
    assert_eq!(o.status, status::TRANSLATION_FAIL);
}

#[test]
fn multi_region_memory_and_holes() {
    // Two adjacent regions, then a hole, then a third region.
    let m = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(0x30000), 0x10000),
    ])
    .unwrap();
    let data = bytes(40, 0x3000);
    put(&m, 0xE000, &data);
    // Source and destination both straddle the region boundary: the chunked path.
    let o = run(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(0xE000)
            .dst(0xF800)
            .size(0x3000),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, 0xF800, 0x3000), data);
    // Fill across the boundary.
    let o = run(
        &m,
        D::new(opcode::MEMFILL, STD)
            .src(0x0102_0304_0506_0708)
            .dst(0xFFFD)
            .size(11),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, 0xFFFD, 11), [8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6]);
    // A destination running into the hole faults at the hole's first byte; nothing is written.
    put(&m, 0x1F000, &[0u8; 0x1000]);
    let o = run(
        &m,
        D::new(opcode::MEMMOVE, STD)
            .src(0x1000)
            .dst(0x1F000)
            .size(0x2000),
    );
    assert_eq!(o.status, 0x80 | status::PAGE_FAULT_NOBOF);
    assert_eq!(cr(&m).fault_addr, 0x20000);
    assert_eq!(get(&m, 0x1F000, 0x1000), vec![0u8; 0x1000]);
    // CRC over the boundary equals CRC of the same bytes.
    put(&m, 0xFF00, &data[..0x200]);
    run(&m, D::new(opcode::CRCGEN, STD).src(0xFF00).size(0x200));
    assert_eq!(cr(&m).u32_at(0x10), ISCSI.checksum(&data[..0x200]));
}

#[test]
fn record_is_complete_when_status_becomes_visible() {
    // A guest-side poller must never see a non-zero status with the rest of the record stale.
    let m = Arc::new(gm());
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = 0u32;
            while !stop.load(Ordering::Acquire) {
                let st: u8 = m.load(GuestAddress(CR), Ordering::Acquire).unwrap();
                if st != 0 {
                    let r = cr_at(&m, CR);
                    assert_eq!(r.fault_addr, MEM, "record body not visible before status");
                    assert_eq!(r.status, 0x80 | status::PAGE_FAULT_NOBOF);
                    seen += 1;
                    m.write_slice(&[0u8; 32], GuestAddress(CR)).unwrap();
                }
            }
            seen
        })
    };
    for _ in 0..2000 {
        // Wait for the poller to clear the previous record.
        while m.load::<u8>(GuestAddress(CR), Ordering::Acquire).unwrap() != 0 {
            std::hint::spin_loop();
        }
        let o = execute(
            &*m,
            &D::new(opcode::MEMMOVE, STD)
                .src(SRC)
                .dst(MEM - 8)
                .size(64)
                .desc(),
            &EngineLimits::default(),
        );
        assert!(o.record_written);
    }
    while m.load::<u8>(GuestAddress(CR), Ordering::Acquire).unwrap() != 0 {
        std::hint::spin_loop();
    }
    stop.store(true, Ordering::Release);
    assert_eq!(poller.join().unwrap(), 2000);
}

// ---------------------------------------------------------------- MEMFILL

#[test]
fn memfill_pattern_any_alignment() {
    let m = gm();
    let pat = 0x1122_3344_5566_7788u64;
    for (off, n) in [(0u64, 8u32), (3, 13), (5, 70_003), (0, 4096)] {
        let o = run(
            &m,
            D::new(opcode::MEMFILL, STD).src(pat).dst(DST + off).size(n),
        );
        assert_eq!(o.status, status::SUCCESS);
        let want: Vec<u8> = (0..n as usize).map(|i| pat.to_le_bytes()[i % 8]).collect();
        assert_eq!(get(&m, DST + off, n as usize), want);
    }
    assert_err(
        &m,
        D::new(opcode::MEMFILL, STD).src(pat).dst(DST).size(0),
        status::XFER_ERANGE,
    );
    assert_err(
        &m,
        D::new(opcode::MEMFILL, STD).src(pat).dst(MEM - 4).size(8),
        0x80 | status::PAGE_FAULT_NOBOF,
    );
    assert_eq!(cr(&m).fault_addr, MEM);
}

// ---------------------------------------------------------------- COMPARE / COMPVAL

#[test]
fn compare_results_and_check_result() {
    let m = gm();
    let a = bytes(3, 50_000);
    put(&m, SRC, &a);
    put(&m, DST, &a);
    let o = run(
        &m,
        D::new(opcode::COMPARE, STD).src(SRC).dst(DST).size(50_000),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (0, 0));
    put(&m, DST + 40_001, &[a[40_001] ^ 0x10]);
    run(
        &m,
        D::new(opcode::COMPARE, STD).src(SRC).dst(DST).size(50_000),
    );
    assert_eq!(
        (cr(&m).status, cr(&m).result, cr(&m).bytes_completed),
        (1, 1, 40_001)
    );
    // Check result: expected 0 but different -> false predicate 0x02.
    let o = run(
        &m,
        D::new(opcode::COMPARE, STD | flags::CHECK_RESULT)
            .src(SRC)
            .dst(DST)
            .size(50_000),
    );
    assert_eq!(o.status, status::SUCCESS_PRED);
    let o = run(
        &m,
        D::new(opcode::COMPARE, STD | flags::CHECK_RESULT)
            .src(SRC)
            .dst(DST)
            .size(50_000)
            .u8(0x28, 1),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_err(
        &m,
        D::new(opcode::COMPARE, STD).src(SRC).dst(MEM - 1).size(2),
        status::PAGE_FAULT_NOBOF,
    );
    assert_eq!(cr(&m).fault_addr, MEM);
}

#[test]
fn compare_pattern_results() {
    let m = gm();
    let pat = 0xA1B2_C3D4_E5F6_0718u64;
    let n = 20_005usize;
    let v: Vec<u8> = (0..n).map(|i| pat.to_le_bytes()[i % 8]).collect();
    put(&m, SRC, &v);
    let o = run(
        &m,
        D::new(opcode::COMPVAL, STD)
            .src(SRC)
            .dst(pat)
            .size(n as u32),
    );
    assert_eq!((o.status, cr(&m).result), (status::SUCCESS, 0));
    // A difference inside a whole word is reported at the word (DML ref compare_pattern.c).
    put(&m, SRC + 1003, &[!v[1003]]);
    run(
        &m,
        D::new(opcode::COMPVAL, STD)
            .src(SRC)
            .dst(pat)
            .size(n as u32),
    );
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (1, 1000));
    // In the tail: the exact byte.
    put(&m, SRC + 1003, &[v[1003]]);
    put(&m, SRC + 20_003, &[!v[20_003]]);
    run(
        &m,
        D::new(opcode::COMPVAL, STD)
            .src(SRC)
            .dst(pat)
            .size(n as u32),
    );
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (1, 20_003));
    let o = run(
        &m,
        D::new(opcode::COMPVAL, STD | flags::CHECK_RESULT)
            .src(SRC)
            .dst(pat)
            .size(n as u32),
    );
    assert_eq!(o.status, status::SUCCESS_PRED);
}

// ---------------------------------------------------------------- DELTA

fn ref_delta(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (x, y)) in a.chunks(8).zip(b.chunks(8)).enumerate() {
        if x != y {
            out.extend_from_slice(&(i as u16).to_le_bytes());
            out.extend_from_slice(y);
        }
    }
    out
}

#[test]
fn create_and_apply_delta_roundtrip() {
    let m = gm();
    let n = 64 * 1024usize;
    let a = bytes(4, n);
    let mut b = a.clone();
    for w in [0usize, 1, 17, 1000, 4000, 8191] {
        b[w * 8 + 3] ^= 0x5A;
    }
    put(&m, SRC, &a);
    put(&m, DST, &b);
    let want = ref_delta(&a, &b);
    let o = run(
        &m,
        D::new(opcode::CR_DELTA, STD)
            .src(SRC)
            .dst(DST)
            .size(n as u32)
            .u64(0x28, AUX)
            .u32(0x30, 800),
    );
    assert_eq!(o.status, status::SUCCESS);
    let r = cr(&m);
    assert_eq!((r.result, r.u32_at(0x10)), (1, want.len() as u32));
    assert_eq!(get(&m, AUX, want.len()), want);
    // Apply to a copy of source 1 gives source 2.
    put(&m, DST, &a);
    let o = run(
        &m,
        D::new(opcode::AP_DELTA, STD)
            .src(AUX)
            .dst(DST)
            .size(n as u32)
            .u32(0x28, want.len() as u32),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, DST, n), b);
    // Equal buffers: result 0, size 0.
    run(
        &m,
        D::new(opcode::CR_DELTA, STD)
            .src(SRC)
            .dst(SRC + 0x10000)
            .size(8)
            .u64(0x28, AUX)
            .u32(0x30, 80),
    );
    put(&m, SRC + 0x10000, &a[..8]);
    run(
        &m,
        D::new(opcode::CR_DELTA, STD)
            .src(SRC)
            .dst(SRC + 0x10000)
            .size(8)
            .u64(0x28, AUX)
            .u32(0x30, 80),
    );
    assert_eq!((cr(&m).result, cr(&m).u32_at(0x10)), (0, 0));
}

#[test]
fn create_delta_overflow_and_check_result() {
    let m = gm();
    let a = bytes(5, 1024);
    let b = bytes(6, 1024); // every word differs
    put(&m, SRC, &a);
    put(&m, DST, &b);
    let d = D::new(opcode::CR_DELTA, STD)
        .src(SRC)
        .dst(DST)
        .size(1024)
        .u64(0x28, AUX)
        .u32(0x30, 80);
    let o = run(&m, d);
    assert_eq!(o.status, status::SUCCESS);
    let r = cr(&m);
    assert_eq!((r.result, r.u32_at(0x10), r.bytes_completed), (2, 80, 64));
    assert_eq!(get(&m, AUX, 80), ref_delta(&a[..64], &b[..64]));
    // Mask bit 2 (overflow) set: success; only bit 1: false predicate.
    let o = run(
        &m,
        D::new(opcode::CR_DELTA, STD | flags::CHECK_RESULT)
            .src(SRC)
            .dst(DST)
            .size(1024)
            .u64(0x28, AUX)
            .u32(0x30, 80)
            .u8(0x38, 0b100),
    );
    assert_eq!(o.status, status::SUCCESS);
    let o = run(
        &m,
        D::new(opcode::CR_DELTA, STD | flags::CHECK_RESULT)
            .src(SRC)
            .dst(DST)
            .size(1024)
            .u64(0x28, AUX)
            .u32(0x30, 80)
            .u8(0x38, 0b010),
    );
    assert_eq!(o.status, status::SUCCESS_PRED);
}

#[test]
fn delta_errors() {
    let m = gm();
    let cd = |sz: u32, max: u32, s1: u64, da: u64| {
        D::new(opcode::CR_DELTA, STD)
            .src(s1)
            .dst(DST)
            .size(sz)
            .u64(0x28, da)
            .u32(0x30, max)
    };
    assert_err(&m, cd(12, 80, SRC, AUX), status::XFER_ERANGE);
    assert_err(&m, cd(0x80008, 80, SRC, AUX), status::XFER_ERANGE);
    assert_err(&m, cd(16, 75, SRC, AUX), status::DR_ERANGE);
    assert_err(&m, cd(16, 70, SRC, AUX), status::DR_ERANGE);
    assert_err(&m, cd(16, 80, SRC + 4, AUX), status::ADDR_ALIGN);
    assert_err(&m, cd(16, 80, SRC, AUX + 2), status::ADDR_ALIGN);
    assert_err(&m, cd(16, 80, SRC, SRC + 8), status::OVERLAP_BUFFERS);
    assert_err(&m, cd(16, 80, SRC, MEM), 0x80 | status::PAGE_FAULT_NOBOF);
    // The reserved dword at 0x34.
    assert_err(&m, cd(16, 80, SRC, AUX).u8(0x34, 1), status::NOZERO_RESERVE);

    let ad = |sz: u32, rs: u32| {
        D::new(opcode::AP_DELTA, STD)
            .src(AUX)
            .dst(DST)
            .size(sz)
            .u32(0x28, rs)
    };
    assert_err(&m, ad(64, 15), status::DR_ERANGE);
    assert_err(&m, ad(64, 0), status::DR_ERANGE);
    assert_err(&m, ad(16, 30), status::DR_ERANGE);
    assert_err(&m, ad(20, 10), status::XFER_ERANGE);
    assert_err(
        &m,
        D::new(opcode::AP_DELTA, STD)
            .src(AUX)
            .dst(AUX + 8)
            .size(64)
            .u32(0x28, 20),
        status::OVERLAP_BUFFERS,
    );
    assert_err(
        &m,
        D::new(opcode::AP_DELTA, STD)
            .src(AUX + 1)
            .dst(DST)
            .size(64)
            .u32(0x28, 10),
        status::ADDR_ALIGN,
    );
    // Offsets not increasing / out of range; the destination is untouched.
    put(&m, DST, &[0u8; 64]);
    let mut rec = Vec::new();
    for w in [3u16, 3] {
        rec.extend_from_slice(&w.to_le_bytes());
        rec.extend_from_slice(&[0xEE; 8]);
    }
    put(&m, AUX, &rec);
    assert_err(&m, ad(64, 20), status::DR_OFFSET_NOINC);
    assert_eq!(get(&m, DST, 64), vec![0u8; 64]);
    put(&m, AUX + 10, &8u16.to_le_bytes());
    assert_err(&m, ad(64, 20), status::DR_OFFSET_ERANGE);
    put(&m, AUX + 10, &7u16.to_le_bytes());
    let o = run(&m, ad(64, 20));
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, DST + 24, 8), vec![0xEE; 8]);
    assert_eq!(get(&m, DST + 56, 8), vec![0xEE; 8]);
}

// ---------------------------------------------------------------- DUALCAST

#[test]
fn dualcast_and_errors() {
    let m = gm();
    let data = bytes(7, 5000);
    put(&m, SRC, &data);
    let d2 = AUX + 0x123;
    let o = run(
        &m,
        D::new(opcode::DUALCAST, STD)
            .src(SRC)
            .dst(DST + 0x123)
            .size(5000)
            .u64(0x28, d2),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, DST + 0x123, 5000), data);
    assert_eq!(get(&m, d2, 5000), data);
    assert_err(
        &m,
        D::new(opcode::DUALCAST, STD)
            .src(SRC)
            .dst(DST)
            .size(64)
            .u64(0x28, AUX + 8),
        status::DCAST_ERR,
    );
    assert_err(
        &m,
        D::new(opcode::DUALCAST, STD)
            .src(SRC)
            .dst(DST)
            .size(0x2000)
            .u64(0x28, DST + 0x1000),
        status::OVERLAP_BUFFERS,
    );
    assert_err(
        &m,
        D::new(opcode::DUALCAST, STD)
            .src(DST)
            .dst(DST + 0x1000)
            .size(0x2000)
            .u64(0x28, AUX),
        status::OVERLAP_BUFFERS,
    );
    assert_err(
        &m,
        D::new(opcode::DUALCAST, STD)
            .src(SRC)
            .dst(DST)
            .size(64)
            .u64(0x28, MEM),
        0x80 | status::PAGE_FAULT_NOBOF,
    );
}

// ---------------------------------------------------------------- CRC

const ISCSI: ::crc::Crc<u32> = ::crc::Crc::<u32>::new(&::crc::CRC_32_ISCSI);

/// Bit-at-a-time model of the DSA CRC as DML describes it (crc.cpp, ref/crc.c), written
/// independently of the engine's table / SSE4.2 paths.
fn model_crc(seed: u32, f: u32, data: &[u8]) -> u32 {
    let bypass_ir = f & flags::CRC_BYPASS_INV_REFL != 0;
    let bypass_dr = f & flags::CRC_BYPASS_DATA_REFL != 0;
    let mut c = if bypass_ir {
        seed
    } else {
        (!seed).reverse_bits()
    };
    for &b in data {
        let b = if bypass_dr { b } else { b.reverse_bits() };
        c ^= u32::from(b) << 24;
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x1EDC_6F41
            } else {
                c << 1
            };
        }
    }
    if bypass_ir {
        c
    } else {
        !c.reverse_bits()
    }
}

#[test]
fn crc32c_matches_crate_and_continues() {
    let m = gm();
    let data = bytes(8, 100_000);
    put(&m, SRC, &data);
    let o = run(
        &m,
        D::new(opcode::CRCGEN, STD).src(SRC).dst(DST).size(100_000),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(cr(&m).u32_at(0x10), ISCSI.checksum(&data));
    assert_eq!(cr(&m).u32_at(0x14), 0, "CRC is a u32 in a u64 field");
    // Check value of the catalogue.
    put(&m, SRC, b"123456789");
    run(&m, D::new(opcode::CRCGEN, STD).src(SRC).size(9));
    assert_eq!(cr(&m).u32_at(0x10), 0xE306_9283);
    // A previous result as seed continues the CRC (§6.3).
    put(&m, SRC, &data);
    run(&m, D::new(opcode::CRCGEN, STD).src(SRC).size(30_000));
    let first = cr(&m).u32_at(0x10);
    run(
        &m,
        D::new(opcode::CRCGEN, STD)
            .src(SRC + 30_000)
            .size(70_000)
            .u32(0x28, first),
    );
    assert_eq!(cr(&m).u32_at(0x10), ISCSI.checksum(&data));
}

#[test]
fn crc_flags_follow_the_dml_model() {
    let m = gm();
    let data = bytes(9, 3000);
    put(&m, SRC, &data);
    for f in [
        0u32,
        flags::CRC_BYPASS_INV_REFL,
        flags::CRC_BYPASS_DATA_REFL,
        flags::CRC_BYPASS_INV_REFL | flags::CRC_BYPASS_DATA_REFL,
    ] {
        // 1027 bytes: a tail shorter than a word after whole 512-byte pieces.
        for (seed, n) in [(0u32, 3000usize), (0xDEAD_BEEF, 3000), (0x0BAD_F00D, 1027)] {
            let o = run(
                &m,
                D::new(opcode::CRCGEN, STD | f)
                    .src(SRC)
                    .size(n as u32)
                    .u32(0x28, seed),
            );
            assert_eq!(o.status, status::SUCCESS);
            assert_eq!(
                cr(&m).u32_at(0x10),
                model_crc(seed, f, &data[..n]),
                "flags {f:#x} seed {seed:#x} size {n}"
            );
        }
    }
    // Read the seed from memory (flag bit 16).
    put(&m, AUX, &0x1234_5678u32.to_le_bytes());
    run(
        &m,
        D::new(opcode::CRCGEN, STD | flags::CRC_READ_SEED)
            .src(SRC)
            .size(3000)
            .u64(0x30, AUX)
            .u32(0x28, 7),
    );
    assert_eq!(cr(&m).u32_at(0x10), model_crc(0x1234_5678, 0, &data));
    assert_err(
        &m,
        D::new(opcode::CRCGEN, STD | flags::CRC_READ_SEED)
            .src(SRC)
            .size(8)
            .u64(0x30, MEM - 2),
        status::PAGE_FAULT_NOBOF,
    );
    assert_eq!(cr(&m).fault_addr, MEM);
    // Reserved dword at 0x2C.
    assert_err(
        &m,
        D::new(opcode::CRCGEN, STD).src(SRC).size(8).u8(0x2C, 1),
        status::NOZERO_RESERVE,
    );
}

#[test]
fn copy_crc_copies_and_checks_overlap() {
    let m = gm();
    let data = bytes(10, 40_000);
    put(&m, SRC, &data);
    let o = run(
        &m,
        D::new(opcode::COPY_CRC, STD)
            .src(SRC)
            .dst(DST)
            .size(40_000)
            .u32(0x28, 5),
    );
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, DST, 40_000), data);
    assert_eq!(cr(&m).u32_at(0x10), model_crc(5, 0, &data));
    assert_err(
        &m,
        D::new(opcode::COPY_CRC, STD)
            .src(SRC)
            .dst(SRC + 100)
            .size(200),
        status::OVERLAP_BUFFERS,
    );
    assert_err(
        &m,
        D::new(opcode::COPY_CRC, STD)
            .src(SRC)
            .dst(MEM - 100)
            .size(200),
        0x80 | status::PAGE_FAULT_NOBOF,
    );
}

// ---------------------------------------------------------------- DIF

const T10: ::crc::Crc<u16> = ::crc::Crc::<u16>::new(&::crc::CRC_16_T10_DIF);
const T10_INV_SEED: ::crc::Crc<u16> = ::crc::Crc::<u16>::new(&::crc::Algorithm {
    width: 16,
    poly: 0x8BB7,
    init: 0xFFFF,
    refin: false,
    refout: false,
    xorout: 0,
    check: 0,
    residue: 0,
});

fn ref_guard(block: &[u8], dif_flags: u8) -> u16 {
    let g = if dif_flags & 4 != 0 {
        T10_INV_SEED.checksum(block)
    } else {
        T10.checksum(block)
    };
    if dif_flags & 8 != 0 {
        !g
    } else {
        g
    }
}

/// Protected data per T10: block, then big-endian guard, app tag, ref tag.
fn ref_protect(
    data: &[u8],
    bs: usize,
    dif_flags: u8,
    app: u16,
    app_inc: bool,
    reft: u32,
    ref_fixed: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in data.chunks(bs).enumerate() {
        out.extend_from_slice(b);
        out.extend_from_slice(&ref_guard(b, dif_flags).to_be_bytes());
        let a = if app_inc {
            app.wrapping_add(i as u16)
        } else {
            app
        };
        let r = if ref_fixed {
            reft
        } else {
            reft.wrapping_add(i as u32)
        };
        out.extend_from_slice(&a.to_be_bytes());
        out.extend_from_slice(&r.to_be_bytes());
    }
    out
}

fn dif_ins(bs_idx: u8, dif_flags: u8, n: u32, dst_flags: u8, reft: u32, app: u16) -> D {
    D::new(opcode::DIF_INS, STD)
        .src(SRC)
        .dst(DST)
        .size(n)
        .u8(0x29, dst_flags)
        .u8(0x2A, bs_idx | dif_flags)
        .u32(0x38, reft)
        .u16(0x3E, app)
}

fn dif_chk(op: u8, n: u32, src_flags: u8, dif_flags: u8, reft: u32, mask: u16, app: u16) -> D {
    D::new(op, STD)
        .src(DST)
        .dst(AUX)
        .size(n)
        .u8(0x28, src_flags)
        .u8(0x2A, dif_flags)
        .u32(0x30, reft)
        .u16(0x34, mask)
        .u16(0x36, app)
}

#[test]
fn dif_insert_all_block_sizes_matches_t10() {
    let m = gm();
    for (idx, bs) in [(0u8, 512usize), (1, 520), (2, 4096), (3, 4104)] {
        for dif_flags in [0u8, 0x4, 0x8, 0xC] {
            let n = bs * 3;
            let data = bytes(11 + u64::from(idx), n);
            put(&m, SRC, &data);
            // Incrementing app tag, incrementing ref tag.
            let o = run(
                &m,
                dif_ins(idx, dif_flags, n as u32, 0x10, 0xFFFF_FFFE, 0xFFFF),
            );
            assert_eq!(o.status, status::SUCCESS, "bs {bs}");
            let want = ref_protect(&data, bs, dif_flags, 0xFFFF, true, 0xFFFF_FFFE, false);
            assert_eq!(
                get(&m, DST, want.len()),
                want,
                "bs {bs} flags {dif_flags:#x}"
            );
            // Record: next destination tags at 0x18/0x1E.
            assert_eq!(cr(&m).u32_at(0x18), 1);
            assert_eq!(cr(&m).u16_at(0x1E), 2);
            // And DIF_CHECK accepts it with the matching source flags.
            let o = run(
                &m,
                dif_chk(
                    opcode::DIF_CHECK,
                    want.len() as u32,
                    0x10,
                    idx | dif_flags,
                    0xFFFF_FFFE,
                    0,
                    0xFFFF,
                ),
            );
            assert_eq!(
                o.status,
                status::SUCCESS,
                "check bs {bs} flags {dif_flags:#x}"
            );
        }
    }
    // Fixed ref tag, fixed app tag.
    let data = bytes(20, 1024);
    put(&m, SRC, &data);
    run(&m, dif_ins(0, 0, 1024, 0x80, 77, 9));
    assert_eq!(
        get(&m, DST, 1040),
        ref_protect(&data, 512, 0, 9, false, 77, true)
    );
    // Size not a multiple of the block: 0x13.
    assert_err(&m, dif_ins(0, 0, 1000, 0, 0, 0), status::XFER_ERANGE);
    // Source and destination overlap: 0x16.
    assert_err(
        &m,
        dif_ins(0, 0, 1024, 0, 0, 0).dst(SRC + 512),
        status::OVERLAP_BUFFERS,
    );
}

#[test]
fn dif_check_errors_report_block_and_bits() {
    let m = gm();
    let data = bytes(21, 520 * 4);
    let prot = ref_protect(&data, 520, 0, 0x4242, false, 100, false);
    let n = prot.len() as u32;
    put(&m, DST, &prot);
    let good = dif_chk(opcode::DIF_CHECK, n, 0, 1, 100, 0, 0x4242);
    assert_eq!(run(&m, good).status, status::SUCCESS);
    // Record: next source ref tag (104), mask, app tag.
    assert_eq!((cr(&m).u32_at(0x10), cr(&m).u16_at(0x16)), (104, 0x4242));
    // Guard error in block 2.
    put(&m, DST + 2 * 528 + 520, &[prot[2 * 528 + 520] ^ 1]);
    assert_err(&m, good, status::DIF_ERR);
    let r = cr(&m);
    assert_eq!(
        (r.result, r.bytes_completed, r.u32_at(0x10)),
        (0x01, 2 * 528, 102)
    );
    // Guard check disabled (source flag bit 5) passes.
    assert_eq!(
        run(&m, dif_chk(opcode::DIF_CHECK, n, 0x20, 1, 100, 0, 0x4242)).status,
        status::SUCCESS
    );
    put(&m, DST, &prot);
    // Wrong ref seed: ref error in block 0; disabled by bit 6.
    assert_err(
        &m,
        dif_chk(opcode::DIF_CHECK, n, 0, 1, 5, 0, 0x4242),
        status::DIF_ERR,
    );
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (0x04, 0));
    assert_eq!(
        run(&m, dif_chk(opcode::DIF_CHECK, n, 0x40, 1, 5, 0, 0x4242)).status,
        status::SUCCESS
    );
    // Fixed ref tag flag (bit 7) with incrementing data: error in block 1.
    assert_err(
        &m,
        dif_chk(opcode::DIF_CHECK, n, 0x80, 1, 100, 0, 0x4242),
        status::DIF_ERR,
    );
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (0x04, 528));
    // App tag: wrong seed is an error unless masked.
    assert_err(
        &m,
        dif_chk(opcode::DIF_CHECK, n, 0, 1, 100, 0, 0x4243),
        status::DIF_ERR,
    );
    assert_eq!(cr(&m).result, 0x02);
    assert_eq!(
        run(&m, dif_chk(opcode::DIF_CHECK, n, 0, 1, 100, 0x0001, 0x4243)).status,
        status::SUCCESS
    );
    assert_eq!(
        run(&m, dif_chk(opcode::DIF_CHECK, n, 0, 1, 100, 0xFFFF, 0x1111)).status,
        status::SUCCESS
    );
    // All-F tuple: skipped with all-F detect, error when the error bit is also set.
    put(&m, DST + 528 + 520, &[0xFF; 8]);
    assert_eq!(
        run(&m, dif_chk(opcode::DIF_CHECK, n, 0x02, 1, 100, 0, 0x4242)).status,
        status::SUCCESS
    );
    assert_err(
        &m,
        dif_chk(opcode::DIF_CHECK, n, 0x03, 1, 100, 0, 0x4242),
        status::DIF_ERR,
    );
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (0x08, 528));
    // App-tag F detect skips blocks whose app tag is 0xFFFF.
    put(&m, DST + 528 + 520, &[0, 0, 0xFF, 0xFF, 1, 2, 3, 4]);
    assert_eq!(
        run(&m, dif_chk(opcode::DIF_CHECK, n, 0x04, 1, 100, 0, 0x4242)).status,
        status::SUCCESS
    );
    // Sizes: must be a multiple of block + 8.
    assert_err(
        &m,
        dif_chk(opcode::DIF_CHECK, 520 * 4, 0, 1, 100, 0, 0),
        status::XFER_ERANGE,
    );
    // Fault.
    assert_err(
        &m,
        dif_chk(opcode::DIF_CHECK, n, 0, 1, 100, 0, 0).src(MEM - 528),
        status::PAGE_FAULT_NOBOF,
    );
    // CC is reserved on DIF_CHECK.
    let mut d = dif_chk(opcode::DIF_CHECK, n, 0, 1, 100, 0, 0);
    d = d.u32(4, (u32::from(opcode::DIF_CHECK) << 24) | STD | flags::CC);
    assert_err(&m, d, status::INVALID_FLAGS);
}

#[test]
fn dif_strip_and_update() {
    let m = gm();
    let data = bytes(22, 4096 * 2);
    let prot = ref_protect(&data, 4096, 0xC, 1, true, 1000, false);
    let n = prot.len() as u32;
    put(&m, DST, &prot);
    let o = run(&m, dif_chk(opcode::DIF_STRP, n, 0x10, 2 | 0xC, 1000, 0, 1));
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, AUX, data.len()), data);
    // Strip with a bad block 1: block 0 stripped, error at block 1.
    put(&m, AUX, &vec![0u8; data.len()]);
    put(&m, DST + 4104 + 100, &[prot[4104 + 100] ^ 0xFF]);
    assert_err(
        &m,
        dif_chk(opcode::DIF_STRP, n, 0x10, 2 | 0xC, 1000, 0, 1),
        status::DIF_ERR,
    );
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (0x01, 4104));
    assert_eq!(get(&m, AUX, 4096), data[..4096].to_vec());
    put(&m, DST, &prot);
    // Strip overlapping: 0x16.
    assert_err(
        &m,
        dif_chk(opcode::DIF_STRP, n, 0, 2, 0, 0, 0).dst(DST + 8),
        status::OVERLAP_BUFFERS,
    );

    // Update: check source tags, write new destination tags (fixed ref 0xAB, fixed app 0x77).
    let upd = D::new(opcode::DIF_UPDT, STD)
        .src(DST)
        .dst(AUX)
        .size(n)
        .u8(0x28, 0x10)
        .u8(0x29, 0x80)
        .u8(0x2A, 2 | 0xC)
        .u32(0x30, 1000)
        .u16(0x36, 1)
        .u32(0x38, 0xAB)
        .u16(0x3E, 0x77);
    let o = run(&m, upd);
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(
        get(&m, AUX, prot.len()),
        ref_protect(&data, 4096, 0xC, 0x77, false, 0xAB, true)
    );
    let r = cr(&m);
    assert_eq!(
        (
            r.u32_at(0x10),
            r.u16_at(0x16),
            r.u32_at(0x18),
            r.u16_at(0x1E)
        ),
        (1002, 3, 0xAB, 0x77)
    );
    // Pass-through of guard, app and ref (dest flags 3, 5, 6): the output equals the input.
    let o = run(&m, upd.u8(0x29, 0x68));
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(get(&m, AUX, prot.len()), prot);
    // Update with a source error.
    put(&m, DST + 5, &[prot[5] ^ 1]);
    assert_err(&m, upd, status::DIF_ERR);
    assert_eq!((cr(&m).result, cr(&m).bytes_completed), (0x01, 0));
}

// ---------------------------------------------------------------- CACHE_FLUSH

#[test]
fn cache_flush_is_a_checked_noop() {
    let m = gm();
    let o = run(&m, D::new(opcode::CFLUSH, STD).dst(DST).size(4096));
    assert_eq!(o.status, status::SUCCESS);
    assert_err(
        &m,
        D::new(opcode::CFLUSH, STD).dst(DST).size(0),
        status::XFER_ERANGE,
    );
    assert_err(
        &m,
        D::new(opcode::CFLUSH, STD).dst(MEM).size(64),
        status::PAGE_FAULT_NOBOF,
    );
}

// ---------------------------------------------------------------- BATCH

const LIST: u64 = 0xC0000;
const CRS: u64 = 0xD0000;

fn member(i: u64, d: D) -> D {
    d.cr(CRS + 32 * i)
}

fn put_list(m: &GuestMemoryMmap<()>, ds: &[D]) {
    for (i, d) in ds.iter().enumerate() {
        put(m, LIST + 64 * i as u64, &d.0);
    }
}

fn batch(count: u32) -> D {
    D::new(opcode::BATCH, STD | flags::RCI)
        .src(LIST)
        .size(count)
        .handle(1)
}

#[test]
fn batch_runs_members_in_order() {
    let m = gm();
    put(&m, SRC, &bytes(30, 256));
    put_list(
        &m,
        &[
            member(0, D::new(opcode::MEMMOVE, STD).src(SRC).dst(DST).size(256)),
            member(
                1,
                D::new(opcode::MEMMOVE, STD | flags::FENCE | flags::RCI)
                    .src(DST)
                    .dst(AUX)
                    .size(256)
                    .handle(5),
            ),
            member(2, D::new(opcode::COMPARE, STD).src(SRC).dst(AUX).size(256)),
        ],
    );
    let o = run(&m, batch(3));
    assert_eq!(o.status, status::SUCCESS);
    assert_eq!(o.interrupt, Some(1));
    assert_eq!(o.member_interrupts, vec![5]);
    assert_eq!(o.bytes, 768);
    assert_eq!(cr(&m).bytes_completed, 3);
    for i in 0..3 {
        assert_eq!(cr_at(&m, CRS + 32 * i).status, status::SUCCESS);
    }
    assert_eq!(cr_at(&m, CRS + 64).result, 0);
    assert_eq!(get(&m, AUX, 256), bytes(30, 256));
}

#[test]
fn batch_failure_with_and_without_fence() {
    let m = gm();
    put(&m, CRS, &[0u8; 32 * 4]);
    let fail = member(1, D::new(opcode::MEMMOVE, STD).src(MEM).dst(DST).size(64));
    put_list(
        &m,
        &[
            member(0, D::new(opcode::NOOP, STD)),
            fail,
            member(2, D::new(opcode::NOOP, STD)),
            member(3, D::new(opcode::NOOP, STD)),
        ],
    );
    // No fence: every member runs, the batch reports 0x05.
    let o = run(&m, batch(4));
    assert_eq!(o.status, status::BATCH_FAIL);
    assert_eq!(cr(&m).status, status::BATCH_FAIL);
    assert_eq!(cr(&m).bytes_completed, 4);
    assert_eq!(cr_at(&m, CRS + 32).status, status::PAGE_FAULT_NOBOF);
    assert_eq!(cr_at(&m, CRS + 96).status, status::SUCCESS);
    // Fence on member 2: it and member 3 are abandoned.
    put(&m, CRS, &[0u8; 32 * 4]);
    put_list(
        &m,
        &[
            member(0, D::new(opcode::NOOP, STD)),
            fail,
            member(2, D::new(opcode::NOOP, STD | flags::FENCE)),
            member(3, D::new(opcode::NOOP, STD)),
        ],
    );
    let o = run(&m, batch(4));
    assert_eq!(o.status, status::BATCH_FAIL);
    assert_eq!(cr(&m).bytes_completed, 2);
    assert_eq!(cr_at(&m, CRS + 64).status, 0);
    assert_eq!(cr_at(&m, CRS + 96).status, 0);
    // A false predicate also stops a fenced member (conditional execution).
    put(&m, CRS, &[0u8; 32 * 4]);
    put(&m, SRC, &[1u8; 8]);
    put(&m, DST, &[2u8; 8]);
    put_list(
        &m,
        &[
            member(
                0,
                D::new(opcode::COMPARE, STD | flags::CHECK_RESULT)
                    .src(SRC)
                    .dst(DST)
                    .size(8),
            ),
            member(1, D::new(opcode::NOOP, STD | flags::FENCE)),
        ],
    );
    let o = run(&m, batch(2));
    assert_eq!(o.status, status::BATCH_FAIL);
    assert_eq!(cr_at(&m, CRS).status, status::SUCCESS_PRED);
    assert_eq!(cr_at(&m, CRS + 32).status, 0);
}

#[test]
fn batch_errors() {
    let m = gm();
    put_list(
        &m,
        &[
            member(0, D::new(opcode::NOOP, STD)),
            member(1, D::new(opcode::NOOP, STD)),
        ],
    );
    assert_err(&m, batch(1), status::DESC_CNT_ERANGE);
    assert_err(&m, batch(0), status::DESC_CNT_ERANGE);
    assert_err(&m, batch(33), status::DESC_CNT_ERANGE);
    let big = EngineLimits {
        max_batch_size: 1024,
        ..Default::default()
    };
    // Members 2.. are zeroed: NOOPs without a record, which succeed.
    assert_eq!(run_l(&m, batch(33), &big).status, status::SUCCESS);
    assert_err(&m, batch(2).src(LIST + 32), status::DESCLIST_ALIGN);
    assert_err(&m, batch(2).src(MEM - 64), status::BATCH_PAGE_FAULT);
    assert_eq!(cr(&m).fault_addr, MEM);
    // Batch inside a batch and drain inside a batch: unsupported opcode for that member.
    put(&m, CRS, &[0u8; 64]);
    put_list(
        &m,
        &[member(0, batch(2)), member(1, D::new(opcode::DRAIN, STD))],
    );
    let o = run(&m, batch(2));
    assert_eq!(o.status, status::BATCH_FAIL);
    assert_eq!(cr_at(&m, CRS).status, status::BAD_OPCODE);
    assert_eq!(cr_at(&m, CRS + 32).status, status::BAD_OPCODE);
    // A member with a bad completion address: SWERR with the batch index.
    put_list(
        &m,
        &[
            member(0, D::new(opcode::NOOP, STD)),
            D::new(opcode::NOOP, STD).cr(CRS + 1),
        ],
    );
    let o = run(&m, batch(2));
    let e = o.swerr.unwrap();
    assert_eq!((e.status, e.batch_index), (status::CRA_ALIGN, Some(1)));
}

// ---------------------------------------------------------------- property tests

fn arb_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..MEM,
        1 => (MEM - 0x1000)..(MEM + 0x1000),
        1 => any::<u64>(),
    ]
}

prop_compose! {
    fn arb_desc()(
        op in prop_oneof![4 => proptest::sample::select(SUPPORTED_OPCODES.to_vec()), 1 => any::<u8>()],
        fl in prop_oneof![2 => Just(STD), 1 => Just(STD | flags::RCI), 1 => 0u32..0x100_0000],
        cra in prop_oneof![4 => (0u64..(MEM / 32)).prop_map(|x| x * 32), 1 => any::<u64>()],
        src in arb_addr(),
        dst in arb_addr(),
        size in prop_oneof![4 => 0u32..0x4000, 1 => any::<u32>()],
        tail in proptest::array::uniform24(any::<u8>()),
        sparse in any::<bool>(),
    ) -> D {
        let mut d = D::new(op, fl).cr(cra).src(src).dst(dst).size(size);
        for (i, b) in tail.iter().enumerate() {
            // Half the cases keep the op-specific area mostly zero so validation passes.
            let v = if sparse && i % 5 != 0 { 0 } else { *b };
            d = d.u8(0x28 + i, v);
        }
        d
    }
}

fn check_outcome(m: &GuestMemoryMmap<()>, d: &D, o: &Outcome) {
    assert!(status::is_valid(o.status), "invalid status {:#x}", o.status);
    if o.record_written {
        let at = d.desc().completion_addr;
        let r = cr_at(m, at);
        assert_eq!(r.status, o.status);
        assert!(status::is_valid(r.status));
    }
    if let Some(e) = o.swerr {
        assert!(status::is_valid(e.status));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_raw_descriptors_never_panic(raw in proptest::array::uniform32(any::<u8>()), raw2 in proptest::array::uniform32(any::<u8>())) {
        let m = gm();
        let mut b = [0u8; DESC_SIZE];
        b[..32].copy_from_slice(&raw);
        b[32..].copy_from_slice(&raw2);
        let d = D(b);
        let o = run(&m, d);
        check_outcome(&m, &d, &o);
    }

    #[test]
    fn random_structured_descriptors_have_valid_status(d in arb_desc(), fill in any::<u64>()) {
        let m = gm();
        // Random guest contents so batch lists and delta records are arbitrary.
        put(&m, 0, &bytes(fill, MEM as usize));
        // A 64 KiB transfer limit keeps the debug-build run short; larger sizes still hit 0x13.
        let l = EngineLimits { max_batch_size: 64, max_xfer_size: 64 << 10, ..Default::default() };
        let o = run_l(&m, d, &l);
        check_outcome(&m, &d, &o);
    }

    #[test]
    fn random_batches_have_valid_status(members in proptest::collection::vec(arb_desc(), 2..8), fill in any::<u64>()) {
        let m = gm();
        put(&m, 0, &bytes(fill, MEM as usize));
        put_list(&m, &members);
        let b = batch(members.len() as u32);
        let l = EngineLimits { max_xfer_size: 64 << 10, ..Default::default() };
        let o = run_l(&m, b, &l);
        check_outcome(&m, &b, &o);
        prop_assert!(o.status == status::SUCCESS || o.status == status::BATCH_FAIL);
    }
}
