//! Request and response bodies of the REST API, and the config-file document.
//!
//! Every input type rejects unknown fields and is checked by [`Validate`] before it reaches
//! the VMM, so the VMM receives syntactically valid values only (it still decides whether
//! the *state* allows a request, and whether files exist). The field names and ranges here
//! are mirrored by `api/openapi.json`; a unit test in `openapi.rs` keeps the two in step.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ApiError;

/// Largest accepted `vcpus`: the VMM's limit (APIC IDs and the MADT use one byte, 255 is
/// the broadcast ID; `vmm` checks that its own limit is this one). KVM's own limit and the
/// host are checked when the value reaches the VMM.
pub const MAX_VCPUS: u32 = 254;
/// Smallest accepted `memory_mib`: the VMM's minimum.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest accepted `memory_mib`: what the VMM's address map holds (RAM ends below the 64-bit
/// PCI window at 1 TiB, less the 1 GiB hole below 4 GiB: 1023 GiB). The host's RAM is
/// checked when the value reaches the VMM.
pub const MAX_MEMORY_MIB: u64 = 1023 * 1024;
/// Longest accepted `boot_args`, in bytes (x86 `COMMAND_LINE_SIZE` is 2048 including the NUL).
pub const MAX_BOOT_ARGS_LEN: usize = 2047;
/// Longest accepted file path, in bytes (Linux `PATH_MAX` less the NUL).
pub const MAX_PATH_LEN: usize = 4095;
/// Longest accepted DSA device id.
pub const MAX_ID_LEN: usize = 64;

/// DSA geometry limits (issue 5; docs/dsa-device-model.md §2.3-§2.6, §9.1).
pub mod dsa_limits {
    /// DSA devices per VM: one PCI slot each on bus 0, whose slot 0 is the host bridge
    /// (`vmm` checks this against the PCI model).
    pub const MAX_DEVICES: usize = 31;
    /// Work queues per device: 1..=MAX_WQS.
    pub const MAX_WQS: u32 = 8;
    /// Engines per device: 1..=MAX_ENGINES.
    pub const MAX_ENGINES: u32 = 4;
    /// Groups per device: 1..=MAX_GROUPS.
    pub const MAX_GROUPS: u32 = 4;
    /// WQCAP.total_wq_size upper bound (sum of all WQ sizes).
    pub const MAX_TOTAL_WQ_SIZE: u32 = 128;
    /// GENCAP.max_xfer_shift range; the driver's WQ default is 2^21
    /// (docs/dsa-device-model.md §0 trap 11).
    pub const MIN_XFER_SHIFT: u32 = 21;
    /// Upper bound of GENCAP.max_xfer_shift (real SPR DSA: 31; here 64 MiB, so that with the
    /// smallest batch the sum stays within [`MAX_WORK_SHIFT`]).
    pub const MAX_XFER_SHIFT: u32 = 26;
    /// GENCAP.max_batch_shift range; the driver's WQ default is 2^5
    /// (docs/dsa-device-model.md §0 trap 11).
    pub const MIN_BATCH_SHIFT: u32 = 5;
    /// Upper bound of GENCAP.max_batch_shift (real SPR DSA: 10).
    pub const MAX_BATCH_SHIFT: u32 = 10;
    /// Upper bound of max_xfer_shift + max_batch_shift: one batch descriptor names at most
    /// 2^31 bytes of transfers, which bounds the work of one guest store
    /// (docs/dsa-device-model.md §15). The defaults (21 + 10) are exactly at it.
    pub const MAX_WORK_SHIFT: u32 = 31;
    /// Defaults used when a field is omitted.
    pub const DEFAULT_WQS: u32 = 1;
    /// Default engine count.
    pub const DEFAULT_ENGINES: u32 = 1;
    /// Default group count.
    pub const DEFAULT_GROUPS: u32 = 1;
    /// Default total WQ size.
    pub const DEFAULT_TOTAL_WQ_SIZE: u32 = 128;
    /// Default max_xfer_shift (2 MiB).
    pub const DEFAULT_XFER_SHIFT: u32 = 21;
    /// Default max_batch_shift (1024 descriptors).
    pub const DEFAULT_BATCH_SHIFT: u32 = 10;
}
use dsa_limits::*;

/// For optional fields: absent means `None`, but an explicit `null` is rejected (the spec
/// does not declare the fields nullable).
fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Checks of values that serde's types cannot express (ranges, string contents).
pub trait Validate {
    /// `Ok` when every field is within its documented range.
    fn validate(&self) -> Result<(), ApiError>;
}

/// Parses a JSON request body into `T` (unknown fields rejected) and validates it.
/// Every failure is a [`ApiError::BadRequest`] naming the problem.
pub fn parse_body<T: DeserializeOwned + Validate>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "request body is empty; a JSON object is required".into(),
        ));
    }
    let value: T = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    value.validate()?;
    Ok(value)
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ApiError> {
    if value < min || value > max {
        return Err(ApiError::BadRequest(format!(
            "{field} = {value} is out of range; it must be between {min} and {max}"
        )));
    }
    Ok(())
}

fn check_path(field: &str, path: &str) -> Result<(), ApiError> {
    if path.is_empty() {
        return Err(ApiError::BadRequest(format!("{field} must not be empty")));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(ApiError::BadRequest(format!(
            "{field} is {} bytes long; at most {MAX_PATH_LEN} are allowed",
            path.len()
        )));
    }
    if path.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "{field} must not contain a NUL byte"
        )));
    }
    Ok(())
}

/// Checks a DSA device id: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn validate_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ApiError::BadRequest(format!(
            "device id must be 1 to {MAX_ID_LEN} characters long"
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ApiError::BadRequest(format!(
            "device id {id:?} contains {c:?}; only letters, digits, '_' and '-' are allowed"
        )));
    }
    Ok(())
}

/// `PUT /machine-config`, `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// Guest RAM in MiB, [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`].
    pub memory_mib: u64,
}

impl Validate for MachineConfig {
    fn validate(&self) -> Result<(), ApiError> {
        check_range("vcpus", self.vcpus, 1, MAX_VCPUS)?;
        check_range(
            "memory_mib",
            self.memory_mib,
            MIN_MEMORY_MIB,
            MAX_MEMORY_MIB,
        )
    }
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the guest kernel (ELF vmlinux with a PVH note, or bzImage).
    pub kernel_image_path: String,
    /// Host path of an initramfs.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_args: Option<String>,
}

impl Validate for BootSource {
    fn validate(&self) -> Result<(), ApiError> {
        check_path("kernel_image_path", &self.kernel_image_path)?;
        if let Some(p) = &self.initrd_path {
            check_path("initrd_path", p)?;
        }
        if let Some(args) = &self.boot_args {
            if args.len() > MAX_BOOT_ARGS_LEN {
                return Err(ApiError::BadRequest(format!(
                    "boot_args is {} bytes long; at most {MAX_BOOT_ARGS_LEN} are allowed",
                    args.len()
                )));
            }
            if args.contains('\0') {
                return Err(ApiError::BadRequest(
                    "boot_args must not contain a NUL byte".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Which engine executes a virtual DSA's descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsaBackend {
    /// The VMM's software engine.
    Software,
    /// A vfio-user server (`dsavmm dsa-server`) at `socket`.
    #[serde(rename = "vfio-user")]
    VfioUser,
    /// A physical DSA through kernel VFIO, mediated (`--dsa backend=vfio,device=BDF`): shown
    /// for devices given on the command line; not configurable through the API yet.
    Vfio,
}

/// Where a software device's engine executes descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsaExecution {
    /// One thread per engine; the vCPU's portal write only queues (the default).
    #[default]
    Workers,
    /// In the vCPU's exit that wrote the portal.
    Inline,
}

/// How a vfio-user device's portal BAR reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortalMode {
    /// The server's shared portal pages mapped into the guest (no exit per descriptor where
    /// the CPU executes MOVDIR64B).
    Mapped,
    /// Every portal store is a message to the server.
    Trapped,
}

/// An optional field that, when present, must hold a value (an explicit `null` is refused, as
/// the OpenAPI document declares no field nullable).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

fn default_wqs() -> u32 {
    DEFAULT_WQS
}
fn default_engines() -> u32 {
    DEFAULT_ENGINES
}
fn default_groups() -> u32 {
    DEFAULT_GROUPS
}
fn default_total_wq_size() -> u32 {
    DEFAULT_TOTAL_WQ_SIZE
}
fn default_xfer_shift() -> u32 {
    DEFAULT_XFER_SHIFT
}
fn default_batch_shift() -> u32 {
    DEFAULT_BATCH_SHIFT
}

/// `PUT /dsa/{id}`: a virtual DSA's backend and geometry. Omitted fields take the defaults
/// in [`dsa_limits`]; the VMM always sees resolved values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsaDeviceConfig {
    /// The execution backend.
    pub backend: DsaBackend,
    /// Work queues (WQCAP.num_wqs), 1..=8.
    #[serde(default = "default_wqs")]
    pub wqs: u32,
    /// Engines (ENGCAP.num_engines), 1..=4.
    #[serde(default = "default_engines")]
    pub engines: u32,
    /// Groups (GRPCAP.num_groups), 1..=4.
    #[serde(default = "default_groups")]
    pub groups: u32,
    /// WQCAP.total_wq_size: the sum of all WQ sizes the guest may configure, 1..=128.
    #[serde(default = "default_total_wq_size")]
    pub total_wq_size: u32,
    /// GENCAP.max_xfer_shift: the largest transfer is 2^n bytes, 21..=26 (and at most
    /// 31 - max_batch_shift).
    #[serde(default = "default_xfer_shift")]
    pub max_xfer_shift: u32,
    /// GENCAP.max_batch_shift: the largest batch is 2^n descriptors, 5..=10.
    #[serde(default = "default_batch_shift")]
    pub max_batch_shift: u32,
    /// vfio-user only: the server's socket (the geometry is then the server's).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub socket: Option<String>,
    /// vfio-user only: how the portal BAR reaches the server (default mapped).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub portal: Option<PortalMode>,
    /// software only: where descriptors execute (default workers; ignored by the other
    /// backends, whose engines are elsewhere).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub exec: Option<DsaExecution>,
}

impl Default for DsaDeviceConfig {
    fn default() -> Self {
        DsaDeviceConfig {
            backend: DsaBackend::Software,
            wqs: DEFAULT_WQS,
            engines: DEFAULT_ENGINES,
            groups: DEFAULT_GROUPS,
            total_wq_size: DEFAULT_TOTAL_WQ_SIZE,
            max_xfer_shift: DEFAULT_XFER_SHIFT,
            max_batch_shift: DEFAULT_BATCH_SHIFT,
            socket: None,
            portal: None,
            exec: None,
        }
    }
}

impl Validate for DsaDeviceConfig {
    fn validate(&self) -> Result<(), ApiError> {
        match (self.backend, &self.socket) {
            (DsaBackend::Vfio, _) => {
                return Err(ApiError::BadRequest(
                    "backend vfio is configured on the command line only (--dsa \
                     backend=vfio,device=BDF,wqs=LIST)"
                        .into(),
                ))
            }
            (DsaBackend::VfioUser, None) => {
                return Err(ApiError::BadRequest(
                    "backend vfio-user needs socket (the dsa-server's path)".into(),
                ))
            }
            (DsaBackend::VfioUser, Some(s))
                if s.is_empty() || s.len() > 4096 || s.contains('\0') =>
            {
                return Err(ApiError::BadRequest(
                    "socket must be a path of 1..=4096 bytes".into(),
                ))
            }
            (DsaBackend::Software, Some(_)) => {
                return Err(ApiError::BadRequest(
                    "socket is for backend vfio-user only".into(),
                ))
            }
            (DsaBackend::Software, None) if self.portal.is_some() => {
                return Err(ApiError::BadRequest(
                    "portal is for backend vfio-user only".into(),
                ))
            }
            _ => {}
        }
        check_range("wqs", self.wqs, 1, MAX_WQS)?;
        check_range("engines", self.engines, 1, MAX_ENGINES)?;
        check_range("groups", self.groups, 1, MAX_GROUPS)?;
        check_range("total_wq_size", self.total_wq_size, 1, MAX_TOTAL_WQ_SIZE)?;
        check_range(
            "max_xfer_shift",
            self.max_xfer_shift,
            MIN_XFER_SHIFT,
            MAX_XFER_SHIFT,
        )?;
        check_range(
            "max_batch_shift",
            self.max_batch_shift,
            MIN_BATCH_SHIFT,
            MAX_BATCH_SHIFT,
        )?;
        if self.max_xfer_shift + self.max_batch_shift > MAX_WORK_SHIFT {
            return Err(ApiError::BadRequest(format!(
                "max_xfer_shift + max_batch_shift = {} + {} is above {MAX_WORK_SHIFT}: one batch \
                 descriptor may name at most 2 GiB of transfers",
                self.max_xfer_shift, self.max_batch_shift
            )));
        }
        if self.total_wq_size < self.wqs {
            return Err(ApiError::BadRequest(format!(
                "total_wq_size = {} is smaller than wqs = {}; every WQ needs at least one entry",
                self.total_wq_size, self.wqs
            )));
        }
        Ok(())
    }
}

/// `GET /dsa/{id}`: the configuration plus what the VMM reports about the live device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsaDeviceInfo {
    /// The device id.
    pub id: String,
    /// The configuration it was created with.
    pub config: DsaDeviceConfig,
    /// The device as the guest configured it (enabled, groups, engines, each WQ's mode,
    /// size, priority, state). Free form, produced by the VMM; `null` before boot.
    #[serde(default)]
    pub state: serde_json::Value,
    /// Counters (descriptors by opcode, bytes, completion statuses, interrupts, dropped
    /// portal writes, errors). Free form, produced by the VMM; `null` before boot.
    #[serde(default)]
    pub counters: serde_json::Value,
}

/// The VM's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configuring; not booted yet.
    NotStarted,
    /// vCPUs are running.
    Running,
    /// vCPUs are paused.
    Paused,
    /// The guest powered off or the VM was shut down; only inspection is possible.
    Halted,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// The instance id (chosen by the VMM, e.g. from `--id`).
    pub id: String,
    /// The lifecycle state.
    pub state: InstanceState,
    /// The VMM's version.
    pub vmm_version: String,
}

/// `GET /version`, answered by the API thread itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// The VMM's version (the workspace version).
    pub vmm_version: String,
    /// The API (OpenAPI document) version.
    pub api_version: String,
}

/// What `PUT /actions` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Pause all vCPUs.
    Pause,
    /// Resume paused vCPUs.
    Resume,
    /// Ask the guest to reboot/power off via the keyboard controller (guest cooperation).
    SendCtrlAltDel,
    /// Stop the VM at once and exit the VMM.
    Shutdown,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The action.
    pub action_type: ActionType,
}

impl Validate for Action {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational messages.
    Info,
    /// Debugging output.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `tracing`/`env_filter` directive for this level ("off", "error", ...).
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `PUT /logger`: change the level and/or the destination at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// New level; unchanged when omitted.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub level: Option<LogLevel>,
    /// New destination file (appended to, created if missing); unchanged when omitted.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub log_path: Option<String>,
}

impl Validate for LoggerConfig {
    fn validate(&self) -> Result<(), ApiError> {
        if self.level.is_none() && self.log_path.is_none() {
            return Err(ApiError::BadRequest(
                "logger config needs at least one of level, log_path".into(),
            ));
        }
        if let Some(p) = &self.log_path {
            check_path("log_path", p)?;
        }
        Ok(())
    }
}

/// One entry of the config file's `dsa` list: an id plus the [`DsaDeviceConfig`] fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsaEntry {
    /// The device id (as in `PUT /dsa/{id}`).
    pub id: String,
    /// Its configuration.
    pub config: DsaDeviceConfig,
}

impl Serialize for DsaEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(&self.config).map_err(serde::ser::Error::custom)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("id".into(), serde_json::Value::String(self.id.clone()));
        }
        value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DsaEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // `flatten` cannot be combined with `deny_unknown_fields`, so split the map by hand.
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let id = match map.remove("id") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("dsa entry: id must be a string")),
            None => return Err(D::Error::missing_field("id")),
        };
        let config = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| D::Error::custom(format!("dsa entry {id:?}: {e}")))?;
        Ok(DsaEntry { id, config })
    }
}

/// The config file (`--config-file`) and `GET /vm/config`: every section the API takes,
/// in one JSON document, like Firecracker's `--config-file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// As `PUT /machine-config`.
    #[serde(
        rename = "machine-config",
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    /// As `PUT /boot-source`.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// As `PUT /dsa/{id}` for each entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dsa: Vec<DsaEntry>,
    /// As `PUT /logger`.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub logger: Option<LoggerConfig>,
}

impl Validate for VmConfig {
    fn validate(&self) -> Result<(), ApiError> {
        let ctx = |section: &str, e: ApiError| match e {
            ApiError::BadRequest(m) => ApiError::BadRequest(format!("{section}: {m}")),
            other => other,
        };
        if let Some(m) = &self.machine_config {
            m.validate().map_err(|e| ctx("machine-config", e))?;
        }
        if let Some(b) = &self.boot_source {
            b.validate().map_err(|e| ctx("boot-source", e))?;
        }
        if let Some(l) = &self.logger {
            l.validate().map_err(|e| ctx("logger", e))?;
        }
        check_device_count(self.dsa.len()).map_err(|e| ctx("dsa", e))?;
        for (i, entry) in self.dsa.iter().enumerate() {
            let section = format!("dsa[{i}]");
            validate_id(&entry.id).map_err(|e| ctx(&section, e))?;
            entry.config.validate().map_err(|e| ctx(&section, e))?;
            if self.dsa.iter().take(i).any(|other| other.id == entry.id) {
                return Err(ApiError::BadRequest(format!(
                    "{section}: duplicate device id {:?}",
                    entry.id
                )));
            }
        }
        Ok(())
    }
}

/// Checks that a VM with `n` DSA devices can be built.
pub fn check_device_count(n: usize) -> Result<(), ApiError> {
    if n > MAX_DEVICES {
        return Err(ApiError::BadRequest(format!(
            "{n} DSA devices is too many: at most {MAX_DEVICES} are supported (one PCI slot \
             each on bus 0)"
        )));
    }
    Ok(())
}

/// Parses and validates a config file (the same JSON documents as the API, all sections in
/// one object: `machine-config`, `boot-source`, `dsa` (a list of `{id, ...}`), `logger`).
pub fn parse_config_file(text: &str) -> Result<VmConfig, ApiError> {
    let config: VmConfig = serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("invalid config file: {e}")))?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> String {
        match parse_body::<DsaDeviceConfig>(text.as_bytes()) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected 400 for {text}, got {other:?}"),
        }
    }

    #[test]
    fn dsa_defaults_and_ranges() {
        let c: DsaDeviceConfig = parse_body(br#"{"backend":"software"}"#).unwrap();
        assert_eq!(c, DsaDeviceConfig::default());
        let c: DsaDeviceConfig = parse_body(
            br#"{"backend":"software","wqs":8,"engines":4,"groups":4,"total_wq_size":128}"#,
        )
        .unwrap();
        assert_eq!((c.wqs, c.engines, c.groups), (8, 4, 4));
        assert!(bad(r#"{"backend":"software","wqs":9}"#).contains("wqs = 9 is out of range"));
        assert!(bad(r#"{"backend":"software","wqs":0}"#).contains("wqs"));
        assert!(bad(r#"{"backend":"software","engines":5}"#).contains("engines"));
        assert!(bad(r#"{"backend":"software","groups":0}"#).contains("groups"));
        assert!(bad(r#"{"backend":"software","total_wq_size":129}"#).contains("total_wq_size"));
        assert!(bad(r#"{"backend":"software","wqs":4,"total_wq_size":3}"#).contains("smaller"));
        assert!(bad(r#"{"backend":"software","max_xfer_shift":20}"#).contains("max_xfer_shift"));
        assert!(bad(r#"{"backend":"software","max_batch_shift":11}"#).contains("max_batch_shift"));
        assert!(bad(r#"{"backend":"software","max_xfer_shift":22}"#)
            .contains("max_xfer_shift + max_batch_shift = 22 + 10"));
        assert!(
            bad(r#"{"backend":"software","max_xfer_shift":27,"max_batch_shift":5}"#)
                .contains("max_xfer_shift = 27 is out of range")
        );
        assert!(bad(r#"{"backend":"hardware"}"#).contains("unknown variant"));
        assert!(bad(r#"{"wqs":1}"#).contains("missing field `backend`"));
        assert!(bad(r#"{"backend":"software","bogus":1}"#).contains("unknown field `bogus`"));
        assert!(bad(r#"{"backend":"software","wqs":-1}"#).contains("invalid value"));
        assert!(bad(r#"{"backend":"software","wqs":99999999999}"#).contains("invalid value"));
        assert!(bad("").contains("empty"));
        assert!(bad("[1,2]").contains("invalid"));
        assert!(bad("{").contains("EOF"));
    }

    #[test]
    fn machine_boot_logger_validation() {
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":2,"memory_mib":256}"#).is_ok());
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":0,"memory_mib":256}"#).is_err());
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":254,"memory_mib":256}"#).is_ok());
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":255,"memory_mib":256}"#).is_err());
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":1,"memory_mib":0}"#).is_err());
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":1,"memory_mib":15}"#).is_err());
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":1,"memory_mib":1047552}"#).is_ok());
        let huge = parse_body::<MachineConfig>(br#"{"vcpus":1,"memory_mib":1047553}"#);
        assert!(
            matches!(&huge, Err(ApiError::BadRequest(m)) if m.contains("memory_mib = 1047553 is out of range; it must be between 16 and 1047552")),
            "{huge:?}"
        );
        assert!(parse_body::<MachineConfig>(br#"{"vcpus":1}"#).is_err());
        assert!(parse_body::<BootSource>(br#"{"kernel_image_path":"/k"}"#).is_ok());
        assert!(parse_body::<BootSource>(br#"{"kernel_image_path":""}"#).is_err());
        assert!(
            parse_body::<BootSource>(br#"{"kernel_image_path":"/k","initrd_path":"a\u0000"}"#)
                .is_err()
        );
        let long = format!(
            r#"{{"kernel_image_path":"/k","boot_args":"{}"}}"#,
            "a".repeat(2048)
        );
        assert!(parse_body::<BootSource>(long.as_bytes()).is_err());
        assert!(parse_body::<LoggerConfig>(br#"{}"#).is_err());
        assert!(parse_body::<LoggerConfig>(br#"{"level":"Debug"}"#).is_ok());
        assert!(parse_body::<LoggerConfig>(br#"{"level":"Loud"}"#).is_err());
        let null = parse_body::<LoggerConfig>(br#"{"level":"Info","log_path":null}"#);
        assert!(null.unwrap_err().to_string().contains("null"));
        assert!(
            parse_body::<BootSource>(br#"{"kernel_image_path":"/k","boot_args":null}"#).is_err()
        );
        assert!(parse_config_file(r#"{"logger":null}"#).is_err());
        assert!(parse_body::<Action>(br#"{"action_type":"Pause"}"#).is_ok());
        assert!(parse_body::<Action>(br#"{"action_type":"Explode"}"#).is_err());
    }

    #[test]
    fn ids() {
        assert!(validate_id("0").is_ok());
        assert!(validate_id("dsa_0-a").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("é").is_err());
        assert!(validate_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn config_file() {
        let text = r#"{
            "machine-config": {"vcpus": 2, "memory_mib": 512},
            "boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"},
            "dsa": [{"id": "0", "backend": "software", "wqs": 2}, {"id": "1", "backend": "software"}],
            "logger": {"level": "Info"}
        }"#;
        let c = parse_config_file(text).unwrap();
        assert_eq!(c.machine_config.as_ref().unwrap().vcpus, 2);
        assert_eq!(c.dsa.len(), 2);
        assert_eq!(c.dsa[0].config.wqs, 2);
        assert_eq!(c.dsa[1].config, DsaDeviceConfig::default());
        // Round trip through the serializer (GET /vm/config output is a valid config file).
        let again = parse_config_file(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        assert_eq!(parse_config_file("{}").unwrap(), VmConfig::default());

        let err = |t: &str| parse_config_file(t).unwrap_err().to_string();
        assert!(err(r#"{"machine_config": {}}"#).contains("unknown field `machine_config`"));
        assert!(err(r#"{"dsa": [{"backend": "software"}]}"#).contains("missing field `id`"));
        assert!(
            err(r#"{"dsa": [{"id": 0, "backend": "software"}]}"#).contains("id must be a string")
        );
        assert!(
            err(r#"{"dsa": [{"id": "0", "backend": "software", "x": 1}]}"#)
                .contains("unknown field `x`")
        );
        assert!(err(r#"{"dsa": [{"id": "a/b", "backend": "software"}]}"#).contains("dsa[0]"));
        assert!(err(
            r#"{"dsa": [{"id":"0","backend":"software"},{"id":"0","backend":"software"}]}"#
        )
        .contains("duplicate"));
        assert!(err(r#"{"machine-config": {"vcpus": 0, "memory_mib": 1}}"#)
            .starts_with("machine-config: vcpus"));
    }
}
