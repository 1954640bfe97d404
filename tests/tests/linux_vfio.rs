//! `--dsa backend=vfio` end to end, through a real kernel VFIO: the closest substitute for DSA
//! hardware here (docs/vfio.md). A `dsavmm dsa-server` on the host serves a 4-WQ vDSA; the rig's
//! QEMU 10.2 runs L1 on q35 with an `intel-iommu` in caching mode and that server as a
//! `vfio-user-pci` device; L1's kernel binds it to vfio-pci; dsavmm in L1 gives physical WQs 1
//! and 2 to an L2 whose unmodified idxd driver and accel-config configure it and run dmatest.
//! The portal pages are memory slots in L2 and the host vectors are irqfds: the test requires
//! dmatest to pass, zero portal exits into dsavmm, and the server (the "hardware") to have taken
//! every descriptor from the mapped pages. A second run asks for a WQ the device does not have
//! and must be refused. A third run, in the same L1 boot, gives the same guest the software vDSA
//! (`backend=software`), so the dmatest figures and the descriptors that went through dsavmm's exit
//! path are compared side by side in one run. A fourth runs dsavmm's own self-test guest on
//! `backend=vfio` (WQs 1 and 2): its driver configures the mediated device and every case must
//! pass, the error cases included: descriptors the physical device could not complete into a
//! record show up in the guest's SWERR with the guest's WQ index (vfio/swerr.rs).
//!
//! Needs the patched QEMU (10.2: the vfio-user client); without it the tests are skipped with
//! that reason. On a host with hardware KVM (direct mode) they are skipped: that host's own DSA
//! is the test there (`dsavmm run ... --dsa backend=vfio,device=BDF`, docs/vfio.md).

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tests::{
    api_counters, api_run, dsavmm_binary, patched_qemu, report_skip, IdxdGuest, IdxdReport, Layer,
    Mode, NestedVm, RigOutput, Run, SelftestReport, L2_CMDLINE,
};

/// The physical WQs given to the guest (of the server's 4).
const GIVEN_WQS: &str = "1:2";
/// A WQ the device does not have.
const MISSING_WQ: &str = "5";
const API_BEGIN: &str = "RIG-API-DSA-BEGIN";
const API_END: &str = "RIG-API-DSA-END";

/// Finds the vfio-user DSA in L1 (8086:0b25) as `$B` and binds it to vfio-pci.
const BIND: &str = "B=; for d in /sys/bus/pci/devices/*; do \
     [ \"$(cat $d/vendor)\" = 0x8086 ] && [ \"$(cat $d/device)\" = 0x0b25 ] && B=$(basename $d); \
     done; [ -n \"$B\" ] || { echo 'no DSA on L1 PCI bus' >&2; exit 2; }; \
     if [ ! -e /sys/bus/pci/devices/$B/driver ]; then \
     echo vfio-pci > /sys/bus/pci/devices/$B/driver_override; echo $B > /sys/bus/pci/drivers_probe; fi; \
     [ -e /sys/bus/pci/devices/$B/iommu_group ] || { echo \"$B has no IOMMU group\" >&2; exit 2; }; \
     echo \"RIG-VFIO-BDF $B group=$(basename $(readlink /sys/bus/pci/devices/$B/iommu_group)) driver=$(basename $(readlink /sys/bus/pci/devices/$B/driver))\" >&2";

struct Shared {
    out: RigOutput,
    report: IdxdReport,
    /// `GET /dsa/0` counters of run 0.
    counters: serde_json::Value,
    /// The server's session summary (its last `client N summary:` line).
    server: serde_json::Value,
    /// The software run (run 2): its report and `GET /dsa/0` counters.
    software: IdxdReport,
    software_counters: Result<serde_json::Value, String>,
}

/// The run of the same guest on the software vDSA.
const SOFTWARE_RUN: usize = 2;
/// The run of dsavmm's own self-test guest on `backend=vfio`: its DSA driver configures the
/// mediated device and runs every case, the error cases included (SWERR forwarded).
const SELFTEST_RUN: usize = 3;

fn run_dsavmm_script(dsa: &str) -> String {
    let cmdline = format!("{L2_CMDLINE} rig.dmatest=1");
    format!(
        "{BIND}; S=/tmp/dsavmm-api.sock; dsavmm --api-sock $S run --kernel /l2/vmlinux \
         --initramfs /l2/idxd --cmdline '{cmdline}' --memory 512 --vcpus 2 \
         --serial stdout --dsa {dsa} & p=$!; \
         while kill -0 $p 2>/dev/null && ! dsavmm remote --api-sock $S info 2>/dev/null | grep -q Halted; \
         do sleep 1; done; \
         echo {API_BEGIN}; dsavmm remote --api-sock $S dsa 0; echo; echo {API_END}; \
         dsavmm remote --api-sock $S shutdown; wait $p"
    )
}

fn start_server(
    dsavmm: &std::path::Path,
    socket: &std::path::Path,
    log: &std::path::Path,
) -> Result<Child, String> {
    let _ = std::fs::remove_file(socket);
    let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(dsavmm)
        .args([
            "--log-level",
            "info",
            "dsa-server",
            "--wqs",
            "4",
            "--socket",
        ])
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start dsa-server: {e}"))?;
    let t = Instant::now();
    while !socket.exists() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("dsa-server did not create its socket in 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

fn shared() -> &'static Result<Shared, String> {
    static OUT: OnceLock<Result<Shared, String>> = OnceLock::new();
    OUT.get_or_init(|| {
        let vm = NestedVm::new();
        if vm.resolved_mode() == Mode::Direct {
            return Err("SKIP: this host has hardware KVM: the rig's vfio-user DSA is for hosts \
                        without one (run backend=vfio on this host's own DSA, docs/vfio.md)"
                .into());
        }
        let q = patched_qemu()
            .map_err(|e| format!("SKIP: the rig's QEMU 10.2 (vfio-user client) is not available: {e}"))?;
        let guest = IdxdGuest::get().map_err(|e| e.to_string())?;
        let dsavmm = dsavmm_binary().map_err(|e| e.to_string())?;
        let dir = std::env::temp_dir().join(format!("dsavmm-linux-vfio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let socket = dir.join("dsa.sock");
        let log_path = dir.join("dsa-server.log");
        let mut server = start_server(&dsavmm, &socket, &log_path)?;
        let dsa = format!("backend=vfio,device=$B,wqs={GIVEN_WQS}");
        let refused = format!(
            "{BIND}; dsavmm run --kernel /l2/vmlinux --memory 256 --dsa backend=vfio,device=$B,wqs={MISSING_WQ}"
        );
        let out = vm
            .dsavmm(&dsavmm)
            .file("/l2/vmlinux", &guest.vmlinux)
            .file("/l2/idxd", &guest.initramfs)
            .patched_qemu(&q)
            .vfio_user(&socket)
            .expect_exit(None)
            .timeout(Duration::from_secs(900))
            .run_all(&[
                Run::command("sh", ["-c".to_string(), run_dsavmm_script(&dsa)]),
                Run::command("sh", ["-c".to_string(), refused]),
                api_run(&[
                    "run",
                    "--kernel",
                    "/l2/vmlinux",
                    "--initramfs",
                    "/l2/idxd",
                    "--cmdline",
                    &format!("{L2_CMDLINE} rig.dmatest=1"),
                    "--memory",
                    "512",
                    "--vcpus",
                    "2",
                    "--serial",
                    "stdout",
                    "--dsa",
                    "backend=software",
                ]),
                Run::command(
                    "sh",
                    [
                        "-c".to_string(),
                        format!(
                            "{BIND}; dsavmm selftest --serial stdout --vcpus 2 --movdir64b auto \
                             --dsa backend=vfio,device=$B,wqs={GIVEN_WQS}"
                        ),
                    ],
                ),
            ]);
        // SIGTERM, so the server ends the session and logs its summary (kill() would lose it).
        let _ = Command::new("kill").arg(server.id().to_string()).status();
        let _ = server.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.map_err(|e| e.to_string())?;
        let l2: Vec<&str> = out.lines_of(0, Layer::L2).map(|l| l.text.as_str()).collect();
        let report = IdxdReport::parse(l2.iter().copied());
        let begin = l2.iter().position(|l| l.contains(API_BEGIN));
        let end = l2.iter().position(|l| l.contains(API_END));
        let counters = match (begin, end) {
            (Some(b), Some(e)) if b < e => {
                let text: String = l2[b + 1..e].concat();
                serde_json::from_str::<serde_json::Value>(text.trim())
                    .map(|v| v["counters"].clone())
                    .map_err(|e| format!("GET /dsa/0 is not JSON ({e}): {text}"))?
            }
            _ => serde_json::Value::Null,
        };
        // The last summary: the server has one session, QEMU's, over the whole L1 boot.
        let server = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(" summary: ").map(|(_, j)| j.to_string()))
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or(serde_json::Value::Null);
        eprintln!("dsa-server session summary: {server}");
        let software = IdxdReport::parse(
            out.lines_of(SOFTWARE_RUN, Layer::L2)
                .map(|l| l.text.as_str()),
        );
        let software_counters = api_counters(&out, SOFTWARE_RUN);
        Ok(Shared {
            out,
            report,
            counters,
            server,
            software,
            software_counters,
        })
    })
}

/// The shared run, or `None` after printing why it is skipped.
fn get(test: &str) -> Option<&'static Shared> {
    match shared() {
        Ok(s) => Some(s),
        Err(e) if e.starts_with("SKIP: ") => {
            report_skip(test, &e["SKIP: ".len()..]);
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn tail(s: &Shared, run: usize) -> String {
    s.out
        .last_lines(&[Layer::L2, Layer::Dsavmm, Layer::L1], Some(run), 40)
        .join("\n")
}

#[test]
fn dmatest_passes_on_wqs_given_through_kernel_vfio() {
    let Some(s) = get("dmatest_passes_on_wqs_given_through_kernel_vfio") else {
        return;
    };
    assert_eq!(
        s.report.verdict,
        Some(true),
        "the idxd guest did not pass\n{}",
        tail(s, 0)
    );
    assert!(
        s.report.dmatest.len() >= 7,
        "{} dmatest summaries\n{}",
        s.report.dmatest.len(),
        tail(s, 0)
    );
    for d in &s.report.dmatest {
        eprintln!(
            "bench: linux_vfio (backend=vfio,wqs={GIVEN_WQS}): {}",
            d.summary
        );
        assert!(d.tests > 0 && d.failures == 0, "{}", d.summary);
    }
    assert!(
        s.report.oops.is_empty(),
        "L2 kernel warnings: {:?}",
        s.report.oops
    );
    let bdf = s
        .out
        .lines_of(0, Layer::Dsavmm)
        .find(|l| l.text.contains("RIG-VFIO-BDF"))
        .map(|l| l.text.clone());
    assert!(
        bdf.as_deref()
            .is_some_and(|l| l.contains("driver=vfio-pci")),
        "the DSA was not bound to vfio-pci in L1: {bdf:?}"
    );
}

#[test]
fn the_data_path_never_exits_into_dsavmm() {
    let Some(s) = get("the_data_path_never_exits_into_dsavmm") else {
        return;
    };
    let v = &s.counters["vfio"];
    assert!(
        v.is_object(),
        "GET /dsa/0 has no vfio counters: {}\n{}",
        s.counters,
        tail(s, 0)
    );
    assert_eq!(v["portals_mapped_in_guest"], true, "{v}");
    assert_eq!(
        v["portal_exits"], 0,
        "portal stores exited into dsavmm: {v}"
    );
    assert_eq!(v["physical_errors"], 0, "{v}");
    assert_eq!(v["wqs"], serde_json::json!([1, 2]), "{v}");
    let tests: u64 = s.report.dmatest.iter().map(|d| d.tests).sum();
    let mapped = s.server["mapped_descriptors"].as_u64().unwrap_or(0);
    let total = s.server["descriptors"].as_u64().unwrap_or(0);
    eprintln!(
        "bench: linux_vfio: exits_per_descriptor=0 portal_exits={} physical_commands={} \
         server_descriptors={total} mapped_descriptors={mapped} (whole L1 boot) dmatest_tests={tests} \
         dma_maps={} dma_unmaps={} dma_windows_at_end={}",
        v["portal_exits"],
        v["physical_commands"],
        s.server["dma_maps"],
        s.server["dma_unmaps"],
        s.server["dma_windows"]
    );
    assert!(
        total >= tests && tests > 0,
        "the server ran {total} descriptors for {tests} dmatest tests: {}",
        s.server
    );
    // The server's one session is QEMU's, over the whole L1 boot: its counts include the
    // self-test run, which also submits descriptors the device drops (an aborted or disabled
    // WQ), so every descriptor came through a mapped portal, but not every one ran.
    assert!(
        mapped >= total,
        "descriptors reached the server other than through the mapped portal: {}",
        s.server
    );
    assert_eq!(s.server["trapped_descriptors"], 0, "{}", s.server);
}

#[test]
fn a_wq_the_device_does_not_have_is_refused() {
    let Some(s) = get("a_wq_the_device_does_not_have_is_refused") else {
        return;
    };
    let exit = s.out.runs.get(1).and_then(|r| r.exit);
    assert_eq!(exit, Some(1), "{}", tail(s, 1));
    let said: Vec<&str> = s
        .out
        .lines_of(1, Layer::Dsavmm)
        .map(|l| l.text.as_str())
        .filter(|l| l.contains("error"))
        .collect();
    assert!(
        said.iter()
            .any(|l| l.contains(&format!("wqs={MISSING_WQ}"))
                && l.contains("the device has WQs 0..3")),
        "no clear refusal: {said:?}"
    );
}

/// The sum over a case's threads of dmatest's KB/s.
fn case_kb_per_s(r: &IdxdReport, case: &str) -> u64 {
    r.dmatest_case(case).iter().map(|d| d.kb_per_s).sum()
}

/// The same guest and dmatest on `backend=vfio` and on `backend=software`, in one L1 boot: both
/// pass, and the descriptors that went through dsavmm's exit path are 0 on vfio (counter) and all
/// of them on software (each is one MOVDIR64B exit there). Prints one line per dmatest case with
/// the two throughputs and their ratio (a record: tests never assert on timings).
#[test]
fn vfio_and_software_side_by_side() {
    let Some(s) = get("vfio_and_software_side_by_side") else {
        return;
    };
    assert_eq!(
        s.software.verdict,
        Some(true),
        "the software run did not pass\n{}",
        tail(s, SOFTWARE_RUN)
    );
    let sw = s
        .software_counters
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(s, SOFTWARE_RUN)));
    let sw_descriptors = sw["descriptors"].as_u64().unwrap_or(0);
    let sw_tests: u64 = s.software.dmatest.iter().map(|d| d.tests).sum();
    assert!(
        sw_descriptors >= sw_tests && sw_tests > 0,
        "software: {sw_descriptors} descriptors for {sw_tests} dmatest tests: {sw}"
    );
    let vfio_exits = s.counters["vfio"]["portal_exits"].as_u64();
    assert_eq!(vfio_exits, Some(0), "{}", s.counters);
    // Run 0's own descriptors: one per dmatest test (the server's count covers every run).
    let vfio_descriptors: u64 = s.report.dmatest.iter().map(|d| d.tests).sum();
    eprintln!(
        "bench: linux_vfio side by side: descriptors through dsavmm's exit path: backend=vfio 0 of \
         {vfio_descriptors}, backend=software {sw_descriptors} of {sw_descriptors}"
    );
    for case in s.report.dmatest_cases() {
        let (v, w) = (
            case_kb_per_s(&s.report, case),
            case_kb_per_s(&s.software, case),
        );
        assert!(w > 0, "software run has no dmatest {case}");
        eprintln!(
            "bench: linux_vfio side by side: dmatest {case}: backend=vfio {v} KB/s, \
             backend=software {w} KB/s, vfio/software {:.2}",
            v as f64 / w as f64
        );
    }
}

/// dsavmm's self-test guest on `backend=vfio`: its own driver probes, configures and enables the
/// mediated device; every DSA case passes on the physical WQs, and the error case's software
/// errors (a misaligned completion record, an error without one) come back from the physical
/// device as the guest's SWERR and vector-0 interrupt, WQ index translated.
#[test]
fn the_selftest_guest_passes_on_backend_vfio() {
    let Some(s) = get("the_selftest_guest_passes_on_backend_vfio") else {
        return;
    };
    let lines: Vec<&str> = s
        .out
        .lines_of(SELFTEST_RUN, Layer::L2)
        .chain(s.out.lines_of(SELFTEST_RUN, Layer::Dsavmm))
        .map(|l| l.text.as_str())
        .collect();
    let r = SelftestReport::parse(lines.iter().copied());
    let summary = r
        .summary
        .as_ref()
        .unwrap_or_else(|| panic!("no self-test summary\n{}", tail(s, SELFTEST_RUN)));
    let failed: Vec<_> = r
        .cases
        .iter()
        .filter(|c| matches!(c.status, tests::selftest::CaseStatus::Fail(_)))
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    let passed = r
        .check_data_path(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(s, SELFTEST_RUN)));
    let errors = lines
        .iter()
        .find(|l| l.contains("dsa0 errors:"))
        .copied()
        .unwrap_or("");
    assert!(
        errors.contains("swerr 0x1b/0x13"),
        "the error case printed no forwarded SWERR: {errors:?}"
    );
    eprintln!(
        "bench: linux_vfio selftest on backend=vfio,wqs={GIVEN_WQS}: {} passed, {} failed, {} \
         skipped ({passed} DSA data cases ok); {}",
        summary.passed,
        summary.failed,
        summary.skipped,
        errors.trim()
    );
}
