//! Helpers shared by the vmm integration tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether /dev/kvm can be opened for test `test`. When not, prints `SKIPPED: <test>: /dev/kvm not
/// available (...)` past libtest's capture and returns `false`; with `DSAVMM_REQUIRE_KVM=1` (set by
/// `.ci/run`) it panics instead, so a machine that must have KVM cannot pass by skipping.
pub fn kvm_available(test: &str) -> bool {
    tests::kvm_or_skip(test)
}

/// A fresh temporary directory named after the test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsavmm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes the built-in self-test guest ELF into `dir` with `dsavmm selftest-image`.
pub fn selftest_elf(dir: &Path) -> PathBuf {
    let elf = dir.join("selftest.elf");
    let st = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .args(["selftest-image", "--output"])
        .arg(&elf)
        .status()
        .expect("run dsavmm selftest-image");
    assert!(st.success(), "dsavmm selftest-image failed");
    elf
}

/// `(name without trailing digits, Seccomp, Seccomp_filters)` of every thread of `pid` now
/// (from /proc/PID/task/*/status; empty once the process is gone).
pub fn thread_seccomp(pid: u32) -> Vec<(String, u32, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let name = field("Name:").unwrap_or_default();
        let name = name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        let mode = field("Seccomp:").and_then(|v| v.parse().ok()).unwrap_or(0);
        let filters = field("Seccomp_filters:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push((name, mode, filters));
    }
    out
}
