//! DSA software-engine benchmark (issue 5): MEMMOVE throughput at 4 KiB, 64 KiB and 1 MiB against
//! the host's memmove on the same guest buffers, MEMFILL against the host's memset on a buffer of
//! the same size, CRC32C against the `crc32c` crate, and the engine's own cost per descriptor.
//!
//! Run: `cargo bench -p devices --bench engine` (release profile). Each number is the best of
//! several timed runs of at least ~50 ms, so it reflects warm caches. The last line, `bench: engine:
//! ...`, sums up the run; the README's Performance table quotes it verbatim.

use std::hint::black_box;
use std::time::{Duration, Instant};

use devices::dsa::descriptor::{flags, opcode, Descriptor, DESC_SIZE};
use devices::dsa::engine::{execute, EngineLimits};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const CR: u64 = 0x1000;
const SRC: u64 = 0x10_0000;
const DST: u64 = 0x40_0000;

fn desc(op: u8, src: u64, dst: u64, size: u32) -> Descriptor {
    let mut raw = [0u8; DESC_SIZE];
    let f = flags::CRAV | flags::RCR;
    raw[4..8].copy_from_slice(&((u32::from(op) << 24) | f).to_le_bytes());
    raw[8..16].copy_from_slice(&CR.to_le_bytes());
    raw[16..24].copy_from_slice(&src.to_le_bytes());
    raw[24..32].copy_from_slice(&dst.to_le_bytes());
    raw[32..36].copy_from_slice(&size.to_le_bytes());
    Descriptor::parse(&raw)
}

/// Iterations of `f` that take at least ~4 ms.
fn calibrate(f: &mut impl FnMut()) -> u64 {
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() > Duration::from_millis(4) {
            return iters;
        }
        iters *= 2;
    }
}

fn once(f: &mut impl FnMut(), iters: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

/// Seconds per call of `a` and of `b`, measured in alternation (so both see the same machine
/// load) and taking the best of 61 short rounds each.
fn pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let (ia, ib) = (calibrate(&mut a), calibrate(&mut b));
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..61 {
        ta = ta.min(once(&mut a, ia));
        tb = tb.min(once(&mut b, ib));
    }
    (ta, tb)
}

/// A host buffer of `size` bytes starting on a 4 KiB boundary, like the guest buffers (an
/// unaligned `Vec` makes `rep movsb` memcpy much slower and the comparison unfair).
fn aligned(size: usize, v: &mut Vec<u8>) -> &mut [u8] {
    v.resize(size + 4096, 0);
    let off = v.as_ptr().align_offset(4096).min(4096);
    &mut v[off..off + size]
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("guest memory");
    let limits = EngineLimits::default();
    // host time / engine time per size, for the summary line.
    let (mut mm, mut fill, mut crc) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "{:<28} {:>10} {:>10} {:>7}",
        "operation", "engine", "host", "ratio"
    );

    // MEMMOVE against the host's memmove (libc, through `VolatileSlice::copy_to_volatile_slice`)
    // on the very same guest buffers.
    for size in [4usize << 10, 64 << 10, 1 << 20] {
        let src = mem.get_slice(GuestAddress(SRC), size).expect("src");
        let dst = mem.get_slice(GuestAddress(DST), size).expect("dst");
        let d = desc(opcode::MEMMOVE, SRC, DST, size as u32);
        let (e, h) = pair(
            || {
                black_box(execute(&mem, black_box(&d), &limits));
            },
            || {
                black_box(&src).copy_to_volatile_slice(black_box(dst));
            },
        );
        mm.push(h / e);
        println!(
            "{:<28} {:>7.2}GB/s {:>7.2}GB/s {:>6.2}x",
            format!("memmove {} KiB", size >> 10),
            gbps(size, e),
            gbps(size, h),
            h / e
        );
    }
    // MEMFILL against `<[u8]>::fill` (memset) on a host buffer of the same size and alignment
    // (vm-memory has no safe memset on guest memory to compare with).
    for (name, pattern, size) in [4usize << 10, 64 << 10, 1 << 20]
        .into_iter()
        .map(|s| ("fill", 0xABAB_ABAB_ABAB_ABABu64, s))
        .chain(
            [64usize << 10, 1 << 20]
                .into_iter()
                .map(|s| ("fill 8-byte pattern", 0x0123_4567_89AB_CDEF, s)),
        )
    {
        let mut dv = Vec::new();
        let dst = aligned(size, &mut dv);
        let d = desc(opcode::MEMFILL, pattern, DST, size as u32);
        let (e, h) = pair(
            || {
                black_box(execute(&mem, black_box(&d), &limits));
            },
            || {
                dst.fill(black_box(0xAB));
                black_box(&mut *dst);
            },
        );
        if name == "fill" {
            fill.push(h / e);
        }
        println!(
            "{:<28} {:>7.2}GB/s {:>7.2}GB/s {:>6.2}x",
            format!("{name} {} KiB", size >> 10),
            gbps(size, e),
            gbps(size, h),
            h / e
        );
    }
    for size in [4usize << 10, 64 << 10, 1 << 20] {
        let mut bv = Vec::new();
        let buf = aligned(size, &mut bv);
        buf.fill(0x3C);
        let buf = &*buf;
        let d = desc(opcode::CRCGEN, SRC, 0, size as u32);
        let (e, h) = pair(
            || {
                black_box(execute(&mem, black_box(&d), &limits));
            },
            || {
                black_box(crc32c::crc32c(black_box(buf)));
            },
        );
        crc.push(h / e);
        println!(
            "{:<28} {:>7.2}GB/s {:>7.2}GB/s {:>6.2}x",
            format!("crc32c {} KiB", size >> 10),
            gbps(size, e),
            gbps(size, h),
            h / e
        );
    }
    // Per-descriptor cost: a 64-byte MEMMOVE minus a host 64-byte copy, and a NOOP.
    let d = desc(opcode::MEMMOVE, SRC, DST, 64);
    let (src, mut dst) = ([1u8; 64], [0u8; 64]);
    let (e, h) = pair(
        || {
            black_box(execute(&mem, black_box(&d), &limits));
        },
        || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        },
    );
    let per_desc = (e - h) * 1e9;
    println!("per-descriptor cost, 64 B memmove excluding the copy: {per_desc:.0} ns");
    let n = desc(opcode::NOOP, 0, 0, 0);
    let (e, _) = pair(
        || {
            black_box(execute(&mem, black_box(&n), &limits));
        },
        || {},
    );
    println!(
        "per-descriptor cost, NOOP with completion record:      {:.0} ns",
        e * 1e9
    );
    let r = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}x"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "bench: engine: speed vs host at 4 KiB / 64 KiB / 1 MiB: MEMMOVE {}, FILL {}, CRC32C (vs the \
         crc32c crate) {}; 64 B MEMMOVE descriptor {per_desc:.0} ns excluding the copy, NOOP {:.0} ns",
        r(&mm),
        r(&fill),
        r(&crc),
        e * 1e9
    );
}
