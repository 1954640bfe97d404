//! VM lifecycle: KVM VM and irqchip, guest memory, devices on the buses, boot payload, vCPU
//! threads, and pause / resume / stop.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arch::layout;
use devices::bus::Bus;
use devices::dsa::{DsaDevice, Execution};
use devices::legacy::{
    i8042::I8042, serial::SerialConsole, sleep::AcpiSleep, status_port::StatusPort, ExitReason,
    ExitSignal,
};
use devices::pci::kvm_msi::{GsiRouter, KvmMsiSink};
use devices::pci::{attach_pci_root, PciWindows, SharedPciDevice};
use devices::vfio_user::client::{RamRegion, VfioUserDsa};
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, KVM_CAP_EXCEPTION_PAYLOAD, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot;
use crate::config::{
    check_cmdline, check_memory, check_vcpus, host_memory_mib, DsaSpec, SerialMode, VmSpec,
};
use crate::dsa_handle::DsaHandle;
use crate::seccomp::{Filter, SeccompMode, ThreadKind};
use crate::vcpu::{PauseGate, Vcpu, VcpuStats};

/// TSS address KVM needs on Intel (three pages below the identity map page).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// EPT identity map page.
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// GSI of COM1.
const COM1_GSI: u32 = 4;
/// GSI of the i8042 keyboard.
const I8042_GSI: u32 = 1;
/// KVM_CAP_EXIT_ON_EMULATION_FAILURE: emulation failures exit with the instruction bytes
/// instead of queuing #UD (docs/dsa-device-model.md §0, trap 2).
const KVM_CAP_EXIT_ON_EMULATION_FAILURE: u32 = 204;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible?)")]
    KvmOpen(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// A required KVM capability is missing.
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    Memory(u64, String),
    /// Loading the kernel, initramfs or boot structures failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A device could not be set up.
    #[error("cannot set up {0}: {1}")]
    Device(&'static str, String),
    /// The console file could not be opened.
    #[error("cannot open serial output {0}: {1}")]
    SerialFile(std::path::PathBuf, std::io::Error),
    /// A vfio-user server could not be reached or serves no usable device.
    #[error("DSA: {0}")]
    VfioUser(String),
    /// A mediated VFIO DSA could not be set up.
    #[error("DSA backend=vfio: {0}")]
    Vfio(String),
    /// A thread could not be started.
    #[error("cannot start {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// A built VM, running or ready to run.
pub struct Vm {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// End-of-VM signal.
    pub exit: Arc<ExitSignal>,
    /// Pause control.
    pub pause: Arc<PauseGate>,
    /// Per-vCPU exit counters.
    pub vcpu_stats: Vec<Arc<VcpuStats>>,
    /// The console.
    pub serial: Arc<Mutex<SerialConsole>>,
    /// The keyboard controller (for Ctrl-Alt-Del).
    pub i8042: Arc<Mutex<I8042>>,
    /// The virtual DSA devices, in `--dsa` order.
    pub dsa: Vec<DsaHandle>,
    /// The VM itself, held for as long as the memory slots and devices refer to it.
    _vm_fd: Arc<VmFd>,
    vcpus: Vec<Vcpu>,
    threads: Vec<JoinHandle<()>>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

fn serial_output(mode: &SerialMode) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match mode {
        SerialMode::Stdout => Box::new(std::io::stdout()),
        SerialMode::None => Box::new(std::io::sink()),
        SerialMode::File(p) => {
            Box::new(File::create(p).map_err(|e| VmError::SerialFile(p.clone(), e))?)
        }
    })
}

impl Vm {
    /// Builds a VM from `spec`: everything short of starting the vCPUs. DSA engine worker
    /// threads start here, under the vCPU filter of `seccomp`.
    pub fn build(
        spec: &VmSpec,
        force_movdir64b: bool,
        exit: Arc<ExitSignal>,
        seccomp: SeccompMode,
    ) -> Result<Self, VmError> {
        check_memory(spec.memory_mib, host_memory_mib())?;
        check_cmdline(&spec.cmdline)?;
        let kvm = Kvm::new().map_err(VmError::KvmOpen)?;
        let vcpus = check_vcpus(u64::from(spec.vcpus), kvm.get_max_vcpus())?;
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip"),
            (Cap::Irqfd, "irqfd"),
            (Cap::UserMemory, "user memory"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("CREATE_VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("SET_TSS_ADDR"))?;
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("SET_IDENTITY_MAP_ADDR"))?;
        vm_fd.create_irq_chip().map_err(kvm_err("CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(kvm_err("CREATE_PIT2"))?;
        if vm_fd.check_extension_raw(u64::from(KVM_CAP_EXIT_ON_EMULATION_FAILURE)) > 0 {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE,
                args: [1, 0, 0, 0],
                ..Default::default()
            };
            vm_fd
                .enable_cap(&cap)
                .map_err(kvm_err("ENABLE_CAP(EXIT_ON_EMULATION_FAILURE)"))?;
        } else {
            tracing::warn!("KVM lacks KVM_CAP_EXIT_ON_EMULATION_FAILURE: MOVDIR64B to DSA portals will fault in the guest");
        }

        // Exceptions dsavmm raises for instructions it emulates are then queued as pending, so
        // that KVM delivers them with the CPU's rules (RF, nested exceptions, CR2 at delivery).
        let exception_payload = vm_fd.check_extension_raw(u64::from(KVM_CAP_EXCEPTION_PAYLOAD)) > 0
            && {
                let cap = kvm_enable_cap {
                    cap: KVM_CAP_EXCEPTION_PAYLOAD,
                    args: [1, 0, 0, 0],
                    ..Default::default()
                };
                vm_fd.enable_cap(&cap).is_ok()
            };
        tracing::debug!("KVM_CAP_EXCEPTION_PAYLOAD enabled: {exception_payload}");

        let mem_size = spec.memory_mib << 20;
        // A vfio-user server DMAs into guest RAM: then it is a memfd the server can map.
        let shared = spec
            .dsa
            .iter()
            .any(|d| matches!(d, DsaSpec::VfioUser { .. }));
        let mem = guest_ram(mem_size, shared).map_err(|e| VmError::Memory(spec.memory_mib, e))?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live, page-aligned mapping of exactly `memory_size` bytes.
            // Its backing is reference-counted and held by `mem`, by every vCPU thread and by
            // the devices, so it is unmapped only after the last of them is gone: no vCPU can
            // run then, and KVM never touches a slot's memory without a running vCPU or a device.
            unsafe { vm_fd.set_user_memory_region(r) }
                .map_err(kvm_err("SET_USER_MEMORY_REGION"))?;
        }

        // The boot payload.
        let kernel = boot::load_kernel(&mem, &spec.kernel)?;
        let cmdline_len = boot::load_cmdline(&mem, &spec.cmdline)?;
        let initrd = spec
            .initramfs
            .as_deref()
            .map(|p| boot::load_initrd(&mem, p, &kernel, mem_size))
            .transpose()?;
        let rsdp = arch::acpi::write_acpi_tables(&mem, &arch::acpi::AcpiConfig { vcpus })
            .map_err(boot::BootError::from)?;
        boot::write_zero_page(&mem, &kernel, cmdline_len, initrd, mem_size, rsdp)?;
        let cr3 = arch::regs::write_boot_structures(&mem).map_err(boot::BootError::from)?;

        // Devices.
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let serial_irq =
            EventFd::new(0).map_err(|e| VmError::Device("serial irq", e.to_string()))?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_GSI)
            .map_err(kvm_err("IRQFD(serial)"))?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            serial_irq,
            serial_output(&spec.serial)?,
        )));
        let dev_err = |what| move |e: devices::bus::BusError| VmError::Device(what, e.to_string());
        pio.insert(serial.clone(), u64::from(layout::COM1_PORT), 8)
            .map_err(dev_err("serial"))?;
        let kbd_irq = EventFd::new(0).map_err(|e| VmError::Device("i8042 irq", e.to_string()))?;
        vm_fd
            .register_irqfd(&kbd_irq, I8042_GSI)
            .map_err(kvm_err("IRQFD(i8042)"))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone(), Some(kbd_irq))));
        pio.insert(i8042.clone(), u64::from(layout::I8042_PORT), 5)
            .map_err(dev_err("i8042"))?;
        pio.insert(
            Arc::new(Mutex::new(AcpiSleep::new(
                exit.clone(),
                arch::acpi::S5_SLEEP_TYPE,
            ))),
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
            1,
        )
        .map_err(dev_err("ACPI sleep register"))?;
        pio.insert(
            Arc::new(Mutex::new(StatusPort::new(exit.clone()))),
            u64::from(devices::legacy::status_port::STATUS_PORT),
            1,
        )
        .map_err(dev_err("status port"))?;

        let dsa = attach_dsa_devices(&vm_fd, &mem, &pio, &mmio, &spec.dsa, &exit, seccomp)?;

        // vCPUs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("GET_SUPPORTED_CPUID"))?;
        let pause = Arc::new(PauseGate::default());
        let mut vcpu_list = Vec::new();
        let mut vcpu_stats = Vec::new();
        for id in 0..vcpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            arch::cpuid::apply_policy(
                &mut cpuid,
                &arch::cpuid::CpuidParams {
                    apic_id: id,
                    vcpus,
                    force_movdir64b,
                },
            );
            fd.set_cpuid2(&cpuid).map_err(kvm_err("SET_CPUID2"))?;
            set_lint(&fd)?;
            if id == 0 {
                init_boot_vcpu(&fd, kernel.entry, cr3)?;
            }
            let stats = Arc::new(VcpuStats::default());
            vcpu_stats.push(stats.clone());
            vcpu_list.push(Vcpu {
                id,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: mem.clone(),
                exit: exit.clone(),
                pause: pause.clone(),
                stats,
                features: arch::cpuid::paging_features(&cpuid),
                exception_payload,
                warned_ud: false,
            });
        }
        Ok(Self {
            mem,
            exit,
            pause,
            vcpu_stats,
            serial,
            i8042,
            dsa,
            _vm_fd: vm_fd,
            vcpus: vcpu_list,
            threads: Vec::new(),
        })
    }

    /// Starts one thread per vCPU, each under the vCPU seccomp filter of `seccomp`.
    pub fn start(&mut self, seccomp: SeccompMode) -> Result<(), VmError> {
        register_signal_handler(SIGRTMIN(), kick_handler)
            .map_err(|e| VmError::Thread("signal", std::io::Error::from_raw_os_error(e.errno())))?;
        for vcpu in self.vcpus.drain(..) {
            let name = format!("vcpu{}", vcpu.id);
            let filter = Filter::new(ThreadKind::Vcpu, seccomp);
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || vcpu.run(&filter))
                .map_err(|e| VmError::Thread("vCPU", e))?;
            self.threads.push(t);
        }
        Ok(())
    }

    /// Interrupts every vCPU that is inside KVM_RUN.
    fn kick_all(&self) {
        for t in &self.threads {
            if !t.is_finished() {
                let _ = t.kill(SIGRTMIN());
            }
        }
    }

    /// Pauses all vCPUs; returns whether every vCPU parked within a second (or the VM ended).
    pub fn pause(&self) -> bool {
        self.pause.set(true);
        let n = self.threads.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !self.pause.wait_parked(n, &self.exit) {
            if self.exit.is_set() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                self.pause.set(false);
                return false;
            }
            self.kick_all();
        }
        true
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) {
        self.pause.set(false);
    }

    /// Stops the vCPUs (after `exit` was requested) and joins them.
    pub fn stop(&mut self) -> ExitReason {
        self.exit.request(ExitReason::Requested);
        self.pause.set(false);
        while self.threads.iter().any(|t| !t.is_finished()) {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        let _ = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        self.exit.reason().unwrap_or(ExitReason::Requested)
    }

    /// Sends Ctrl-Alt-Del through the keyboard controller.
    pub fn send_ctrl_alt_del(&self) -> Result<(), &'static str> {
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_ctrl_alt_del()
    }

    /// Bytes of guest RAM resident in host memory (pages the guest or the VMM touched).
    pub fn guest_resident_bytes(&self) -> u64 {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mut total = 0u64;
        for region in self.mem.iter() {
            let len = region.len() as usize;
            let mut vec = vec![0u8; len.div_ceil(page)];
            // SAFETY: the range is exactly one live, page-aligned mapping owned by `mem`, and
            // `vec` has one byte per page of it.
            let r = unsafe { libc::mincore(region.as_ptr().cast(), len, vec.as_mut_ptr()) };
            if r == 0 {
                total += vec.iter().filter(|v| **v & 1 != 0).count() as u64 * page as u64;
            }
        }
        total
    }
}

/// Guest RAM of `size` bytes in the regions the memory map gives; with `shared`, backed by
/// one memfd (each region at its own offset) so that a vfio-user server can map it.
fn guest_ram(size: u64, shared: bool) -> Result<GuestMemoryMmap, String> {
    let ranges = arch::boot_params::guest_ram_regions(size);
    if !shared {
        return GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| e.to_string());
    }
    let file = devices::vfio_user::shared_portal::memfd(c"dsavmm-guest-ram", size)
        .map_err(|e| format!("memfd: {e}"))?;
    let mut offset = 0u64;
    let mut with_files = Vec::new();
    for (addr, len) in ranges {
        let f = file.try_clone().map_err(|e| format!("memfd: {e}"))?;
        with_files.push((addr, len, Some(vm_memory::FileOffset::new(f, offset))));
        offset += len as u64;
    }
    GuestMemoryMmap::<()>::from_ranges_with_files(with_files).map_err(|e| e.to_string())
}

/// First KVM memory slot number for devices' mapped BAR pages (RAM uses the ones below).
const DEVICE_SLOT_BASE: u32 = 32;
/// MSI-X vectors reserved for a vfio-user DSA (8 WQs + 1: the most a DSA has).
const VFIO_USER_VECTORS: u16 = 9;

/// Puts the PCI host bridge on the buses and one vDSA per spec on it, with MSI-X routed to
/// KVM irqfds. Without DSA devices there is no PCI bus (nothing for the guest to find).
fn attach_dsa_devices(
    vm_fd: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    specs: &[DsaSpec],
    exit: &Arc<ExitSignal>,
    seccomp: SeccompMode,
) -> Result<Vec<DsaHandle>, VmError> {
    let windows = PciWindows {
        mmio32_start: layout::MMIO_32_START,
        mmio32_size: layout::MMIO_32_BAR_SIZE,
        mmio64_start: layout::MMIO_64_START,
        mmio64_size: layout::MMIO_64_SIZE,
    };
    let pci = attach_pci_root(
        pio,
        mmio,
        windows,
        layout::PCI_ECAM_START,
        layout::PCI_ECAM_SIZE,
    )
    .map_err(|e| VmError::Device("PCI", e.to_string()))?;
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let router = GsiRouter::new(vm_fd.clone(), true);
    let guest_mem = Arc::new(mem.clone());
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let sink_for = |vectors: u16| {
            KvmMsiSink::new(router.clone(), vectors)
                .map(Arc::new)
                .map_err(|e| VmError::Device("DSA interrupts", e.to_string()))
        };
        let (handle, dev): (DsaHandle, SharedPciDevice) = match spec {
            DsaSpec::Software(cfg) => {
                let sink = sink_for(cfg.msix_vectors())?;
                let d = match cfg.exec {
                    Execution::Inline => DsaDevice::new(*cfg, guest_mem.clone(), sink)
                        .map(|d| Arc::new(Mutex::new(d))),
                    Execution::Workers => {
                        // The workers run what vCPU threads ran before them (the engine over
                        // guest memory, irqfd writes), so they get the vCPU filter.
                        // A worker whose filter cannot be installed runs nothing and stops the
                        // VM, as a vCPU thread does.
                        let exit = exit.clone();
                        let init = Arc::new(move || {
                            match Filter::new(ThreadKind::Vcpu, seccomp).install() {
                                Ok(()) => true,
                                Err(e) => {
                                    tracing::error!("DSA engine thread: {e}");
                                    eprintln!("dsavmm: error: DSA engine thread: {e}");
                                    exit.request(ExitReason::VcpuError);
                                    false
                                }
                            }
                        });
                        DsaDevice::with_engine_workers(*cfg, guest_mem.clone(), sink, init)
                            .map(|(d, _pool)| d)
                    }
                }
                .map_err(|e| VmError::Device("DSA", e.to_string()))?;
                (DsaHandle::Local(d.clone()), d)
            }
            DsaSpec::VfioUser { socket, portal } => {
                let ram: Vec<RamRegion<'_>> = mem
                    .iter()
                    .filter_map(|r| {
                        let fo = r.file_offset()?;
                        Some(RamRegion {
                            gpa: r.start_addr().0,
                            size: r.len(),
                            file: fo.file(),
                            offset: fo.start(),
                        })
                    })
                    .collect();
                let sink = sink_for(VFIO_USER_VECTORS)?;
                let d = Arc::new(Mutex::new(
                    VfioUserDsa::connect(
                        socket,
                        *portal,
                        &ram,
                        sink,
                        vm_fd.clone(),
                        DEVICE_SLOT_BASE + i as u32,
                        exit.clone(),
                    )
                    .map_err(|e| VmError::VfioUser(e.to_string()))?,
                ));
                (DsaHandle::VfioUser(d.clone()), d)
            }
            DsaSpec::Vfio { device, wqs } => {
                attach_vfio_dsa(vm_fd, mem, &sink_for, device, wqs.as_deref(), i)?
            }
        };
        let bdf = pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(dev)
            .map_err(|e| VmError::Device("DSA", e.to_string()))?;
        tracing::info!("dsa{i}: {spec:?} at PCI {bdf:?}");
        out.push(handle);
    }
    Ok(out)
}

/// First KVM memory slot of the mediated DSAs' portal pages: 8 per device (one per WQ).
const VFIO_PORTAL_SLOT_BASE: u32 = 64;

/// Opens the physical DSA `device` through VFIO for DSA number `index`: guest RAM DMA-mapped at
/// IOVA = GPA, the mediated front end over `wqs` (all of the device's if `None`).
fn attach_vfio_dsa(
    vm_fd: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    sink_for: &dyn Fn(u16) -> Result<Arc<KvmMsiSink>, VmError>,
    device: &str,
    wqs: Option<&[usize]>,
    index: usize,
) -> Result<(DsaHandle, SharedPciDevice), VmError> {
    use devices::vfio::device::{guest_config, VfioDsa};
    use devices::vfio::physical::PhysicalDsa;
    let verr = |e: devices::vfio::VfioError| VmError::Vfio(e.to_string());
    // The KVM VFIO device tells KVM about the group (non-coherent DMA); without it VFIO still
    // works, so a KVM that lacks it is only logged.
    let mut kvm_dev = kvm_bindings::kvm_create_device {
        type_: kvm_bindings::kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = match vm_fd.create_device(&mut kvm_dev) {
        Ok(fd) => Some(Arc::new(vfio_ioctls::VfioDeviceFd::new_from_kvm(fd))),
        Err(e) => {
            tracing::warn!("no KVM VFIO device ({e}); continuing without it");
            None
        }
    };
    let phys = Arc::new(PhysicalDsa::open(device, kvm_vfio).map_err(verr)?);
    for r in mem.iter() {
        // SAFETY: guest RAM stays mapped for the VM's life, longer than the container (the
        // device holding it is dropped with the VM, before the memory).
        unsafe { phys.dma_map(r.start_addr().0, r.len(), r.as_ptr() as u64) }.map_err(verr)?;
    }
    let wqs: Vec<usize> =
        wqs.map_or_else(|| (0..phys.caps().wqs.min(8)).collect(), <[usize]>::to_vec);
    devices::vfio::device::check_wqs(&wqs, phys.caps().wqs).map_err(verr)?;
    let cfg = guest_config(&phys.caps(), wqs.len()).map_err(verr)?;
    let sink = sink_for(devices::vfio::device::guest_vectors(phys.vectors(), &cfg))?;
    let slot = VFIO_PORTAL_SLOT_BASE + 8 * index as u32;
    let d = Arc::new(Mutex::new(
        VfioDsa::new(phys, wqs, sink, vm_fd.clone(), slot).map_err(verr)?,
    ));
    Ok((DsaHandle::Vfio(d.clone()), d))
}

/// LINT0 as ExtINT and LINT1 as NMI, as a PC's firmware leaves them.
fn set_lint(fd: &VcpuFd) -> Result<(), VmError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_EXTINT: u32 = 0x7;
    const APIC_MODE_NMI: u32 = 0x4;
    let mut lapic = fd.get_lapic().map_err(kvm_err("GET_LAPIC"))?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut b = [0u8; 4];
        for (i, v) in b.iter_mut().enumerate() {
            *v = lapic.regs[off + i] as u8;
        }
        let val = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, v) in val.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *v as _;
        }
    }
    fd.set_lapic(&lapic).map_err(kvm_err("SET_LAPIC"))
}

fn init_boot_vcpu(fd: &VcpuFd, entry: u64, cr3: u64) -> Result<(), VmError> {
    let mut sregs = fd.get_sregs().map_err(kvm_err("GET_SREGS"))?;
    arch::regs::setup_long_mode_sregs(&mut sregs, cr3);
    fd.set_sregs(&sregs).map_err(kvm_err("SET_SREGS"))?;
    fd.set_regs(&arch::regs::boot_regs(entry))
        .map_err(kvm_err("SET_REGS"))?;
    fd.set_fpu(&arch::regs::boot_fpu())
        .map_err(kvm_err("SET_FPU"))
}
