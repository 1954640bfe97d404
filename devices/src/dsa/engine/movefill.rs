//! Data movement: MEMMOVE, MEMFILL, DUALCAST, CACHE_FLUSH, and the engine side of DRAIN.

use vm_memory::GuestMemory;

use super::{check_ranges, check_size, mem, EngineLimits, OpResult};
use crate::dsa::descriptor::{flags, status, Descriptor};

type OpRes = Result<OpResult, OpResult>;

/// DRAIN: ordering against earlier descriptors is the front end's job; the engine completes it
/// at once. With readback flags (only allowed when GENCAP.drain_readback), each readback
/// address is read; a fault there gives 0x1F (§7; uapi `DSA_COMP_PFAULT_RDBA`).
pub fn drain<M: GuestMemory + ?Sized>(mem: &M, desc: &Descriptor, _limits: &EngineLimits) -> OpRes {
    for (flag, addr) in [
        (flags::DRAIN_READBACK1, desc.src),
        (flags::DRAIN_READBACK2, desc.dst),
    ] {
        if desc.flags & flag != 0 {
            if let Err(f) = mem::check(mem, addr, 1, false) {
                let mut r = OpResult::status(status::PFAULT_RDBA);
                r.cr.fault_addr = f.addr;
                return Err(r);
            }
        }
    }
    Ok(OpResult::success(0))
}

/// MEMMOVE (§6.3): source 0x10, destination 0x18, size 0x20. Overlap is allowed when
/// GENCAP.overlap_copy = 1 (§2.3), else 0x16 (§10.2). Success: status 1,
/// result 0, bytes completed 0 (§7).
pub fn memmove<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_size(desc, limits)?;
    if !limits.overlap_copy && mem::overlaps(desc.src, n, desc.dst, n) {
        return Err(OpResult::status(status::OVERLAP_BUFFERS));
    }
    // Fast path: each buffer inside one region; `copy_to_volatile_slice` is a host memmove.
    if let (Some(s), Some(d)) = (
        mem::single(mem, desc.src, n, false),
        mem::single(mem, desc.dst, n, true),
    ) {
        s.copy_to_volatile_slice(d);
        return Ok(OpResult::success(n));
    }
    check_ranges(mem, limits, &[(desc.src, n, false), (desc.dst, n, true)])?;
    mem::copy(mem, desc.src, desc.dst, n).map_err(|_| OpResult::broken())?;
    Ok(OpResult::success(n))
}

/// MEMFILL (§6.3): the 8-byte pattern is the qword at 0x10 (little-endian, byte 0 at
/// the destination start: accel-config `dsa_prep_memfill` passes the pattern value as the
/// source field), destination 0x18. A pattern of one repeated byte is a host memset; any other
/// pattern is copied from a per-thread pattern buffer. The DSA 2.0 16-byte pattern (high half
/// at 0x28) is not implemented: this is a DSA 1.0 device, and 0x28 is ignored.
pub fn memfill<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_size(desc, limits)?;
    if mem::single(mem, desc.dst, n, true).is_none() {
        check_ranges(mem, limits, &[(desc.dst, n, true)])?;
    }
    mem::fill(mem, desc.dst, n, &desc.src.to_le_bytes()).map_err(|_| OpResult::broken())?;
    Ok(OpResult::success(n))
}

/// DUALCAST (§6.3): source 0x10, destination 1 at 0x18, destination 2 at 0x28.
/// DML `validation.cpp`: bits 11:0 of both destinations must match (0x17), and no two of the
/// three buffers may overlap (0x16).
pub fn dualcast<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_size(desc, limits)?;
    let (src, d1, d2) = (desc.src, desc.dst, desc.dest2());
    if d1 & 0xFFF != d2 & 0xFFF {
        return Err(OpResult::status(status::DCAST_ERR));
    }
    if mem::overlaps(src, n, d1, n) || mem::overlaps(src, n, d2, n) || mem::overlaps(d1, n, d2, n) {
        return Err(OpResult::status(status::OVERLAP_BUFFERS));
    }
    check_ranges(
        mem,
        limits,
        &[(src, n, false), (d1, n, true), (d2, n, true)],
    )?;
    mem::copy(mem, src, d1, n).map_err(|_| OpResult::broken())?;
    mem::copy(mem, src, d2, n).map_err(|_| OpResult::broken())?;
    Ok(OpResult::success(n))
}

/// CACHE_FLUSH (§6.3): address 0x18, size 0x20. A software device has no cache of its
/// own; the range is still checked so a flush of non-RAM faults like hardware would.
pub fn cache_flush<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> OpRes {
    let n = check_size(desc, limits)?;
    check_ranges(mem, limits, &[(desc.dst, n, false)])?;
    Ok(OpResult::success(n))
}
