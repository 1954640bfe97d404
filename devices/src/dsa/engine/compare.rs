//! COMPARE and COMPARE_PATTERN (compval).
//!
//! Result (§7): 0 equal, 1 different; bytes completed = offset of the first
//! difference. With the check-result flag, a result different from the expected one (0x28)
//! gives status 0x02 "success, false predicate" (DML `compare.cpp`, `compare_pattern.cpp`).

use vm_memory::GuestMemory;

use super::{check_ranges, check_size, mem, EngineLimits, OpResult};
use crate::dsa::descriptor::{flags, status, Descriptor};

type OpRes = Result<OpResult, OpResult>;

fn finish(desc: &Descriptor, n: u64, diff: Option<u64>) -> OpResult {
    let mut r = OpResult::success(n);
    if let Some(off) = diff {
        r.cr.result = 1;
        r.cr.bytes_completed = u32::try_from(off).unwrap_or(u32::MAX);
    }
    if desc.flags & flags::CHECK_RESULT != 0 && r.cr.result != desc.expected_result() {
        r.cr.status = status::SUCCESS_PRED;
    }
    r
}

/// COMPARE: source 1 at 0x10, source 2 at 0x18. The first differing byte is reported exactly
/// (DML `sw_dispatcher/ref/compare.c`).
pub fn compare<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_size(desc, limits)?;
    check_ranges(mem, limits, &[(desc.src, n, false), (desc.dst, n, false)])?;
    let diff = mem::with_scratch(2 * mem::CHUNK, |buf| -> Result<Option<u64>, OpResult> {
        let (a, b) = buf.split_at_mut(mem::CHUNK);
        let mut off = 0u64;
        while off < n {
            let len = (n - off).min(mem::CHUNK as u64) as usize;
            let (a, b) = (
                a.get_mut(..len).ok_or_else(OpResult::broken)?,
                b.get_mut(..len).ok_or_else(OpResult::broken)?,
            );
            mem::read(mem, desc.src + off, a).map_err(|_| OpResult::broken())?;
            mem::read(mem, desc.dst + off, b).map_err(|_| OpResult::broken())?;
            if a != b {
                let i = a
                    .iter()
                    .zip(b.iter())
                    .position(|(x, y)| x != y)
                    .unwrap_or(0);
                return Ok(Some(off + i as u64));
            }
            off += len as u64;
        }
        Ok(None)
    })?;
    Ok(finish(desc, n, diff))
}

/// COMPARE_PATTERN: source at 0x10, 8-byte pattern at 0x18 (§6.3; accel-config
/// `dsa_prep_compval`). As in DML `sw_dispatcher/ref/compare_pattern.c`, a difference in a
/// whole 8-byte word is reported at the word's offset, one in the tail at the exact byte.
pub fn compare_pattern<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_size(desc, limits)?;
    check_ranges(mem, limits, &[(desc.src, n, false)])?;
    let pat = desc.dst.to_le_bytes();
    let whole = n - n % 8;
    let diff = mem::with_scratch(mem::CHUNK, |buf| -> Result<Option<u64>, OpResult> {
        let mut off = 0u64;
        while off < n {
            // CHUNK is a multiple of 8, so every chunk starts at pattern phase 0.
            let len = (n - off).min(mem::CHUNK as u64) as usize;
            let a = buf.get_mut(..len).ok_or_else(OpResult::broken)?;
            mem::read(mem, desc.src + off, a).map_err(|_| OpResult::broken())?;
            // Word by word (a byte-serial scan made compare-pattern batches slow,
            // docs/dsa-device-model.md §15); only the last chunk has a tail.
            let mut words = a.chunks_exact(8);
            let tail = words.remainder();
            let word = words.position(|w| w != pat.as_slice());
            let first = match word {
                Some(w) => Some(8 * w),
                None => tail
                    .iter()
                    .zip(pat.iter())
                    .position(|(x, p)| x != p)
                    .map(|i| len - tail.len() + i),
            };
            if let Some(i) = first {
                let at = off + i as u64;
                return Ok(Some(if at < whole { at - at % 8 } else { at }));
            }
            off += len as u64;
        }
        Ok(None)
    })?;
    Ok(finish(desc, n, diff))
}
