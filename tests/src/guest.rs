//! The L2 Linux test guest built by `resources/guests/linux/build.sh` from Debian packages.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::env::workspace_root;
use crate::parse::Layer;
use crate::RigError;

/// A fast L2 kernel command line (see shared/notes/nested-rig.md): no AMD GART scan (`pci=noearly`), no
/// crypto self-tests, no TSC/timer checks, no i8042 probing; `reboot=k` so a reboot goes through the
/// keyboard controller; `panic=-1` so a panic ends the VM at once.
/// `initcall_blacklist=cmos_init` skips the built-in rtc_cmos driver: in the rig its probe polls the
/// CMOS ports for seconds (each access is a nested exit); measured with QEMU `-accel kvm` in L1 under
/// load, L2 start to /init went from 58.5 s to 19.7 s.
pub const L2_CMDLINE: &str = "console=ttyS0 quiet pci=noearly cryptomgr.notests tsc=reliable \
                              no_timer_check i8042.noaux i8042.nokbd initcall_blacklist=cmos_init \
                              reboot=k panic=-1";

/// The marker the boot-test initramfs's /init prints (followed by ` nproc=<n> ...`).
pub const L2_MARKER: &str = "L2-INIT-MARKER";

/// Paths of the built guest artifacts.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// Debian's bzImage.
    pub bzimage: PathBuf,
    /// The ELF vmlinux (PVH note) unpacked from the bzImage.
    pub vmlinux: PathBuf,
    /// The static busybox.
    pub busybox: PathBuf,
    /// The boot-test initramfs (prints [`L2_MARKER`] and powers off).
    pub boot_initramfs: PathBuf,
}

impl LinuxGuest {
    /// Build (or find in the cache) the guest artifacts; runs the script once per process.
    pub fn get() -> Result<LinuxGuest, RigError> {
        static GUEST: OnceLock<Result<LinuxGuest, String>> = OnceLock::new();
        GUEST
            .get_or_init(build)
            .clone()
            .map_err(|m| RigError::new(Layer::Build, m, Vec::new()))
    }
}

/// Parse `KEY=VALUE` lines.
pub(crate) fn key_values(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// The idxd guest: Debian's unmodified idxd driver, accel-config 3.5.3 and an out-of-tree dmatest.ko
/// (`resources/guests/linux/init-idxd.sh`; its protocol is parsed by [`crate::IdxdReport`]).
#[derive(Debug, Clone)]
pub struct IdxdGuest {
    /// The ELF vmlinux (the same as [`LinuxGuest::vmlinux`]).
    pub vmlinux: PathBuf,
    /// The idxd initramfs.
    pub initramfs: PathBuf,
}

/// The guest kernels of the driver matrix: Debian packages, pinned like the rig's (lib.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKernel {
    /// bookworm-backports' 6.12 (the rig's own L1 kernel; `DSAVMM_KVER`/`DSAVMM_KPKG_VERSION`).
    Linux612,
    /// bookworm's own 6.1: `DSAVMM_GUEST61_KVER`/`DSAVMM_GUEST61_KPKG_VERSION` override the pin.
    Linux61,
}

impl GuestKernel {
    /// The environment `build.sh` gets to build this kernel's guest (none: the rig's kernel).
    fn build_env(self) -> Vec<(&'static str, String)> {
        let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
        match self {
            GuestKernel::Linux612 => Vec::new(),
            GuestKernel::Linux61 => vec![
                (
                    "DSAVMM_GUEST_KVER",
                    var("DSAVMM_GUEST61_KVER", "6.1.0-57-amd64"),
                ),
                (
                    "DSAVMM_GUEST_KPKG_VERSION",
                    var("DSAVMM_GUEST61_KPKG_VERSION", "6.1.192-3"),
                ),
            ],
        }
    }
}

impl IdxdGuest {
    /// Build (or find in the cache) the idxd guest on the rig's 6.12 kernel (`build.sh idxd`);
    /// once per process.
    pub fn get() -> Result<IdxdGuest, RigError> {
        Self::get_on(GuestKernel::Linux612)
    }

    /// The idxd guest on `kernel`; built once per process and kernel.
    pub fn get_on(kernel: GuestKernel) -> Result<IdxdGuest, RigError> {
        static ON_612: OnceLock<Result<IdxdGuest, String>> = OnceLock::new();
        static ON_61: OnceLock<Result<IdxdGuest, String>> = OnceLock::new();
        let cell = match kernel {
            GuestKernel::Linux612 => &ON_612,
            GuestKernel::Linux61 => &ON_61,
        };
        cell.get_or_init(|| {
            let kv = run_build_script(&["idxd"], &kernel.build_env())?;
            Ok(IdxdGuest {
                vmlinux: existing(&kv, "VMLINUX")?,
                initramfs: existing(&kv, "IDXD_INITRAMFS")?,
            })
        })
        .clone()
        .map_err(|m| RigError::new(Layer::Build, m, Vec::new()))
    }
}

/// The DPDK guest: Debian's unmodified dpdk-test (DPDK 22.11, its idxd PMD) driving the vDSA from L2
/// user space through uio_pci_generic (`resources/guests/linux/init-dpdk.sh`; its protocol is parsed
/// by [`crate::DpdkReport`]).
#[derive(Debug, Clone)]
pub struct DpdkGuest {
    /// The ELF vmlinux (the rig's 6.12, as [`LinuxGuest::vmlinux`]).
    pub vmlinux: PathBuf,
    /// The DPDK initramfs.
    pub initramfs: PathBuf,
}

impl DpdkGuest {
    /// Build (or find in the cache) the DPDK guest (`build.sh dpdk`); once per process.
    pub fn get() -> Result<DpdkGuest, RigError> {
        static GUEST: OnceLock<Result<DpdkGuest, String>> = OnceLock::new();
        GUEST
            .get_or_init(|| {
                let kv = run_build_script(&["dpdk"], &[])?;
                Ok(DpdkGuest {
                    vmlinux: existing(&kv, "VMLINUX")?,
                    initramfs: existing(&kv, "DPDK_INITRAMFS")?,
                })
            })
            .clone()
            .map_err(|m| RigError::new(Layer::Build, m, Vec::new()))
    }
}

fn existing(kv: &[(String, String)], k: &str) -> Result<PathBuf, String> {
    kv.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| PathBuf::from(v))
        .filter(|p| p.is_file())
        .ok_or_else(|| format!("resources/guests/linux/build.sh printed no existing {k}"))
}

/// Run `resources/guests/linux/build.sh ARGS` and return its `KEY=VALUE` lines.
fn run_build_script(
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Vec<(String, String)>, String> {
    let script = workspace_root().join("resources/guests/linux/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            script.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(key_values(&String::from_utf8_lossy(&out.stdout)))
}

fn build() -> Result<LinuxGuest, String> {
    let script = workspace_root().join("resources/guests/linux/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let kv = key_values(&String::from_utf8_lossy(&out.stdout));
    let get = |k: &str| {
        kv.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| PathBuf::from(v))
            .filter(|p| p.is_file())
            .ok_or_else(|| format!("{} printed no existing {k}", script.display()))
    };
    Ok(LinuxGuest {
        bzimage: get("BZIMAGE")?,
        vmlinux: get("VMLINUX")?,
        busybox: get("BUSYBOX")?,
        boot_initramfs: get("BOOT_INITRAMFS")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_values() {
        let kv = key_values("A=1\nnoise\nQEMU_ARG=-append=x y\n");
        assert_eq!(kv[0], ("A".to_string(), "1".to_string()));
        assert_eq!(kv[1], ("QEMU_ARG".to_string(), "-append=x y".to_string()));
    }
}
