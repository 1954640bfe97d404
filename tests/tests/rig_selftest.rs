//! The rig checks itself: in one L1 boot, QEMU `-accel kvm` (a known-good VMM) boots the L2 Linux guest
//! on L1's KVM to its /init marker, and a broken dsavmm (`/bin/false`) makes the harness fail with an
//! error naming the dsavmm layer. On a host with a hardware KVM (direct mode) only the second part runs.

use std::path::Path;
use std::time::Duration;

use tests::{Layer, LinuxGuest, Mode, NestedVm, Run, L2_CMDLINE, L2_MARKER};

#[test]
fn reference_vmm_boots_l2_and_broken_dsavmm_is_named() -> Result<(), tests::RigError> {
    let guest = LinuxGuest::get()?;
    let broken = Path::new("/bin/false");
    let vm = NestedVm::new()
        .dsavmm(broken)
        .with_qemu(true)
        .l2_kernel(&guest.vmlinux)
        .l2_initramfs(&guest.boot_initramfs)
        .timeout(Duration::from_secs(420));
    let dsavmm_run = Run::dsavmm([
        "run",
        "--kernel",
        NestedVm::L2_KERNEL,
        "--initramfs",
        NestedVm::L2_INITRAMFS,
        "--cmdline",
        L2_CMDLINE,
    ]);
    let nested = vm.resolved_mode() == Mode::Nested;
    let mut runs = Vec::new();
    if nested {
        runs.push(Run::qemu_reference(
            NestedVm::L2_KERNEL,
            NestedVm::L2_INITRAMFS,
            L2_CMDLINE,
            1,
            512,
        ));
    }
    runs.push(dsavmm_run);
    let err = match vm.run_all(&runs) {
        Ok(out) => panic!(
            "a dsavmm that is /bin/false passed the rig:\n{}",
            out.transcript()
        ),
        Err(e) => e,
    };
    eprintln!("expected failure:\n{err}");
    assert_eq!(err.layer, Layer::Dsavmm, "wrong layer named: {err}");
    assert!(err.message.contains("exited 1"), "{err}");
    if nested {
        let out = err
            .output
            .as_deref()
            .ok_or_else(|| tests::RigError::new(Layer::Build, "no output", vec![]))?;
        let marker = out.expect_line(0, Layer::L2, L2_MARKER)?;
        assert!(marker.text.contains("nproc=1"), "{}", marker.text);
        eprintln!(
            "rig timings: QEMU start to L1 /init {:?}, to /dev/kvm ready {:?}; reference QEMU -accel kvm in L1: \
             start to L2 /init {:?}, run total {:?}",
            out.l1_init,
            out.l1_ready,
            out.since_start(0, marker),
            out.runs[0].ended.zip(out.runs[0].started).map(|(e, s)| e - s),
        );
    }
    Ok(())
}

/// A QEMU that cannot start (here `/bin/false`) fails naming the QEMU layer, at once.
#[test]
fn qemu_that_does_not_start_is_named() -> Result<(), tests::RigError> {
    let guest = LinuxGuest::get()?;
    let err = NestedVm::new()
        .mode(Mode::Nested)
        .qemu_binary("/bin/false")
        .dsavmm("/bin/true")
        .l2_kernel(&guest.vmlinux)
        .timeout(Duration::from_secs(60))
        .run(&["run", "--kernel", NestedVm::L2_KERNEL])
        .err()
        .ok_or_else(|| {
            tests::RigError::new(Layer::Build, "/bin/false as QEMU passed the rig", vec![])
        })?;
    eprintln!("expected failure:\n{err}");
    assert_eq!(err.layer, Layer::Qemu, "{err}");
    Ok(())
}

/// The hard timeout kills QEMU and names the layer that was running (L1 booting or loading modules).
#[test]
fn timeout_kills_qemu_and_names_l1() -> Result<(), tests::RigError> {
    let guest = LinuxGuest::get()?;
    let start = std::time::Instant::now();
    let err = NestedVm::new()
        .mode(Mode::Nested)
        .dsavmm("/bin/true")
        .l2_kernel(&guest.vmlinux)
        .timeout(Duration::from_secs(3))
        .run(&["run", "--kernel", NestedVm::L2_KERNEL])
        .err()
        .ok_or_else(|| {
            tests::RigError::new(Layer::Build, "L1 booted and ran within 3 s?", vec![])
        })?;
    eprintln!("expected failure:\n{err}");
    // Where L1 is when the 3 s run out depends on the machine's load: still booting, or (an idle
    // machine boots L1 in under 2 s) already loading its kvm modules. Either is an L1-side layer.
    assert!(
        matches!(err.layer, Layer::L1 | Layer::Modules),
        "expected the L1 or module-load layer: {err}"
    );
    assert!(err.message.contains("timeout"), "{err}");
    let out = err
        .output
        .as_deref()
        .ok_or_else(|| tests::RigError::new(Layer::Build, "no output", vec![]))?;
    assert!(out.timed_out);
    // Building the initramfs is not part of the timeout; QEMU must have been killed promptly.
    assert!(
        out.elapsed < Duration::from_secs(10),
        "{:?} (since test start {:?})",
        out.elapsed,
        start.elapsed()
    );
    Ok(())
}
