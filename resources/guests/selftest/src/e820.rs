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

/// What was loaded into guest memory for this boot, and where (see
/// [`check`] for what the boot protocols promise about each).
pub struct Loaded {
    /// This image, `[start, end)` (its own load range, stacks included).
    pub kernel: (u64, u64),
    /// The command line with its NUL, `(address, bytes)`, when there is one.
    pub cmdline: Option<(u64, u64)>,
    /// The initrd, `(address, bytes)`, when there is one.
    pub initrd: Option<(u64, u64)>,
}

/// Appends `[start,end)` of every RAM range to `l`.
fn ram_text(l: &mut Line, ram: &RamRanges) {
    for &(s, e) in ram.ranges() {
        l.s("[").hex(s).s(",").hex(e).s(")");
    }
}

/// Checks what the boot protocols (Linux boot_params e820, PVH memmap)
/// promise and nothing a particular VMM happens to choose: at most 128
/// entries, none empty or wrapping, sorted and non-overlapping; this image
/// and the initrd each inside one RAM range, the command line inside one
/// map entry of any type (QEMU's PVH firmware puts it in the reserved BIOS
/// area; the kernel copies it before it uses memory), and none of the three
/// overlapping another. With
/// `selftest.mem_mib=N`, the RAM adds up to at most N MiB and at least
/// N MiB - 1 MiB (a VMM keeps part of the first MiB for the legacy hole,
/// EBDA, BIOS and ACPI areas; where exactly low RAM ends is its choice).
pub fn check(
    map: &[MemRegion],
    claimed: u64,
    loaded: &Loaded,
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
    // (name, range, whether it must be RAM; else any map entry will do).
    let objects = [
        ("this image", Some(loaded.kernel), true),
        (
            "the command line",
            loaded.cmdline.map(|(a, n)| (a, a.saturating_add(n))),
            false,
        ),
        (
            "the initrd",
            loaded.initrd.map(|(a, n)| (a, a.saturating_add(n))),
            true,
        ),
    ];
    for (i, &(what, range, in_ram)) in objects.iter().enumerate() {
        let Some((start, end)) = range else {
            continue;
        };
        let inside = if in_ram {
            ram.contains(start, end)
        } else {
            map.iter()
                .any(|e| e.addr <= start && end <= e.addr.saturating_add(e.size))
        };
        if !inside {
            l.s(what).s(" [").hex(start).s(",").hex(end).s(if in_ram {
                ") is not inside one RAM range: "
            } else {
                ") is not inside one memory map entry; RAM: "
            });
            ram_text(&mut l, &ram);
            return Err(l);
        }
        let overlap = objects
            .iter()
            .skip(i + 1)
            .find_map(|&(other, r, _)| r.filter(|&(s2, e2)| s2 < end && start < e2).map(|_| other));
        if let Some(other) = overlap {
            l.s(what).s(" overlaps ").s(other);
            return Err(l);
        }
    }
    if let Some(mib) = mem_mib {
        let Some(bytes) = mib.checked_mul(1 << 20) else {
            l.s("selftest.mem_mib too large");
            return Err(l);
        };
        let total = ram.total();
        if total > bytes || total < bytes.saturating_sub(1 << 20) {
            l.s("RAM adds up to ")
                .hex(total)
                .s(" bytes, not within 1 MiB below selftest.mem_mib=")
                .dec(mib)
                .s(" MiB: ");
            ram_text(&mut l, &ram);
            return Err(l);
        }
    }
    Ok(())
}
