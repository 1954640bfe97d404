//! One physical DSA function owned through kernel VFIO (type1 container and group): its
//! registers read and written through the VFIO region file, its commands run polled, its
//! portal BAR mapped, guest RAM DMA-mapped at IOVA = GPA, its MSI-X vectors bound to eventfds.
//!
//! Register offsets come from the device's own OFFSETS and capability registers, so a real
//! DSA (whose tables sit elsewhere than the vDSA's) is driven correctly too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd};
use vmm_sys_util::eventfd::EventFd;

use super::VfioError;
use crate::dsa::command::CMDSTS_ACTIVE;
use crate::dsa::regs;

/// How long a polled physical command may stay active.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of BAR2 per WQ (four 4 KiB portal pages).
pub const PORTAL_STRIDE: u64 = 0x4000;
/// The most vectors the mediated device binds (a DSA has at most 256 WQs + 1; the vDSA 9).
const MAX_VECTORS: u32 = 257;

/// The geometry and table placement the physical device reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysicalCaps {
    /// GENCAP.
    pub gencap: u64,
    /// WQCAP.
    pub wqcap: u64,
    /// Number of WQs.
    pub wqs: usize,
    /// Number of groups.
    pub groups: usize,
    /// Number of engines.
    pub engines: usize,
    /// WQCAP.total_wq_size.
    pub total_wq_size: u16,
    /// Byte offset of GRPCFG in BAR0.
    pub grpcfg: u64,
    /// Byte offset of WQCFG in BAR0.
    pub wqcfg: u64,
    /// Bytes per WQCFG entry (32 << WQCAP.wqcfg_size).
    pub wqcfg_size: u64,
    /// log2 of the device max transfer size.
    pub max_xfer_shift: u8,
    /// log2 of the device max batch size.
    pub max_batch_shift: u8,
}

impl PhysicalCaps {
    /// Decodes the capability registers (docs/dsa-device-model.md §2).
    pub fn decode(gencap: u64, wqcap: u64, grpcap: u64, engcap: u64, offsets: u64) -> Self {
        Self {
            gencap,
            wqcap,
            wqs: ((wqcap >> 16) & 0xff) as usize,
            groups: (grpcap & 0xff) as usize,
            engines: (engcap & 0xff) as usize,
            total_wq_size: (wqcap & 0xffff) as u16,
            grpcfg: (offsets & 0xffff) * 0x100,
            wqcfg: ((offsets >> 16) & 0xffff) * 0x100,
            wqcfg_size: 32 << ((wqcap >> 24) & 0xf),
            max_xfer_shift: ((gencap >> 16) & 0x1f) as u8,
            max_batch_shift: ((gencap >> 21) & 0xf) as u8,
        }
    }
}

/// The physical function.
pub struct PhysicalDsa {
    bdf: String,
    device: VfioDevice,
    container: Arc<VfioContainer>,
    caps: PhysicalCaps,
    portals: *mut u8,
    portals_len: usize,
    vectors: u32,
    /// Set once `open` has checked it is a DSA: only then does Drop disable and reset it.
    owned: bool,
}

// SAFETY: `portals` is a shared device mapping only written with volatile stores; the VFIO
// objects are file descriptors. Callers serialise through the device mutex.
unsafe impl Send for PhysicalDsa {}
// SAFETY: as above; every method takes &self and uses pread/pwrite or volatile stores.
unsafe impl Sync for PhysicalDsa {}

/// The sysfs directory of PCI function `bdf` (`0000:00:03.0`; the domain may be left out).
pub fn sysfs_path(bdf: &str) -> Result<PathBuf, VfioError> {
    let full = if bdf.matches(':').count() == 1 {
        format!("0000:{bdf}")
    } else {
        bdf.to_string()
    };
    let ok = full.len() == 12
        && full.chars().enumerate().all(|(i, c)| match i {
            4 | 7 => c == ':',
            10 => c == '.',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        return Err(VfioError::BadAddress(bdf.to_string()));
    }
    Ok(Path::new("/sys/bus/pci/devices").join(full.to_ascii_lowercase()))
}

/// The driver `path` is bound to (the last part of its `driver` link).
fn bound_driver(path: &Path) -> Option<String> {
    std::fs::read_link(path.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

impl PhysicalDsa {
    /// Opens `bdf` (bound to vfio-pci) in a container of its own, resets it, enables memory
    /// decoding and bus mastering, and maps its portal BAR. `kvm_vfio` is the VM's KVM VFIO
    /// device, if it has one (it tells KVM about the group, for coherency).
    pub fn open(bdf: &str, kvm_vfio: Option<Arc<VfioDeviceFd>>) -> Result<Self, VfioError> {
        let path = sysfs_path(bdf)?;
        if !path.exists() {
            return Err(VfioError::NoDevice(bdf.to_string()));
        }
        match bound_driver(&path).as_deref() {
            Some("vfio-pci") => {}
            other => {
                return Err(VfioError::NotVfio(
                    bdf.to_string(),
                    other.unwrap_or("no driver").to_string(),
                ))
            }
        }
        if !Path::new("/dev/vfio/vfio").exists() {
            return Err(VfioError::Open(
                bdf.to_string(),
                "/dev/vfio/vfio is missing (load vfio and vfio_iommu_type1)".into(),
            ));
        }
        let open_err = |e: vfio_ioctls::VfioError| VfioError::Open(bdf.to_string(), e.to_string());
        let container = Arc::new(VfioContainer::new(kvm_vfio).map_err(open_err)?);
        let device = VfioDevice::new(&path, container.clone(), false).map_err(open_err)?;
        let bar2 = device.get_region_size(VFIO_PCI_BAR2_REGION_INDEX);
        if device.get_region_size(VFIO_PCI_BAR0_REGION_INDEX) < 0x1000 || bar2 < PORTAL_STRIDE {
            return Err(VfioError::NotDsa(
                bdf.to_string(),
                "BAR0 or BAR2 is missing".into(),
            ));
        }
        if device.get_region_flags(VFIO_PCI_BAR2_REGION_INDEX) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(VfioError::NotDsa(
                bdf.to_string(),
                "its portal BAR cannot be mapped".into(),
            ));
        }
        // Nothing is written to a function that is not a DSA: its class code (config 0x09..0x0b)
        // first, then (below) its capability registers, before `Self` (whose Drop sends
        // DISABLE/RESET commands) owns it.
        let mut class = [0u8; 4];
        device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut class, 8);
        let class = u32::from_le_bytes(class) >> 8;
        if class != crate::dsa::DSA_CLASS {
            return Err(VfioError::NotDsa(
                bdf.to_string(),
                format!(
                    "its PCI class is {class:#08x}, not {:#08x} (a DSA)",
                    crate::dsa::DSA_CLASS
                ),
            ));
        }
        device.reset();
        // Memory space and bus master enable (PCI command register bits 1 and 2).
        let mut cmd = [0u8; 2];
        device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, 4);
        let v = u16::from_le_bytes(cmd) | 0x6;
        device.region_write(VFIO_PCI_CONFIG_REGION_INDEX, &v.to_le_bytes(), 4);

        use std::os::fd::AsRawFd;
        let len =
            usize::try_from(bar2).map_err(|_| VfioError::NotDsa(bdf.into(), "BAR2".into()))?;
        // SAFETY: a fresh shared mapping of the portal BAR through the VFIO device file at the
        // region's offset; the kernel picks the address and checks the range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                device.get_region_offset(VFIO_PCI_BAR2_REGION_INDEX) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(VfioError::Open(
                bdf.to_string(),
                format!("mmap of BAR2: {}", std::io::Error::last_os_error()),
            ));
        }
        let vectors = device
            .get_irq_info(vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |i| i.count)
            .min(MAX_VECTORS);
        let mut dev = Self {
            bdf: bdf.to_string(),
            device,
            container,
            caps: PhysicalCaps::default(),
            portals: p.cast(),
            portals_len: len,
            vectors,
            owned: false,
        };
        let caps = PhysicalCaps::decode(
            dev.r64(regs::GENCAP),
            dev.r64(regs::WQCAP),
            dev.r64(regs::GRPCAP),
            dev.r64(regs::ENGCAP),
            dev.r64(regs::OFFSETS),
        );
        if caps.wqs == 0 || caps.groups == 0 || caps.engines == 0 || caps.wqcfg == 0 {
            return Err(VfioError::NotDsa(
                bdf.to_string(),
                format!("its capability registers describe no usable DSA: {caps:?}"),
            ));
        }
        if u64::try_from(caps.wqs).unwrap_or(u64::MAX) * PORTAL_STRIDE > bar2 {
            return Err(VfioError::NotDsa(
                bdf.to_string(),
                format!(
                    "BAR2 of {bar2:#x} bytes has no portal for each of {} WQs",
                    caps.wqs
                ),
            ));
        }
        dev.caps = caps;
        dev.owned = true;
        tracing::info!(
            "physical DSA {bdf}: {} WQs, {} groups, {} engines, {} WQ entries, {vectors} MSI-X vectors",
            caps.wqs,
            caps.groups,
            caps.engines,
            caps.total_wq_size
        );
        Ok(dev)
    }

    /// The PCI address it was opened by.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Its geometry.
    pub fn caps(&self) -> PhysicalCaps {
        self.caps
    }

    /// MSI-X vectors it has (bounded).
    pub fn vectors(&self) -> u32 {
        self.vectors
    }

    /// Reads a register dword.
    pub fn r32(&self, off: u64) -> u32 {
        let mut b = [0xffu8; 4];
        self.device
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, &mut b, off);
        u32::from_le_bytes(b)
    }

    /// Reads a register qword (two dwords, low first, as the driver does).
    pub fn r64(&self, off: u64) -> u64 {
        u64::from(self.r32(off)) | (u64::from(self.r32(off + 4)) << 32)
    }

    /// Writes a register dword.
    pub fn w32(&self, off: u64, v: u32) {
        self.device
            .region_write(VFIO_PCI_BAR0_REGION_INDEX, &v.to_le_bytes(), off);
    }

    /// Runs a command polled (CMD bit 31 clear: no interrupt) and returns its CMDSTS error
    /// byte; 0x03 (internal error) if it stays active past the timeout.
    pub fn command(&self, code: u32, operand: u32) -> u8 {
        self.w32(regs::CMD, (code << 20) | (operand & 0xf_ffff));
        let start = Instant::now();
        loop {
            let sts = self.r32(regs::CMDSTS);
            if sts & CMDSTS_ACTIVE == 0 {
                return sts as u8;
            }
            if start.elapsed() > COMMAND_TIMEOUT {
                tracing::error!("physical DSA {}: command {code} still active", self.bdf);
                return 0x03;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Writes WQCFG dword `d` of physical WQ `wq`.
    pub fn write_wqcfg(&self, wq: usize, d: usize, v: u32) {
        self.w32(
            self.caps.wqcfg + wq as u64 * self.caps.wqcfg_size + d as u64 * 4,
            v,
        );
    }

    /// Reads WQCFG dword `d` of physical WQ `wq`.
    pub fn read_wqcfg(&self, wq: usize, d: usize) -> u32 {
        self.r32(self.caps.wqcfg + wq as u64 * self.caps.wqcfg_size + d as u64 * 4)
    }

    /// Writes GRPCFG qword `q` of physical group `g`.
    pub fn write_grpcfg(&self, g: usize, q: usize, v: u64) {
        let off = self.caps.grpcfg + g as u64 * 64 + q as u64 * 8;
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }

    /// The host address of physical WQ `wq`'s 16 KiB of portal pages.
    pub fn portal(&self, wq: usize) -> Option<u64> {
        let off = (wq as u64).checked_mul(PORTAL_STRIDE)?;
        (off + PORTAL_STRIDE <= self.portals_len as u64).then(|| self.portals as u64 + off)
    }

    /// Stores a descriptor into physical WQ `wq`'s portal from this process (a guest store
    /// that exited to dsavmm instead of reaching the mapped page). With MOVDIR64B on this CPU
    /// it is one 64-byte store, as hardware needs; without it, eight 8-byte stores, the last
    /// quadword first, which only a dsa-server's mapped portal reassembles (docs/vfio.md).
    pub fn post(&self, wq: usize, offset_in_portal: u64, desc: &[u8; 64]) -> bool {
        let Some(base) = self.portal(wq) else {
            return false;
        };
        if !offset_in_portal.is_multiple_of(64) || offset_in_portal >= PORTAL_STRIDE {
            return false;
        }
        let p = (base + offset_in_portal) as *mut u64;
        if host_has_movdir64b() {
            // SAFETY: `p` is 64-byte aligned and its 64 bytes lie in the live portal mapping
            // (checked above); `desc` is 64 readable bytes; the CPU has MOVDIR64B (CPUID).
            unsafe {
                std::arch::asm!(
                    "movdir64b {dst}, zmmword ptr [{src}]",
                    dst = in(reg) p,
                    src = in(reg) desc.as_ptr(),
                    options(nostack, preserves_flags)
                );
            }
            return true;
        }
        for i in (0..8).rev() {
            let mut q = [0u8; 8];
            q.copy_from_slice(&desc[i * 8..i * 8 + 8]);
            // SAFETY: `p + i` lies in the live portal mapping (checked above); a volatile
            // store to device memory.
            unsafe { p.add(i).write_volatile(u64::from_le_bytes(q)) };
        }
        true
    }

    /// Maps `size` bytes at host address `host` for DMA at IOVA `iova`.
    ///
    /// # Safety
    /// `host..host+size` must stay mapped (guest RAM) until the container is dropped.
    pub unsafe fn dma_map(&self, iova: u64, size: u64, host: u64) -> Result<(), VfioError> {
        let size = usize::try_from(size).map_err(|_| VfioError::Dma(iova, size, "size".into()))?;
        // SAFETY: the caller keeps the range mapped for the container's life; dsavmm never
        // makes Rust references into guest RAM (vm-memory's volatile accessors only).
        unsafe { self.container.vfio_dma_map(iova, size, host as *mut u8) }
            .map_err(|e| VfioError::Dma(iova, size as u64, e.to_string()))
    }

    /// Binds every MSI-X vector to an eventfd (all of them: VFIO sets a contiguous range).
    pub fn bind_vectors(&self, fds: &[&EventFd]) -> Result<(), VfioError> {
        self.device
            .enable_msix(fds.to_vec())
            .map_err(|e| VfioError::Interrupts(e.to_string()))
    }
}

/// Whether this CPU executes MOVDIR64B (CPUID.(EAX=7,ECX=0):ECX bit 28).
fn host_has_movdir64b() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 28) != 0)
}

impl Drop for PhysicalDsa {
    fn drop(&mut self) {
        // What the guest was given goes back disabled and reset (VM exit or crash: the kernel
        // resets the function again when the last descriptor closes). A function refused by
        // `open` is written nothing.
        if self.owned {
            let _ = self.command(crate::dsa::command::code::DISABLE_DEVICE, 0);
            let _ = self.command(crate::dsa::command::code::RESET_DEVICE, 0);
            let _ = self.device.disable_msix();
        }
        // SAFETY: exactly the mapping made in `open`; the guest's memory slots on it were
        // removed by the device before it dropped this.
        unsafe { libc::munmap(self.portals.cast(), self.portals_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_strictly() {
        assert_eq!(
            sysfs_path("00:03.0").unwrap(),
            Path::new("/sys/bus/pci/devices/0000:00:03.0")
        );
        assert_eq!(
            sysfs_path("0000:6A:01.0").unwrap(),
            Path::new("/sys/bus/pci/devices/0000:6a:01.0")
        );
        for bad in [
            "",
            "../../etc",
            "0000:00:03",
            "00:03.0/../x",
            "zz:03.0",
            "0000:00:03.0 ",
        ] {
            assert!(sysfs_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn capabilities_decode_the_vdsa_and_a_real_layout() {
        let cfg = crate::dsa::DsaConfig::default();
        let c = crate::dsa::regs::Caps::new(&cfg, &[0, 3]);
        let p = PhysicalCaps::decode(c.gencap, c.wqcap, c.grpcap, c.engcap, c.offsets[0]);
        assert_eq!((p.wqs, p.groups, p.engines), (8, 4, 4));
        assert_eq!((p.grpcfg, p.wqcfg, p.wqcfg_size), (0x400, 0x500, 32));
        assert_eq!(
            (p.max_xfer_shift, p.max_batch_shift, p.total_wq_size),
            (21, 10, 128)
        );
        // An SPR DSA: 8 WQs, 128 entries, wqcfg_size 0, GRPCFG at 0x400, WQCFG at 0x500...
        // with WQCAP.wqcfg_size = 1 the entries are 64 bytes apart.
        let p = PhysicalCaps::decode(0, (1 << 24) | (8 << 16) | 128, 4, 4, 0x0008_0004);
        assert_eq!((p.grpcfg, p.wqcfg, p.wqcfg_size), (0x400, 0x800, 64));
    }
}
