//! The built-in self-test guest on this machine's /dev/kvm: the README's default, several machine
//! shapes and DSA geometries, and `run --kernel <selftest ELF>` with an initramfs whose bytes the
//! guest checks. Each run must end with `N passed, 0 failed` and exit status 0.

mod common;

use common::{kvm_available, selftest_elf};

use std::process::Command;

/// Runs dsavmm with `args`; returns the guest's summary line after asserting success.
fn expect_pass(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .args(args)
        .output()
        .expect("run dsavmm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("selftest: ") && l.contains(" passed, "))
        .unwrap_or_else(|| panic!("{args:?}: no summary line\n{stdout}\n{stderr}"))
        .to_string();
    assert!(
        summary.contains(" 0 failed"),
        "{args:?}: {summary}\n{stdout}"
    );
    assert_eq!(out.status.code(), Some(0), "{args:?}\n{stdout}\n{stderr}");
    if let Some(l) = stdout.lines().find(|l| l.contains(": FAIL")) {
        panic!("{args:?}: {l}");
    }
    summary
}

#[test]
fn default_command_passes() {
    if !kvm_available("default_command_passes") {
        return;
    }
    expect_pass(&[]);
}

#[test]
fn machine_shapes_and_dsa_geometries() {
    if !kvm_available("machine_shapes_and_dsa_geometries") {
        return;
    }
    for args in [
        &["selftest", "--vcpus", "4"][..],
        &[
            "selftest",
            "--vcpus",
            "2",
            "--dsa",
            "backend=software,wqs=1",
        ],
        &[
            "selftest",
            "--vcpus",
            "1",
            "--dsa",
            "backend=software,wqs=4,engines=2,groups=2",
        ],
        &[
            "selftest",
            "--vcpus",
            "2",
            "--dsa",
            "backend=software,wqs=1",
            "--dsa",
            "backend=software,wqs=4",
        ],
        &["selftest", "--memory", "4608"],
    ] {
        expect_pass(args);
    }
}

/// FNV-1a 64, as the guest computes it for `selftest.initrd_fnv`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn run_selftest_elf_with_initrd() {
    if !kvm_available("run_selftest_elf_with_initrd") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dsavmm-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = selftest_elf(&dir);
    let initrd: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    let initrd_path = dir.join("initrd");
    std::fs::write(&initrd_path, &initrd).unwrap();
    for vcpus in ["1", "4"] {
        let cmdline = format!(
            "console=ttyS0 selftest.vcpus={vcpus} selftest.mem_mib=128 selftest.initrd_fnv={:016x}",
            fnv1a64(&initrd)
        );
        let summary = expect_pass(&[
            "run",
            "--kernel",
            elf.to_str().unwrap(),
            "--initramfs",
            initrd_path.to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--memory",
            "128",
            "--vcpus",
            vcpus,
        ]);
        eprintln!("{vcpus} vCPUs: {summary}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
