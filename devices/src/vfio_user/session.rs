//! One client's vDSA behind vfio-user: the `vfio_user::ServerBackend` the crate's server
//! calls, over a [`DsaDevice`] of its own (so no client reaches another's WQs or memory).
//!
//! - Regions: BAR0 (registers, trapped), BAR2 (portals: trapped region writes, reassembled
//!   per 64-byte slot; and mmappable as a [`SharedPortal`] the watcher polls), config space,
//!   and [`STATS_REGION`] (read-only JSON of the device's state and counters: the side channel
//!   dsavmm's API reads).
//! - DMA: each DMA_MAP with a file descriptor becomes a region of the engine's address space
//!   at IOVA = the client's address; the space is replaced atomically under the device lock,
//!   so DMA_UNMAP waits for a descriptor in flight and nothing touches an unmapped window
//!   after its reply. DMA outside every window completes with a page-fault status.
//! - Interrupts: MSI-X as eventfds from SET_IRQS; the client masks and pends (the device's
//!   MSI-X is in passthrough mode, as behind kernel VFIO).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion, SparseArea};
use vmm_sys_util::eventfd::EventFd;

use super::dma_space::DmaSpace;
use super::shared_portal::{SharedPortal, WatchCounters};
use crate::dsa::backend::SoftwareBackend;
use crate::dsa::descriptor::DESC_SIZE;
use crate::dsa::{regs, DsaConfig, DsaDevice, BAR_PORTALS, BAR_REGS};
use crate::pci::msix::{MsiInterruptSink, MsiMessage};
use crate::pci::PciDevice;

/// Region index of the statistics side channel (the first index after the PCI ones).
pub const STATS_REGION: u32 = 9;
/// Size of the statistics region.
pub const STATS_REGION_SIZE: u64 = 0x10000;
/// Size of the configuration-space region (PCIe extended space; above 256 reads 0).
pub const CONFIG_REGION_SIZE: u64 = 0x1000;
pub use super::dma_space::MAX_DMA_WINDOWS;

const _: () = assert!(STATS_REGION + 1 == super::wire::NUM_REGIONS);

fn einval(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string())
}

/// The vectors' eventfds, as SET_IRQS set them.
#[derive(Default)]
pub struct EventfdSink {
    fds: Mutex<Vec<Option<EventFd>>>,
}

impl MsiInterruptSink for EventfdSink {
    fn update_route(&self, _vector: u16, _msg: MsiMessage) {}

    fn trigger(&self, vector: u16) {
        let fds = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(fd)) = fds.get(usize::from(vector)) {
            // A full or broken descriptor is the client's problem: the signal is dropped, at
            // debug level (a client must not be able to fill the server's log).
            if let Err(e) = fd.write(1) {
                tracing::debug!("MSI-X vector {vector}: eventfd write: {e}");
            }
        }
    }
}

/// Counters of one session (also in the statistics region).
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Region writes to BAR2 (trapped portal stores of any size).
    pub trapped_portal_writes: AtomicU64,
    /// Descriptors submitted from trapped stores (whole 64-byte writes or reassembled).
    pub trapped_descriptors: AtomicU64,
    /// Partial slots discarded (a store out of order, or another slot before this one filled).
    pub torn_slots: AtomicU64,
    /// DMA_MAP windows accepted.
    pub dma_maps: AtomicU64,
    /// DMA_UNMAP requests served.
    pub dma_unmaps: AtomicU64,
    /// DMA_MAP windows without a file descriptor (not reachable by the engine).
    pub dma_maps_without_fd: AtomicU64,
}

/// A 64-byte portal slot being filled by smaller trapped stores (in any order; no byte twice).
#[derive(Clone, Copy)]
struct Reassembly {
    slot: u64,
    /// Bit i: byte i written.
    filled: u64,
    bytes: [u8; DESC_SIZE],
}

/// The statistics region's JSON.
#[derive(Serialize)]
struct StatsDoc {
    state: crate::dsa::DsaState,
    stats: crate::dsa::DsaStats,
    server: ServerStats,
}

#[derive(Serialize)]
struct ServerStats {
    trapped_portal_writes: u64,
    trapped_descriptors: u64,
    mapped_descriptors: u64,
    torn_slots: u64,
    portal_scans: u64,
    dma_windows: usize,
    dma_maps: u64,
    dma_unmaps: u64,
    dma_maps_without_fd: u64,
}

/// One client's device.
pub struct Session {
    cfg: DsaConfig,
    dev: Arc<Mutex<DsaDevice>>,
    mem: DmaSpace,
    sink: Arc<EventfdSink>,
    portal: Arc<SharedPortal>,
    reassembly: Option<Reassembly>,
    counters: Arc<SessionCounters>,
    watch: Arc<WatchCounters>,
}

fn new_device(
    cfg: DsaConfig,
    mem: &DmaSpace,
    sink: &Arc<EventfdSink>,
) -> Result<DsaDevice, crate::dsa::DsaError> {
    let mut dev = DsaDevice::with_backend(
        cfg,
        Box::new(SoftwareBackend::with_dma(Arc::new(mem.clone()))),
        sink.clone(),
    )?;
    dev.set_msix_passthrough();
    Ok(dev)
}

impl Session {
    /// A device of geometry `cfg` with no DMA windows and no interrupts yet.
    pub fn new(cfg: DsaConfig) -> Result<Self, super::ServerError> {
        let mem = DmaSpace::default();
        let sink = Arc::new(EventfdSink::default());
        let dev = Arc::new(Mutex::new(new_device(cfg, &mem, &sink)?));
        let portal = Arc::new(SharedPortal::create(cfg.portal_bar_size())?);
        Ok(Self {
            cfg,
            dev,
            mem,
            sink,
            portal,
            reassembly: None,
            counters: Arc::default(),
            watch: Arc::default(),
        })
    }

    /// The device (for the portal watcher).
    pub fn device(&self) -> Arc<Mutex<DsaDevice>> {
        self.dev.clone()
    }

    /// The shared portal pages.
    pub fn portal(&self) -> Arc<SharedPortal> {
        self.portal.clone()
    }

    /// The watcher's counters (shared with the watcher thread).
    pub fn watch_counters(&self) -> Arc<WatchCounters> {
        self.watch.clone()
    }

    /// The region table the crate's server announces. With `mmap_portals`, BAR2 carries a
    /// sparse-mmap area covering all of it and the memfd.
    pub fn regions(&self, mmap_portals: bool) -> Vec<ServerRegion> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let info = |index: u32, size: u64, flags: u32| vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            flags,
            index,
            cap_offset: 0,
            size,
            offset: 0,
        };
        let plain = |index, size, flags| ServerRegion {
            region_info: info(index, size, flags),
            sparse_areas: Vec::new(),
            mmap_fd: None,
        };
        let bar2 = self.cfg.portal_bar_size();
        (0..=STATS_REGION)
            .map(|i| match i {
                VFIO_PCI_BAR0_REGION_INDEX => plain(i, regs::BAR0_SIZE, rw),
                VFIO_PCI_BAR2_REGION_INDEX if mmap_portals => ServerRegion {
                    region_info: info(i, bar2, rw | VFIO_REGION_INFO_FLAG_MMAP),
                    sparse_areas: vec![SparseArea {
                        area: vfio_region_sparse_mmap_area {
                            offset: 0,
                            size: bar2,
                        },
                    }],
                    mmap_fd: Some(self.portal.fd()),
                },
                VFIO_PCI_BAR2_REGION_INDEX => plain(i, bar2, rw),
                VFIO_PCI_CONFIG_REGION_INDEX => plain(i, CONFIG_REGION_SIZE, rw),
                STATS_REGION => plain(i, STATS_REGION_SIZE, VFIO_REGION_INFO_FLAG_READ),
                _ => plain(i, 0, 0),
            })
            .collect()
    }

    /// The interrupt table: MSI-X with num_wqs + 1 vectors, nothing else.
    pub fn irqs(&self) -> Vec<IrqInfo> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| IrqInfo {
                index,
                flags: if index == VFIO_PCI_MSIX_IRQ_INDEX {
                    VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE
                } else {
                    0
                },
                count: if index == VFIO_PCI_MSIX_IRQ_INDEX {
                    u32::from(self.cfg.msix_vectors())
                } else {
                    0
                },
            })
            .collect()
    }

    /// The device's counters and the server's, as one line of JSON.
    pub fn summary(&self) -> String {
        let dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        let stats = dev.stats();
        drop(dev);
        let c = &self.counters;
        serde_json::json!({
            "descriptors": stats.descriptors,
            "bytes": stats.bytes,
            "completion_status": stats.completion_status,
            "mapped_descriptors": self.watch.taken.load(Ordering::Relaxed),
            "trapped_descriptors": c.trapped_descriptors.load(Ordering::Relaxed),
            "dma_maps": c.dma_maps.load(Ordering::Relaxed),
            "dma_unmaps": c.dma_unmaps.load(Ordering::Relaxed),
            "dma_windows": self.mem.windows(),
            "dma_files": self.mem.files(),
            "commands": stats.commands,
            "command_errors": stats.command_errors,
        })
        .to_string()
    }

    fn stats_json(&self) -> Vec<u8> {
        let dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.counters;
        let doc = StatsDoc {
            state: dev.state(),
            stats: dev.stats(),
            server: ServerStats {
                trapped_portal_writes: c.trapped_portal_writes.load(Ordering::Relaxed),
                trapped_descriptors: c.trapped_descriptors.load(Ordering::Relaxed),
                mapped_descriptors: self.watch.taken.load(Ordering::Relaxed),
                torn_slots: c.torn_slots.load(Ordering::Relaxed),
                portal_scans: self.watch.scans.load(Ordering::Relaxed),
                dma_windows: self.mem.windows(),
                dma_maps: c.dma_maps.load(Ordering::Relaxed),
                dma_unmaps: c.dma_unmaps.load(Ordering::Relaxed),
                dma_maps_without_fd: c.dma_maps_without_fd.load(Ordering::Relaxed),
            },
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// A trapped store to BAR2: a whole aligned 64-byte write is a descriptor; smaller stores
    /// are collected per slot, in any order but each byte once, and submitted when the slot is
    /// full (docs/vfio-user.md, "Trapped portals"). A store that crosses a slot, writes a byte
    /// twice, or goes to another slot before this one filled discards the partial slot.
    fn portal_store(&mut self, offset: u64, data: &[u8]) {
        self.counters
            .trapped_portal_writes
            .fetch_add(1, Ordering::Relaxed);
        let slot = offset & !(DESC_SIZE as u64 - 1);
        let within = (offset - slot) as usize;
        if within == 0 && data.len() == DESC_SIZE {
            if self.reassembly.take().is_some() {
                self.counters.torn_slots.fetch_add(1, Ordering::Relaxed);
            }
            self.submit(slot, data);
            return;
        }
        if data.is_empty() || within + data.len() > DESC_SIZE {
            if self.reassembly.take().is_some() || !data.is_empty() {
                self.counters.torn_slots.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let mask = (u64::MAX >> (64 - data.len())) << within;
        let mut r = match self.reassembly.take() {
            Some(r) if r.slot == slot && r.filled & mask == 0 => r,
            other => {
                if other.is_some() {
                    self.counters.torn_slots.fetch_add(1, Ordering::Relaxed);
                }
                Reassembly {
                    slot,
                    filled: 0,
                    bytes: [0; DESC_SIZE],
                }
            }
        };
        r.bytes[within..within + data.len()].copy_from_slice(data);
        r.filled |= mask;
        if r.filled == u64::MAX {
            self.submit(slot, &r.bytes);
        } else {
            self.reassembly = Some(r);
        }
    }

    /// Descriptors already in the mapped portal pages go before the register or config
    /// access being served: a posted MOVDIR64B is ordered before a later MMIO access on real
    /// hardware (a DRAIN_WQ must see the descriptor submitted just before it).
    fn sweep_portal(&self) {
        let dev = &self.dev;
        let n = self.portal.sweep(|off, desc| {
            dev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar_write(BAR_PORTALS, off, desc);
        });
        self.watch.taken.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn submit(&mut self, slot: u64, desc: &[u8]) {
        self.counters
            .trapped_descriptors
            .fetch_add(1, Ordering::Relaxed);
        self.dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_write(BAR_PORTALS, slot, desc);
    }
}

/// Sets O_NONBLOCK on a descriptor a client sent.
fn set_nonblocking(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// Reads configuration space dword by dword through the device.
fn config_read(dev: &mut DsaDevice, offset: u64, data: &mut [u8]) {
    for (k, b) in data.iter_mut().enumerate() {
        let o = offset as usize + k;
        let dw = dev.config_read(o / 4);
        *b = (dw >> ((o % 4) * 8)) as u8;
    }
}

/// Writes configuration space in pieces that do not cross a dword.
fn config_write(dev: &mut DsaDevice, offset: u64, data: &[u8]) {
    let mut o = offset as usize;
    let mut rest = data;
    while !rest.is_empty() {
        let n = (4 - o % 4).min(rest.len());
        dev.config_write(o / 4, o % 4, &rest[..n]);
        o += n;
        rest = &rest[n..];
    }
}

/// Whether an access lies inside a region of `size` bytes. One that does not is answered as a
/// bus answers an access to nothing (reads all ones, writes dropped), never with an error
/// reply: the crate's client would wait forever for the rest of a reply it expects whole.
fn inside(offset: u64, len: usize, size: u64) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size)
}

impl ServerBackend for Session {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        if region == VFIO_PCI_BAR0_REGION_INDEX || region == VFIO_PCI_CONFIG_REGION_INDEX {
            self.sweep_portal();
        }
        data.fill(0xff);
        let dev = &self.dev;
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX if inside(offset, data.len(), CONFIG_REGION_SIZE) => {
                config_read(
                    &mut dev.lock().unwrap_or_else(|e| e.into_inner()),
                    offset,
                    data,
                );
            }
            VFIO_PCI_BAR0_REGION_INDEX if inside(offset, data.len(), regs::BAR0_SIZE) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bar_read(BAR_REGS, offset, data);
            }
            STATS_REGION if inside(offset, data.len(), STATS_REGION_SIZE) => {
                let doc = self.stats_json();
                for (k, b) in data.iter_mut().enumerate() {
                    *b = doc.get(offset as usize + k).copied().unwrap_or(0);
                }
            }
            // Portal reads, absent regions, accesses past an end: all ones.
            _ => {}
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if region != STATS_REGION {
            self.sweep_portal();
        }
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX if inside(offset, data.len(), CONFIG_REGION_SIZE) => {
                config_write(
                    &mut self.dev.lock().unwrap_or_else(|e| e.into_inner()),
                    offset,
                    data,
                );
            }
            VFIO_PCI_BAR0_REGION_INDEX if inside(offset, data.len(), regs::BAR0_SIZE) => {
                self.dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bar_write(BAR_REGS, offset, data);
            }
            VFIO_PCI_BAR2_REGION_INDEX
                if inside(offset, data.len(), self.cfg.portal_bar_size()) =>
            {
                self.portal_store(offset, data);
            }
            // Read-only or absent regions, accesses past an end: dropped.
            _ => {}
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let Some(file) = fd else {
            // The engine could only reach it through DMA_READ/WRITE messages, which the crate
            // does not offer a server: DMA there completes with a page fault.
            self.counters
                .dma_maps_without_fd
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("DMA_MAP {address:#x}+{size:#x} without a file descriptor: not reachable by the engine");
            return Ok(());
        };
        super::shared_portal::check_window(&file, offset, size)
            .map_err(|e| einval(&format!("DMA_MAP {address:#x}+{size:#x}: {e}")))?;
        // Serialise with descriptors in flight: they hold the device lock.
        let _dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        self.mem
            .map(address, size, &file, offset)
            .map_err(|e| einval(&format!("DMA_MAP {address:#x}+{size:#x}: {e}")))?;
        self.counters.dma_maps.fetch_add(1, Ordering::Relaxed);
        tracing::trace!("DMA_MAP {address:#x}+{size:#x} at file offset {offset:#x}");
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        let _dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        self.counters.dma_unmaps.fetch_add(1, Ordering::Relaxed);
        // Exactly the range named goes: a vIOMMU unmaps any part of what it mapped, and
        // windows merged at DMA_MAP are split again. Nothing mapped there: a no-op. The
        // space is rebuilt before the next descriptor runs, under this lock, so nothing
        // reaches the range after this reply.
        let all = flags.contains(DmaUnmapFlags::UNMAP_ALL);
        let gone = self
            .mem
            .unmap(address, size, all)
            .map_err(|e| einval(&format!("DMA_UNMAP {address:#x}+{size:#x}: {e}")))?;
        tracing::trace!("DMA_UNMAP {address:#x}+{size:#x}: {gone:#x} bytes unmapped");
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        // A function-level reset: the device as new (registers, WQs, config space), portal
        // slots empty; DMA windows and eventfds belong to the client's setup and stay.
        let fresh = new_device(self.cfg, &self.mem, &self.sink)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        *self.dev.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.portal.clear();
        self.reassembly = None;
        tracing::info!("device reset by the client");
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return if count == 0 {
                Ok(())
            } else {
                Err(einval("only MSI-X interrupts exist"))
            };
        }
        if flags & VFIO_IRQ_SET_ACTION_TRIGGER == 0 {
            // MASK/UNMASK: the client masks MSI-X itself; nothing to do here.
            return Ok(());
        }
        let n = usize::from(self.cfg.msix_vectors());
        let (start, count) = (start as usize, count as usize);
        if start.checked_add(count).is_none_or(|e| e > n) {
            return Err(einval("vector range outside MSI-X"));
        }
        let mut table = self.sink.fds.lock().unwrap_or_else(|e| e.into_inner());
        table.resize_with(n, || None);
        if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            table.iter_mut().for_each(|f| *f = None);
            return Ok(());
        }
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            let mut fds = fds.into_iter();
            for slot in table.iter_mut().skip(start).take(count) {
                *slot = fds.next().map(|f| {
                    // Never block the device on a client's descriptor (a full eventfd, a
                    // pipe nobody reads): a signal that would block is dropped.
                    set_nonblocking(&f);
                    // SAFETY: each File is a descriptor the kernel passed us with this message,
                    // owned by nothing else; EventFd takes it over.
                    unsafe {
                        use std::os::fd::{FromRawFd, IntoRawFd};
                        EventFd::from_raw_fd(f.into_raw_fd())
                    }
                });
            }
            return Ok(());
        }
        if flags & VFIO_IRQ_SET_DATA_NONE != 0 {
            // Trigger from the client (a loopback test of the vectors).
            drop(table);
            for v in start..start + count {
                self.sink.trigger(v as u16);
            }
        }
        Ok(())
    }
}
