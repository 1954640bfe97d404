//! Access to guest-physical memory.
//!
//! 0..4 GiB is identity mapped by the boot page tables. Memory above 4 GiB is
//! reached through a window: PDPT slot 511 (virtual 511..512 GiB) points to a
//! page directory whose 512 entries are re-pointed on demand at 2 MiB frames,
//! round robin. A window address stays valid until 511 further frames have
//! been mapped, which is plenty for the short accesses made here.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::cpu::invlpg;
use crate::entry::selftest_pd_window;

/// End of the identity-mapped region.
pub const IDENTITY_END: u64 = 4 << 30;
const WINDOW_BASE: u64 = 511 << 30;
const PAGE_2M: u64 = 2 << 20;
const WINDOW_SLOTS: usize = 512;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// Returns a virtual address at which `len` bytes of physical memory starting
/// at `phys` are mapped, or `None` when the range does not exist in the
/// physical address space (52 bits), is longer than 64 MiB above 4 GiB, or
/// starts at address 0 (a null pointer).
pub fn map(phys: u64, len: u64) -> Option<u64> {
    let end = phys.checked_add(len)?;
    if phys == 0 || end > (1 << 52) {
        return None;
    }
    if end <= IDENTITY_END {
        return Some(phys);
    }
    let first = phys & !(PAGE_2M - 1);
    let frames = usize::try_from((end - first).div_ceil(PAGE_2M)).ok()?;
    if frames == 0 || frames > 32 {
        return None;
    }
    let mut slot = NEXT_SLOT.fetch_add(frames, Ordering::Relaxed) % WINDOW_SLOTS;
    if slot + frames > WINDOW_SLOTS {
        slot = 0;
        NEXT_SLOT.store(frames, Ordering::Relaxed);
    }
    let pd = core::ptr::addr_of!(selftest_pd_window) as *mut u64;
    for i in 0..frames {
        let frame = first + (i as u64) * PAGE_2M;
        let va = WINDOW_BASE + ((slot + i) as u64) * PAGE_2M;
        // SAFETY: the window page directory is a 4 KiB page-aligned array of
        // 512 entries in .data and slot + frames <= 512; 0x83 = present |
        // writable | 2 MiB page.
        unsafe { pd.add(slot + i).write_volatile(frame | 0x83) };
        invlpg(va);
    }
    Some(WINDOW_BASE + (slot as u64) * PAGE_2M + (phys - first))
}

/// Reads a little-endian value of type `T` at a physical address.
fn read<T: Copy + Default>(phys: u64) -> T {
    match map(phys, core::mem::size_of::<T>() as u64) {
        // SAFETY: `map` returned a mapped, non-null address for this range;
        // unaligned volatile reads are fine on x86.
        Some(va) => unsafe { core::ptr::read_volatile(va as *const T) },
        None => T::default(),
    }
}

/// Reads a byte (0 where unmapped).
pub fn read_u8(phys: u64) -> u8 {
    read(phys)
}

/// Reads a 16-bit value (0 where unmapped).
pub fn read_u16(phys: u64) -> u16 {
    read(phys)
}

/// Reads a 32-bit value (0 where unmapped).
pub fn read_u32(phys: u64) -> u32 {
    read(phys)
}

/// Reads a 64-bit value (0 where unmapped).
pub fn read_u64(phys: u64) -> u64 {
    read(phys)
}

/// Calls `f` on consecutive chunks of the physical range `phys..phys+len`
/// (chunks are at most 1 MiB); returns false where some part is unmapped.
pub fn for_each_chunk(phys: u64, len: u64, mut f: impl FnMut(&[u8])) -> bool {
    const CHUNK: u64 = 1 << 20;
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK);
        let Some(va) = map(phys + off, n) else {
            return false;
        };
        // SAFETY: `map` returned a mapped, non-null range of n bytes that is
        // only read while the slice lives.
        let chunk = unsafe { core::slice::from_raw_parts(va as *const u8, n as usize) };
        f(chunk);
        off += n;
    }
    true
}
