//! DSA software-engine benchmark (issue 5): MEMMOVE throughput at 4 KiB, 64 KiB and 1 MiB against
//! the host's memmove on the same guest buffers, MEMFILL against the host's memset on a buffer of
//! the same size, CRC32C against the `crc32c` crate, and the engine's own cost per descriptor.
//!
//! Then the engine workers (`exec=workers`): MEMMOVE streams through one WQ with 16 descriptors in
//! flight, executed by 1 and by 2 engine threads, against the host's memmove of the same bytes in
//! the same thread, measured in alternation (`bench: engine workers: ...`).
//!
//! Run: `cargo bench -p devices --bench engine` (release profile). Each number is the best of
//! several timed runs of at least ~50 ms, so it reflects warm caches. The `bench: engine: ...`
//! and `bench: engine workers: ...` lines sum up the run; the README's Performance table quotes
//! them verbatim.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::dsa::backend::{DmaMemory, DsaBackend, Mirror};
use devices::dsa::config::Tables;
use devices::dsa::descriptor::{flags, opcode, Descriptor, DESC_SIZE};
use devices::dsa::engine::{execute, EngineLimits};
use devices::dsa::workers::WorkerBackend;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const CR: u64 = 0x1000;
const SRC: u64 = 0x10_0000;
const DST: u64 = 0x40_0000;

fn desc(op: u8, src: u64, dst: u64, size: u32) -> Descriptor {
    Descriptor::parse(&raw_desc(op, CR, src, dst, size))
}

fn raw_desc(op: u8, cr: u64, src: u64, dst: u64, size: u32) -> [u8; DESC_SIZE] {
    let mut raw = [0u8; DESC_SIZE];
    let f = flags::CRAV | flags::RCR;
    raw[4..8].copy_from_slice(&((u32::from(op) << 24) | f).to_le_bytes());
    raw[8..16].copy_from_slice(&cr.to_le_bytes());
    raw[16..24].copy_from_slice(&src.to_le_bytes());
    raw[24..32].copy_from_slice(&dst.to_le_bytes());
    raw[32..36].copy_from_slice(&size.to_le_bytes());
    raw
}

/// Guest RAM for the workers.
struct Ram(Arc<GuestMemoryMmap<()>>);

impl DmaMemory for Ram {
    fn snapshot(&self) -> Arc<GuestMemoryMmap<()>> {
        self.0.clone()
    }
}

/// Descriptors in flight on the WQ (a dedicated WQ of 16, as the idxd driver configures it).
const DEPTH: u16 = 16;
/// Destination buffers the in-flight copies cycle through.
const SLOTS: u64 = 16;
const STREAM_DST: u64 = 0x100_0000;

/// Engine workers over `mem`, WQ 0 in group 0 with `engines` engines, as ENABLE_DEVICE leaves them.
fn workers(mem: &Arc<GuestMemoryMmap<()>>, engines: usize) -> WorkerBackend {
    let (mut b, _pool) =
        WorkerBackend::spawn(engines, 1, Arc::new(Ram(mem.clone())), Arc::new(|| true))
            .expect("engine threads");
    let mut t = Tables::new(1, 1, engines);
    t.groups[0].wqs[0] = 1;
    t.groups[0].engines = (1 << engines) - 1;
    t.wqs[0].cfg[0] = u32::from(DEPTH);
    t.wqs[0].cfg[2] = 1 | (10 << 4);
    b.mirror(Mirror::EnableDevice(&t));
    b
}

/// Streams `count` MEMMOVEs of `size` bytes through `b` with up to [`DEPTH`] in flight, each to
/// its own destination slot and completion record, and waits for the last.
fn stream(b: &mut WorkerBackend, size: u32, count: u64, limits: &EngineLimits) {
    let mut done = 0u64;
    for i in 0..count {
        while b.occupancy(0) >= DEPTH {
            done += b.completed().len() as u64;
            std::thread::yield_now();
        }
        let slot = i % SLOTS;
        let raw = raw_desc(
            opcode::MEMMOVE,
            CR + 32 * slot,
            SRC,
            STREAM_DST + slot * u64::from(size),
            size,
        );
        black_box(b.submit(0, &raw, limits));
    }
    while done < count {
        done += b.completed().len() as u64;
        std::thread::yield_now();
    }
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
    let noop_ns = e * 1e9;
    let streams = workers_vs_host();
    println!(
        "bench: engine workers: MEMMOVE through one WQ, {DEPTH} in flight, vs host memmove of the \
         same bytes, at 4 KiB / 64 KiB / 1 MiB: 1 engine {}, 2 engines {}",
        r(&streams[0]),
        r(&streams[1])
    );
    println!(
        "bench: engine: speed vs host at 4 KiB / 64 KiB / 1 MiB: MEMMOVE {}, FILL {}, CRC32C (vs the \
         crc32c crate) {}; 64 B MEMMOVE descriptor {per_desc:.0} ns excluding the copy, NOOP {:.0} ns",
        r(&mm),
        r(&fill),
        r(&crc),
        noop_ns
    );
}

/// Host memmove time / worker stream time at each size, for 1 and 2 engines.
fn workers_vs_host() -> [Vec<f64>; 2] {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("guest memory"),
    );
    let limits = EngineLimits::default();
    let mut out: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for (k, engines) in [1usize, 2].into_iter().enumerate() {
        let mut b = workers(&mem, engines);
        for size in [4usize << 10, 64 << 10, 1 << 20] {
            // About 64 MiB per timed round.
            let count = ((64usize << 20) / size) as u64;
            let src = mem.get_slice(GuestAddress(SRC), size).expect("src");
            let dsts: Vec<_> = (0..SLOTS)
                .map(|s| {
                    mem.get_slice(GuestAddress(STREAM_DST + s * size as u64), size)
                        .expect("dst")
                })
                .collect();
            let (mut tw, mut th) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..7 {
                let t = Instant::now();
                stream(&mut b, size as u32, count, &limits);
                tw = tw.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for i in 0..count {
                    let d = &dsts[(i % SLOTS) as usize];
                    black_box(&src).copy_to_volatile_slice(black_box(d.clone()));
                }
                th = th.min(t.elapsed().as_secs_f64());
            }
            let bytes = size * count as usize;
            println!(
                "{:<28} {:>7.2}GB/s {:>7.2}GB/s {:>6.2}x",
                format!("workers={engines} memmove {} KiB", size >> 10),
                gbps(bytes, tw),
                gbps(bytes, th),
                th / tw
            );
            if let Some(v) = out.get_mut(k) {
                v.push(th / tw);
            }
        }
    }
    out
}
