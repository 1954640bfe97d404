//! engines-in-parallel: the unmodified Linux 6.12 idxd driver puts four engines in its WQ's group
//! (accel-config, `rig.engines=4`), and dmatest copies 1 MiB buffers through the one dedicated WQ
//! with 1, 2 and 4 threads (`rig.cases=scaling`, dmatest's `noverify`: the guest CPU's fill and
//! compare of every buffer would set the pace; linux_idxd's cases verify every byte), on a vDSA whose engines are worker threads
//! (`exec=workers`, the default) and, in the same L1 boot, on one that executes in the vCPU's exit
//! (`exec=inline`).
//!
//! L1 has two vCPUs here (TCG multi-threaded), so dsavmm's vCPU and engine threads inside L1 can
//! run at the same time. The vDSA's counters (read over the API) show where each descriptor ran:
//! on the worker device none in the exit path and work on more than one engine; on the inline
//! device every one in the exit path. The throughput of each case (the bytes dmatest's tests
//! copied over the guest's wall time of the case) is printed per run and side by side.
//!
//! The data path needs the rig's MOVDIR64B-capable QEMU (`DSAVMM_QEMU_CACHE`); without it the
//! tests fail, unless `DSAVMM_IDXD_ALLOW_NO_DATAPATH=1` (then they are reported skipped).

use std::sync::OnceLock;
use std::time::Duration;

use tests::{
    api_counters, api_run, dsavmm_binary, patched_qemu, report_skip, IdxdGuest, IdxdReport, Layer,
    NestedVm, RigOutput, StepStatus, L2_CMDLINE,
};

/// The scaling cases of init-idxd.sh: (name, threads, iterations per thread), 1 MiB each.
const CASES: [(&str, u32, u64); 3] = [("s1-1m", 1, 128), ("s2-1m", 2, 64), ("s4-1m", 4, 32)];
const BUF: u64 = 1 << 20;

/// The two runs: the `--dsa` spec of each (two L2 vCPUs, four engines, one WQ used).
const RUNS: [&str; 2] = [
    "backend=software,exec=inline",
    "backend=software,exec=workers",
];
const INLINE: usize = 0;
const WORKERS: usize = 1;

struct Shared {
    out: RigOutput,
    reports: Vec<IdxdReport>,
    counters: Vec<serde_json::Value>,
}

fn shared() -> &'static Result<Shared, String> {
    static OUT: OnceLock<Result<Shared, String>> = OnceLock::new();
    OUT.get_or_init(|| {
        let qemu = patched_qemu().map_err(|e| format!("NO DATAPATH: {e}"))?;
        let guest = IdxdGuest::get().map_err(|e| e.to_string())?;
        let dsavmm = dsavmm_binary().map_err(|e| e.to_string())?;
        let vm = NestedVm::new()
            .dsavmm(&dsavmm)
            .patched_qemu(&qemu)
            .l1_cpus(2)
            .file("/l2/vmlinux", &guest.vmlinux)
            .file("/l2/idxd", &guest.initramfs)
            .expect_exit(None)
            .timeout(Duration::from_secs(600));
        let cmdline = format!("{L2_CMDLINE} rig.dmatest=1 rig.engines=4 rig.cases=scaling");
        let runs: Vec<_> = RUNS
            .iter()
            .map(|dsa| {
                api_run(&[
                    "run",
                    "--kernel",
                    "/l2/vmlinux",
                    "--initramfs",
                    "/l2/idxd",
                    "--cmdline",
                    &cmdline,
                    "--memory",
                    "512",
                    "--vcpus",
                    "2",
                    "--serial",
                    "stdout",
                    "--dsa",
                    dsa,
                    "--movdir64b",
                    "auto",
                ])
            })
            .collect();
        let out = vm
            .run_all_retrying_l2_crashes(&runs)
            .map_err(|e| e.to_string())?;
        let reports = (0..RUNS.len())
            .map(|i| IdxdReport::parse(out.lines_of(i, Layer::L2).map(|l| l.text.as_str())))
            .collect();
        let counters = (0..RUNS.len())
            .map(|i| api_counters(&out, i).unwrap_or(serde_json::Value::Null))
            .collect();
        eprintln!(
            "rig: QEMU start to L1 /init {:?}; transcript {:?}",
            out.l1_init, out.log
        );
        Ok(Shared {
            out,
            reports,
            counters,
        })
    })
}

/// The shared runs, or `None` (reported skipped) when the data path cannot run and
/// `DSAVMM_IDXD_ALLOW_NO_DATAPATH=1` allows that.
fn get(test: &str) -> Option<&'static Shared> {
    match shared() {
        Ok(s) => Some(s),
        Err(e) if e.starts_with("NO DATAPATH") => {
            let msg = format!(
                "DATA PATH NOT EXERCISED: the rig's MOVDIR64B-capable QEMU is not available ({e})"
            );
            if std::env::var("DSAVMM_IDXD_ALLOW_NO_DATAPATH").as_deref() == Ok("1") {
                report_skip(test, &msg);
                return None;
            }
            panic!("{msg}. Set DSAVMM_IDXD_ALLOW_NO_DATAPATH=1 to accept that.");
        }
        Err(e) => panic!("{e}"),
    }
}

fn tail(s: &Shared, run: usize) -> String {
    s.out
        .last_lines(&[Layer::L2, Layer::Dsavmm], Some(run), 40)
        .join("\n")
}

/// Every case passed on both devices with four engines in the group, and the counters say where
/// the descriptors ran.
#[test]
fn dmatest_runs_on_several_engines_with_zero_failures() {
    let Some(s) = get("dmatest_runs_on_several_engines_with_zero_failures") else {
        return;
    };
    for (run, report) in s.reports.iter().enumerate() {
        assert_eq!(
            report.group_engines.len(),
            4,
            "run {run}: the WQ's group should hold four engines: {:?}\n{}",
            report.group_engines,
            tail(s, run)
        );
        let mut tests = 0;
        for (case, threads, iters) in CASES {
            let step = report.step(&format!("dmatest:{case}"));
            assert_eq!(
                step.map(|st| st.status),
                Some(StepStatus::Ok),
                "run {run}: dmatest {case}: {step:?}\n{}",
                tail(s, run)
            );
            let sums = report.dmatest_case(case);
            assert_eq!(sums.len(), threads as usize, "run {run}: {case}");
            for d in &sums {
                assert!(
                    d.tests == iters && d.failures == 0 && d.buf == BUF && d.norandom,
                    "run {run}: {case}: {}",
                    d.summary
                );
                tests += d.tests;
            }
        }
        assert_eq!(report.verdict, Some(true), "run {run}\n{}", tail(s, run));
        let c = &s.counters[run];
        let descriptors = c["descriptors"].as_u64().unwrap_or(0);
        let inline = c["inline_descriptors"].as_u64();
        let engines: Vec<u64> = c["engine_descriptors"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        assert!(
            descriptors >= tests,
            "run {run}: {descriptors} descriptors for {tests} dmatest tests: {c}"
        );
        if run == WORKERS {
            assert_eq!(inline, Some(0), "no descriptor in the vCPU exit path: {c}");
            assert_eq!(engines.len(), 4, "{c}");
            assert_eq!(engines.iter().sum::<u64>(), descriptors, "{c}");
            assert!(
                engines.iter().filter(|n| **n > 0).count() >= 2,
                "2 and 4 dmatest threads should keep more than one engine busy: {engines:?}"
            );
            eprintln!("run {run}: descriptors per engine {engines:?}");
        } else {
            assert_eq!(inline, Some(descriptors), "every descriptor inline: {c}");
            assert!(engines.is_empty(), "{c}");
        }
    }
}

/// dmatest's copy rate with 1, 2 and 4 threads on both devices, side by side (printed, not
/// asserted: timings are the machine's).
#[test]
fn dmatest_threads_and_engines_side_by_side() {
    let Some(s) = get("dmatest_threads_and_engines_side_by_side") else {
        return;
    };
    let rate = |run: usize, case: &str| -> Option<f64> {
        let r = s.reports.get(run)?;
        let bytes = r.dmatest_bytes_of(case)?.bytes as f64;
        let secs = r.dmatest_seconds(case)?;
        (secs > 0.0).then(|| bytes / secs / 1e6)
    };
    for (run, dsa) in RUNS.iter().enumerate() {
        let rates: Vec<String> = CASES
            .iter()
            .map(|(c, t, _)| {
                rate(run, c).map_or(format!("{t} thread(s) ?"), |r| {
                    format!("{t} thread(s) {r:.1} MB/s")
                })
            })
            .collect();
        let one = rate(run, "s1-1m");
        let ratio = |c: &str| match (rate(run, c), one) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "?".into(),
        };
        println!(
            "bench: linux_engines --dsa {dsa} (L1 2 vCPUs, L2 2 vCPUs, 4 engines, 1 WQ): dmatest \
             1 MiB copies: {}; 2 threads / 1 thread {}, 4 threads / 1 thread {}",
            rates.join(", "),
            ratio("s2-1m"),
            ratio("s4-1m")
        );
    }
    for (case, threads, _) in CASES {
        if let (Some(w), Some(i)) = (rate(WORKERS, case), rate(INLINE, case)) {
            println!(
                "bench: linux_engines side by side: dmatest {threads} thread(s), 1 MiB: \
                 exec=workers {w:.1} MB/s, exec=inline {i:.1} MB/s, workers/inline {:.2}",
                w / i
            );
        }
    }
}
