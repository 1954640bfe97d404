//! Address-range to device map for port I/O and MMIO exits.
//!
//! A [`Bus`] holds non-overlapping ranges, each owned by one [`BusDevice`]. A vCPU exit is dispatched
//! with one `BTreeMap` range lookup (no linear scan on the hot path). Devices are shared behind a
//! `Mutex` so that several vCPU threads (and the API thread) can reach them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that a guest reaches through port I/O or MMIO.
///
/// `offset` is relative to the start of the range the device was registered with (`base`), so one
/// device type can live anywhere. Accesses of a size the device does not implement must be ignored
/// (reads return all ones), never panic: the size is chosen by the guest.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` of the range registered at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` of the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from changing a bus's map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No device is registered at that base.
    #[error("no bus range starts at {0:#x}")]
    NotFound(u64),
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// A map from guest address ranges to devices.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        // The nearest range at or below `end - 1` is the only one that can overlap.
        if let Some((&b, e)) = ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the range starting at `base` and returns its device.
    pub fn remove(&self, base: u64) -> Result<SharedBusDevice, BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).map(|e| e.device).ok_or(BusError::NotFound(base))
    }

    /// Moves the range at `old_base` to `new_base`, keeping its length and device.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let entry = {
            let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
            ranges.remove(&old_base).ok_or(BusError::NotFound(old_base))?
        };
        let Entry { len, device } = entry;
        if let Err(e) = self.insert(device.clone(), new_base, len) {
            // Put it back where it was so a bad guest BAR write loses nothing.
            let _ = self.insert(device, old_base, len);
            return Err(e);
        }
        Ok(())
    }

    /// Finds the device covering `addr`: its base and the device.
    pub fn resolve(&self, addr: u64) -> Option<(u64, SharedBusDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then(|| (base, entry.device.clone()))
    }

    /// Dispatches a read. Returns false when no device covers `addr` (the caller decides what an
    /// unbacked access means; `data` is then left untouched).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write. Returns false when no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range() {
        let bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x1000, 0x10).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x1004, &mut buf));
        assert_eq!(buf, [4, 4]);
        assert!(bus.write(0x100f, &[9]));
        assert_eq!(a.lock().unwrap().last, Some((0x1000, 0xf, vec![9])));
        assert!(!bus.read(0x1010, &mut buf));
        assert!(!bus.read(0xfff, &mut buf));
    }

    #[test]
    fn overlaps_and_bad_ranges_rejected() {
        let bus = Bus::new();
        let d = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d.clone(), 0x1000, 0x100).unwrap();
        assert!(matches!(bus.insert(d.clone(), 0x10ff, 1), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(d.clone(), 0xf00, 0x101), Err(BusError::Overlap { .. })));
        assert!(bus.insert(d.clone(), 0xf00, 0x100).is_ok());
        assert!(bus.insert(d.clone(), 0x1100, 0x10).is_ok());
        assert!(matches!(bus.insert(d.clone(), 0, 0), Err(BusError::BadRange { .. })));
        assert!(matches!(bus.insert(d, u64::MAX, 2), Err(BusError::BadRange { .. })));
    }

    #[test]
    fn relocate_moves_or_restores() {
        let bus = Bus::new();
        let d = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d.clone(), 0x1000, 0x100).unwrap();
        bus.insert(d.clone(), 0x3000, 0x100).unwrap();
        bus.relocate(0x1000, 0x2000).unwrap();
        assert!(bus.resolve(0x1000).is_none());
        assert_eq!(bus.resolve(0x20ff).map(|r| r.0), Some(0x2000));
        assert!(bus.relocate(0x2000, 0x3080).is_err());
        assert_eq!(bus.resolve(0x2000).map(|r| r.0), Some(0x2000));
        assert_eq!(bus.remove(0x9999).err(), Some(BusError::NotFound(0x9999)));
    }
}
