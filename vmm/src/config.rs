//! The validated description of a VM: kernel, initramfs, command line, memory, vCPUs, console.
//! Everything a user types is checked here once, with one clear message per mistake.

use std::path::PathBuf;

use arch::layout::{MMIO_32_START, MMIO_64_START, RAM_64BIT_START};

/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest memory the address map holds (RAM must end below the 64-bit MMIO window).
pub const MAX_MEMORY_MIB: u64 = (MMIO_64_START - RAM_64BIT_START + MMIO_32_START) >> 20;
/// Kernel command line when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Most vCPUs (APIC IDs and the MADT use one byte; 255 is broadcast).
pub const MAX_VCPUS: u8 = 254;

/// Where the kernel image comes from.
#[derive(Clone, Debug)]
pub enum KernelImage {
    /// A vmlinux ELF or bzImage file.
    Path(PathBuf),
    /// The built-in self-test guest.
    Embedded(&'static [u8]),
}

/// Where the guest console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// The VMM's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("--serial needs stdout, none or a file path".into()),
            "stdout" => Ok(SerialMode::Stdout),
            "none" => Ok(SerialMode::None),
            path => Ok(SerialMode::File(PathBuf::from(path))),
        }
    }
}

/// A VM to build.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Kernel image.
    pub kernel: KernelImage,
    /// Optional initramfs file.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Console destination.
    pub serial: SerialMode,
    /// Virtual DSA devices, in PCI slot order.
    pub dsa: Vec<DsaSpec>,
}

/// One virtual DSA: the in-process software engine, or a device a vfio-user server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DsaSpec {
    /// `backend=software,...`: the device model and engine in this process.
    Software(devices::dsa::DsaConfig),
    /// `backend=vfio-user,socket=PATH[,portal=mapped|trapped]`.
    VfioUser {
        /// The server's socket.
        socket: PathBuf,
        /// How BAR2 reaches the server.
        portal: devices::vfio_user::client::PortalMode,
    },
    /// `backend=vfio,device=BDF[,wqs=LIST]`: a physical DSA function through kernel VFIO,
    /// mediated (docs/vfio.md).
    Vfio {
        /// The function's PCI address.
        device: String,
        /// The physical WQs given to the guest (guest WQ i is `wqs[i]`); all of them if absent.
        wqs: Option<Vec<usize>>,
    },
}

/// Parses a `wqs=` list: WQ numbers and ranges separated by `:` (`0:2:5`, `0-3`).
pub fn parse_wq_list(v: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("wqs={v}: expected WQ numbers or ranges separated by ':' (0:2, 0-3)");
    let mut out = Vec::new();
    for part in v.split(':') {
        let num = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a >= 256 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
        if out.len() > 256 {
            return Err(bad());
        }
    }
    Ok(out)
}

fn parse_vfio(kvs: &[&str]) -> Result<DsaSpec, String> {
    let (mut device, mut wqs) = (None, None);
    for kv in kvs {
        match kv.split_once('=') {
            Some(("backend", "vfio")) => {}
            Some(("device", d)) if !d.is_empty() => device = Some(d.to_string()),
            Some(("wqs", l)) => wqs = Some(parse_wq_list(l)?),
            _ => {
                return Err(format!(
                    "bad vfio DSA option {kv:?} (backend=vfio takes device=BDF and wqs=LIST, \
                     e.g. wqs=0:1; the geometry is the device's)"
                ))
            }
        }
    }
    let device = device.ok_or("backend=vfio needs device=BDF (a DSA bound to vfio-pci)")?;
    Ok(DsaSpec::Vfio { device, wqs })
}

impl std::str::FromStr for DsaSpec {
    type Err = String;

    /// The CLI's `--dsa` value: `backend=vfio-user,socket=PATH[,portal=mapped|trapped]`, or
    /// anything [`devices::dsa::DsaConfig`] parses.
    fn from_str(s: &str) -> Result<Self, String> {
        let kvs: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .collect();
        if kvs.contains(&"backend=vfio") {
            return parse_vfio(&kvs);
        }
        if !kvs.contains(&"backend=vfio-user") {
            return s
                .parse::<devices::dsa::DsaConfig>()
                .map(DsaSpec::Software)
                .map_err(|e| e.to_string());
        }
        let (mut socket, mut portal) = (None, Default::default());
        for kv in kvs {
            match kv.split_once('=') {
                Some(("backend", "vfio-user")) => {}
                Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
                Some(("portal", m)) => portal = m.parse()?,
                _ => {
                    return Err(format!(
                        "bad vfio-user DSA option {kv:?} (backend=vfio-user takes socket=PATH and \
                         portal=mapped|trapped; the geometry is the server's)"
                    ))
                }
            }
        }
        let socket = socket.ok_or("backend=vfio-user needs socket=PATH")?;
        Ok(DsaSpec::VfioUser { socket, portal })
    }
}

/// A value the user gave that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Memory below the minimum.
    #[error("--memory {0} MiB is too small: at least {MIN_MEMORY_MIB} MiB is needed")]
    MemoryTooSmall(u64),
    /// Memory above what the map or the host holds.
    #[error("--memory {0} MiB is too large: at most {1} MiB on this host")]
    MemoryTooLarge(u64, u64),
    /// vCPU count out of range.
    #[error("--vcpus {0} is out of range: 1 to {1}")]
    Vcpus(u64, u64),
    /// Command line too long or with a NUL.
    #[error("the kernel command line {0}")]
    Cmdline(&'static str),
}

/// Host RAM in MiB from /proc/meminfo (None when unreadable).
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib >> 10)
}

/// Checks memory size against the address map and the host.
pub fn check_memory(mib: u64, host_mib: Option<u64>) -> Result<(), ConfigError> {
    if mib < MIN_MEMORY_MIB {
        return Err(ConfigError::MemoryTooSmall(mib));
    }
    let max = host_mib.map_or(MAX_MEMORY_MIB, |h| h.min(MAX_MEMORY_MIB));
    if mib > max {
        return Err(ConfigError::MemoryTooLarge(mib, max));
    }
    Ok(())
}

/// Checks the vCPU count against the map and KVM's limit.
pub fn check_vcpus(n: u64, kvm_max: usize) -> Result<u8, ConfigError> {
    let max = u64::from(MAX_VCPUS).min(kvm_max as u64);
    if n == 0 || n > max {
        return Err(ConfigError::Vcpus(n, max));
    }
    Ok(n as u8)
}

/// Checks the command line.
pub fn check_cmdline(c: &str) -> Result<(), ConfigError> {
    if c.len() >= arch::layout::CMDLINE_MAX_SIZE {
        return Err(ConfigError::Cmdline("is too long"));
    }
    if c.contains('\0') {
        return Err(ConfigError::Cmdline("contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_specs_parse_and_refuse_what_cannot_work() {
        assert_eq!(
            "backend=vfio,device=0000:6a:01.0,wqs=1:3-5".parse::<DsaSpec>(),
            Ok(DsaSpec::Vfio {
                device: "0000:6a:01.0".into(),
                wqs: Some(vec![1, 3, 4, 5])
            })
        );
        assert_eq!(
            "backend=vfio,device=00:03.0".parse::<DsaSpec>(),
            Ok(DsaSpec::Vfio {
                device: "00:03.0".into(),
                wqs: None
            })
        );
        for bad in [
            "backend=vfio",
            "backend=vfio,device=",
            "backend=vfio,device=x,wqs=",
            "backend=vfio,device=x,wqs=3-1",
            "backend=vfio,device=x,wqs=0-100000",
            "backend=vfio,device=x,wqs=a",
            "backend=vfio,device=x,socket=/s",
        ] {
            assert!(bad.parse::<DsaSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_bounds() {
        assert_eq!(check_memory(0, None), Err(ConfigError::MemoryTooSmall(0)));
        assert!(check_memory(16, Some(1024)).is_ok());
        assert_eq!(
            check_memory(2048, Some(1024)),
            Err(ConfigError::MemoryTooLarge(2048, 1024))
        );
        assert!(check_memory(u64::MAX, None).is_err());
    }

    #[test]
    fn vcpu_bounds() {
        assert!(check_vcpus(0, 288).is_err());
        assert_eq!(check_vcpus(4, 288), Ok(4));
        assert!(check_vcpus(255, 288).is_err());
        assert!(check_vcpus(9, 8).is_err());
    }

    /// The API validates machine-config and DSA counts with its own constants, before a
    /// request reaches the VMM: they must be the VMM's limits, or a value one accepts the
    /// other would reject.
    #[test]
    fn api_limits_are_the_vmm_limits() {
        assert_eq!(api::types::MAX_VCPUS, u32::from(MAX_VCPUS));
        assert_eq!(api::types::MIN_MEMORY_MIB, MIN_MEMORY_MIB);
        assert_eq!(api::types::MAX_MEMORY_MIB, MAX_MEMORY_MIB);
        // One PCI slot per DSA on bus 0; slot 0 is the host bridge.
        assert_eq!(
            api::types::dsa_limits::MAX_DEVICES,
            devices::pci::MAX_DEVICES - 1
        );
        // And that many of the largest devices fit in the 64-bit PCI window (each BAR is
        // naturally aligned, so at most twice its size).
        let largest = devices::dsa::DsaConfig::default();
        let per_device =
            2 * (devices::dsa::regs::BAR0_SIZE + largest.portal_bar_size().next_power_of_two());
        let devices = api::types::dsa_limits::MAX_DEVICES as u64;
        assert!(devices * per_device <= arch::layout::MMIO_64_SIZE);
    }

    /// The API's DSA geometry bounds are exactly what the device model accepts (the CLI's
    /// `--dsa` goes to the device model directly).
    #[test]
    fn api_dsa_geometry_is_the_device_models() {
        use api::types::dsa_limits as l;
        use devices::dsa::DsaConfig;
        let narrow = |v: u32| u8::try_from(v).unwrap();
        let max = DsaConfig {
            wqs: narrow(l::MAX_WQS),
            engines: narrow(l::MAX_ENGINES),
            groups: narrow(l::MAX_GROUPS),
            total_wq_size: u16::try_from(l::MAX_TOTAL_WQ_SIZE).unwrap(),
            // The largest of each whose sum is allowed (MAX_WORK_SHIFT).
            max_xfer_shift: narrow(l::MAX_WORK_SHIFT - l::MAX_BATCH_SHIFT),
            max_batch_shift: narrow(l::MAX_BATCH_SHIFT),
            ..DsaConfig::default()
        };
        let widest = DsaConfig {
            max_xfer_shift: narrow(l::MAX_WORK_SHIFT - l::MIN_BATCH_SHIFT),
            max_batch_shift: narrow(l::MIN_BATCH_SHIFT),
            ..max
        };
        assert!(widest.validate().is_ok());
        const { assert!(l::MAX_WORK_SHIFT - l::MIN_BATCH_SHIFT == l::MAX_XFER_SHIFT) };
        // The transfer-shift range itself (not the sum rule): one above the widest is refused.
        let mut too_wide = widest;
        too_wide.max_xfer_shift += 1;
        assert_eq!(
            too_wide.validate(),
            Err(devices::dsa::DsaConfigError::MaxXferShift(
                widest.max_xfer_shift + 1
            ))
        );
        let min = DsaConfig {
            wqs: 1,
            engines: 1,
            groups: 1,
            total_wq_size: 1,
            max_xfer_shift: narrow(l::MIN_XFER_SHIFT),
            max_batch_shift: narrow(l::MIN_BATCH_SHIFT),
            ..DsaConfig::default()
        };
        assert!(max.validate().is_ok());
        assert!(min.validate().is_ok());
        let beyond: [fn(&mut DsaConfig); 6] = [
            |c| c.wqs += 1,
            |c| c.engines += 1,
            |c| c.groups += 1,
            |c| c.total_wq_size += 1,
            |c| c.max_xfer_shift += 1,
            |c| c.max_batch_shift += 1,
        ];
        for (i, grow) in beyond.iter().enumerate() {
            let mut c = max;
            grow(&mut c);
            assert!(c.validate().is_err(), "field {i} above the API maximum");
        }
        let below: [fn(&mut DsaConfig); 5] = [
            |c| c.wqs -= 1,
            |c| c.engines -= 1,
            |c| c.groups -= 1,
            |c| c.max_xfer_shift -= 1,
            |c| c.max_batch_shift -= 1,
        ];
        for (i, shrink) in below.iter().enumerate() {
            let mut c = min;
            shrink(&mut c);
            assert!(c.validate().is_err(), "field {i} below the API minimum");
        }
    }

    #[test]
    fn serial_modes() {
        assert_eq!("stdout".parse(), Ok(SerialMode::Stdout));
        assert_eq!("none".parse(), Ok(SerialMode::None));
        assert_eq!("/tmp/x".parse(), Ok(SerialMode::File("/tmp/x".into())));
        assert!("".parse::<SerialMode>().is_err());
    }

    #[test]
    fn cmdline_checks() {
        assert!(check_cmdline("console=ttyS0").is_ok());
        assert!(check_cmdline("a\0b").is_err());
        assert!(check_cmdline(&"x".repeat(70000)).is_err());
    }
}
