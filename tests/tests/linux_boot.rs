//! Debian's 6.12 kernel (the ELF vmlinux and the bzImage) boots under dsavmm with a busybox initramfs to
//! its /init marker with 1 and 2 vCPUs. On this project's machines it runs in the nested KVM rig (one L1
//! boot, four dsavmm runs); on a host with a hardware-backed KVM, dsavmm runs directly. It passes only
//! when every run printed `L2-INIT-MARKER nproc=<vcpus>` (Linux reached user space).

use std::time::Duration;

use tests::{dsavmm_binary, Layer, LinuxGuest, NestedVm, Run, L2_CMDLINE, L2_MARKER};

#[test]
fn debian_linux_boots_to_init_with_1_and_2_vcpus() -> Result<(), tests::RigError> {
    let guest = LinuxGuest::get()?;
    let dsavmm = dsavmm_binary()?;
    let vm = NestedVm::new()
        .dsavmm(&dsavmm)
        .file("/l2/vmlinux", &guest.vmlinux)
        .file("/l2/bzImage", &guest.bzimage)
        .file("/l2/initramfs", &guest.boot_initramfs)
        .timeout(Duration::from_secs(540));
    let cases = [
        ("/l2/vmlinux", 1u32),
        ("/l2/vmlinux", 2),
        ("/l2/bzImage", 1),
        ("/l2/bzImage", 2),
    ];
    let runs: Vec<Run> = cases
        .iter()
        .map(|(kernel, vcpus)| {
            Run::dsavmm([
                "run".to_string(),
                "--kernel".to_string(),
                kernel.to_string(),
                "--initramfs".to_string(),
                "/l2/initramfs".to_string(),
                "--cmdline".to_string(),
                L2_CMDLINE.to_string(),
                "--memory".to_string(),
                "512".to_string(),
                "--vcpus".to_string(),
                vcpus.to_string(),
                "--serial".to_string(),
                "stdout".to_string(),
            ])
        })
        .collect();
    let out = vm.run_all(&runs)?;
    eprintln!(
        "mode {:?}; QEMU start to L1 /init {:?}, to /dev/kvm {:?}",
        out.mode, out.l1_init, out.l1_ready
    );
    for (i, (kernel, vcpus)) in cases.iter().enumerate() {
        let marker = out.expect_line(i, Layer::L2, L2_MARKER)?;
        let want = format!("nproc={vcpus} ");
        if !marker.text.contains(&want) {
            return Err(tests::RigError {
                layer: Layer::L2,
                message: format!(
                    "run {i} ({kernel}, {vcpus} vCPUs): marker {:?} lacks {want:?}",
                    marker.text
                ),
                last_lines: out.last_lines(&[Layer::L2, Layer::Dsavmm], Some(i), 20),
                log: out.log.clone(),
                output: None,
            });
        }
        eprintln!(
            "run {i}: {kernel} with {vcpus} vCPUs: dsavmm start to L2 /init {:?}, run total {:?}",
            out.since_start(i, marker),
            out.runs[i]
                .ended
                .zip(out.runs[i].started)
                .map(|(e, s)| e - s),
        );
    }
    Ok(())
}
