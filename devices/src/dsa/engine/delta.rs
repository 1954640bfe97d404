//! CREATE_DELTA and APPLY_DELTA.
//!
//! Delta record entry (§6.3; DML `sw_dispatcher/ref/create_delta.c`):
//! 10 bytes, a little-endian u16 offset in 8-byte units followed by the 8 data bytes taken from
//! source 2. Transfer sizes are multiples of 8 and at most 512 KiB (the u16 offset).

use vm_memory::GuestMemory;

use super::{check_ranges, check_size, mem, EngineLimits, OpResult};
use crate::dsa::descriptor::{flags, status, Descriptor};

type OpRes = Result<OpResult, OpResult>;

/// Size of one delta record entry.
pub const ENTRY: usize = 10;
/// Largest transfer a delta operation accepts (DML `validation.cpp`: 0x80000).
pub const MAX_DELTA_XFER: u64 = 0x80000;
/// Smallest maximum-delta-record size (DML `validation.cpp`: at least 80, a multiple of 10).
pub const MIN_MAX_DELTA: u32 = 80;
/// Entries buffered before they are written to guest memory (a multiple of 8 words).
const ENTRY_BUF: usize = 400 * ENTRY;

fn check_delta_size(desc: &Descriptor, limits: &EngineLimits) -> Result<u64, OpResult> {
    let n = check_size(desc, limits)?;
    // DML validation.cpp: size % 8 != 0 -> wrong_size, size > 0x80000 -> large_size.
    if n % 8 != 0 || n > MAX_DELTA_XFER {
        return Err(OpResult::status(status::XFER_ERANGE));
    }
    Ok(n)
}

/// CREATE_DELTA: source 1 at 0x10, source 2 at 0x18, delta record at 0x28, maximum delta size
/// at 0x30, expected-result mask at 0x38. Result (§7): 0 equal, 1 delta written,
/// 2 overflow; record offset 0x10 = delta record size. With check-result, result r is a
/// success when bit r of the mask is set, else status 0x02 (§6.3; DML
/// `create_delta.cpp` treats masks 0b000 and 0b111 the same way).
pub fn create_delta<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_delta_size(desc, limits)?;
    let max = desc.max_delta_size();
    // DML validation.cpp: wrong_delta_size when not a multiple of 10 or below 80 -> 0x15.
    if !max.is_multiple_of(10) || max < MIN_MAX_DELTA {
        return Err(OpResult::status(status::DR_ERANGE));
    }
    let (s1, s2, da) = (desc.src, desc.dst, desc.delta_addr());
    // DML validation.cpp: the three addresses must be 8-byte aligned -> 0x1C.
    if (s1 | s2 | da) % 8 != 0 {
        return Err(OpResult::status(status::ADDR_ALIGN));
    }
    // Only as much of the delta area as can ever be written is touched.
    let area = u64::from(max).min(n / 8 * ENTRY as u64);
    // [R] The delta record must not overlap the sources it describes.
    if mem::overlaps(da, area, s1, n) || mem::overlaps(da, area, s2, n) {
        return Err(OpResult::status(status::OVERLAP_BUFFERS));
    }
    check_ranges(
        mem,
        limits,
        &[(s1, n, false), (s2, n, false), (da, area, true)],
    )?;

    let mut rec_size: u32 = 0;
    let mut overflow_at: Option<u64> = None;
    mem::with_scratch(2 * mem::CHUNK + ENTRY_BUF, |buf| -> Result<(), OpResult> {
        let (a, rest) = buf.split_at_mut(mem::CHUNK);
        let (b, ebuf) = rest.split_at_mut(mem::CHUNK);
        let mut pending = 0usize; // bytes in ebuf
        let mut flushed: u64 = 0;
        let mut off = 0u64;
        'outer: while off < n {
            let len = (n - off).min(mem::CHUNK as u64) as usize;
            let (a, b) = (
                a.get_mut(..len).ok_or_else(OpResult::broken)?,
                b.get_mut(..len).ok_or_else(OpResult::broken)?,
            );
            mem::read(mem, s1 + off, a).map_err(|_| OpResult::broken())?;
            mem::read(mem, s2 + off, b).map_err(|_| OpResult::broken())?;
            for (w, (x, y)) in a.chunks_exact(8).zip(b.chunks_exact(8)).enumerate() {
                if x == y {
                    continue;
                }
                if rec_size + ENTRY as u32 > max {
                    overflow_at = Some(off + w as u64 * 8);
                    break 'outer;
                }
                let word = (off / 8) as u16 + w as u16;
                let e = ebuf
                    .get_mut(pending..pending + ENTRY)
                    .ok_or_else(OpResult::broken)?;
                e[..2].copy_from_slice(&word.to_le_bytes());
                e[2..].copy_from_slice(y);
                pending += ENTRY;
                rec_size += ENTRY as u32;
                if pending == ebuf.len() {
                    mem::write(mem, da + flushed, ebuf).map_err(|_| OpResult::broken())?;
                    flushed += pending as u64;
                    pending = 0;
                }
            }
            off += len as u64;
        }
        if pending > 0 {
            let e = ebuf.get(..pending).ok_or_else(OpResult::broken)?;
            mem::write(mem, da + flushed, e).map_err(|_| OpResult::broken())?;
        }
        Ok(())
    })?;

    let result: u8 = match (overflow_at, rec_size) {
        (Some(_), _) => 2,
        (None, 0) => 0,
        (None, _) => 1,
    };
    let mut r = OpResult::success(n);
    r.cr.result = result;
    r.cr.set_u32(0x10, rec_size);
    // [R] On overflow, bytes completed = offset of the first word that did not fit.
    if let Some(at) = overflow_at {
        r.cr.bytes_completed = at as u32;
    }
    if desc.flags & flags::CHECK_RESULT != 0 && desc.expected_result_mask() & (1 << result) == 0 {
        r.cr.status = status::SUCCESS_PRED;
    }
    Ok(r)
}

/// APPLY_DELTA: delta record at 0x10, destination at 0x18, destination size at 0x20, delta
/// record size at 0x28. DML `validation.cpp`: addresses 8-byte aligned (0x1C), size a multiple
/// of 8 and <= 512 KiB (0x13), record size a non-zero multiple of 10 (0x15), record and
/// destination must not overlap (0x16). Offsets must increase (0x07) and stay below the
/// transfer size (0x08) (uapi `DSA_COMP_DR_OFFSET_NOINC` / `_ERANGE`); the whole record is
/// validated before the destination is touched.
pub fn apply_delta<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_delta_size(desc, limits)?;
    let rs = desc.delta_rec_size();
    // [R] A record longer than one entry per destination word cannot be valid either.
    if rs == 0 || !rs.is_multiple_of(ENTRY as u32) || u64::from(rs) > n / 8 * ENTRY as u64 {
        return Err(OpResult::status(status::DR_ERANGE));
    }
    let (ra, dst) = (desc.src, desc.dst);
    if (ra | dst) % 8 != 0 {
        return Err(OpResult::status(status::ADDR_ALIGN));
    }
    if mem::overlaps(ra, u64::from(rs), dst, n) {
        return Err(OpResult::status(status::OVERLAP_BUFFERS));
    }
    check_ranges(mem, limits, &[(ra, u64::from(rs), false), (dst, n, true)])?;
    let rs = u64::from(rs);
    mem::with_scratch(ENTRY_BUF, |ebuf| -> Result<(), OpResult> {
        for pass in 0..2 {
            let mut prev: Option<u16> = None;
            let mut off = 0u64;
            while off < rs {
                let len = (rs - off).min(ENTRY_BUF as u64) as usize;
                let e = ebuf.get_mut(..len).ok_or_else(OpResult::broken)?;
                mem::read(mem, ra + off, e).map_err(|_| OpResult::broken())?;
                for ent in e.chunks_exact(ENTRY) {
                    let word = u16::from_le_bytes([ent[0], ent[1]]);
                    if pass == 0 {
                        if prev.is_some_and(|p| word <= p) {
                            return Err(OpResult::status(status::DR_OFFSET_NOINC));
                        }
                        if u64::from(word) * 8 >= n {
                            return Err(OpResult::status(status::DR_OFFSET_ERANGE));
                        }
                        prev = Some(word);
                    } else {
                        let data = ent.get(2..).ok_or_else(OpResult::broken)?;
                        mem::write(mem, dst + u64::from(word) * 8, data)
                            .map_err(|_| OpResult::broken())?;
                    }
                }
                off += len as u64;
            }
        }
        Ok(())
    })?;
    Ok(OpResult::success(n))
}
