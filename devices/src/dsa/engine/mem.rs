//! Bounds-checked guest-memory helpers for the software engine.
//!
//! Every access goes through `vm-memory` (`GuestMemory::get_slices` and `Bytes`), so an address
//! outside guest RAM yields a [`Fault`], never a host access. Large transfers move through
//! `VolatileSlice` copies (host `memmove`) or a bounded scratch buffer; no allocation is sized by a
//! guest-controlled value beyond [`CHUNK`]. The one `unsafe` block is the host `memset` used for
//! fills with a one-byte pattern (vm-memory offers no safe memset on guest memory).

use std::cell::RefCell;

use vm_memory::bitmap::{BitmapSlice, BS};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions, VolatileSlice};

/// Bounce-buffer chunk for operations that must look at the data (compare, CRC, delta, DIF).
pub const CHUNK: usize = 8 * 1024;

/// An access that left guest RAM: the first faulting guest address and the direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// First guest-physical address that is not backed by RAM.
    pub addr: u64,
    /// The faulting access was a write.
    pub write: bool,
}

fn perm(write: bool) -> Permissions {
    if write {
        Permissions::Write
    } else {
        Permissions::Read
    }
}

/// Checks that `[addr, addr + len)` is entirely guest RAM. Returns the first faulting address.
pub fn check<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: u64,
    len: u64,
    write: bool,
) -> Result<(), Fault> {
    if len == 0 {
        return Ok(());
    }
    let fault = |done: u64| Fault {
        addr: addr.wrapping_add(done),
        write,
    };
    // A range that wraps the 64-bit address space: its part up to 2^64 - 1 first (guest RAM
    // never reaches that high, so that is where it faults, at `addr` itself), else where it
    // wraps. `addr` > 0 here, so `head` is not 0 and does not wrap.
    if addr.checked_add(len - 1).is_none() {
        let head = 0u64.wrapping_sub(addr);
        check(mem, addr, head, write)?;
        return Err(fault(head));
    }
    let Ok(count) = usize::try_from(len) else {
        return Err(fault(0));
    };
    let iter = mem
        .get_slices(GuestAddress(addr), count, perm(write))
        .map_err(|_| fault(0))?;
    let mut done: u64 = 0;
    for s in iter {
        match s {
            Ok(s) => done = done.saturating_add(s.len() as u64),
            Err(_) => return Err(fault(done)),
        }
    }
    if done < len {
        return Err(fault(done));
    }
    Ok(())
}

/// The whole range `[addr, addr + len)` as one slice, when it is guest RAM inside a single
/// region (the common case); `None` otherwise (then use [`check`] to find the fault).
pub fn single<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: u64,
    len: u64,
    write: bool,
) -> Option<VolatileSlice<'_, BS<'_, M::Bitmap>>> {
    let count = usize::try_from(len).ok()?;
    if count == 0 {
        return None;
    }
    let mut it = mem
        .get_slices(GuestAddress(addr), count, perm(write))
        .ok()?;
    let s = it.next()?.ok()?;
    (s.len() == count).then_some(s)
}

/// Whether `[a, a + alen)` and `[b, b + blen)` overlap (in guest-physical space).
pub fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    if alen == 0 || blen == 0 {
        return false;
    }
    let (a, b) = (u128::from(a), u128::from(b));
    a < b + u128::from(blen) && b < a + u128::from(alen)
}

/// Error from a transfer after its ranges were checked: a region vanished under us or
/// vm-memory refused a sub-slice. Reported as a hardware error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Broken;

/// Reads guest memory into `buf` (bounds-checked).
pub fn read<M: GuestMemory + ?Sized>(mem: &M, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
    mem.read_slice(buf, GuestAddress(addr))
        .map_err(|_| Fault { addr, write: false })
}

/// Writes `buf` to guest memory (bounds-checked).
pub fn write<M: GuestMemory + ?Sized>(mem: &M, addr: u64, buf: &[u8]) -> Result<(), Fault> {
    mem.write_slice(buf, GuestAddress(addr))
        .map_err(|_| Fault { addr, write: true })
}

/// Copies `len` bytes from `src` to `dst` inside guest memory with `memmove` semantics (the
/// ranges may overlap). Both ranges must have been checked with [`check`].
pub fn copy<M: GuestMemory + ?Sized>(mem: &M, src: u64, dst: u64, len: u64) -> Result<(), Broken> {
    if len == 0 {
        return Ok(());
    }
    let count = usize::try_from(len).map_err(|_| Broken)?;
    let mut s_it = mem
        .get_slices(GuestAddress(src), count, Permissions::Read)
        .map_err(|_| Broken)?;
    let mut d_it = mem
        .get_slices(GuestAddress(dst), count, Permissions::Write)
        .map_err(|_| Broken)?;
    let mut s = s_it.next().ok_or(Broken)?.map_err(|_| Broken)?;
    let mut d = d_it.next().ok_or(Broken)?.map_err(|_| Broken)?;
    // Fast path: both ranges inside one region each; `copy_to_volatile_slice` is `ptr::copy`,
    // i.e. memmove, so overlap in either direction is handled.
    if s.len() == count && d.len() == count {
        s.copy_to_volatile_slice(d);
        return Ok(());
    }
    // Range split across regions. A forward chunked copy is wrong only when the destination
    // starts inside the source; then go backwards through a bounce buffer.
    if dst > src && dst < src.saturating_add(len) {
        return copy_backward(mem, src, dst, len);
    }
    loop {
        let n = s.len().min(d.len());
        let (s_head, s_tail) = s.split_at(n).map_err(|_| Broken)?;
        let (d_head, d_tail) = d.split_at(n).map_err(|_| Broken)?;
        s_head.copy_to_volatile_slice(d_head);
        s = s_tail;
        d = d_tail;
        if s.is_empty() {
            match s_it.next() {
                Some(Ok(n)) => s = n,
                Some(Err(_)) => return Err(Broken),
                None => break,
            }
        }
        if d.is_empty() {
            match d_it.next() {
                Some(Ok(n)) => d = n,
                Some(Err(_)) => return Err(Broken),
                None => break,
            }
        }
    }
    Ok(())
}

fn copy_backward<M: GuestMemory + ?Sized>(
    mem: &M,
    src: u64,
    dst: u64,
    len: u64,
) -> Result<(), Broken> {
    with_scratch(CHUNK, |buf| {
        let mut end = len;
        while end > 0 {
            let n = (end as usize).min(buf.len());
            let off = end - n as u64;
            let b = buf.get_mut(..n).ok_or(Broken)?;
            read(mem, src + off, b).map_err(|_| Broken)?;
            write(mem, dst + off, b).map_err(|_| Broken)?;
            end = off;
        }
        Ok(())
    })
}

/// Fills `[dst, dst + len)` with `pattern` repeated from `dst` on (byte 0 of the pattern lands
/// on `dst`). The range must have been checked with [`check`].
pub fn fill<M: GuestMemory + ?Sized>(
    mem: &M,
    dst: u64,
    len: u64,
    pattern: &[u8],
) -> Result<(), Broken> {
    const PAT_BUF: usize = 4096;
    let plen = pattern.len();
    if len == 0 || plen == 0 || !PAT_BUF.is_multiple_of(plen) {
        return Ok(());
    }
    let count = usize::try_from(len).map_err(|_| Broken)?;
    // A pattern of one repeated byte (zeroing above all) is a host memset.
    if let Some(&b0) = pattern.first() {
        if pattern.iter().all(|&b| b == b0) {
            if let Some(s) = single(mem, dst, len, true) {
                memset_slice(&s, b0);
                return Ok(());
            }
            let it = mem
                .get_slices(GuestAddress(dst), count, Permissions::Write)
                .map_err(|_| Broken)?;
            for s in it {
                memset_slice(&s.map_err(|_| Broken)?, b0);
            }
            return Ok(());
        }
    }
    // Pattern buffer: PAT_BUF bytes plus one pattern so any phase can take a full chunk. It is
    // cached per thread for the last pattern (fills mostly reuse one pattern, often zero), and
    // built by doubling (a handful of memcpys) when the pattern changes.
    PATTERN.with(|cell| match cell.try_borrow_mut() {
        Ok(mut g) => {
            let (key, buf) = &mut *g;
            if key.as_slice() != pattern || buf.len() != PAT_BUF + plen {
                key.clear();
                key.extend_from_slice(pattern);
                build_pattern(buf, pattern, PAT_BUF + plen);
            }
            fill_from(mem, dst, count, plen, buf)
        }
        Err(_) => {
            let mut buf = Vec::new();
            build_pattern(&mut buf, pattern, PAT_BUF + plen);
            fill_from(mem, dst, count, plen, &buf)
        }
    })
}

/// Sets every byte of `s` to `byte`.
fn memset_slice<B: BitmapSlice>(s: &VolatileSlice<'_, B>, byte: u8) {
    let guard = s.ptr_guard_mut();
    // SAFETY: `ptr_guard_mut` gives the start of the slice's mmap'd guest memory, valid for
    // writes of `s.len()` bytes (vm-memory bounds-checked the range when it made the slice, and
    // the guard keeps the mapping alive). Byte stores need no alignment. This is a plain bulk
    // write, like vm-memory's own `copy_to_volatile_slice` (`ptr::copy`); the guest racing with
    // it sees what it would see racing with a DMA engine.
    unsafe { std::ptr::write_bytes(guard.as_ptr(), byte, s.len()) };
    s.bitmap().mark_dirty(0, s.len());
}

fn build_pattern(buf: &mut Vec<u8>, pattern: &[u8], len: usize) {
    buf.clear();
    buf.extend_from_slice(pattern);
    while buf.len() < len {
        let n = buf.len().min(len - buf.len());
        buf.extend_from_within(..n);
    }
}

fn fill_from<M: GuestMemory + ?Sized>(
    mem: &M,
    dst: u64,
    count: usize,
    plen: usize,
    pat: &[u8],
) -> Result<(), Broken> {
    if let Some(s) = single(mem, dst, count as u64, true) {
        return fill_slice(s, 0, plen, pat).map(|_| ());
    }
    let it = mem
        .get_slices(GuestAddress(dst), count, Permissions::Write)
        .map_err(|_| Broken)?;
    let mut done: usize = 0;
    for s in it {
        done = fill_slice(s.map_err(|_| Broken)?, done, plen, pat)?;
    }
    Ok(())
}

/// Fills one slice from the pattern buffer; `done` bytes of the whole fill precede it.
fn fill_slice<B: BitmapSlice>(
    mut s: VolatileSlice<'_, B>,
    mut done: usize,
    plen: usize,
    pat: &[u8],
) -> Result<usize, Broken> {
    let chunk = pat.len().saturating_sub(plen).max(plen);
    while !s.is_empty() {
        let phase = done % plen;
        let n = s.len().min(chunk);
        let (head, tail) = s.split_at(n).map_err(|_| Broken)?;
        head.copy_from(pat.get(phase..phase + n).ok_or(Broken)?);
        s = tail;
        done += n;
    }
    Ok(done)
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static PATTERN: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with a scratch buffer of exactly `len` bytes (`len` is bounded by the callers to a
/// few [`CHUNK`]s). Reuses a per-thread buffer; a nested call gets a fresh one.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut v = SCRATCH
        .with(|c| c.try_borrow_mut().map(|mut v| std::mem::take(&mut *v)))
        .unwrap_or_default();
    v.resize(len, 0);
    let r = f(&mut v);
    SCRATCH.with(|c| {
        if let Ok(mut slot) = c.try_borrow_mut() {
            if slot.capacity() < v.capacity() {
                *slot = v;
            }
        }
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        // Two regions with a hole between them.
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
            (GuestAddress(0x30000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn check_finds_first_fault() {
        let m = mem();
        assert_eq!(check(&m, 0, 0x20000, false), Ok(()));
        assert_eq!(
            check(&m, 0x1FFF0, 0x20, true),
            Err(Fault {
                addr: 0x20000,
                write: true
            })
        );
        assert_eq!(
            check(&m, 0x40000, 1, false),
            Err(Fault {
                addr: 0x40000,
                write: false
            })
        );
        // A wrapping range faults at its first byte that is not RAM: its start, not 0 (where
        // it wraps to, which is RAM here).
        assert_eq!(
            check(&m, u64::MAX - 3, 8, false),
            Err(Fault {
                addr: u64::MAX - 3,
                write: false
            })
        );
        assert_eq!(
            check(&m, u64::MAX, 2, true).map_err(|f| f.addr),
            Err(u64::MAX)
        );
        assert_eq!(check(&m, u64::MAX, 0, false), Ok(()));
    }

    #[test]
    fn copy_across_regions_both_directions() {
        let m = mem();
        let data: Vec<u8> = (0..0x3000u32).map(|i| (i * 7 + 3) as u8).collect();
        // Forward overlapping across the region boundary (dst inside src).
        m.write_slice(&data, GuestAddress(0xE000)).unwrap();
        copy(&m, 0xE000, 0xE800, 0x3000).unwrap();
        let mut out = vec![0u8; 0x3000];
        m.read_slice(&mut out, GuestAddress(0xE800)).unwrap();
        assert_eq!(out, data);
        // Backward overlap (src inside dst).
        m.write_slice(&data, GuestAddress(0xF000)).unwrap();
        copy(&m, 0xF000, 0xE000, 0x3000).unwrap();
        m.read_slice(&mut out, GuestAddress(0xE000)).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn fill_keeps_phase_across_regions() {
        let m = mem();
        let pat = 0x0123_4567_89AB_CDEFu64.to_le_bytes();
        fill(&m, 0xFFF3, 0x2005, &pat).unwrap();
        let mut out = vec![0u8; 0x2005];
        m.read_slice(&mut out, GuestAddress(0xFFF3)).unwrap();
        for (i, b) in out.iter().enumerate() {
            assert_eq!(*b, pat[i % 8]);
        }
    }

    #[test]
    fn scratch_nests() {
        let r = with_scratch(16, |a| {
            a[0] = 1;
            with_scratch(32, |b| b.len()) + a.len()
        });
        assert_eq!(r, 48);
    }

    #[test]
    fn overlap_rule() {
        assert!(overlaps(0, 10, 9, 1));
        assert!(!overlaps(0, 10, 10, 1));
        assert!(!overlaps(0, 0, 0, 10));
        assert!(overlaps(u64::MAX - 1, 10, u64::MAX, 1));
    }
}
