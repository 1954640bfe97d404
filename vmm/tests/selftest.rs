//! The built-in self-test guest on this machine's /dev/kvm: the README's default, several machine
//! shapes and DSA geometries, and `run --kernel <selftest ELF>` with an initramfs whose bytes the
//! guest checks. Each run must end with `N passed, 0 failed` and exit status 0, and (where MOVDIR64B
//! is expected to work, see `expect_pass`) every DSA data case `ok`.

mod common;

use common::{kvm_available, selftest_elf};
use tests::{host_movdir64b_expected, host_user_mode_lacks_movdir64b, report_note, SelftestReport};

use std::process::Command;

/// The DSAs a dsavmm command line attaches: one per `--dsa`; the `selftest` command (and no
/// command) has one default DSA without `--dsa`, `run` none.
fn dsa_count(args: &[&str]) -> usize {
    let n = args.iter().filter(|a| **a == "--dsa").count();
    if n == 0 && args.first() != Some(&"run") {
        1
    } else {
        n
    }
}

/// Runs dsavmm with `args`; returns the guest's summary line after asserting success.
///
/// `0 failed` is not enough: a CPU that raises #UD on MOVDIR64B makes the guest skip every DSA data
/// case and still fail none. Where MOVDIR64B is expected to work ([`host_movdir64b_expected`]: on
/// this project's PVM KVM every guest instruction is emulated and a MOVDIR64B exits to dsavmm, which
/// emulates it; on a hardware KVM whose CPU executes it), every DSA data case of every attached DSA
/// must be `ok`. On a hardware KVM whose CPU lacks MOVDIR64B the skips are allowed and reported.
fn expect_pass(test: &str, args: &[&str]) -> String {
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
    let report = SelftestReport::parse(stdout.lines());
    let devices = dsa_count(args);
    match host_movdir64b_expected() {
        Ok(why) => {
            if let Err(e) = report.check_data_path(devices) {
                panic!(
                    "{args:?}: MOVDIR64B is expected to work here ({why}), so every DSA data case \
                     of the {devices} DSA(s) must be ok: {e}\n{stdout}"
                );
            }
            // dsavmm must act as the CPU on every instruction that reaches it (#GP/#PF/#UD with the
            // right error code, CR2 and RIP, or the completed store). The CPL 3 cases never reach it
            // on this project's PVM KVM (user mode runs natively on a host CPU without MOVDIR64B,
            // whose #UD KVM answers itself): only there may they skip, with exactly that reason.
            let native_ud = host_user_mode_lacks_movdir64b();
            if let Err(e) = report.check_fault_cases(native_ud) {
                panic!(
                    "{args:?}: the instruction-emulation cases must be ok under dsavmm ({why}; CPL 3 \
                     skip for a native #UD allowed: {native_ud}): {e}\n{stdout}"
                );
            }
        }
        Err(why) => {
            let skipped = report.skipped_data_cases();
            if !skipped.is_empty() {
                report_note(
                    test,
                    &format!(
                        "{args:?}: {} DSA data case(s) skipped, allowed because {why}: {}",
                        skipped.len(),
                        skipped.join("; ")
                    ),
                );
            }
        }
    }
    summary
}

#[test]
fn default_command_passes() {
    if !kvm_available("default_command_passes") {
        return;
    }
    expect_pass("default_command_passes", &[]);
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
        expect_pass("machine_shapes_and_dsa_geometries", args);
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
        let summary = expect_pass(
            "run_selftest_elf_with_initrd",
            &[
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
                // `run` attaches no DSA by default; one DSA so that its data path is checked too.
                "--dsa",
                "backend=software",
            ],
        );
        eprintln!("{vcpus} vCPUs: {summary}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
