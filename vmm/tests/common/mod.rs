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
