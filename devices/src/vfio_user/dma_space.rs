//! A client's DMA address space: the windows of its DMA_MAP messages, turned into the
//! engine's guest memory (IOVA = the client's address).
//!
//! A client without an IOMMU maps guest RAM in a handful of windows. Behind a vIOMMU (QEMU's
//! `intel-iommu` in caching mode, docs/vfio-user.md) every IOMMU page-table leaf of the L1
//! guest becomes its own DMA_MAP: a 512 MiB buffer a process in L1 maps through kernel VFIO
//! arrives as up to 131072 windows of 4 KiB, all in the same file (L1's RAM memfd), and goes
//! away again as DMA_UNMAPs of any part. So:
//! - each distinct file is mapped once, whole, and windows point into that mapping (one
//!   mapping per window would exceed `vm.max_map_count` long before the window limit);
//! - a window that continues its neighbour in both IOVA and file offset is merged with it;
//! - DMA_UNMAP removes exactly the range it names, splitting windows it cuts, so nothing the
//!   client revoked stays reachable and nothing else is lost;
//! - the engine's `GuestMemoryMmap` is rebuilt lazily, when a descriptor next needs memory
//!   after a change, not once per message (which would be quadratic in the window count).
//!
//! Windows are page granular (IOVA, size and file offset multiples of [`DMA_PAGE`]); the
//! window count, the file count and the bytes of all mapped files are capped. A file's mapping
//! is released only once no window names it and no snapshot handed out earlier is still held,
//! so a descriptor that still runs on an old snapshot never touches unmapped memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::dsa::backend::DmaMemory;

/// The most windows one client may have (after merging): 1 GiB of 4 KiB IOMMU pages.
pub const MAX_DMA_WINDOWS: usize = 1 << 18;
/// The most distinct files a client's windows may come from.
pub const MAX_DMA_FILES: usize = 64;
/// The most bytes all of a client's files may have together (each is mapped whole, without
/// reserving memory; the cap keeps a hostile client from exhausting the address space).
pub const MAX_DMA_FILE_BYTES: u64 = 16 << 40;
/// The granule of DMA windows: IOVA, size and file offset are multiples of it.
pub const DMA_PAGE: u64 = 4096;

/// A DMA_MAP or DMA_UNMAP the space refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DmaSpaceError {
    /// Zero length, or the range wraps.
    #[error("DMA window {0:#x}+{1:#x} is empty or wraps")]
    BadRange(u64, u64),
    /// IOVA, size or file offset not a multiple of [`DMA_PAGE`].
    #[error("DMA window {0:#x}+{1:#x} (file offset {2:#x}) is not page aligned")]
    Unaligned(u64, u64, u64),
    /// The window overlaps one already mapped.
    #[error("DMA window {0:#x}+{1:#x} overlaps a mapped window")]
    Overlap(u64, u64),
    /// [`MAX_DMA_WINDOWS`] reached.
    #[error("too many DMA windows (at most {MAX_DMA_WINDOWS})")]
    TooManyWindows,
    /// [`MAX_DMA_FILES`] reached.
    #[error("DMA windows from too many files (at most {MAX_DMA_FILES})")]
    TooManyFiles,
    /// [`MAX_DMA_FILE_BYTES`] would be exceeded.
    #[error("DMA files too large together (at most {MAX_DMA_FILE_BYTES:#x} bytes)")]
    TooManyBytes,
    /// The window lies outside its file.
    #[error("DMA window at file offset {0:#x}+{1:#x} ends past its file ({2:#x} bytes)")]
    OutsideFile(u64, u64, u64),
    /// fstat or mmap failed.
    #[error("cannot map the DMA file: {0}")]
    Map(String),
}

/// One file mapped whole.
struct FileMapping {
    base: *mut u8,
    len: u64,
    windows: usize,
}

// SAFETY: the mapping is plain shared memory; the pointer is only dereferenced through
// vm-memory's volatile accessors, from any thread.
unsafe impl Send for FileMapping {}

impl Drop for FileMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned in `FileMapping::map`, and no
        // window or snapshot points into it any more: it is dropped only by `release_unused`
        // once no window names it and no earlier snapshot is held, or with the space itself,
        // whose Drop leaks the mappings instead while a snapshot is still held.
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
    }
}

impl FileMapping {
    fn map(file: &File, len: u64) -> Result<Self, DmaSpaceError> {
        use std::os::fd::AsRawFd;
        let size = usize::try_from(len).map_err(|_| DmaSpaceError::Map("file too large".into()))?;
        // SAFETY: a fresh shared mapping of a file we hold open; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DmaSpaceError::Map(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok(Self {
            base: p.cast(),
            len,
            windows: 0,
        })
    }
}

/// (st_dev, st_ino, size) of a window's file.
type FileKey = (u64, u64, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    len: u64,
    file: FileKey,
    offset: u64,
}

struct Inner {
    windows: BTreeMap<u64, Window>,
    files: HashMap<FileKey, FileMapping>,
    built: Option<Arc<GuestMemoryMmap<()>>>,
    /// Snapshots handed out before the last change; a file is unmapped only once none is held.
    earlier: Vec<Arc<GuestMemoryMmap<()>>>,
}

impl Inner {
    /// Forgets the built space after a change, remembering it while someone still holds it.
    fn invalidate(&mut self) {
        if let Some(m) = self.built.take() {
            self.earlier.push(m);
        }
        self.earlier.retain(|m| Arc::strong_count(m) > 1);
    }

    /// Whether a snapshot other than the current one is still held somewhere.
    fn earlier_held(&mut self) -> bool {
        self.earlier.retain(|m| Arc::strong_count(m) > 1);
        !self.earlier.is_empty()
    }

    fn file_bytes(&self) -> u64 {
        self.files.values().map(|f| f.len).sum()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let held = self.earlier_held()
            || self
                .built
                .as_ref()
                .is_some_and(|m| Arc::strong_count(m) > 1);
        if held {
            // A snapshot outlives the space: its regions point into these mappings, so they
            // stay mapped (leaked) rather than be unmapped under it.
            tracing::warn!(
                "DMA space dropped while a snapshot is held: its file mappings are kept"
            );
            for (_, f) in self.files.drain() {
                std::mem::forget(f);
            }
        }
    }
}

/// The address space; clones share it (the session changes it, the engine reads it).
#[derive(Clone)]
pub struct DmaSpace {
    inner: Arc<Mutex<Inner>>,
}

impl Default for DmaSpace {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                windows: BTreeMap::new(),
                files: HashMap::new(),
                built: None,
                earlier: Vec::new(),
            })),
        }
    }
}

impl DmaSpace {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Windows mapped (after merging).
    pub fn windows(&self) -> usize {
        self.lock().windows.len()
    }

    /// Files mapped.
    pub fn files(&self) -> usize {
        self.lock().files.len()
    }

    /// Maps `size` bytes of `file` at `offset` to IOVA `iova`.
    pub fn map(&self, iova: u64, size: u64, file: &File, offset: u64) -> Result<(), DmaSpaceError> {
        let end = iova
            .checked_add(size)
            .filter(|_| size > 0)
            .ok_or(DmaSpaceError::BadRange(iova, size))?;
        if !(iova | size | offset).is_multiple_of(DMA_PAGE) {
            return Err(DmaSpaceError::Unaligned(iova, size, offset));
        }
        let meta = file
            .metadata()
            .map_err(|e| DmaSpaceError::Map(format!("fstat: {e}")))?;
        let key = (meta.dev(), meta.ino(), meta.len());
        if offset.checked_add(size).is_none_or(|e| e > meta.len()) {
            return Err(DmaSpaceError::OutsideFile(offset, size, meta.len()));
        }
        let mut g = self.lock();
        let inner = &mut *g;
        // Overlap: the window before may not reach past `iova`, none may start inside.
        if let Some((s, w)) = inner.windows.range(..end).next_back() {
            if s + w.len > iova {
                return Err(DmaSpaceError::Overlap(iova, size));
            }
        }
        if !inner.files.contains_key(&key) {
            if !inner.earlier_held() {
                release_unused(inner);
            }
            if inner.files.len() >= MAX_DMA_FILES {
                return Err(DmaSpaceError::TooManyFiles);
            }
            if inner.file_bytes().saturating_add(meta.len()) > MAX_DMA_FILE_BYTES {
                return Err(DmaSpaceError::TooManyBytes);
            }
            inner.files.insert(key, FileMapping::map(file, meta.len())?);
        }
        let mut new = (
            iova,
            Window {
                len: size,
                file: key,
                offset,
            },
        );
        let mut added = 1isize;
        // Merge with the window before and the one after where both IOVA and offset continue.
        if let Some((&s, &w)) = inner.windows.range(..iova).next_back() {
            if s + w.len == iova && w.file == key && w.offset + w.len == offset {
                inner.windows.remove(&s);
                new = (
                    s,
                    Window {
                        len: w.len + size,
                        ..w
                    },
                );
                added -= 1;
            }
        }
        if let Some(&w) = inner.windows.get(&end) {
            if w.file == key && new.1.offset + new.1.len == w.offset {
                inner.windows.remove(&end);
                new.1.len += w.len;
                added -= 1;
            }
        }
        if added > 0 && inner.windows.len() >= MAX_DMA_WINDOWS {
            // Undo nothing: a new window is only refused before anything changed (added > 0
            // means no merge happened). A file mapped for it alone is released later.
            return Err(DmaSpaceError::TooManyWindows);
        }
        inner.windows.insert(new.0, new.1);
        if let Some(f) = inner.files.get_mut(&key) {
            f.windows = (f.windows as isize + added).max(0) as usize;
        }
        inner.invalidate();
        Ok(())
    }

    /// Unmaps `[iova, iova + size)` (all windows with `all`): the parts of windows inside it go,
    /// the parts outside stay. Returns the bytes unmapped. An empty, wrapping or unaligned range
    /// is refused with nothing changed. A cut that would take the window count past
    /// [`MAX_DMA_WINDOWS`] unmaps the cut window's remnant too (logged): a client that scatters
    /// its windows that far loses DMA to that remnant, and nothing revoked stays reachable.
    pub fn unmap(&self, iova: u64, size: u64, all: bool) -> Result<u64, DmaSpaceError> {
        let mut g = self.lock();
        let inner = &mut *g;
        let (start, end) = if all {
            (0, u64::MAX)
        } else {
            let end = iova
                .checked_add(size)
                .filter(|_| size > 0)
                .ok_or(DmaSpaceError::BadRange(iova, size))?;
            if !(iova | size).is_multiple_of(DMA_PAGE) {
                return Err(DmaSpaceError::Unaligned(iova, size, 0));
            }
            (iova, end)
        };
        let mut gone = 0u64;
        // Windows that start before `end` and end after `start`.
        let first = inner
            .windows
            .range(..start.max(1))
            .next_back()
            .filter(|(s, w)| **s + w.len > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        let hit: Vec<(u64, Window)> = inner
            .windows
            .range(first..end)
            .map(|(s, w)| (*s, *w))
            .collect();
        for (s, w) in hit {
            let e = s + w.len;
            if e <= start {
                continue;
            }
            inner.windows.remove(&s);
            let mut kept = 0usize;
            if s < start {
                inner.windows.insert(
                    s,
                    Window {
                        len: start - s,
                        ..w
                    },
                );
                kept += 1;
            }
            if e > end && inner.windows.len() >= MAX_DMA_WINDOWS {
                tracing::warn!(
                    "DMA_UNMAP {start:#x}..{end:#x}: the client is at {MAX_DMA_WINDOWS} windows; \
                     the remnant {end:#x}..{e:#x} is unmapped too"
                );
                gone += e - end;
            } else if e > end {
                inner.windows.insert(
                    end,
                    Window {
                        len: e - end,
                        offset: w.offset + (end - s),
                        ..w
                    },
                );
                kept += 1;
            }
            gone += e.min(end) - s.max(start);
            if let Some(f) = inner.files.get_mut(&w.file) {
                f.windows = f.windows + kept - 1;
            }
        }
        if gone > 0 {
            inner.invalidate();
        }
        Ok(gone)
    }

    /// The engine's view, rebuilt if a window changed since the last call. A file mapping is
    /// released only when no window names it and no snapshot handed out earlier is held, so a
    /// descriptor that still runs on an old snapshot keeps its memory mapped.
    pub fn snapshot(&self) -> Arc<GuestMemoryMmap<()>> {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(m) = &inner.built {
            return m.clone();
        }
        if !inner.earlier_held() {
            release_unused(inner);
        }
        let mut regions = Vec::with_capacity(inner.windows.len());
        for (&iova, w) in &inner.windows {
            let Some(f) = inner.files.get(&w.file) else {
                continue;
            };
            // SAFETY: `offset + len <= f.len` was checked at DMA_MAP, so the pointer and length
            // lie inside the live mapping `f`, which is unmapped only once no window names it
            // and no snapshot (this one included) is held (`release_unused`, `Inner::drop`).
            let region = unsafe {
                MmapRegion::<()>::build_raw(
                    f.base.add(w.offset as usize),
                    w.len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
            };
            match region
                .ok()
                .and_then(|r| GuestRegionMmap::new(r, GuestAddress(iova)))
            {
                Some(r) => regions.push(r),
                None => tracing::warn!("DMA window {iova:#x}+{:#x} cannot be built", w.len),
            }
        }
        let mem = if regions.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_regions(regions).unwrap_or_else(|e| {
                tracing::warn!("DMA space cannot be built: {e}");
                GuestMemoryMmap::new()
            })
        };
        let mem = Arc::new(mem);
        inner.built = Some(mem.clone());
        mem
    }
}

/// Releases the mappings of files no window uses; only when no earlier snapshot is held.
fn release_unused(inner: &mut Inner) {
    inner.files.retain(|_, f| f.windows > 0);
}

impl DmaMemory for DmaSpace {
    fn snapshot(&self) -> Arc<GuestMemoryMmap<()>> {
        DmaSpace::snapshot(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn memfd(len: u64) -> File {
        let f: File = memfd_create();
        f.set_len(len).unwrap();
        f
    }

    fn memfd_create() -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: a plain memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"dma-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor owned by nothing else.
        unsafe { File::from_raw_fd(fd) }
    }

    #[test]
    fn page_windows_merge_and_map_one_file_once() {
        let f = memfd(1 << 20);
        let s = DmaSpace::default();
        for p in 0..256u64 {
            s.map(0x10_0000 + p * 4096, 4096, &f, p * 4096).unwrap();
        }
        assert_eq!(s.windows(), 1);
        assert_eq!(s.files(), 1);
        let m = s.snapshot();
        m.write_obj(0xabcdu32, GuestAddress(0x10_0000 + 4096 * 7))
            .unwrap();
        let mut b = [0u8; 4];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut b, 4096 * 7).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xabcd);
    }

    #[test]
    fn scattered_pages_stay_separate_and_out_of_order_maps_merge() {
        let f = memfd(1 << 20);
        let s = DmaSpace::default();
        // IOVA-contiguous, file-scattered: no merge.
        s.map(0, 4096, &f, 8192).unwrap();
        s.map(4096, 4096, &f, 0).unwrap();
        assert_eq!(s.windows(), 2);
        // A hole filled between two that continue it: three become one.
        s.map(0x10000, 4096, &f, 0x10000).unwrap();
        s.map(0x12000, 4096, &f, 0x12000).unwrap();
        s.map(0x11000, 4096, &f, 0x11000).unwrap();
        assert_eq!(s.windows(), 3);
        assert_eq!(
            s.map(0x11000, 0x2000, &f, 0),
            Err(DmaSpaceError::Overlap(0x11000, 0x2000))
        );
        assert_eq!(s.snapshot().num_regions(), 3);
    }

    #[test]
    fn unmap_splits_and_releases_the_file_last() {
        let f = memfd(1 << 20);
        let s = DmaSpace::default();
        s.map(0x4000_0000, 0x10000, &f, 0).unwrap();
        assert_eq!(s.unmap(0x4000_4000, 0x1000, false), Ok(0x1000));
        assert_eq!(s.windows(), 2);
        let m = s.snapshot();
        assert!(m.read_obj::<u8>(GuestAddress(0x4000_4000)).is_err());
        assert!(m.read_obj::<u8>(GuestAddress(0x4000_3fff)).is_ok());
        assert!(m.read_obj::<u8>(GuestAddress(0x4000_5000)).is_ok());
        // The right part keeps its file offset.
        m.write_obj(7u8, GuestAddress(0x4000_5000)).unwrap();
        use std::os::unix::fs::FileExt;
        let mut b = [0u8];
        f.read_exact_at(&mut b, 0x5000).unwrap();
        assert_eq!(b[0], 7);
        drop(m);
        assert_eq!(s.unmap(0, 0, true), Ok(0xf000));
        assert_eq!(s.windows(), 0);
        assert_eq!(s.snapshot().num_regions(), 0);
        assert_eq!(s.files(), 0);
        // Nothing mapped: a no-op.
        assert_eq!(s.unmap(0x4000_0000, 0x1000, false), Ok(0));
    }

    #[test]
    fn bad_windows_are_refused() {
        let f = memfd(0x10000);
        let s = DmaSpace::default();
        assert!(matches!(
            s.map(0, 0x2000, &f, 0xf000),
            Err(DmaSpaceError::OutsideFile(..))
        ));
        assert!(matches!(
            s.map(u64::MAX - 10, 0x1000, &f, 0),
            Err(DmaSpaceError::BadRange(..))
        ));
        assert!(matches!(
            s.map(0, 0, &f, 0),
            Err(DmaSpaceError::BadRange(..))
        ));
        assert_eq!(s.windows(), 0);
    }

    #[test]
    fn unaligned_and_empty_ranges_are_refused_with_nothing_changed() {
        let f = memfd(0x10000);
        let s = DmaSpace::default();
        for (iova, size, off) in [(0x800, 0x1000, 0), (0, 0x1800, 0), (0, 0x1000, 0x10)] {
            assert_eq!(
                s.map(iova, size, &f, off),
                Err(DmaSpaceError::Unaligned(iova, size, off))
            );
        }
        s.map(0, 0x4000, &f, 0).unwrap();
        // A size-0 unmap used to split the window around its address.
        assert_eq!(
            s.unmap(0x2000, 0, false),
            Err(DmaSpaceError::BadRange(0x2000, 0))
        );
        assert_eq!(
            s.unmap(0x1800, 0x1000, false),
            Err(DmaSpaceError::Unaligned(0x1800, 0x1000, 0))
        );
        assert_eq!(
            s.unmap(u64::MAX - 0xfff, 0x2000, false),
            Err(DmaSpaceError::BadRange(u64::MAX - 0xfff, 0x2000))
        );
        assert_eq!(s.windows(), 1);
        assert!(s.snapshot().read_obj::<u8>(GuestAddress(0x3fff)).is_ok());
    }

    #[test]
    fn a_held_snapshot_keeps_its_file_mapped_until_released() {
        let f = memfd(0x10000);
        let s = DmaSpace::default();
        s.map(0, 0x10000, &f, 0).unwrap();
        let old = s.snapshot();
        assert_eq!(s.unmap(0, 0, true), Ok(0x10000));
        // Rebuilt without the window, but `old` still points into the file's mapping.
        assert_eq!(s.snapshot().num_regions(), 0);
        assert_eq!(s.files(), 1);
        old.write_obj(5u8, GuestAddress(0x100)).unwrap();
        drop(old);
        s.map(0x10_0000, 0x1000, &memfd(0x1000), 0).unwrap();
        assert_eq!(s.snapshot().num_regions(), 1);
        assert_eq!(
            s.files(),
            1,
            "the first file is released once its snapshot is gone"
        );
        // A snapshot that outlives the space keeps its memory too.
        let last = s.snapshot();
        drop(s);
        last.write_obj(6u8, GuestAddress(0x10_0000)).unwrap();
    }

    #[test]
    fn the_file_bytes_cap_holds() {
        let s = DmaSpace::default();
        let big = memfd(MAX_DMA_FILE_BYTES);
        s.map(0, 0x1000, &big, 0).unwrap();
        let more = memfd(0x1000);
        assert_eq!(
            s.map(1 << 50, 0x1000, &more, 0),
            Err(DmaSpaceError::TooManyBytes)
        );
        assert_eq!(s.files(), 1);
    }

    #[test]
    fn many_page_windows_build_quickly_enough() {
        // 65536 scattered 4 KiB windows (a 256 MiB buffer behind a vIOMMU, worst case).
        let f = memfd(1 << 28);
        let s = DmaSpace::default();
        let n = 65536u64;
        for p in 0..n {
            // Odd/even interleave so nothing merges.
            let off = (p ^ 1) * 4096;
            s.map(p * 4096, 4096, &f, off).unwrap();
        }
        assert_eq!(s.windows(), n as usize);
        let m = s.snapshot();
        assert_eq!(m.num_regions(), n as usize);
        m.write_obj(1u8, GuestAddress(4096 * 1000)).unwrap();
        assert_eq!(s.unmap(0, n * 4096, false), Ok(n * 4096));
        assert_eq!(s.snapshot().num_regions(), 0);
    }
}
