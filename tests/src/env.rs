//! Where things are on the host: the workspace, its target directory, the `dsavmm` binary, and whether
//! the host has a hardware-backed KVM (then tests run dsavmm directly instead of nesting).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::parse::Layer;
use crate::RigError;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root when relative) or
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The `dsavmm` binary to test.
///
/// `$DSAVMM_BIN` when set; otherwise this runs `cargo build --release -p vmm --bin dsavmm` in the
/// workspace (once per test process; cargo makes it a no-op when nothing changed) and returns
/// `<target>/release/dsavmm`. Release, because inside the rig every L1 instruction is emulated by
/// QEMU's TCG and a debug build would be much slower. (The `tests` crate cannot use
/// `CARGO_BIN_EXE_dsavmm`: cargo only sets that for the `vmm` package's own integration tests.)
/// `cargo test` (the dev profile) holds the lock of `target/debug` only, so the nested release build
/// does not wait on it.
pub fn dsavmm_binary() -> Result<PathBuf, RigError> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build_dsavmm)
        .clone()
        .map_err(|msg| RigError::new(Layer::Build, msg, Vec::new()))
}

fn build_dsavmm() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DSAVMM_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("DSAVMM_BIN={} is not a file", p.display()))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--release", "-p", "vmm", "--bin", "dsavmm"])
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "`cargo build --release -p vmm` failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    let bin = target_dir().join("release").join("dsavmm");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "cargo built vmm but {} does not exist",
            bin.display()
        ))
    }
}

/// Whether the host has a hardware-backed KVM usable by this user: `vmx` or `svm` among the CPU flags
/// and `/dev/kvm` openable read-write. `Err` carries the reason when not (e.g. this project's PVM KVM,
/// which has neither flag).
pub fn hw_kvm() -> Result<(), String> {
    let cpuinfo =
        std::fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    let has = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has {
        return Err(
            "the host CPU flags have neither vmx nor svm (no hardware-backed KVM)".to_string(),
        );
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("resources/rig/rig.sh").is_file());
    }
}
