//! An external vfio-user client: QEMU 10.2's `-device vfio-user-pci` (the rig's QEMU,
//! `resources/qemu/build.sh`, under TCG on this host) attaches `dsavmm dsa-server` and boots the
//! self-test guest on `-M q35`; the guest finds the served DSA on PCI and runs its DSA cases.
//!
//! One case differs, and the test requires exactly that difference: QEMU emulates the MSI-X
//! table itself (the guest's mask bits never reach the server) but reads the PBA from the
//! server (`hw/vfio-user/pci.c`, `vfio_user_pba_read`: "server copy is what matters"), so a
//! completion on a masked entry is held back correctly while the PBA bit the guest reads stays
//! 0: `dsa0_interrupt_masked` fails with "PBA bit not set for the masked entry" (docs/vfio-user.md).
//! Every other DSA case must pass.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::selftest::{CaseStatus, DATA_AREAS};
use tests::{dsavmm_binary, patched_qemu, report_skip, SelftestReport};

/// The one case QEMU's client cannot pass, and the reason it gives.
const QEMU_PBA_CASE: (&str, &str) = ("dsa0_interrupt_masked", "PBA bit not set");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has_vfio_user_pci(qemu: &Path) -> bool {
    Command::new(qemu)
        .args(["-device", "help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("vfio-user-pci"))
}

#[test]
fn qemu_vfio_user_pci_runs_the_selftest_dsa_cases() {
    let test = "qemu_vfio_user_pci_runs_the_selftest_dsa_cases";
    let qemu = patched_qemu().unwrap_or_else(|e| panic!("the rig's QEMU is not available: {e}"));
    if !has_vfio_user_pci(&qemu.binary) {
        report_skip(
            test,
            &format!(
                "{} has no vfio-user-pci device (QEMU 10.1 or later has it: \
                 DSAVMM_QEMU_VERSION=10.2 resources/qemu/build.sh)",
                qemu.binary.display()
            ),
        );
        return;
    }
    let dsavmm = dsavmm_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("dsavmm-qemu-vfio-user-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let elf = dir.join("selftest.elf");
    assert!(Command::new(&dsavmm)
        .args(["selftest-image", "--output"])
        .arg(&elf)
        .status()
        .expect("dsavmm selftest-image")
        .success());
    let socket = dir.join("dsa.sock");
    let _server = Server(
        Command::new(&dsavmm)
            .args(["dsa-server", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dsa-server"),
    );
    let t = Instant::now();
    while !socket.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "dsa-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let device = format!(
        r#"{{"driver":"vfio-user-pci","socket":{{"path":"{}","type":"unix"}}}}"#,
        socket.display()
    );
    let start = Instant::now();
    let out = Command::new("timeout")
        .arg("300")
        .arg(&qemu.binary)
        .args([
            "-M",
            "q35,memory-backend=mem",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "256",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
            "-L",
        ])
        .arg(&qemu.firmware)
        .arg("-kernel")
        .arg(&elf)
        .args(["-append", "selftest.mem_mib=256", "-device", &device])
        .stdin(Stdio::null())
        .output()
        .expect("run QEMU");
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let report = SelftestReport::parse(text.lines());
    let summary = report.summary.unwrap_or_else(|| {
        panic!(
            "no self-test summary (QEMU {}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        report.case("dsa_pci").map(|c| &c.status),
        Some(&CaseStatus::Ok),
        "the guest did not find the served DSA:\n{text}"
    );
    for area in DATA_AREAS {
        let name = format!("dsa0_{area}");
        let case = report
            .case(&name)
            .unwrap_or_else(|| panic!("{name} did not run:\n{text}"));
        match (&case.status, name == QEMU_PBA_CASE.0) {
            (CaseStatus::Ok, _) => {}
            (CaseStatus::Skipped(why), _) if area == "smp" && why.starts_with("1 vCPU") => {}
            (CaseStatus::Fail(why), true) if why.contains(QEMU_PBA_CASE.1) => {}
            (s, _) => panic!("{name}: {s:?}\n{text}"),
        }
    }
    let failed: Vec<_> = report
        .cases
        .iter()
        .filter(|c| matches!(c.status, CaseStatus::Fail(_)))
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        failed.iter().all(|n| *n == QEMU_PBA_CASE.0),
        "failed: {failed:?}\n{text}"
    );
    println!(
        "bench: qemu_vfio_user: QEMU vfio-user-pci (TCG, q35) + dsavmm dsa-server: {} passed, {} \
         failed ({failed:?}), {} skipped in {:.2} s",
        summary.passed,
        summary.failed,
        summary.skipped,
        elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
