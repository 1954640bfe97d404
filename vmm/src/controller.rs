//! The VMM's control plane: the configuration before boot, the VM's life cycle (NotStarted,
//! Running, Paused, Halted) and the answers to API requests. The CLI, the config file and the
//! REST API all drive the VM through [`Controller::handle`], so they share one set of rules.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use api::types::{
    Action, ActionType, BootSource, DsaBackend, DsaDeviceConfig, DsaDeviceInfo, DsaEntry,
    InstanceInfo, InstanceState, LoggerConfig, MachineConfig, VmConfig,
};
use api::{prometheus_header, prometheus_line, ApiError, ApiReply, ApiRequest, ApiResponse};
use devices::dsa::DsaConfig;
use devices::legacy::serial::SerialConsole;
use devices::legacy::{ExitReason, ExitSignal};
use devices::vfio_user::client::PortalMode;

use crate::config::{
    check_memory, check_vcpus, host_memory_mib, DsaSpec, KernelImage, SerialMode, VmSpec,
};
use crate::logger::LogControl;
use crate::seccomp::SeccompMode;
use crate::vm::{Vm, VmError};

/// Reads one counter out of a device's statistics.
type StatGetter = fn(&devices::dsa::DsaStats) -> u64;
/// Picks one counter out of a vCPU's exit statistics.
type VcpuCounter = fn(&crate::vcpu::VcpuStats) -> &std::sync::atomic::AtomicU64;

/// Default guest shape when the API user sets none.
const DEFAULT_VCPUS: u32 = 1;
const DEFAULT_MEMORY_MIB: u64 = 256;

/// The VMM's state and configuration.
pub struct Controller {
    state: InstanceState,
    machine: MachineConfig,
    boot: Option<BootSource>,
    /// Built-in kernel (self-test) used instead of `boot` when set by the CLI.
    builtin_kernel: Option<(&'static [u8], String)>,
    dsa: Vec<(String, DsaDeviceConfig)>,
    /// Command-line devices the API cannot express (backend=vfio), by id.
    cli_only: std::collections::HashMap<String, DsaSpec>,
    logger: Option<LoggerConfig>,
    log: Option<Arc<LogControl>>,
    serial: SerialMode,
    force_movdir64b: bool,
    seccomp: SeccompMode,
    exit: Arc<ExitSignal>,
    vm: Option<Vm>,
    /// The console, once the VM exists (the event loop feeds it host input).
    pub serial_slot: Arc<Mutex<Option<Arc<Mutex<SerialConsole>>>>>,
    /// Set when the process should end (Shutdown action).
    quit: bool,
    /// The exit code once the VM halted.
    exit_code: Option<i32>,
}

fn conflict(what: &str, state: InstanceState) -> ApiError {
    ApiError::Conflict(format!("{what} is not allowed while the VM is {state:?}"))
}

/// The device-model configuration for an API one (the API crate validated the ranges).
pub fn dsa_config_from_api(c: &DsaDeviceConfig) -> Result<DsaSpec, ApiError> {
    if c.backend == DsaBackend::Vfio {
        return Err(ApiError::BadRequest(
            "backend vfio is configured on the command line only".into(),
        ));
    }
    if c.backend == DsaBackend::VfioUser {
        let socket = c
            .socket
            .as_ref()
            .ok_or_else(|| ApiError::BadRequest("backend vfio-user needs socket".into()))?;
        return Ok(DsaSpec::VfioUser {
            socket: socket.into(),
            portal: match c.portal {
                Some(api::PortalMode::Trapped) => PortalMode::Trapped,
                _ => PortalMode::Mapped,
            },
        });
    }
    let narrow = |v: u32, what: &str| {
        u8::try_from(v).map_err(|_| ApiError::BadRequest(format!("{what} {v} is out of range")))
    };
    let cfg = DsaConfig {
        wqs: narrow(c.wqs, "wqs")?,
        engines: narrow(c.engines, "engines")?,
        groups: narrow(c.groups, "groups")?,
        total_wq_size: u16::try_from(c.total_wq_size)
            .map_err(|_| ApiError::BadRequest("total_wq_size is out of range".into()))?,
        max_xfer_shift: narrow(c.max_xfer_shift, "max_xfer_shift")?,
        max_batch_shift: narrow(c.max_batch_shift, "max_batch_shift")?,
        exec: match c.exec.unwrap_or_default() {
            api::types::DsaExecution::Workers => devices::dsa::Execution::Workers,
            api::types::DsaExecution::Inline => devices::dsa::Execution::Inline,
        },
    };
    cfg.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid DSA configuration: {e}")))?;
    Ok(DsaSpec::Software(cfg))
}

/// The API view of a device configuration.
pub fn dsa_config_to_api(spec: &DsaSpec) -> DsaDeviceConfig {
    match spec {
        DsaSpec::Software(c) => DsaDeviceConfig {
            backend: DsaBackend::Software,
            wqs: c.wqs.into(),
            engines: c.engines.into(),
            groups: c.groups.into(),
            total_wq_size: c.total_wq_size.into(),
            max_xfer_shift: c.max_xfer_shift.into(),
            max_batch_shift: c.max_batch_shift.into(),
            socket: None,
            portal: None,
            exec: Some(match c.exec {
                devices::dsa::Execution::Workers => api::types::DsaExecution::Workers,
                devices::dsa::Execution::Inline => api::types::DsaExecution::Inline,
            }),
        },
        DsaSpec::VfioUser { socket, portal } => DsaDeviceConfig {
            backend: DsaBackend::VfioUser,
            socket: Some(socket.display().to_string()),
            portal: Some(match portal {
                PortalMode::Mapped => api::PortalMode::Mapped,
                PortalMode::Trapped => api::PortalMode::Trapped,
            }),
            ..DsaDeviceConfig::default()
        },
        DsaSpec::Vfio { .. } => DsaDeviceConfig {
            backend: DsaBackend::Vfio,
            ..DsaDeviceConfig::default()
        },
    }
}

/// A counter family: name, help, and how to read it from a device's stats.
type Counter<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Appends one counter family per `(name, help, getter)` with a line per `(device id, stats)`;
/// nothing when there are no devices.
fn push_device_counters<T>(out: &mut String, devices: &[(String, T)], counters: &[Counter<T>]) {
    if devices.is_empty() {
        return;
    }
    for (name, help, get) in counters {
        out.push_str(&prometheus_header(name, help, "counter"));
        for (id, c) in devices {
            out.push_str(&prometheus_line(name, &[("device", id)], get(c)));
        }
    }
}

impl Controller {
    /// A controller with nothing configured.
    pub fn new(
        log: Option<Arc<LogControl>>,
        serial: SerialMode,
        force_movdir64b: bool,
    ) -> std::io::Result<Self> {
        Ok(Self {
            state: InstanceState::NotStarted,
            machine: MachineConfig {
                vcpus: DEFAULT_VCPUS,
                memory_mib: DEFAULT_MEMORY_MIB,
            },
            boot: None,
            builtin_kernel: None,
            dsa: Vec::new(),
            cli_only: std::collections::HashMap::new(),
            logger: None,
            log,
            serial,
            force_movdir64b,
            seccomp: SeccompMode::Off,
            exit: Arc::new(ExitSignal::new()?),
            vm: None,
            serial_slot: Arc::new(Mutex::new(None)),
            quit: false,
            exit_code: None,
        })
    }

    /// Configures the built-in self-test kernel with `cmdline` (CLI only).
    pub fn set_builtin_kernel(&mut self, elf: &'static [u8], cmdline: String) {
        self.builtin_kernel = Some((elf, cmdline));
    }

    /// The signal that ends the VM.
    pub fn exit_signal(&self) -> &Arc<ExitSignal> {
        &self.exit
    }

    /// Whether the process should end now.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The current state.
    pub fn state(&self) -> InstanceState {
        self.state
    }

    /// The process exit code: the guest's when it ended by itself, else 0.
    pub fn exit_code(&self) -> i32 {
        self.exit_code.unwrap_or(0)
    }

    /// Called by the event loop: notices that the guest ended and halts the VM.
    pub fn poll(&mut self) {
        // The console's interrupt is a level on an edge-triggered pin: re-raise one the guest
        // never serviced (devices/src/legacy/serial.rs). Not while paused: the guest cannot
        // service anything then.
        if let Some(vm) = self
            .vm
            .as_ref()
            .filter(|_| self.state == InstanceState::Running)
        {
            vm.serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .resample();
            // A physical DSA's software errors reach its guest from here (vfio/swerr.rs).
            for dsa in &vm.dsa {
                dsa.poll();
            }
        }
        if self.exit.is_set()
            && matches!(self.state, InstanceState::Running | InstanceState::Paused)
        {
            self.halt();
        }
    }

    /// Stops the vCPUs and records why.
    fn halt(&mut self) {
        if let Some(vm) = self.vm.as_mut() {
            let reason = vm.stop();
            let resident = vm.guest_resident_bytes() >> 10;
            let peak = crate::host::peak_rss_kib().unwrap_or(0);
            tracing::info!(
                "VM ended: {reason:?}; VMM peak RSS {peak} KiB, guest RAM resident {resident} KiB, overhead {} KiB",
                peak.saturating_sub(resident)
            );
            if reason == ExitReason::VcpuError || self.exit_code.is_none() {
                self.exit_code = Some(reason.exit_code());
            }
        }
        self.state = InstanceState::Halted;
    }

    /// Ends everything (process exit path).
    pub fn shutdown(&mut self) {
        if matches!(self.state, InstanceState::Running | InstanceState::Paused) {
            // A requested stop: the guest did not choose an exit code.
            self.exit_code.get_or_insert(0);
            self.halt();
        }
        self.quit = true;
    }

    /// Answers one request.
    pub fn handle(&mut self, req: ApiRequest) -> ApiResponse {
        match req {
            ApiRequest::GetInstanceInfo => Ok(ApiReply::InstanceInfo(InstanceInfo {
                id: "dsavmm".into(),
                state: self.state,
                vmm_version: env!("CARGO_PKG_VERSION").into(),
            })),
            ApiRequest::GetVmConfig => Ok(ApiReply::VmConfig(self.vm_config())),
            ApiRequest::GetMachineConfig => Ok(ApiReply::MachineConfig(self.machine.clone())),
            ApiRequest::PutMachineConfig(m) => self.put_machine_config(m),
            ApiRequest::PutBootSource(b) => self.put_boot_source(b),
            ApiRequest::PutDsa(id, cfg) => self.put_dsa(id, cfg),
            ApiRequest::GetDsa(id) => self.get_dsa(&id),
            ApiRequest::DeleteDsa(id) => self.delete_dsa(&id),
            ApiRequest::Action(a) => self.action(a),
            ApiRequest::GetMetrics => Ok(ApiReply::Metrics(self.metrics())),
            ApiRequest::PutLogger(l) => self.put_logger(l),
        }
    }

    fn require_not_started(&self, what: &str) -> Result<(), ApiError> {
        if self.state != InstanceState::NotStarted {
            return Err(conflict(what, self.state));
        }
        Ok(())
    }

    fn vm_config(&self) -> VmConfig {
        VmConfig {
            machine_config: Some(self.machine.clone()),
            boot_source: self.boot.clone(),
            dsa: self
                .dsa
                .iter()
                .map(|(id, config)| DsaEntry {
                    id: id.clone(),
                    config: config.clone(),
                })
                .collect(),
            logger: self.logger.clone(),
        }
    }

    fn put_machine_config(&mut self, m: MachineConfig) -> ApiResponse {
        self.require_not_started("changing machine-config")?;
        check_memory(m.memory_mib, host_memory_mib())
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        check_vcpus(u64::from(m.vcpus), usize::from(crate::config::MAX_VCPUS))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.machine = m;
        Ok(ApiReply::Empty)
    }

    fn put_boot_source(&mut self, b: BootSource) -> ApiResponse {
        self.require_not_started("changing boot-source")?;
        for p in std::iter::once(&b.kernel_image_path).chain(b.initrd_path.as_ref()) {
            let meta = std::fs::metadata(p)
                .map_err(|e| ApiError::BadRequest(format!("cannot read {p}: {e}")))?;
            if !meta.is_file() {
                return Err(ApiError::BadRequest(format!("{p} is not a regular file")));
            }
        }
        if let Some(args) = &b.boot_args {
            crate::config::check_cmdline(args).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        self.boot = Some(b);
        self.builtin_kernel = None;
        Ok(ApiReply::Empty)
    }

    fn put_dsa(&mut self, id: String, cfg: DsaDeviceConfig) -> ApiResponse {
        self.require_not_started("changing DSA devices")?;
        dsa_config_from_api(&cfg)?;
        match self.dsa.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = cfg,
            None => {
                api::types::check_device_count(self.dsa.len() + 1)?;
                self.dsa.push((id, cfg));
            }
        }
        Ok(ApiReply::Empty)
    }

    /// Adds a device from the CLI (`--dsa`), named by its index.
    pub fn add_cli_dsa(&mut self, cfg: &DsaSpec) -> Result<(), ApiError> {
        api::types::check_device_count(self.dsa.len() + 1)?;
        let id = self.dsa.len().to_string();
        if matches!(cfg, DsaSpec::Vfio { .. }) {
            self.cli_only.insert(id.clone(), cfg.clone());
        }
        self.dsa.push((id, dsa_config_to_api(cfg)));
        Ok(())
    }

    fn get_dsa(&self, id: &str) -> ApiResponse {
        let idx = self
            .dsa
            .iter()
            .position(|(i, _)| i == id)
            .ok_or_else(|| ApiError::NotFound(format!("no DSA device {id:?}")))?;
        let (state, counters) = match self.vm.as_ref().and_then(|vm| vm.dsa.get(idx)) {
            Some(dev) => dev.state_and_counters(),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        Ok(ApiReply::DsaDevice(DsaDeviceInfo {
            id: id.into(),
            config: self.dsa[idx].1.clone(),
            state,
            counters,
        }))
    }

    fn delete_dsa(&mut self, id: &str) -> ApiResponse {
        self.require_not_started("removing DSA devices")?;
        let idx = self
            .dsa
            .iter()
            .position(|(i, _)| i == id)
            .ok_or_else(|| ApiError::NotFound(format!("no DSA device {id:?}")))?;
        let (gone, _) = self.dsa.remove(idx);
        self.cli_only.remove(&gone);
        Ok(ApiReply::Empty)
    }

    fn put_logger(&mut self, l: LoggerConfig) -> ApiResponse {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| ApiError::Conflict("logging is not under API control".into()))?;
        if let Some(level) = l.level {
            log.set_level(level.as_filter())
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        if let Some(path) = &l.log_path {
            log.set_path(path)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        self.logger = Some(l);
        Ok(ApiReply::Empty)
    }

    fn action(&mut self, a: Action) -> ApiResponse {
        match a.action_type {
            ActionType::InstanceStart => {
                self.require_not_started("InstanceStart")?;
                self.start().map_err(|e| match e {
                    VmError::Boot(_)
                    | VmError::Config(_)
                    | VmError::SerialFile(..)
                    | VmError::VfioUser(_) => ApiError::BadRequest(e.to_string()),
                    other => ApiError::Internal(other.to_string()),
                })?;
            }
            ActionType::Pause => {
                if self.state != InstanceState::Running {
                    return Err(conflict("Pause", self.state));
                }
                if let Some(vm) = &self.vm {
                    if !vm.pause() {
                        return Err(ApiError::Internal("the vCPUs did not stop in time".into()));
                    }
                }
                self.state = InstanceState::Paused;
            }
            ActionType::Resume => {
                if self.state != InstanceState::Paused {
                    return Err(conflict("Resume", self.state));
                }
                if let Some(vm) = &self.vm {
                    vm.resume();
                }
                self.state = InstanceState::Running;
            }
            ActionType::SendCtrlAltDel => {
                if self.state != InstanceState::Running {
                    return Err(conflict("SendCtrlAltDel", self.state));
                }
                let vm = self
                    .vm
                    .as_ref()
                    .ok_or_else(|| conflict("SendCtrlAltDel", self.state))?;
                vm.send_ctrl_alt_del()
                    .map_err(|e| ApiError::Internal(format!("cannot send Ctrl-Alt-Del: {e}")))?;
            }
            ActionType::Shutdown => self.shutdown(),
        }
        Ok(ApiReply::Empty)
    }

    /// The seccomp mode of the vCPU threads the next start spawns (default off: for tests that
    /// embed a controller).
    pub fn set_seccomp(&mut self, mode: SeccompMode) {
        self.seccomp = mode;
    }

    /// Builds and starts the VM from the current configuration.
    pub fn start(&mut self) -> Result<(), VmError> {
        if self.state != InstanceState::NotStarted {
            return Err(VmError::Device("VM", format!("already {:?}", self.state)));
        }
        let (kernel, initramfs, cmdline) = match (&self.builtin_kernel, &self.boot) {
            (Some((elf, cmdline)), _) => (KernelImage::Embedded(elf), None, cmdline.clone()),
            (None, Some(b)) => (
                KernelImage::Path(PathBuf::from(&b.kernel_image_path)),
                b.initrd_path.as_ref().map(PathBuf::from),
                b.boot_args
                    .clone()
                    .unwrap_or_else(|| crate::config::DEFAULT_CMDLINE.into()),
            ),
            (None, None) => {
                return Err(VmError::Boot(crate::boot::BootError::NoKernel));
            }
        };
        let dsa = self
            .dsa
            .iter()
            .map(|(id, c)| match self.cli_only.get(id) {
                Some(spec) => Ok(spec.clone()),
                None => dsa_config_from_api(c),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VmError::Device("DSA", e.to_string()))?;
        let spec = VmSpec {
            kernel,
            initramfs,
            cmdline,
            memory_mib: self.machine.memory_mib,
            vcpus: u8::try_from(self.machine.vcpus).unwrap_or(u8::MAX),
            serial: self.serial.clone(),
            dsa,
        };
        let mut vm = Vm::build(&spec, self.force_movdir64b, self.exit.clone(), self.seccomp)?;
        vm.start(self.seccomp)?;
        *self.serial_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(vm.serial.clone());
        self.vm = Some(vm);
        self.state = InstanceState::Running;
        Ok(())
    }

    /// Prometheus text for the VMM and every device.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        out.push_str(&prometheus_header(
            "dsavmm_up",
            "1 while the VM runs",
            "gauge",
        ));
        out.push_str(&prometheus_line(
            "dsavmm_up",
            &[],
            u8::from(self.state == InstanceState::Running),
        ));
        let Some(vm) = &self.vm else {
            return out;
        };
        let vcpu_counters: [(&str, &str, VcpuCounter); 5] = [
            ("dsavmm_vcpu_pio_exits_total", "port I/O exits", |s| {
                &s.pio_exits
            }),
            ("dsavmm_vcpu_mmio_exits_total", "MMIO exits", |s| {
                &s.mmio_exits
            }),
            (
                "dsavmm_vcpu_direct_stores_total",
                "MOVDIR64B/MOVDIRI stores emulated",
                |s| &s.direct_stores,
            ),
            (
                "dsavmm_vcpu_unhandled_accesses_total",
                "accesses no device claimed",
                |s| &s.unhandled_accesses,
            ),
            (
                "dsavmm_vcpu_injected_exceptions_total",
                "exceptions delivered for instructions KVM could not emulate",
                |s| &s.injected_exceptions,
            ),
        ];
        for (name, help, get) in vcpu_counters {
            out.push_str(&prometheus_header(name, help, "counter"));
            for (i, s) in vm.vcpu_stats.iter().enumerate() {
                let id = i.to_string();
                out.push_str(&prometheus_line(
                    name,
                    &[("vcpu", &id)],
                    get(s).load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
        }
        let stats: Vec<(String, devices::dsa::DsaStats)> = self
            .dsa
            .iter()
            .zip(&vm.dsa)
            .map(|((id, _), d)| (id.clone(), d.stats()))
            .collect();
        let scalar: [(&str, &str, StatGetter); 13] = [
            (
                "dsavmm_dsa_descriptors_total",
                "descriptors executed or rejected",
                |s| s.descriptors,
            ),
            ("dsavmm_dsa_bytes_total", "bytes processed", |s| s.bytes),
            (
                "dsavmm_dsa_records_written_total",
                "completion records written",
                |s| s.records_written,
            ),
            (
                "dsavmm_dsa_completion_interrupts_total",
                "completion interrupts",
                |s| s.completion_interrupts,
            ),
            (
                "dsavmm_dsa_misc_interrupts_total",
                "misc (vector 0) interrupts",
                |s| s.misc_interrupts,
            ),
            (
                "dsavmm_dsa_dropped_portal_writes_total",
                "portal writes dropped",
                |s| s.dropped_portal_writes,
            ),
            (
                "dsavmm_dsa_wq_full_drops_total",
                "submissions dropped on a full WQ",
                |s| s.wq_full_drops,
            ),
            (
                "dsavmm_dsa_bad_portal_writes_total",
                "malformed portal writes",
                |s| s.bad_portal_writes,
            ),
            ("dsavmm_dsa_software_errors_total", "SWERR reports", |s| {
                s.software_errors
            }),
            ("dsavmm_dsa_commands_total", "commands", |s| s.commands),
            ("dsavmm_dsa_command_errors_total", "failed commands", |s| {
                s.command_errors
            }),
            (
                "dsavmm_dsa_inline_descriptors_total",
                "descriptors executed in the thread that wrote the portal (a vCPU exit)",
                |s| s.inline_descriptors,
            ),
            (
                "dsavmm_dsa_commands_while_active_total",
                "CMD writes ignored while a command was active",
                |s| s.commands_while_active,
            ),
        ];
        for (name, help, get) in scalar {
            out.push_str(&prometheus_header(name, help, "counter"));
            for (id, s) in &stats {
                out.push_str(&prometheus_line(name, &[("device", id)], get(s)));
            }
        }
        out.push_str(&prometheus_header(
            "dsavmm_dsa_engine_descriptors_total",
            "descriptors each engine worker executed",
            "counter",
        ));
        for (id, s) in &stats {
            for (e, n) in s.engine_descriptors.iter().enumerate() {
                out.push_str(&prometheus_line(
                    "dsavmm_dsa_engine_descriptors_total",
                    &[("device", id), ("engine", &e.to_string())],
                    *n,
                ));
            }
        }
        out.push_str(&prometheus_header(
            "dsavmm_dsa_descriptors_by_opcode_total",
            "descriptors by opcode",
            "counter",
        ));
        for (id, s) in &stats {
            for (op, n) in &s.by_opcode {
                out.push_str(&prometheus_line(
                    "dsavmm_dsa_descriptors_by_opcode_total",
                    &[("device", id), ("opcode", op)],
                    *n,
                ));
            }
        }
        out.push_str(&prometheus_header(
            "dsavmm_dsa_completions_by_status_total",
            "completions by status code",
            "counter",
        ));
        for (id, s) in &stats {
            for (st, n) in &s.completion_status {
                out.push_str(&prometheus_line(
                    "dsavmm_dsa_completions_by_status_total",
                    &[("device", id), ("status", st)],
                    *n,
                ));
            }
        }
        // vfio-user devices: portal stores that exited to dsavmm (0 per descriptor when the
        // portal is mapped and the CPU executes MOVDIR64B), register messages.
        let clients: Vec<_> = self
            .dsa
            .iter()
            .zip(&vm.dsa)
            .filter_map(|((id, _), d)| Some((id.clone(), d.client_stats()?)))
            .collect();
        let client_counters: [Counter<devices::vfio_user::client::ClientStats>; 3] = [
            (
                "dsavmm_dsa_portal_exits_total",
                "vfio-user: portal stores that exited to dsavmm",
                |c| c.portal_exits,
            ),
            (
                "dsavmm_dsa_portal_post_drops_total",
                "vfio-user: emulated portal stores dropped (slot still full)",
                |c| c.portal_post_drops,
            ),
            (
                "dsavmm_dsa_register_messages_total",
                "vfio-user: register accesses sent to the server",
                |c| c.register_messages,
            ),
        ];
        push_device_counters(&mut out, &clients, &client_counters);
        // backend=vfio devices: the mediation's counters.
        let mediated: Vec<_> = self
            .dsa
            .iter()
            .zip(&vm.dsa)
            .filter_map(|((id, _), d)| Some((id.clone(), d.vfio_stats()?)))
            .collect();
        let vfio_counters: [Counter<devices::vfio::device::VfioStats>; 5] = [
            (
                "dsavmm_dsa_vfio_portal_exits_total",
                "vfio: portal stores that exited to dsavmm (0 while the pages are mapped)",
                |c| c.portal_exits,
            ),
            (
                "dsavmm_dsa_vfio_physical_commands_total",
                "vfio: guest commands carried out on the physical device",
                |c| c.physical_commands,
            ),
            (
                "dsavmm_dsa_vfio_physical_errors_total",
                "vfio: of those, refused by the physical device",
                |c| c.physical_errors,
            ),
            (
                "dsavmm_dsa_vfio_swerrs_forwarded_total",
                "vfio: physical software errors forwarded to the guest's SWERR",
                |c| c.swerrs_forwarded,
            ),
            (
                "dsavmm_dsa_vfio_swerrs_foreign_total",
                "vfio: physical software errors on WQs the guest was not given (not forwarded)",
                |c| c.swerrs_foreign,
            ),
        ];
        push_device_counters(&mut out, &mediated, &vfio_counters);
        out
    }
}
