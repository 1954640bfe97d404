//! Memory map checks.

use crate::bootinfo::MemRegion;
use crate::fmt::Line;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Most merged RAM ranges considered.
pub const MAX_RANGES: usize = 32;

/// Usable RAM as merged, sorted `[start, end)` ranges.
pub struct RamRanges {
    /// Ranges (first `count`).
    pub r: [(u64, u64); MAX_RANGES],
    /// Number of valid ranges.
    pub count: usize,
}

impl RamRanges {
    /// Merges the RAM entries of a sorted map.
    pub fn from_map(map: &[MemRegion]) -> Self {
        let mut out = RamRanges {
            r: [(0, 0); MAX_RANGES],
            count: 0,
        };
        for e in map.iter().filter(|e| e.kind == E820_RAM && e.size != 0) {
            let end = e.addr.saturating_add(e.size);
            if out.count > 0 {
                if let Some(last) = out.r.get_mut(out.count - 1) {
                    if last.1 == e.addr {
                        last.1 = end;
                        continue;
                    }
                }
            }
            if let Some(slot) = out.r.get_mut(out.count) {
                *slot = (e.addr, end);
                out.count += 1;
            }
        }
        out
    }

    /// The valid ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        self.r.get(..self.count).unwrap_or(&[])
    }

    /// Whether `[start, end)` lies inside one range.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.ranges().iter().any(|&(s, e)| s <= start && end <= e)
    }

    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(|&(s, e)| e - s).sum()
    }
}

/// Sorts `map` by address and drops empty entries (what Linux's e820
/// sanitising does); returns whether anything had to change.
pub fn normalize(map: &mut [MemRegion], count: &mut usize) -> bool {
    let n = (*count).min(map.len());
    let Some(v) = map.get_mut(..n) else {
        return false;
    };
    let mut changed = false;
    // Insertion sort: the map has a handful of entries.
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v.get(j - 1).map(|e| e.addr) > v.get(j).map(|e| e.addr) {
            v.swap(j - 1, j);
            changed = true;
            j -= 1;
        }
    }
    let mut kept = 0;
    for i in 0..v.len() {
        let e = v.get(i).copied().unwrap_or_default();
        if e.size == 0 {
            changed = true;
            continue;
        }
        if let Some(slot) = v.get_mut(kept) {
            *slot = e;
        }
        kept += 1;
    }
    *count = kept;
    changed
}

/// Checks that the map is sorted, non-overlapping, has RAM at 1 MiB covering
/// this image (`kernel`), and, with `mem_mib`, that the RAM is exactly
/// [0, 0x9fc00) + [1 MiB, min(N MiB, 3 GiB)) + [4 GiB, 4 GiB + rest).
pub fn check(
    map: &[MemRegion],
    claimed: u64,
    kernel: (u64, u64),
    mem_mib: Option<u64>,
) -> Result<(), Line> {
    let mut l = Line::new();
    if map.is_empty() {
        l.s("memory map is empty");
        return Err(l);
    }
    if claimed > 128 {
        l.s("memory map claims ")
            .dec(claimed)
            .s(" entries (more than 128)");
        return Err(l);
    }
    let mut prev_end = 0u64;
    for (i, e) in map.iter().enumerate() {
        let Some(end) = e.addr.checked_add(e.size) else {
            l.s("entry ").dec(i as u64).s(" wraps around");
            return Err(l);
        };
        if e.size == 0 {
            l.s("entry ").dec(i as u64).s(" is empty");
            return Err(l);
        }
        if i > 0 && e.addr < prev_end {
            l.s("entry ")
                .dec(i as u64)
                .s(" at ")
                .hex(e.addr)
                .s(" is unsorted or overlaps the previous (ends ")
                .hex(prev_end)
                .s(")");
            return Err(l);
        }
        prev_end = end;
    }
    let ram = RamRanges::from_map(map);
    if !ram.contains(0x10_0000, kernel.1) {
        l.s("no RAM from 1 MiB to the end of this image ")
            .hex(kernel.1);
        return Err(l);
    }
    if let Some(mib) = mem_mib {
        let Some(bytes) = mib.checked_mul(1 << 20) else {
            l.s("selftest.mem_mib too large");
            return Err(l);
        };
        let low_end = bytes.min(3 << 30);
        let mut want = [(0u64, 0u64); 3];
        want[0] = (0, 0x9fc00);
        want[1] = (0x10_0000, low_end);
        let mut n = 2;
        if bytes > 3 << 30 {
            want[2] = (4 << 30, (4 << 30) + (bytes - (3 << 30)));
            n = 3;
        }
        let want = want.get(..n).unwrap_or(&[]);
        if ram.ranges() != want {
            l.s("RAM ");
            for &(s, e) in ram.ranges() {
                l.s("[").hex(s).s(",").hex(e).s(")");
            }
            l.s(" != expected for selftest.mem_mib=").dec(mib).s(" ");
            for &(s, e) in want {
                l.s("[").hex(s).s(",").hex(e).s(")");
            }
            return Err(l);
        }
    }
    Ok(())
}
