//! Debian's 6.12 kernel (the ELF vmlinux and the bzImage) boots under dsavmm with a busybox initramfs to
//! its /init marker with 1 and 2 vCPUs; and dsavmm's built-in self-test guest passes on this KVM.
//!
//! On this project's machines everything runs in the nested KVM rig, in one L1 boot shared by the tests
//! of this file (one run each); on a host with a hardware-backed KVM dsavmm runs directly. A Linux case
//! passes only when its run printed `L2-INIT-MARKER nproc=<vcpus>` (Linux reached user space).

use std::sync::OnceLock;
use std::time::Duration;

use tests::{
    dsavmm_binary, report_note, Layer, LinuxGuest, Mode, NestedVm, RigOutput, Run, SelftestReport,
    L2_CMDLINE, L2_MARKER,
};

/// (kernel inside L1, vCPUs) of the Linux runs; the self-test guest run comes after them.
const LINUX_CASES: [(&str, u32); 4] = [
    ("/l2/vmlinux", 1),
    ("/l2/vmlinux", 2),
    ("/l2/bzImage", 1),
    ("/l2/bzImage", 2),
];
const SELFTEST_RUN: usize = LINUX_CASES.len();
/// The self-test guest's runs after the Linux ones: the default (1 vCPU, one DSA with 8 WQs), and
/// 2 vCPUs with two DSAs of 1 and 4 WQs.
const SELFTEST_ARGS: [&[&str]; 2] = [
    &[],
    &[
        "selftest",
        "--vcpus",
        "2",
        "--dsa",
        "backend=software,wqs=1",
        "--dsa",
        "backend=software,wqs=4",
    ],
];

fn linux_run(kernel: &str, vcpus: u32) -> Run {
    let vcpus = vcpus.to_string();
    Run::dsavmm([
        "run",
        "--kernel",
        kernel,
        "--initramfs",
        "/l2/initramfs",
        "--cmdline",
        L2_CMDLINE,
        "--memory",
        "512",
        "--vcpus",
        &vcpus,
        "--serial",
        "stdout",
    ])
}

/// All runs in one rig boot, shared by the tests below.
fn shared() -> &'static Result<RigOutput, String> {
    static OUT: OnceLock<Result<RigOutput, String>> = OnceLock::new();
    OUT.get_or_init(|| {
        let guest = LinuxGuest::get().map_err(|e| e.to_string())?;
        let dsavmm = dsavmm_binary().map_err(|e| e.to_string())?;
        let mut runs: Vec<Run> = LINUX_CASES.iter().map(|(k, v)| linux_run(k, *v)).collect();
        runs.extend(SELFTEST_ARGS.iter().map(|a| Run::dsavmm(a.iter().copied())));
        let mut vm = NestedVm::new();
        // With the MOVDIR64B-capable QEMU the self-test guest's DSA data path runs in L2 too;
        // with stock QEMU its descriptor cases report skipped (#UD in L2) and the rest still runs.
        match tests::patched_qemu() {
            Ok(q) => vm = vm.patched_qemu(&q),
            Err(e) => eprintln!("rig on stock QEMU (DSA data path not exercised in L2): {e}"),
        }
        let out = vm
            .dsavmm(&dsavmm)
            .file("/l2/vmlinux", &guest.vmlinux)
            .file("/l2/bzImage", &guest.bzimage)
            .file("/l2/initramfs", &guest.boot_initramfs)
            // Each test judges its own run's exit status.
            .expect_exit(None)
            .timeout(Duration::from_secs(600))
            .run_all_retrying_l2_crashes(&runs)
            .map_err(|e| e.to_string())?;
        eprintln!(
            "rig mode {:?}: QEMU start to L1 /init {:?}, to /dev/kvm ready {:?}",
            out.mode, out.l1_init, out.l1_ready
        );
        Ok(out)
    })
}

fn check_linux(case: usize) {
    let out = match shared() {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    };
    let (kernel, vcpus) = LINUX_CASES[case];
    let marker = match out.expect_line(case, Layer::L2, L2_MARKER) {
        Ok(m) => m,
        Err(e) => panic!("{kernel} with {vcpus} vCPUs: {e}"),
    };
    let want = format!("nproc={vcpus} ");
    assert!(
        marker.text.contains(&want),
        "{kernel} with {vcpus} vCPUs: L2 guest failed: marker {:?} lacks {want:?}\n{}",
        marker.text,
        out.last_lines(&[Layer::L2, Layer::Dsavmm], Some(case), 20)
            .join("\n")
    );
    eprintln!(
        "{kernel} with {vcpus} vCPUs: dsavmm start to L2 /init {:?}, whole run {:?}, exit {:?}",
        out.since_start(case, marker),
        out.runs[case]
            .ended
            .zip(out.runs[case].started)
            .map(|(e, s)| e - s),
        out.runs[case].exit,
    );
    assert_eq!(
        out.runs[case].exit,
        Some(0),
        "dsavmm failed: L2 reached /init but dsavmm did not exit 0 after its power-off\n{}",
        out.last_lines(&[Layer::L2, Layer::Dsavmm], Some(case), 20)
            .join("\n")
    );
}

#[test]
fn vmlinux_boots_with_1_vcpu() {
    check_linux(0);
}

#[test]
fn vmlinux_boots_with_2_vcpus() {
    check_linux(1);
}

#[test]
fn bzimage_boots_with_1_vcpu() {
    check_linux(2);
}

#[test]
fn bzimage_boots_with_2_vcpus() {
    check_linux(3);
}

/// The built-in self-test guest's full suite on this second, hardware-style KVM (L1's SVM KVM, or the
/// host's hardware KVM when direct): `selftest: N passed, 0 failed, K skipped` and exit 0, for each
/// of [`SELFTEST_ARGS`]; where MOVDIR64B is expected to work, every DSA data case `ok`
/// ([`check_selftest_data_path`]).
#[test]
fn selftest_guest_passes_in_rig() {
    let out = match shared() {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    };
    for (i, args) in SELFTEST_ARGS.iter().enumerate() {
        let run = SELFTEST_RUN + i;
        if let Err(e) = out.expect_line(run, Layer::L2, "selftest: ") {
            panic!("{args:?}: {e}");
        }
        let summary = out
            .lines_of(run, Layer::L2)
            .filter(|l| l.text.contains(" passed, ") && l.text.contains(" failed"))
            .last();
        let tail = out
            .last_lines(&[Layer::L2, Layer::Dsavmm], Some(run), 40)
            .join("\n");
        let Some(summary) = summary else {
            panic!("{args:?}: the self-test guest printed no summary line\n{tail}");
        };
        eprintln!("rig self-test {args:?}: {}", summary.text);
        assert!(
            summary.text.contains(" 0 failed"),
            "{args:?}: self-test guest failed in the rig: {}\n{tail}",
            summary.text
        );
        assert_eq!(
            out.runs[run].exit,
            Some(0),
            "{args:?}: dsavmm exited non-zero\n{tail}"
        );
        check_selftest_data_path(out, run, args, &tail);
    }
}

/// Where the self-test guest's DSA data cases must all be `ok`, and where they may be skipped:
/// - nested, L1 on the rig's patched QEMU (its TCG executes MOVDIR64B, and an L2 MOVDIR64B to a
///   portal exits to dsavmm): required, and L1's CPU must show `movdir64b`;
/// - nested on stock QEMU 7.2 because `DSAVMM_RIG_PATCHED_QEMU=0`: TCG raises #UD in L2, so the
///   guest skips them; allowed, and reported;
/// - nested on stock QEMU because the patched build failed without that opt-out: a failure;
/// - direct (hardware KVM): required when the host CPU executes MOVDIR64B
///   ([`tests::host_movdir64b_expected`]), otherwise allowed and reported.
fn check_selftest_data_path(out: &RigOutput, run: usize, args: &[&str], tail: &str) {
    let report = SelftestReport::parse(out.lines_of(run, Layer::L2).map(|l| l.text.as_str()));
    // The `selftest` command has one default DSA; otherwise one per `--dsa`.
    let devices = args.iter().filter(|a| **a == "--dsa").count().max(1);
    let expected: Result<&str, String> = match out.mode {
        Mode::Direct => tests::host_movdir64b_expected().map_err(str::to_string),
        _ => match tests::patched_qemu() {
            Ok(_) => {
                assert_eq!(
                    out.host_movdir64b(),
                    Some(true),
                    "{args:?}: L1 runs on the patched QEMU but its CPU does not show movdir64b\n{tail}"
                );
                Ok("L1 runs on the rig's patched QEMU, whose TCG executes MOVDIR64B")
            }
            Err(e) if std::env::var("DSAVMM_RIG_PATCHED_QEMU").as_deref() == Ok("0") => {
                Err(format!(
                "L1 runs on stock QEMU 7.2 (DSAVMM_RIG_PATCHED_QEMU=0), whose TCG raises #UD on \
                 MOVDIR64B in L2 ({e})"
            ))
            }
            Err(e) => panic!(
                "{args:?}: the rig's patched QEMU is not available, so the self-test guest's DSA \
                 data path cannot be exercised in L2: {e}\nSet DSAVMM_RIG_PATCHED_QEMU=0 to accept \
                 stock QEMU (data cases skipped)."
            ),
        },
    };
    match expected {
        Ok(why) => {
            match report.check_data_path(devices) {
                Ok(n) => eprintln!("{args:?}: {n} DSA data cases ok ({why})"),
                Err(e) => panic!(
                    "{args:?}: MOVDIR64B is expected to work here ({why}), so every DSA data case \
                     of the {devices} DSA(s) must be ok: {e}\n{tail}"
                ),
            }
            // In L2 under the patched QEMU every instruction-emulation case must be ok: CPL 3
            // MOVDIR64B/MOVDIRI execute in TCG (faults raised by TCG's MMU), stores to MMIO and the
            // POPCNT on MMIO reach dsavmm through L1 KVM's emulator.
            let native_ud = out.mode == Mode::Direct && tests::host_user_mode_lacks_movdir64b();
            match report.check_fault_cases(native_ud) {
                Ok(n) => eprintln!("{args:?}: {n} instruction-emulation cases ok"),
                Err(e) => panic!(
                    "{args:?}: the instruction-emulation cases must be ok under dsavmm ({why}): \
                     {e}\n{tail}"
                ),
            }
        }
        Err(why) => {
            let skipped = report.skipped_data_cases();
            report_note(
                "selftest_guest_passes_in_rig",
                &format!(
                    "{args:?}: {} DSA data case(s) skipped, allowed because {why}: {}",
                    skipped.len(),
                    skipped.join("; ")
                ),
            );
        }
    }
}
