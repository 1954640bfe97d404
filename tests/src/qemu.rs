//! The rig's MOVDIR64B-capable QEMU: `resources/qemu/build.sh` (Debian's QEMU 7.2 with
//! `resources/qemu/movdir64b.patch`, whose TCG executes MOVDIR64B and MOVDIRI). With it, L1's CPU
//! executes MOVDIR64B, L1's KVM reports it, dsavmm's `--movdir64b auto` advertises it to L2, and an L2
//! MOVDIR64B to a vDSA portal reaches dsavmm as a KVM emulation failure, as on real hardware.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::env::workspace_root;
use crate::parse::Layer;
use crate::RigError;

/// A built patched QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchedQemu {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// Its firmware directory (for `-L`: `bios-microvm.bin`, ...).
    pub firmware: PathBuf,
}

/// Build the patched QEMU, or find it in its cache, once per process.
///
/// Runs `resources/qemu/build.sh`, which honours `DSAVMM_QEMU_CACHE` (a prebuilt cache directory; the
/// script returns at once when it is complete) and otherwise builds into `$DSAVMM_CACHE/qemu-<key>`
/// (about 6 to 20 minutes on 2 cores; needs root or the build dependencies). `Err` (layer `Build`)
/// says why it is not available. `DSAVMM_RIG_PATCHED_QEMU=0` makes it `Err` without building (to
/// test what happens on stock QEMU).
pub fn patched_qemu() -> Result<PatchedQemu, RigError> {
    static QEMU: OnceLock<Result<PatchedQemu, String>> = OnceLock::new();
    QEMU.get_or_init(build)
        .clone()
        .map_err(|m| RigError::new(Layer::Build, m, Vec::new()))
}

fn build() -> Result<PatchedQemu, String> {
    if std::env::var("DSAVMM_RIG_PATCHED_QEMU").as_deref() == Ok("0") {
        return Err("DSAVMM_RIG_PATCHED_QEMU=0 (patched QEMU switched off)".to_string());
    }
    let script = workspace_root().join("resources/qemu/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            tail.join("\n")
        ));
    }
    parse_output(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        format!(
            "{} did not print a binary and a firmware dir",
            script.display()
        )
    })
}

/// The script prints exactly two lines: the binary and the firmware directory.
fn parse_output(stdout: &str) -> Option<PatchedQemu> {
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    let binary = PathBuf::from(lines.next()?);
    let firmware = PathBuf::from(lines.next()?);
    (binary.is_file() && firmware.is_dir()).then_some(PatchedQemu { binary, firmware })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_two_existing_paths() {
        let sh = "/bin/sh";
        assert_eq!(
            parse_output(&format!("{sh}\n/tmp\n")),
            Some(PatchedQemu {
                binary: PathBuf::from(sh),
                firmware: PathBuf::from("/tmp"),
            })
        );
        assert_eq!(parse_output("/nonexistent/qemu\n/tmp\n"), None);
        assert_eq!(parse_output("/bin/sh\n"), None);
    }
}
