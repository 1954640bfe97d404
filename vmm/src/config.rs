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
    pub dsa: Vec<devices::dsa::DsaConfig>,
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
