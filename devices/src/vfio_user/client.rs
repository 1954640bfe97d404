//! dsavmm as a vfio-user client: `--dsa backend=vfio-user,socket=PATH` puts the device a
//! `dsa-server` (or any vfio-user server of a device with BAR0, BAR2 and MSI-X) serves on the
//! guest's PCI bus.
//!
//! - Configuration space: the server's, copied at connect into a local [`PciConfig`] that
//!   owns the BARs (placed by dsavmm's PCI bus) and the MSI-X capability; every other write
//!   goes to the server as well (command register: bus mastering).
//! - BAR0: registers by REGION_READ/WRITE messages; the MSI-X table and PBA are emulated here.
//! - BAR2: with `portal=mapped` (the default when the server offers it) the server's portal
//!   memfd is a KVM memory slot at the BAR's guest address (moved with the BAR): a guest
//!   MOVDIR64B stores straight into the page and no dsavmm thread runs. Where KVM cannot
//!   execute it and dsavmm emulates it, the store reaches [`PciDevice::bar_write`] and is
//!   posted into the page (waiting for the slot: see [`SharedPortal::post`]). With
//!   `portal=trapped` each store is a REGION_WRITE message.
//! - Interrupts: each vector's KVM irqfd is handed to the server by SET_IRQS, so a completion
//!   interrupt reaches the guest with no dsavmm thread. A vector the guest masks gets a parking
//!   eventfd instead; what it catches becomes the PBA bit, delivered on unmask.
//! - Guest RAM is memfd-backed and DMA-mapped at IOVA = GPA.
//! - A server that goes away stops the VM with one error line; the device then reads all ones.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::VmFd;
use serde::Serialize;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::session::{STATS_REGION, STATS_REGION_SIZE};
use super::shared_portal::SharedPortal;
use crate::legacy::{ExitReason, ExitSignal};
use crate::pci::config::{BarKind, BarSpec, PciConfig, PciHeader};
use crate::pci::kvm_msi::KvmMsiSink;
use crate::pci::msix::{Msix, MSIX_CAP_ID};
use crate::pci::PciDevice;

/// How long an emulated portal store waits for the server to take the slot's previous
/// descriptor before it is dropped (as a full dedicated WQ drops it).
const POST_WAIT: Duration = Duration::from_millis(50);

/// How BAR2 reaches the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortalMode {
    /// Shared pages mapped into the guest (falls back to trapped if the server offers none).
    #[default]
    Mapped,
    /// Every store is a REGION_WRITE message.
    Trapped,
}

impl std::str::FromStr for PortalMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mapped" => Ok(Self::Mapped),
            "trapped" => Ok(Self::Trapped),
            _ => Err(format!("portal must be mapped or trapped, got {s:?}")),
        }
    }
}

/// Errors connecting to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The protocol failed.
    #[error("vfio-user server at {0}: {1}")]
    Protocol(PathBuf, vfio_user::Error),
    /// The server's device is not one this client can present.
    #[error("vfio-user server at {0}: {1}")]
    Device(PathBuf, String),
    /// An eventfd, mapping or KVM call failed.
    #[error("vfio-user device: {0}")]
    Setup(String),
}

/// One guest RAM region to DMA-map: (guest address, size, memfd, offset in the memfd).
pub struct RamRegion<'a> {
    /// Guest physical address (= IOVA).
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
    /// The memfd backing it.
    pub file: &'a File,
    /// Offset of the region in the memfd.
    pub offset: u64,
}

/// Counters of the client side (the API's exits per descriptor come from here).
#[derive(Debug, Default)]
pub struct ClientCounters {
    /// BAR2 stores that reached dsavmm (a VM exit each): trapped messages or emulated posts.
    pub portal_exits: AtomicU64,
    /// Of those, posted into the mapped page.
    pub portal_posts: AtomicU64,
    /// Posts dropped because the slot stayed full.
    pub portal_post_drops: AtomicU64,
    /// BAR0 register accesses sent to the server.
    pub register_messages: AtomicU64,
    /// SET_IRQS sent for masking and unmasking.
    pub irq_switches: AtomicU64,
}

/// The client-side counters as the API shows them.
#[derive(Clone, Debug, Serialize)]
pub struct ClientStats {
    /// Socket path.
    pub socket: String,
    /// "mapped" or "trapped".
    pub portal: PortalMode,
    /// Whether the portal page is installed in the guest now.
    pub portal_mapped_in_guest: bool,
    /// See [`ClientCounters`].
    pub portal_exits: u64,
    /// See [`ClientCounters`].
    pub portal_posts: u64,
    /// See [`ClientCounters`].
    pub portal_post_drops: u64,
    /// See [`ClientCounters`].
    pub register_messages: u64,
    /// See [`ClientCounters`].
    pub irq_switches: u64,
    /// The server is gone.
    pub failed: bool,
}

struct Conn {
    client: vfio_user::Client,
    failed: bool,
}

/// Where the mapped portal sits in the guest.
struct PortalSlot {
    vm: Arc<VmFd>,
    slot: u32,
    gpa: Option<u64>,
}

/// The MSI-X table and PBA placement in BAR0 (from the server's capability).
#[derive(Clone, Copy)]
struct MsixLayout {
    table: (u64, u64),
    pba: (u64, u64),
}

/// A vfio-user PCI device on dsavmm's bus.
pub struct VfioUserDsa {
    socket: PathBuf,
    conn: Arc<Mutex<Conn>>,
    pci: PciConfig,
    msix_cap: usize,
    msix: Msix,
    layout: MsixLayout,
    sink: Arc<KvmMsiSink>,
    parked: Vec<EventFd>,
    armed: Vec<bool>,
    mode: PortalMode,
    portal: Option<Arc<SharedPortal>>,
    slot: Option<PortalSlot>,
    counters: Arc<ClientCounters>,
    exit: Arc<ExitSignal>,
}

fn find_msix(cfg: &[u8]) -> Option<usize> {
    let mut at = usize::from(*cfg.get(0x34)?) & !3;
    for _ in 0..48 {
        if at < 0x40 || at + 12 > cfg.len() {
            return None;
        }
        if cfg[at] == MSIX_CAP_ID {
            return Some(at);
        }
        at = usize::from(cfg[at + 1]) & !3;
    }
    None
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

impl VfioUserDsa {
    /// Connects to the server at `socket`, builds the local configuration space, maps `ram`
    /// for DMA and parks every vector. `slot` is the KVM memory slot number reserved for the
    /// portal page.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        socket: &Path,
        mode: PortalMode,
        ram: &[RamRegion<'_>],
        sink: Arc<KvmMsiSink>,
        vm: Arc<VmFd>,
        slot: u32,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, ClientError> {
        let proto = |e| ClientError::Protocol(socket.to_path_buf(), e);
        let bad = |m: String| ClientError::Device(socket.to_path_buf(), m);
        let mut client = vfio_user::Client::new(socket).map_err(proto)?;
        let size_of = |c: &vfio_user::Client, i: u32| c.region(i).map_or(0, |r| r.size);
        let (bar0, bar2) = (
            size_of(&client, VFIO_PCI_BAR0_REGION_INDEX),
            size_of(&client, VFIO_PCI_BAR2_REGION_INDEX),
        );
        if !bar0.is_power_of_two() || !bar2.is_power_of_two() || bar0 < 0x1000 {
            return Err(bad(format!(
                "BAR0 of {bar0:#x} and BAR2 of {bar2:#x} bytes are not a DSA's"
            )));
        }
        let mut cfg = vec![0u8; 256];
        client
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut cfg)
            .map_err(proto)?;
        let cap = find_msix(&cfg).ok_or_else(|| bad("no MSI-X capability".into()))?;
        let vectors = (u16::from_le_bytes([cfg[cap + 2], cfg[cap + 3]]) & 0x7ff) + 1;
        let (table, pba) = (u32_at(&cfg, cap + 4), u32_at(&cfg, cap + 8));
        if table & 7 != 0 || pba & 7 != 0 {
            return Err(bad("the MSI-X table and PBA must be in BAR0".into()));
        }
        let layout = MsixLayout {
            table: (u64::from(table & !7), u64::from(vectors) * 16),
            pba: (u64::from(pba & !7), (u64::from(vectors).div_ceil(64)) * 8),
        };
        if sink.eventfd(vectors - 1).is_none() {
            return Err(bad(format!("{vectors} MSI-X vectors, more than expected")));
        }
        let mut pci = PciConfig::new(PciHeader {
            vendor: u16::from_le_bytes([cfg[0], cfg[1]]),
            device: u16::from_le_bytes([cfg[2], cfg[3]]),
            class: u32_at(&cfg, 8) >> 8,
            revision: cfg[8],
            subsystem_vendor: u16::from_le_bytes([cfg[0x2c], cfg[0x2d]]),
            subsystem: u16::from_le_bytes([cfg[0x2e], cfg[0x2f]]),
        });
        let cfg_err = |e: crate::pci::PciError| ClientError::Setup(e.to_string());
        for (index, size) in [(0usize, bar0), (2, bar2)] {
            pci.add_bar(BarSpec {
                index,
                kind: BarKind::Mem64,
                size,
                prefetchable: true,
            })
            .map_err(cfg_err)?;
        }
        let msix = Msix::new(vectors, sink.clone());
        let (body, wmask) = msix.capability(0, table & !7, 0, pba & !7);
        let msix_cap = pci
            .add_capability(MSIX_CAP_ID, &body, &wmask)
            .map_err(cfg_err)?;

        for r in ram {
            use std::os::fd::AsRawFd;
            client
                .dma_map(r.offset, r.gpa, r.size, r.file.as_raw_fd())
                .map_err(proto)?;
        }
        let mut parked = Vec::new();
        for _ in 0..vectors {
            parked.push(EventFd::new(EFD_NONBLOCK).map_err(|e| ClientError::Setup(e.to_string()))?);
        }
        let portal = match (mode, client.region(VFIO_PCI_BAR2_REGION_INDEX)) {
            (PortalMode::Mapped, Some(r))
                if r.sparse_areas
                    .iter()
                    .any(|a| a.offset == 0 && a.size == bar2) =>
            {
                let fo = r.file_offset.as_ref();
                match fo {
                    Some(fo) => {
                        let f = fo
                            .file()
                            .try_clone()
                            .map_err(|e| ClientError::Setup(e.to_string()))?;
                        Some(Arc::new(
                            SharedPortal::map(f, fo.start(), bar2)
                                .map_err(|e| ClientError::Setup(e.to_string()))?,
                        ))
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let mode = if portal.is_some() {
            PortalMode::Mapped
        } else {
            if mode == PortalMode::Mapped {
                tracing::warn!(
                    "vfio-user server at {} offers no mappable portal: portal stores are trapped",
                    socket.display()
                );
            }
            PortalMode::Trapped
        };
        let mut dev = Self {
            socket: socket.to_path_buf(),
            conn: Arc::new(Mutex::new(Conn {
                client,
                failed: false,
            })),
            pci,
            msix_cap,
            msix,
            layout,
            sink,
            armed: vec![true; parked.len()],
            parked,
            mode,
            portal,
            slot: Some(PortalSlot {
                vm,
                slot,
                gpa: None,
            }),
            counters: Arc::default(),
            exit,
        };
        // Every vector starts masked: park them all.
        dev.sync_vectors();
        if dev.conn.lock().unwrap_or_else(|e| e.into_inner()).failed {
            return Err(bad(
                "the connection failed during the interrupt set-up".into()
            ));
        }
        // The crate's client does not look at error replies: ask a dsa-server (its statistics
        // region) whether it took guest RAM; another server is taken at its word.
        if let Some(windows) = dev
            .server_stats()
            .and_then(|v| v["server"]["dma_windows"].as_u64())
        {
            if windows != ram.len() as u64 {
                return Err(bad(format!(
                    "the server accepted {windows} of {} guest RAM windows (see its log)",
                    ram.len()
                )));
            }
        }
        Ok(dev)
    }

    /// The server's device state and counters (its statistics region), as JSON.
    pub fn server_stats(&self) -> Option<serde_json::Value> {
        let mut buf = vec![0u8; STATS_REGION_SIZE as usize];
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if c.failed || c.client.region_read(STATS_REGION, 0, &mut buf).is_err() {
            return None;
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        serde_json::from_slice(&buf[..end]).ok()
    }

    /// The client-side counters.
    pub fn client_stats(&self) -> ClientStats {
        let c = &self.counters;
        ClientStats {
            socket: self.socket.display().to_string(),
            portal: self.mode,
            portal_mapped_in_guest: self.slot.as_ref().is_some_and(|s| s.gpa.is_some()),
            portal_exits: c.portal_exits.load(Ordering::Relaxed),
            portal_posts: c.portal_posts.load(Ordering::Relaxed),
            portal_post_drops: c.portal_post_drops.load(Ordering::Relaxed),
            register_messages: c.register_messages.load(Ordering::Relaxed),
            irq_switches: c.irq_switches.load(Ordering::Relaxed),
            failed: self.conn.lock().unwrap_or_else(|e| e.into_inner()).failed,
        }
    }

    /// Runs `f` on the connection; the first failure stops the VM with one error line.
    fn with_conn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut vfio_user::Client) -> Result<T, vfio_user::Error>,
    ) -> Option<T> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if c.failed {
            return None;
        }
        match f(&mut c.client) {
            Ok(v) => Some(v),
            Err(e) => {
                c.failed = true;
                tracing::error!(
                    "vfio-user server at {} failed ({what}): {e}; stopping the VM",
                    self.socket.display()
                );
                self.exit.request(ExitReason::DeviceError);
                None
            }
        }
    }

    fn set_vector_fd(&self, v: u16, fd: &EventFd) {
        use std::os::fd::AsRawFd;
        self.counters.irq_switches.fetch_add(1, Ordering::Relaxed);
        let raw = fd.as_raw_fd();
        self.with_conn("SET_IRQS", |c| {
            c.set_irqs(
                VFIO_PCI_MSIX_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                u32::from(v),
                1,
                &[raw],
            )
        });
    }

    /// What a parked vector caught becomes its pending bit.
    fn collect_parked(&mut self) {
        for v in 0..self.parked.len() {
            if !self.armed[v] && self.parked[v].read().is_ok_and(|n| n > 0) {
                self.msix.trigger(v as u16);
            }
        }
    }

    /// Points each vector's server eventfd at its irqfd (deliverable) or at its parking
    /// eventfd (masked, or MSI-X off).
    fn sync_vectors(&mut self) {
        for v in 0..self.parked.len() {
            let want = self.msix.deliverable(v as u16);
            if want == self.armed[v] {
                continue;
            }
            self.armed[v] = want;
            if want {
                if let Some(fd) = self.sink.eventfd(v as u16) {
                    self.set_vector_fd(v as u16, fd);
                }
                // Caught while switching: deliver it now (the route is already pushed).
                if self.parked[v].read().is_ok_and(|n| n > 0) {
                    self.msix.trigger(v as u16);
                }
            } else {
                self.set_vector_fd(v as u16, &self.parked[v]);
            }
        }
    }

    fn in_range(offset: u64, len: usize, (start, size): (u64, u64)) -> bool {
        offset >= start && offset.saturating_add(len as u64) <= start + size
    }

    fn install_portal(&mut self, addr: Option<u64>) {
        let (Some(portal), Some(slot)) = (self.portal.as_ref(), self.slot.as_mut()) else {
            return;
        };
        let region = |gpa: u64, size: u64| kvm_bindings::kvm_userspace_memory_region {
            slot: slot.slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: portal.host_addr(),
        };
        if let Some(old) = slot.gpa.take() {
            // SAFETY: deleting a slot (size 0) this device installed; no memory is handed over.
            if let Err(e) = unsafe { slot.vm.set_user_memory_region(region(old, 0)) } {
                tracing::error!("removing the portal memory slot at {old:#x}: {e}");
            }
        }
        if let Some(gpa) = addr {
            // SAFETY: the mapping is `portal.len()` bytes, page aligned, and lives as long as
            // this device (which removes the slot before it is dropped: see Drop); KVM only
            // touches it while a vCPU runs.
            match unsafe {
                slot.vm
                    .set_user_memory_region(region(gpa, portal.len() as u64))
            } {
                Ok(()) => slot.gpa = Some(gpa),
                Err(e) => tracing::warn!(
                    "cannot map the portal page at {gpa:#x} ({e}): portal stores exit to dsavmm"
                ),
            }
        }
    }
}

impl Drop for VfioUserDsa {
    fn drop(&mut self) {
        self.install_portal(None);
    }
}

impl PciDevice for VfioUserDsa {
    fn config(&self) -> &PciConfig {
        &self.pci
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.pci
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.pci.write(reg, offset, data);
        // BARs and the expansion ROM are dsavmm's; everything else is the device's too.
        if !(4..=9).contains(&reg) && reg != 12 {
            let at = (reg * 4 + offset) as u64;
            self.with_conn("config write", |c| {
                c.region_write(VFIO_PCI_CONFIG_REGION_INDEX, at, data)
            });
        }
        if reg == self.msix_cap / 4 {
            self.collect_parked();
            let ctrl = self.pci.read_word(self.msix_cap + 2);
            self.msix.set_control(ctrl);
            self.sync_vectors();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if bar != 0 {
            return; // portal reads return all ones
        }
        let l = self.layout;
        if Self::in_range(offset, data.len(), l.table) {
            self.msix.table_read(offset - l.table.0, data);
        } else if Self::in_range(offset, data.len(), l.pba) {
            self.collect_parked();
            self.msix.pba_read(offset - l.pba.0, data);
        } else {
            self.counters
                .register_messages
                .fetch_add(1, Ordering::Relaxed);
            let mut buf = vec![0u8; data.len()];
            if self
                .with_conn("register read", |c| {
                    c.region_read(VFIO_PCI_BAR0_REGION_INDEX, offset, &mut buf)
                })
                .is_some()
            {
                data.copy_from_slice(&buf);
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            0 => {
                let l = self.layout;
                if Self::in_range(offset, data.len(), l.table) {
                    self.collect_parked();
                    self.msix.table_write(offset - l.table.0, data);
                    self.sync_vectors();
                } else if Self::in_range(offset, data.len(), l.pba) {
                    // read-only
                } else {
                    self.counters
                        .register_messages
                        .fetch_add(1, Ordering::Relaxed);
                    self.with_conn("register write", |c| {
                        c.region_write(VFIO_PCI_BAR0_REGION_INDEX, offset, data)
                    });
                }
            }
            2 => {
                self.counters.portal_exits.fetch_add(1, Ordering::Relaxed);
                if let (Some(p), Ok(desc)) = (self.portal.as_ref(), <&[u8; 64]>::try_from(data)) {
                    if offset.is_multiple_of(64) {
                        if p.post(offset as usize, desc, POST_WAIT) {
                            p.ring();
                            self.counters.portal_posts.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.counters
                                .portal_post_drops
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                }
                self.with_conn("portal write", |c| {
                    c.region_write(VFIO_PCI_BAR2_REGION_INDEX, offset, data)
                });
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
        if bar == 2 && self.mode == PortalMode::Mapped {
            self.install_portal(addr);
        }
    }
}
