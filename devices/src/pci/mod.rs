//! PCI: a single root bus (bus 0) with a host bridge at 00:00.0, configuration access through
//! the legacy type-1 ports (0xCF8/0xCFC) and a PCIe ECAM window, firmware-style BAR placement,
//! and BAR ranges that follow the guest's programming on the MMIO [`Bus`].
//!
//! How the pieces fit:
//!
//! ```text
//!  PIO bus 0xCF8..0xCFF ── PciConfigIo ─┐
//!  MMIO bus ECAM window ─── PciConfigMmio ┴─> Arc<Mutex<PciBus>> ─> slot n: Arc<Mutex<dyn PciDevice>>
//!  MMIO bus BAR ranges ──── BarRegion{dev, bar} ───────────────────────────────┘ (bar_read/bar_write)
//! ```
//!
//! After every configuration write the bus compares each BAR's decode state (memory space
//! enable + programmed address) with what is registered on the MMIO bus and inserts, moves or
//! removes that BAR's range. A guest value that is unusable (zero, wrapping, or overlapping
//! another range) just leaves the BAR unmapped until the guest writes a usable one.
//!
//! Usage by the VMM:
//!
//! ```ignore
//! let pci = Arc::new(Mutex::new(PciBus::new(&mmio_bus, windows)));
//! pio_bus.insert(Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))), 0xcf8, 8)?;
//! mmio_bus.insert(Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))), ECAM_START, ECAM_SIZE)?;
//! let bdf = pci.lock().unwrap().add_device(dev)?;
//! ```

pub mod config;
pub mod kvm_msi;
pub mod msix;

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use crate::bus::{Bus, BusDevice};
pub use config::{BarKind, BarSpec, PciConfig, PciHeader};

/// Devices per bus.
pub const MAX_DEVICES: usize = 32;

/// Errors from building PCI devices or the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR declaration is invalid (index, size, overlap with a 64-bit pair).
    #[error("invalid BAR {0}")]
    BadBar(usize),
    /// The capability does not fit in configuration space.
    #[error("no room for the capability in configuration space")]
    CapabilitySpace,
    /// All 32 device numbers are taken.
    #[error("PCI bus 0 is full")]
    BusFull,
    /// A BAR does not fit in the MMIO window.
    #[error("BAR {bar} of {size:#x} bytes does not fit in the MMIO window")]
    OutOfMmioSpace {
        /// BAR index.
        bar: usize,
        /// BAR size.
        size: u64,
    },
}

/// Bus/device/function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PciBdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl fmt::Display for PciBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{}",
            self.bus, self.device, self.function
        )
    }
}

/// A PCI function the bus can hold.
///
/// The bus drives configuration space through [`PciConfig`]; the device implements the
/// accesses to its BARs. Every method receives guest-chosen sizes and offsets and must tolerate
/// any of them.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &PciConfig;
    /// The function's configuration space, mutably.
    fn config_mut(&mut self) -> &mut PciConfig;
    /// Reads configuration dword `reg` (0..1024; dwords past 64 read 0 by default).
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config().read_dword(reg)
    }
    /// Writes 1..=4 bytes at byte `offset` of dword `reg`, then lets the device react.
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config_mut().write(reg, offset, data);
        self.config_written(reg);
    }
    /// Hook after a configuration write to dword `reg` (MSI-X control, command register...).
    fn config_written(&mut self, _reg: usize) {}
    /// Reads from BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes to BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Hook after the bus mapped BAR `bar` at guest address `addr` (or unmapped it: `None`),
    /// for a device that maps part of a BAR as memory rather than as an MMIO range.
    fn bar_moved(&mut self, _bar: usize, _addr: Option<u64>) {}
}

/// A PCI device shared between the bus, its BAR regions and its owner.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The MMIO windows in which the bus places BARs at device add (like firmware would).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// Start of the 32-bit window (below 4 GiB).
    pub mmio32_start: u64,
    /// Size of the 32-bit window.
    pub mmio32_size: u64,
    /// Start of the 64-bit window; 64-bit BARs go here when `mmio64_size` is non-zero.
    pub mmio64_start: u64,
    /// Size of the 64-bit window (0: put 64-bit BARs in the 32-bit window).
    pub mmio64_size: u64,
}

/// The MMIO range of one BAR, forwarding to its device with the BAR index.
pub struct BarRegion {
    dev: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarRegion {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_read(self.bar, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_write(self.bar, offset, data);
    }
}

struct Slot {
    dev: SharedPciDevice,
    /// Where each BAR is registered on the MMIO bus now.
    mapped: [Option<(u64, u64)>; config::NUM_BARS],
}

/// The host bridge at 00:00.0 (no BARs).
pub struct PciHostBridge {
    config: PciConfig,
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self {
            config: PciConfig::new(PciHeader {
                vendor: 0x8086,
                device: 0x0d57,
                class: 0x06_0000,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// PCI bus 0.
pub struct PciBus {
    /// The MMIO bus the BARs go on. Weak: that bus holds the ECAM device, which holds this bus, so
    /// a strong reference would be a cycle that outlives the VM.
    mmio: Weak<Bus>,
    windows: PciWindows,
    next32: u64,
    next64: u64,
    slots: Vec<Option<Slot>>,
    /// BARs left unmapped so far; only the first [`UNMAPPED_WARNINGS`] are logged as warnings
    /// (a guest can move BARs onto each other in a loop).
    unmapped: u64,
}

/// Unmapped-BAR events logged at warn level; the rest go to debug level.
const UNMAPPED_WARNINGS: u64 = 4;

/// Logs a BAR the guest placed where it cannot be mapped: a warning for the first few, then
/// debug lines, so that a guest cannot fill the log.
fn log_unmapped(count: &mut u64, msg: std::fmt::Arguments) {
    *count = count.saturating_add(1);
    match *count {
        n if n < UNMAPPED_WARNINGS => tracing::warn!("{msg}"),
        UNMAPPED_WARNINGS => {
            tracing::warn!("{msg} (further unmapped BARs are logged at debug level)")
        }
        _ => tracing::debug!("{msg}"),
    }
}

impl PciBus {
    /// Creates bus 0 with the host bridge at 00:00.0. BARs are placed in `windows` and
    /// registered on `mmio`.
    pub fn new(mmio: &Arc<Bus>, windows: PciWindows) -> Self {
        let mut slots: Vec<Option<Slot>> = (0..MAX_DEVICES).map(|_| None).collect();
        let bridge: SharedPciDevice = Arc::new(Mutex::new(PciHostBridge::default()));
        slots[0] = Some(Slot {
            dev: bridge,
            mapped: [None; config::NUM_BARS],
        });
        Self {
            mmio: Arc::downgrade(mmio),
            windows,
            next32: windows.mmio32_start,
            next64: windows.mmio64_start,
            slots,
            unmapped: 0,
        }
    }

    /// Adds a device at the first free device number, places its BARs (naturally aligned) in the
    /// windows, and returns its address. BARs become visible on the MMIO bus once the guest (or
    /// the caller) sets memory decode in the command register.
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<PciBdf, PciError> {
        let slot_no = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        {
            let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
            let (mut n32, mut n64) = (self.next32, self.next64);
            let mut placed = Vec::new();
            for bar in d.config().bars() {
                let use64 = bar.kind == BarKind::Mem64 && self.windows.mmio64_size > 0;
                let (cursor, start, size) = if use64 {
                    (
                        &mut n64,
                        self.windows.mmio64_start,
                        self.windows.mmio64_size,
                    )
                } else {
                    (
                        &mut n32,
                        self.windows.mmio32_start,
                        self.windows.mmio32_size,
                    )
                };
                let addr = cursor.checked_next_multiple_of(bar.size);
                let end = addr.and_then(|a| a.checked_add(bar.size));
                match (addr, end, start.checked_add(size)) {
                    (Some(a), Some(e), Some(limit)) if e <= limit => {
                        placed.push((bar.index, a));
                        *cursor = e;
                    }
                    _ => {
                        return Err(PciError::OutOfMmioSpace {
                            bar: bar.index,
                            size: bar.size,
                        })
                    }
                }
            }
            for (index, addr) in placed {
                d.config_mut().set_bar_address(index, addr)?;
            }
            self.next32 = n32;
            self.next64 = n64;
        }
        self.slots[slot_no] = Some(Slot {
            dev,
            mapped: [None; config::NUM_BARS],
        });
        self.reconcile(slot_no);
        Ok(PciBdf {
            bus: 0,
            device: slot_no as u8,
            function: 0,
        })
    }

    /// The device at `device` number, if any.
    pub fn device(&self, device: usize) -> Option<SharedPciDevice> {
        self.slots.get(device)?.as_ref().map(|s| s.dev.clone())
    }

    /// The MMIO ranges currently registered for the device at `device`: (bar, base, size).
    pub fn mapped_bars(&self, device: usize) -> Vec<(usize, u64, u64)> {
        let Some(Some(slot)) = self.slots.get(device) else {
            return Vec::new();
        };
        slot.mapped
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.map(|(a, s)| (i, a, s)))
            .collect()
    }

    /// Reads `data.len()` bytes at byte `byte` of dword `reg` of b:d.f (both config access
    /// mechanisms end here); a range outside the dword leaves `data` untouched.
    pub fn config_read_bytes(&self, b: u8, d: u8, f: u8, reg: usize, byte: usize, data: &mut [u8]) {
        let v = self.config_read(b, d, f, reg).to_le_bytes();
        if let Some(src) = v.get(byte..byte + data.len()) {
            data.copy_from_slice(src);
        }
    }

    /// Reads configuration dword `reg` of bus/device/function; absent functions read all ones.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, reg: usize) -> u32 {
        match self.function(bus, device, function) {
            Some(slot) => slot
                .dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(reg),
            None => 0xffff_ffff,
        }
    }

    /// Writes 1..=4 bytes at byte `offset` of configuration dword `reg`, then moves BARs if
    /// their decode changed.
    pub fn config_write(
        &mut self,
        bus: u8,
        device: u8,
        function: u8,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) {
        if offset + data.len() > 4 {
            return;
        }
        let Some(slot) = self.function(bus, device, function) else {
            return;
        };
        slot.dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(reg, offset, data);
        self.reconcile(usize::from(device));
    }

    fn function(&self, bus: u8, device: u8, function: u8) -> Option<&Slot> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(device))?.as_ref()
    }

    /// Makes the MMIO bus match each BAR's decode state.
    fn reconcile(&mut self, device: usize) {
        let Some(Some(slot)) = self.slots.get_mut(device) else {
            return;
        };
        // Gone only while the VM is torn down: there is nothing left to map onto.
        let Some(mmio) = self.mmio.upgrade() else {
            return;
        };
        let wanted: Vec<Option<(u64, u64)>> = {
            let d = slot.dev.lock().unwrap_or_else(|e| e.into_inner());
            (0..config::NUM_BARS)
                .map(|i| d.config().bar_decode(i))
                .collect()
        };
        for (bar, want) in wanted.into_iter().enumerate() {
            let have = slot.mapped[bar];
            if have == want {
                continue;
            }

            match (have, want) {
                (Some((old, osz)), Some((new, nsz))) if osz == nsz => {
                    if mmio.relocate(old, new).is_err() {
                        // Relocate put it back at `old`; the guest asked for `new`, so unmap.
                        let _ = mmio.remove(old);
                        log_unmapped(
                            &mut self.unmapped,
                            format_args!(
                                "PCI {device:02x}: BAR{bar} at {new:#x} overlaps; left unmapped"
                            ),
                        );
                        slot.mapped[bar] = None;
                    } else {
                        slot.mapped[bar] = want;
                    }
                }
                _ => {
                    if let Some((old, _)) = have {
                        let _ = mmio.remove(old);
                        slot.mapped[bar] = None;
                    }
                    if let Some((new, size)) = want {
                        let region = Arc::new(Mutex::new(BarRegion {
                            dev: slot.dev.clone(),
                            bar,
                        }));
                        match mmio.insert(region, new, size) {
                            Ok(()) => slot.mapped[bar] = want,
                            Err(e) => log_unmapped(
                                &mut self.unmapped,
                                format_args!("PCI {device:02x}: BAR{bar} not mapped: {e}"),
                            ),
                        }
                    }
                }
            }
            if slot.mapped[bar] != have {
                slot.dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bar_moved(bar, slot.mapped[bar].map(|(addr, _)| addr));
            }
        }
    }
}

/// Shared handle to the bus.
pub type SharedPciBus = Arc<Mutex<PciBus>>;

/// Creates a PCI bus over `mmio` with BARs in `windows`, and puts its configuration access on
/// the buses: type 1 at ports 0xCF8..0xCFF of `pio`, ECAM for bus 0 at `ecam_base` on `mmio`.
pub fn attach_pci_root(
    pio: &Bus,
    mmio: &Arc<Bus>,
    windows: PciWindows,
    ecam_base: u64,
    ecam_size: u64,
) -> Result<SharedPciBus, crate::bus::BusError> {
    let pci = Arc::new(Mutex::new(PciBus::new(mmio, windows)));
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        0xcf8,
        8,
    )?;
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
        ecam_base,
        ecam_size,
    )?;
    Ok(pci)
}

/// Legacy type-1 configuration access: register at 0xCF8..0xCFF (insert with length 8).
pub struct PciConfigIo {
    pci: SharedPciBus,
    address: u32,
}

impl PciConfigIo {
    /// Creates the port device for `pci`.
    pub fn new(pci: SharedPciBus) -> Self {
        Self { pci, address: 0 }
    }

    /// (bus, device, function, dword) selected by CONFIG_ADDRESS when its enable bit is set.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        (a & 0x8000_0000 != 0).then_some({
            (
                (a >> 16) as u8,
                ((a >> 11) & 0x1f) as u8,
                ((a >> 8) & 7) as u8,
                ((a >> 2) & 0x3f) as usize,
            )
        })
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let off = offset as usize;
        if off < 4 && off + data.len() <= 4 {
            let v = self.address.to_le_bytes();
            data.copy_from_slice(&v[off..off + data.len()]);
            return;
        }
        data.fill(0xff);
        let byte = off.wrapping_sub(4);
        if byte >= 4 || byte + data.len() > 4 {
            return;
        }
        if let Some((b, d, f, reg)) = self.target() {
            self.pci
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read_bytes(b, d, f, reg, byte, data);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let off = offset as usize;
        if off < 4 && off + data.len() <= 4 {
            let mut v = self.address.to_le_bytes();
            v[off..off + data.len()].copy_from_slice(data);
            // Bits 1:0 and 30:24 are reserved (read 0).
            self.address = u32::from_le_bytes(v) & 0x80ff_fffc;
            return;
        }
        let byte = off.wrapping_sub(4);
        if byte >= 4 || byte + data.len() > 4 {
            return;
        }
        if let Some((b, d, f, reg)) = self.target() {
            self.pci
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(b, d, f, reg, byte, data);
        }
    }
}

/// PCIe enhanced configuration access (ECAM): bus << 20 | device << 15 | function << 12 | register.
/// Register it over the MCFG window (1 MiB covers bus 0).
pub struct PciConfigMmio {
    pci: SharedPciBus,
}

impl PciConfigMmio {
    /// Creates the ECAM device for `pci`.
    pub fn new(pci: SharedPciBus) -> Self {
        Self { pci }
    }

    fn decode(offset: u64, len: usize) -> Option<(u8, u8, u8, usize, usize)> {
        let byte = (offset & 3) as usize;
        if !matches!(len, 1 | 2 | 4) || byte + len > 4 || offset >= 1 << 28 {
            return None;
        }
        Some((
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 7) as u8,
            ((offset & 0xfff) >> 2) as usize,
            byte,
        ))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some((b, d, f, reg, byte)) = Self::decode(offset, data.len()) {
            self.pci
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read_bytes(b, d, f, reg, byte, data);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg, byte)) = Self::decode(offset, data.len()) {
            self.pci
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(b, d, f, reg, byte, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with a 64-bit BAR0 (64 KiB) and a 32-bit BAR2 (16 KiB) that records accesses.
    struct TestDev {
        config: PciConfig,
        last_write: Option<(usize, u64, Vec<u8>)>,
    }

    impl TestDev {
        fn shared() -> Arc<Mutex<TestDev>> {
            let mut config = PciConfig::new(PciHeader {
                vendor: 0x1234,
                device: 0x5678,
                class: 0xff0000,
                revision: 1,
                subsystem_vendor: 0,
                subsystem: 0,
            });
            config
                .add_bar(BarSpec {
                    index: 0,
                    kind: BarKind::Mem64,
                    size: 0x10000,
                    prefetchable: true,
                })
                .unwrap();
            config
                .add_bar(BarSpec {
                    index: 2,
                    kind: BarKind::Mem32,
                    size: 0x4000,
                    prefetchable: false,
                })
                .unwrap();
            Arc::new(Mutex::new(TestDev {
                config,
                last_write: None,
            }))
        }
    }

    impl PciDevice for TestDev {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.config
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 ^ offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }
    }

    const WIN: PciWindows = PciWindows {
        mmio32_start: 0xc000_0000,
        mmio32_size: 0x1000_0000,
        mmio64_start: 0x1_0000_0000,
        mmio64_size: 0x1_0000_0000,
    };

    fn setup() -> (Arc<Bus>, SharedPciBus, Bus, Arc<Mutex<TestDev>>, PciBdf) {
        let mmio = Arc::new(Bus::new());
        let pio = Bus::new();
        let pci = attach_pci_root(&pio, &mmio, WIN, 0xe000_0000, 0x10_0000).unwrap();
        let dev = TestDev::shared();
        let bdf = pci.lock().unwrap().add_device(dev.clone()).unwrap();
        (mmio, pci, pio, dev, bdf)
    }

    fn cf8_read(pio: &Bus, dev: u8, reg: u32) -> u32 {
        pio.write(
            0xcf8,
            &(0x8000_0000 | u32::from(dev) << 11 | reg).to_le_bytes(),
        );
        let mut b = [0u8; 4];
        pio.read(0xcfc, &mut b);
        u32::from_le_bytes(b)
    }

    fn cf8_write(pio: &Bus, dev: u8, reg: u32, v: u32) {
        pio.write(
            0xcf8,
            &(0x8000_0000 | u32::from(dev) << 11 | reg).to_le_bytes(),
        );
        pio.write(0xcfc, &v.to_le_bytes());
    }

    fn ecam_read(mmio: &Bus, dev: u8, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        mmio.read(0xe000_0000 + (u64::from(dev) << 15) + reg, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_and_device_visible() {
        let (mmio, _pci, pio, _dev, bdf) = setup();
        assert_eq!(
            bdf,
            PciBdf {
                bus: 0,
                device: 1,
                function: 0
            }
        );
        assert_eq!(bdf.to_string(), "0000:00:01.0");
        assert_eq!(cf8_read(&pio, 0, 0), 0x0d57_8086);
        assert_eq!(cf8_read(&pio, 0, 8) >> 8, 0x06_0000);
        assert_eq!(cf8_read(&pio, 1, 0), 0x5678_1234);
        assert_eq!(cf8_read(&pio, 2, 0), 0xffff_ffff);
        assert_eq!(ecam_read(&mmio, 1, 0), 0x5678_1234);
        assert_eq!(ecam_read(&mmio, 3, 0), 0xffff_ffff);
        // Function 1 and the extended space.
        assert_eq!(ecam_read(&mmio, 0, 1 << 12), 0xffff_ffff);
        assert_eq!(ecam_read(&mmio, 1, 0x100), 0);
        // Partial reads through 0xCFE.
        pio.write(0xcf8, &(0x8000_0800u32).to_le_bytes());
        let mut w = [0u8; 2];
        pio.read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
        // Address register readback.
        let mut a = [0u8; 4];
        pio.read(0xcf8, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0800);
    }

    #[test]
    fn bars_placed_and_follow_the_guest() {
        let (mmio, pci, pio, dev, _) = setup();
        // Placed in the windows, naturally aligned, not yet decoded.
        assert_eq!(cf8_read(&pio, 1, 0x10), 0x0000_000c);
        assert_eq!(cf8_read(&pio, 1, 0x14), 0x1);
        assert_eq!(cf8_read(&pio, 1, 0x18), 0xc000_0000);
        assert!(mmio.resolve(0x1_0000_0000).is_none());
        // Memory decode on: both BARs appear.
        cf8_write(&pio, 1, 4, 0x6);
        assert_eq!(
            pci.lock().unwrap().mapped_bars(1),
            vec![(0, 0x1_0000_0000, 0x10000), (2, 0xc000_0000, 0x4000)]
        );
        mmio.write(0x1_0000_0010, &[1, 2, 3, 4]);
        assert_eq!(
            dev.lock().unwrap().last_write,
            Some((0, 0x10, vec![1, 2, 3, 4]))
        );
        let mut b = [0u8; 1];
        mmio.read(0xc000_0003, &mut b);
        assert_eq!(b[0], 2 ^ 3);
        // Sizing with decode on: all ones then restore; the BAR never breaks anything.
        cf8_write(&pio, 1, 0x18, 0xffff_ffff);
        assert_eq!(cf8_read(&pio, 1, 0x18), 0xffff_c000);
        cf8_write(&pio, 1, 0x18, 0xd000_0000);
        assert!(mmio.resolve(0xc000_0000).is_none());
        assert_eq!(mmio.resolve(0xd000_3fff).map(|r| r.0), Some(0xd000_0000));
        // 64-bit move through ECAM, low then high half.
        mmio.write(0xe000_8010, &0x8000_0000u32.to_le_bytes());
        mmio.write(0xe000_8014, &0x2u32.to_le_bytes());
        assert_eq!(
            mmio.resolve(0x2_8000_0000).map(|r| r.0),
            Some(0x2_8000_0000)
        );
        // Overlap with ECAM: stays unmapped, no panic, later fix works.
        cf8_write(&pio, 1, 0x18, 0xe000_0000);
        assert_eq!(mmio.resolve(0xe000_0000).map(|r| r.0), Some(0xe000_0000));
        assert!(pci.lock().unwrap().mapped_bars(1).iter().all(|m| m.0 != 2));
        cf8_write(&pio, 1, 0x18, 0xc000_4000);
        assert_eq!(mmio.resolve(0xc000_4000).map(|r| r.0), Some(0xc000_4000));
        // Zero address: unmapped.
        cf8_write(&pio, 1, 0x18, 0);
        assert!(mmio.resolve(0xc000_4000).is_none());
        // Decode off removes everything.
        cf8_write(&pio, 1, 4, 0);
        assert!(pci.lock().unwrap().mapped_bars(1).is_empty());
        assert!(mmio.resolve(0x2_8000_0000).is_none());
    }

    /// A guest that keeps moving a BAR onto ECAM gets it unmapped every time, and every time is
    /// counted, but only the first few reach the log at warn level.
    #[test]
    fn unmapped_bars_are_counted_and_the_log_is_bounded() {
        let (mmio, pci, pio, _dev, _) = setup();
        cf8_write(&pio, 1, 4, 0x6);
        for _ in 0..100 {
            cf8_write(&pio, 1, 0x18, 0xe000_0000);
            cf8_write(&pio, 1, 0x18, 0xc000_4000);
        }
        assert_eq!(pci.lock().unwrap().unmapped, 100);
        const { assert!(UNMAPPED_WARNINGS < 100) };
        assert_eq!(mmio.resolve(0xc000_4000).map(|r| r.0), Some(0xc000_4000));
    }

    #[test]
    fn the_buses_are_freed_when_the_vm_lets_go_of_them() {
        let (pio, mmio) = (Bus::new(), Arc::new(Bus::new()));
        let pci = attach_pci_root(&pio, &mmio, WIN, 0xe000_0000, 0x10_0000).unwrap();
        pci.lock().unwrap().add_device(TestDev::shared()).unwrap();
        let (weak_mmio, weak_pci) = (Arc::downgrade(&mmio), Arc::downgrade(&pci));
        drop((pio, mmio, pci));
        assert!(
            weak_mmio.upgrade().is_none(),
            "MMIO bus <-> ECAM <-> PCI bus cycle"
        );
        assert!(weak_pci.upgrade().is_none());
    }

    #[test]
    fn windows_exhausted_and_bus_full() {
        let mmio = Arc::new(Bus::new());
        let small = PciWindows {
            mmio32_start: 0xc000_0000,
            mmio32_size: 0x8000,
            mmio64_start: 0,
            mmio64_size: 0,
        };
        let mut pci = PciBus::new(&mmio, small);
        assert_eq!(
            pci.add_device(TestDev::shared()),
            Err(PciError::OutOfMmioSpace {
                bar: 0,
                size: 0x10000
            })
        );
        let mmio = Arc::new(Bus::new());
        let mut pci = PciBus::new(&mmio, WIN);
        for _ in 1..MAX_DEVICES {
            pci.add_device(TestDev::shared()).unwrap();
        }
        assert_eq!(pci.add_device(TestDev::shared()), Err(PciError::BusFull));
    }

    #[test]
    fn odd_config_accesses_ignored() {
        let (mmio, _pci, pio, _dev, _) = setup();
        let mut b = [0u8; 8];
        mmio.read(0xe000_8000, &mut b);
        assert_eq!(b, [0xff; 8]);
        mmio.write(0xe000_8003, &[1, 2]);
        pio.write(0xcf8, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        pio.read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
        pio.write(0xcfd, &[0; 4]);
    }
}
