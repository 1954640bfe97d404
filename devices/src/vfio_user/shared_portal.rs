//! A mapped portal BAR: BAR2 as one shared memfd that the client maps into the guest (a KVM
//! memory slot at the BAR's address) and the server watches for descriptors.
//!
//! A hardware portal is a doorbell; shared memory is a mailbox. Each 64-byte slot holds at
//! most one descriptor: the writer (the guest's MOVDIR64B, or dsavmm when it emulates one)
//! stores 64 bytes, its first quadword last; the server's watcher sees a slot whose first
//! quadword is not zero, reads it until two reads agree, empties it and submits it. (The rig's
//! TCG stores MOVDIR64B as eight 8-byte stores, from the last quadword down to the first, so a
//! slot seen half written has a zero first quadword and is not taken; a CPU stores all 64
//! bytes at once. A descriptor whose first 8 bytes are zero, a NOOP asking for nothing, cannot
//! be told from an empty slot.) docs/vfio-user.md
//! ("Mapped portals") gives the costs: one scan of every slot per poll (128 KiB for 8 WQs),
//! polling that spins for [`SPIN_WINDOW`] after the last descriptor and then sleeps up to
//! [`MAX_SLEEP`]; and the rule a guest must follow (a slot written again before the watcher
//! took it loses the earlier descriptor, which a hardware dedicated WQ would have dropped
//! only when full). Where dsavmm emulates the store it waits for the slot to be free first.
//!
//! The doorbell (dsavmm's extension; a client that does not know it loses nothing): the memfd
//! is one page longer than BAR2, and that page, never mapped into a guest, holds a futex word.
//! The idle watcher sleeps on it (up to [`MAX_SLEEP`]); a client that has just stored a
//! descriptor itself (dsavmm emulating MOVDIR64B) bumps the word and wakes it, so the descriptor
//! is taken at once rather than at the next poll.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, VolatileMemory};

use crate::dsa::descriptor::DESC_SIZE;
use crate::dsa::DsaDevice;
use crate::dsa::BAR_PORTALS;
use crate::pci::PciDevice;

/// After the last descriptor the watcher keeps polling without sleeping this long.
pub const SPIN_WINDOW: Duration = Duration::from_millis(2);
/// The longest the watcher sleeps between two scans once idle.
pub const MAX_SLEEP: Duration = Duration::from_micros(500);
/// The doorbell page after the portal pages.
const DOORBELL_PAGE: u64 = 0x1000;
/// How many times a slot is re-read for two equal copies before it is left for the next scan.
const STABLE_TRIES: usize = 64;

/// The shared BAR2 pages.
pub struct SharedPortal {
    file: File,
    map: MmapRegion<()>,
    /// Bytes of portal (BAR2); the doorbell page, if any, follows.
    portal_len: usize,
    /// The mapping holds the doorbell page.
    doorbell: bool,
    /// One taker at a time: the watcher, or a register access sweeping the slots first.
    sweeping: Mutex<()>,
}

/// Errors creating or mapping the shared pages.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// memfd_create or ftruncate failed.
    #[error("cannot create the portal memfd: {0}")]
    Memfd(std::io::Error),
    /// mmap failed.
    #[error("cannot map the portal pages: {0}")]
    Map(vm_memory::mmap::MmapRegionError),
    /// The pages are not a memfd sealed against shrinking, or too short.
    #[error("portal pages: {0}")]
    Unsealed(String),
}

/// A new memfd of `size` zero bytes (guest RAM to share, portal pages), sealed against
/// shrinking and growing: a peer that maps it can rely on every page staying there (a mapping
/// past the end of a file faults with SIGBUS).
pub fn memfd(name: &std::ffi::CStr, size: u64) -> std::io::Result<File> {
    // SAFETY: `name` is a NUL-terminated string that memfd_create only reads.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    // SAFETY: F_ADD_SEALS on a descriptor we own; no memory is passed.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Why `file` cannot back a DMA window of `size` bytes at `offset`: the window must lie inside
/// the file, and a memfd must be sealed against shrinking (else its owner could cut pages
/// from under the mapping and the access would raise SIGBUS in the server).
pub fn check_window(file: &File, offset: u64, size: u64) -> Result<(), String> {
    let len = file.metadata().map_err(|e| format!("fstat: {e}"))?.len();
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(format!(
            "window {offset:#x}+{size:#x} ends past its file ({len:#x} bytes)"
        ));
    }
    // SAFETY: F_GET_SEALS on a descriptor we own; no memory is passed.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err("not a memfd (only a memfd sealed against shrinking can be shared)".into());
    }
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err("the memfd is not sealed against shrinking (F_SEAL_SHRINK)".into());
    }
    Ok(())
}

impl SharedPortal {
    /// New zeroed pages of `size` bytes (the server's side).
    pub fn create(size: u64) -> Result<Self, PortalError> {
        let file = memfd(c"dsavmm-portals", size + DOORBELL_PAGE).map_err(PortalError::Memfd)?;
        Self::map(file, 0, size)
    }

    /// Maps `size` bytes of portal at `offset` of a memfd received from the server (the
    /// client's side), and the doorbell page after them when the file has one.
    pub fn map(file: File, offset: u64, size: u64) -> Result<Self, PortalError> {
        check_window(&file, offset, size).map_err(PortalError::Unsealed)?;
        let file_len = file.metadata().map_err(PortalError::Memfd)?.len();
        let doorbell = offset
            .checked_add(size + DOORBELL_PAGE)
            .is_some_and(|end| end <= file_len);
        let dup = file.try_clone().map_err(PortalError::Memfd)?;
        let total = size + if doorbell { DOORBELL_PAGE } else { 0 };
        let map = MmapRegion::from_file(FileOffset::new(dup, offset), total as usize)
            .map_err(PortalError::Map)?;
        Ok(Self {
            file,
            map,
            portal_len: size as usize,
            doorbell,
            sweeping: Mutex::new(()),
        })
    }

    fn doorbell_word(&self) -> Option<&AtomicU32> {
        if !self.doorbell {
            return None;
        }
        self.map.get_atomic_ref::<AtomicU32>(self.portal_len).ok()
    }

    /// The doorbell's value now (read before a scan, waited on after an empty one).
    pub fn doorbell_value(&self) -> u32 {
        self.doorbell_word()
            .map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// Wakes the watcher: a descriptor was just stored.
    pub fn ring(&self) {
        if let Some(w) = self.doorbell_word() {
            w.fetch_add(1, Ordering::Release);
            // SAFETY: FUTEX_WAKE on an aligned u32 of a live shared mapping; nothing is written
            // through the pointer by the kernel.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    w.as_ptr(),
                    libc::FUTEX_WAKE,
                    1,
                    0usize,
                    0usize,
                    0,
                )
            };
        }
    }

    /// Sleeps up to `timeout`, or until the doorbell moves from `seen`.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        let Some(w) = self.doorbell_word() else {
            std::thread::sleep(timeout);
            return;
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: FUTEX_WAIT on an aligned u32 of a live shared mapping, with a valid timespec
        // the kernel only reads; it returns at once if the word is no longer `seen`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                w.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
                0usize,
                0,
            )
        };
    }

    /// The memfd (sent to the client with BAR2's region info).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Bytes of portal (what a guest sees: the doorbell page is not counted).
    pub fn len(&self) -> usize {
        self.portal_len
    }

    /// Never: a portal BAR has at least one page.
    pub fn is_empty(&self) -> bool {
        self.portal_len == 0
    }

    /// Host address of the mapping (for a KVM memory slot).
    pub fn host_addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    /// Reads a slot, its first quadword first: a writer stores it last, so once it is seen
    /// the rest is there (x86 orders stores, and these loads are acquires).
    fn read_slot(&self, off: usize) -> Option<[u64; 8]> {
        if off.checked_add(DESC_SIZE)? > self.portal_len {
            return None;
        }
        let s = self.map.as_volatile_slice();
        let mut q = [0u64; 8];
        for (i, v) in q.iter_mut().enumerate() {
            *v = s.load(off + 8 * i, Ordering::Acquire).ok()?;
        }
        Some(q)
    }

    /// Writes a slot from its last quadword down to its first (the one that makes it whole).
    fn store_slot(&self, off: usize, q: &[u64; 8]) -> bool {
        if off
            .checked_add(DESC_SIZE)
            .is_none_or(|e| e > self.portal_len)
        {
            return false;
        }
        let s = self.map.as_volatile_slice();
        q.iter()
            .enumerate()
            .rev()
            .all(|(i, v)| s.store(*v, off + 8 * i, Ordering::Release).is_ok())
    }

    /// Empties a slot, its first quadword first (so that a half-emptied slot reads empty).
    fn clear_slot(&self, off: usize) {
        let s = self.map.as_volatile_slice();
        for i in 0..8 {
            let _ = s.store(0u64, off + 8 * i, Ordering::Release);
        }
    }

    /// Takes the descriptor in the slot at `off` if there is a whole one: its first quadword
    /// (written last: pasid, flags, opcode) not zero, and the same slot in two reads in a row.
    /// The slot is emptied before it is returned.
    pub fn take(&self, off: usize) -> Option<[u8; DESC_SIZE]> {
        let mut seen = self.read_slot(off)?;
        if seen[0] == 0 {
            return None;
        }
        for _ in 0..STABLE_TRIES {
            std::hint::spin_loop();
            let again = self.read_slot(off)?;
            if again == seen {
                self.clear_slot(off);
                let mut d = [0u8; DESC_SIZE];
                for (i, v) in seen.iter().enumerate() {
                    d[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
                }
                return Some(d);
            }
            seen = again;
        }
        None
    }

    /// Writes a descriptor into the slot at `off` once the watcher has taken the previous one
    /// (waiting at most `wait`). Returns whether it was written.
    pub fn post(&self, off: usize, desc: &[u8; DESC_SIZE], wait: Duration) -> bool {
        let start = Instant::now();
        loop {
            match self.read_slot(off) {
                None => return false,
                Some(q) if q[0] == 0 => break,
                Some(_) if start.elapsed() >= wait => return false,
                Some(_) => std::thread::yield_now(),
            }
        }
        let mut q = [0u64; 8];
        for (i, v) in q.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&desc[8 * i..8 * i + 8]);
            *v = u64::from_le_bytes(b);
        }
        self.store_slot(off, &q)
    }

    /// Takes every whole descriptor in the pages, in address order, and hands each to
    /// `submit`. Returns how many there were.
    pub fn sweep(&self, mut submit: impl FnMut(u64, &[u8; DESC_SIZE])) -> usize {
        let _one = self.sweeping.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for off in (0..self.len()).step_by(DESC_SIZE) {
            if let Some(desc) = self.take(off) {
                n += 1;
                submit(off as u64, &desc);
            }
        }
        n
    }

    /// Zeroes every slot (device reset).
    pub fn clear(&self) {
        let _ = self
            .map
            .as_volatile_slice()
            .write_slice(&vec![0u8; self.portal_len], 0);
    }
}

/// Counters of the watcher.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Descriptors taken from mapped slots.
    pub taken: AtomicU64,
    /// Scans of the whole BAR.
    pub scans: AtomicU64,
}

/// Polls `portal` for descriptors and submits them to `dev` until `stop` is set.
pub fn watch(
    portal: Arc<SharedPortal>,
    dev: Arc<Mutex<DsaDevice>>,
    stop: Arc<AtomicBool>,
    counters: Arc<WatchCounters>,
) {
    let mut last_work = Instant::now();
    let mut sleep = Duration::from_micros(10);
    while !stop.load(Ordering::Acquire) {
        counters.scans.fetch_add(1, Ordering::Relaxed);
        let rung = portal.doorbell_value();
        let found = portal.sweep(|off, desc| {
            dev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar_write(BAR_PORTALS, off, desc);
        });
        counters.taken.fetch_add(found as u64, Ordering::Relaxed);
        if found > 0 {
            last_work = Instant::now();
            sleep = Duration::from_micros(10);
        } else if last_work.elapsed() < SPIN_WINDOW {
            std::thread::yield_now();
        } else {
            portal.wait(rung, sleep);
            sleep = (sleep * 2).min(MAX_SLEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_take_and_the_mailbox_rule() {
        let p = SharedPortal::create(0x4000).unwrap();
        assert_eq!(p.take(0), None);
        let mut d = [0u8; DESC_SIZE];
        d[7] = 0x3;
        d[63] = 0x9;
        assert!(p.post(64, &d, Duration::ZERO));
        // The slot is full until taken: a second post waits and gives up.
        assert!(!p.post(64, &d, Duration::from_millis(1)));
        assert_eq!(p.take(64), Some(d));
        assert_eq!(p.take(64), None);
        assert!(p.post(64, &d, Duration::ZERO));
        p.clear();
        assert_eq!(p.take(64), None);
        // A slot with its first quadword still zero is in flight, never taken.
        let s = p.map.as_volatile_slice();
        s.store(0x1234u64, 128 + 8, Ordering::Release).unwrap();
        assert_eq!(p.take(128), None);
        s.store(0x1u64, 128, Ordering::Release).unwrap();
        assert!(p.take(128).is_some());
        // Outside the mapping.
        assert_eq!(p.take(0x4000), None);
        assert!(!p.post(0x4000, &d, Duration::ZERO));
    }

    #[test]
    fn a_second_mapping_sees_the_same_pages() {
        let server = SharedPortal::create(0x1000).unwrap();
        // SAFETY: dup of a live descriptor.
        let fd = unsafe { libc::dup(server.fd()) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh duplicate owned by nobody else.
        let client = SharedPortal::map(unsafe { File::from_raw_fd(fd) }, 0, 0x1000).unwrap();
        assert!(client.doorbell);
        let d = [0x5a; DESC_SIZE];
        assert!(client.post(0, &d, Duration::ZERO));
        assert_eq!(server.take(0), Some(d));
        assert!(client.post(0, &d, Duration::ZERO));
        // The doorbell page is shared too, and wakes a waiter.
        let seen = server.doorbell_value();
        client.ring();
        assert_eq!(server.doorbell_value(), seen.wrapping_add(1));
        let t = Instant::now();
        server.wait(seen, Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "wait ignored the moved doorbell"
        );
    }
}
