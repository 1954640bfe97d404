//! DPDK in the guest: Debian bookworm's unmodified DPDK 22.11 (`dpdk-test` from dpdk-dev, its idxd
//! PCI PMD from librte-dma-idxd23) drives the vDSA from L2 user space, with no kernel driver on the
//! data path: the device is bound to uio_pci_generic, the PMD configures it itself through BAR0
//! (groups, engines, a dedicated WQ), maps the WQ's portal page from BAR2 and submits descriptors with
//! MOVDIR64B from user space at IOVA = guest physical address. DPDK's own dmadev unit test
//! (`dmadev_autotest`) then copies through it with every byte checked.
//!
//! Why uio_pci_generic (`resources/guests/linux/init-dpdk.sh`): Debian's 6.12 kernel is built without
//! `CONFIG_VFIO_NOIOMMU`, and the idxd driver enables a user WQ only with SVA ("User type WQ cannot be
//! enabled without SVA"), which a vDSA without PASID cannot offer.
//!
//! One L1 boot of the nested rig, one dsavmm run driven through the REST API so that the vDSA's
//! counters show the descriptors DPDK submitted. Like the idxd tests, the data path needs the rig's
//! MOVDIR64B-capable QEMU; without it the test fails saying so, unless
//! `DSAVMM_IDXD_ALLOW_NO_DATAPATH=1`.

use std::sync::OnceLock;
use std::time::Duration;

use tests::{
    api_counters, api_run, dsavmm_binary, patched_qemu, report_skip, DpdkGuest, DpdkReport, Layer,
    NestedVm, RigOutput, StepStatus, L2_CMDLINE,
};

/// The guest steps that must print OK, in order.
const STEPS: [&str; 6] = [
    "modules",
    "device",
    "bind",
    "hugepages",
    "dmadev_autotest",
    "copy-bench",
];

/// DPDK 22.11's `app/test/test_dmadev.c`: every copy of the copy and burst-capacity runs moves
/// `COPY_LEN` bytes; the fill run writes these six lengths, one op each.
const COPY_LEN: u64 = 1024;
const FILL_LENGTHS: [u64; 6] = [8, 64, 1024, 50, 100, 89];

/// The `--dsa` spec of the run.
const DSA_SPEC: &str = "backend=software";

struct Shared {
    out: RigOutput,
    report: DpdkReport,
}

/// `Err(why)` when the rig cannot execute MOVDIR64B (the run is then not made).
fn shared() -> &'static Result<Shared, String> {
    static OUT: OnceLock<Result<Shared, String>> = OnceLock::new();
    OUT.get_or_init(|| {
        let qemu = patched_qemu().map_err(|e| {
            format!(
                "DATA PATH NOT EXERCISED: the rig's MOVDIR64B-capable QEMU is not available, and \
                 DPDK's idxd PMD submits every descriptor with MOVDIR64B: {e}"
            )
        })?;
        let guest = DpdkGuest::get().map_err(|e| e.to_string())?;
        let dsavmm = dsavmm_binary().map_err(|e| e.to_string())?;
        let vm = NestedVm::new()
            .dsavmm(&dsavmm)
            .patched_qemu(&qemu)
            .file("/l2/vmlinux", &guest.vmlinux)
            .file("/l2/dpdk", &guest.initramfs)
            .expect_exit(None)
            .timeout(Duration::from_secs(900));
        let args = [
            "run",
            "--kernel",
            "/l2/vmlinux",
            "--initramfs",
            "/l2/dpdk",
            "--cmdline",
            L2_CMDLINE,
            "--memory",
            "512",
            "--vcpus",
            "1",
            "--serial",
            "stdout",
            "--dsa",
            DSA_SPEC,
            "--movdir64b",
            "auto",
        ];
        let out = vm
            .run_all_retrying_l2_crashes(&[api_run(&args)])
            .map_err(|e| e.to_string())?;
        let report = DpdkReport::parse(out.lines_of(0, Layer::L2).map(|l| l.text.as_str()));
        Ok(Shared { out, report })
    })
}

/// The shared run, or `None` after a loud skip when the data path cannot run and
/// `DSAVMM_IDXD_ALLOW_NO_DATAPATH=1`.
fn get(test: &str) -> Option<&'static Shared> {
    match shared() {
        Ok(s) => Some(s),
        Err(e) if e.starts_with("DATA PATH NOT EXERCISED") => {
            if std::env::var("DSAVMM_IDXD_ALLOW_NO_DATAPATH").as_deref() == Ok("1") {
                report_skip(
                    test,
                    &format!("{e} (allowed by DSAVMM_IDXD_ALLOW_NO_DATAPATH=1)"),
                );
                None
            } else {
                panic!("{e} Set DSAVMM_IDXD_ALLOW_NO_DATAPATH=1 to accept that.");
            }
        }
        Err(e) => panic!("{e}"),
    }
}

fn tail(s: &Shared, n: usize) -> String {
    s.out
        .last_lines(&[Layer::L2, Layer::Dsavmm], Some(0), n)
        .join("\n")
}

/// uio_pci_generic takes the vDSA, and Debian's dpdk-test runs `dmadev_autotest` on the vDSA's
/// queue to `Test OK`: the copy runs (640 rounds, every byte compared), burst capacity and fill, with
/// every submitted op completed and no errors.
#[test]
fn dpdk_dmadev_autotest_passes_on_the_vdsa() {
    let Some(s) = get("dpdk_dmadev_autotest_passes_on_the_vdsa") else {
        return;
    };
    let r = &s.report;
    assert!(
        r.start.is_some(),
        "the DPDK guest's /init never started\n{}",
        tail(s, 40)
    );
    for name in STEPS {
        let step = r
            .step(name)
            .unwrap_or_else(|| panic!("guest step {name:?} never ran\n{}", tail(s, 60)));
        assert_eq!(
            step.status,
            StepStatus::Ok,
            "guest step {name:?} failed: {}\ndpdk-test output:\n{}\nkernel log:\n{}\n{}",
            step.text,
            r.out_of(name).collect::<Vec<_>>().join("\n"),
            r.dmesg.join("\n"),
            tail(s, 30)
        );
    }
    assert!(r.test_ok, "dpdk-test printed no `Test OK`");
    let q = r
        .instances
        .iter()
        .find(|i| i.name.ends_with("-q0") && i.name != "dma_skeleton")
        .unwrap_or_else(|| {
            panic!(
                "dmadev_autotest tested no idxd queue; instances: {:?}",
                r.instances
            )
        });
    for run in ["copy", "burst capacity", "fill"] {
        assert!(
            q.run(run).is_some(),
            "no {run:?} run on {}: {:?}",
            q.name,
            q.runs
        );
    }
    assert!(q.submitted() > 0, "{q:?}");
    assert_eq!(q.submitted(), q.completed(), "{q:?}");
    assert_eq!(q.errors(), 0, "{q:?}");
    assert!(
        q.run("error handling").is_none(),
        "DPDK in PA mode skips its error-handling run: {q:?}"
    );
    let elapsed = r
        .step("dmadev_autotest")
        .map(|st| st.text.clone())
        .unwrap_or_default();
    eprintln!(
        "bench: linux_dpdk: dmadev_autotest on {} ({DSA_SPEC}): {} ops submitted, {} completed, {} \
         errors; runs {:?}; {elapsed}",
        q.name,
        q.submitted(),
        q.completed(),
        q.errors(),
        q.runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()
    );
}

/// Every op DPDK submitted reached the vDSA and moved exactly its bytes: the vDSA's byte counter
/// (read through the API after the guest halted) equals the bytes of dmadev_autotest's copies and
/// fills plus dpdk-copy-bench's copies; every descriptor completed with success; no oops.
#[test]
fn dpdk_descriptors_reach_the_vdsa() {
    let Some(s) = get("dpdk_descriptors_reach_the_vdsa") else {
        return;
    };
    let counters = api_counters(&s.out, 0).unwrap_or_else(|e| panic!("{e}\n{}", tail(s, 30)));
    eprintln!("linux_dpdk: GET /dsa/0 counters: {counters}");
    let n = |k: &str| {
        counters[k]
            .as_u64()
            .unwrap_or_else(|| panic!("GET /dsa/0 has no counter {k:?}: {counters}"))
    };
    let q = s
        .report
        .instances
        .iter()
        .find(|i| i.name != "dma_skeleton")
        .unwrap_or_else(|| panic!("no idxd dmadev instance: {:?}", s.report.instances));
    // The copy and burst-capacity runs copy COPY_LEN bytes per op; the fill run is the six
    // fills of FILL_LENGTHS, one op each.
    let fill_ops = q.run("fill").map(|r| r.submitted);
    assert_eq!(fill_ops, Some(FILL_LENGTHS.len() as u64), "{q:?}");
    let copies: u64 = q
        .runs
        .iter()
        .filter(|r| r.name != "fill")
        .map(|r| r.submitted)
        .sum();
    assert!(copies > 0, "{q:?}");
    let autotest_bytes = COPY_LEN * copies + FILL_LENGTHS.iter().sum::<u64>();
    let bench_bytes: u64 = s.report.bench.iter().map(|b| b.bytes).sum();
    assert!(bench_bytes > 0, "dpdk-copy-bench copied nothing");
    assert_eq!(
        n("bytes"),
        autotest_bytes + bench_bytes,
        "vDSA bytes vs dmadev_autotest's {} ops ({autotest_bytes} bytes) and dpdk-copy-bench's \
         {bench_bytes} bytes: {counters}",
        q.submitted()
    );
    // DPDK's idxd PMD submits a burst of ops as one BATCH descriptor (its members are not counted
    // as descriptors of their own), a single op as itself.
    assert!(
        counters["by_opcode"]["batch"].as_u64().unwrap_or(0) > 0,
        "{counters}"
    );
    assert!(
        counters["by_opcode"]["memfill"].as_u64().unwrap_or(0) > 0,
        "{counters}"
    );
    assert_eq!(
        counters["completion_status"]["0x01"].as_u64(),
        Some(n("descriptors")),
        "every descriptor completed with success: {counters}"
    );
    for zero in [
        "software_errors",
        "bad_portal_writes",
        "dropped_portal_writes",
        "bad_register_accesses",
        "command_errors",
    ] {
        assert_eq!(n(zero), 0, "{zero}: {counters}");
    }
    let oops: Vec<&str> = s
        .out
        .lines_of(0, Layer::L2)
        .map(|l| l.text.as_str())
        .filter(|l| tests::idxd::is_oops_line(l))
        .collect();
    assert!(oops.is_empty(), "oops in the guest: {oops:?}");
}

/// dpdk-copy-bench: 4 KiB, 64 KiB and 1 MiB copies through the vDSA's queue and through memcpy of
/// the same buffers, side by side in one run, every DMA copy checked; prints the ratios (a record,
/// not a threshold: tests never assert on timings).
#[test]
fn dpdk_copy_bench_records_throughput() {
    let Some(s) = get("dpdk_copy_bench_records_throughput") else {
        return;
    };
    let r = &s.report;
    assert!(
        r.bench_done.is_some(),
        "dpdk-copy-bench did not finish:\n{}",
        r.out_of("copy-bench").collect::<Vec<_>>().join("\n")
    );
    let sizes: Vec<u64> = r.bench.iter().map(|b| b.size).collect();
    assert_eq!(sizes, vec![4096, 65536, 1 << 20]);
    for b in &r.bench {
        assert_eq!(b.verified, b.ops, "{b:?}");
        assert_eq!(b.bytes, b.ops * b.size, "{b:?}");
        assert!(b.dma_mbps > 0.0 && b.memcpy_mbps > 0.0, "{b:?}");
        eprintln!(
            "bench: linux_dpdk copy-bench ({DSA_SPEC}, DPDK idxd PMD from L2 user space): {} B x {} \
             copies: DMA {:.1} MB/s, memcpy {:.1} MB/s, ratio {:.3}",
            b.size, b.ops, b.dma_mbps, b.memcpy_mbps, b.ratio
        );
    }
}
