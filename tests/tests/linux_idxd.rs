//! boot-to-guest-idxd: Debian's 6.12 kernel (and, in one run, bookworm's own 6.1) boots under dsavmm with a virtual DSA, and the **unmodified**
//! Debian idxd driver and accel-config 3.5.3 probe, configure and enable it; dmatest (built out of tree
//! from linux-source-6.12) then copies through the dedicated WQ's dmaengine channel, with several thread
//! counts and buffer sizes (the 2 MiB maximum transfer included) and in `polled` mode; finally the WQ
//! and the device are disabled, enabled again and used once more.
//!
//! Everything runs in one L1 boot of the nested rig, shared by the tests below: two dsavmm runs with
//! different machine and device shapes ([`RUNS`]), each checked by every test; the guest's /init is `resources/guests/linux/init-idxd.sh` and its protocol is parsed by
//! [`tests::IdxdReport`].
//!
//! The data path needs an L1 CPU that executes MOVDIR64B: the rig runs L1 on the patched QEMU of
//! `resources/qemu/build.sh` (prebuilt cache: `DSAVMM_QEMU_CACHE`), where dsavmm's `--movdir64b auto`
//! advertises the instruction and the L2 driver's portal stores reach dsavmm as emulation failures. When
//! that QEMU is not available, the guest runs with `--movdir64b on` (the control path still works) and
//! `rig.dmatest=0`, and `dmatest_*` fails saying that the data path was not exercised, unless
//! `DSAVMM_IDXD_ALLOW_NO_DATAPATH=1` (then it passes with that statement on stderr).

use std::sync::OnceLock;
use std::time::Duration;

use tests::{
    api_counters, api_run, api_script, dsavmm_binary, patched_qemu, report_skip, GuestKernel,
    IdxdGuest, IdxdReport, Layer, Mode, NestedVm, RigOutput, Run, StepStatus, L2_CMDLINE,
};

/// The dmatest cases of init-idxd.sh: (name, threads, buffer bytes, polled), in order.
const DMATEST_CASES: [(&str, u32, u64, bool); 7] = [
    ("t1-4k", 1, 4096, false),
    ("t2-64k", 2, 65536, false),
    ("t4-16k", 4, 16384, false),
    ("t1-2m-max", 1, 2 << 20, false),
    ("t2-2m-max", 2, 2 << 20, false),
    ("polled", 1, 16384, true),
    ("after-reenable", 1, 4096, false),
];

/// The dsavmm runs of the one L1 boot: (vCPUs, `--dsa` spec).
const RUNS: [(u32, &str); 4] = [
    (2, "backend=software"),
    (1, "backend=software,wqs=1,engines=1,groups=1,wq-size=32"),
    (2, VFIO_USER_SPEC),
    (2, "backend=software"),
];

/// The run whose guest boots Debian bookworm's own 6.1 kernel with its idxd driver (the driver
/// matrix; every other run boots 6.12): each test below checks it as it checks the others.
const LINUX61_RUN: usize = 3;

/// The run whose vDSA a `dsavmm dsa-server` serves, started in L1 beside it ([`server_run`]);
/// the portal is mapped into L2, so L2's MOVDIR64B stores straight into the server's page.
const VFIO_USER_RUN: usize = 2;
const VFIO_USER_SOCKET: &str = "/tmp/dsa-server.sock";
const VFIO_USER_SPEC: &str = "backend=vfio-user,socket=/tmp/dsa-server.sock,portal=mapped";
/// The server's device: the geometry of run 1.
const VFIO_USER_SERVER_ARGS: &str = "--wqs 1 --engines 1 --groups 1 --wq-size 32";

/// The run that is driven through the REST API ([`tests::api_run`]).
const API_RUN: usize = 0;

/// [`api_run`] with a `dsavmm dsa-server` serving the device: started first, waited for, and
/// stopped after dsavmm; the exit status is dsavmm's.
fn server_run(args: &[&str]) -> Run {
    let script = format!(
        "dsavmm dsa-server --socket {VFIO_USER_SOCKET} {VFIO_USER_SERVER_ARGS} & sp=$!; \
         n=0; while [ ! -S {VFIO_USER_SOCKET} ] && [ $n -lt 50 ]; do sleep 1; n=$((n+1)); done; \
         ( {} ); rc=$?; kill $sp; wait $sp; exit $rc",
        api_script(args)
    );
    Run::command("sh", ["-c".to_string(), script])
}

/// The idxd runs' results, shared by the tests.
struct Shared {
    out: RigOutput,
    /// One per entry of [`RUNS`].
    reports: Vec<IdxdReport>,
    /// `Err(why)` when dmatest was not run.
    datapath: Result<(), String>,
}

/// One run's view.
struct View<'a> {
    out: &'a RigOutput,
    report: &'a IdxdReport,
    run: usize,
    datapath: &'a Result<(), String>,
}

impl Shared {
    fn views(&self) -> impl Iterator<Item = View<'_>> {
        self.reports.iter().enumerate().map(|(run, report)| View {
            out: &self.out,
            report,
            run,
            datapath: &self.datapath,
        })
    }
}

fn shared() -> &'static Result<Shared, String> {
    static OUT: OnceLock<Result<Shared, String>> = OnceLock::new();
    OUT.get_or_init(|| {
        let guest = IdxdGuest::get().map_err(|e| e.to_string())?;
        let guest61 = IdxdGuest::get_on(GuestKernel::Linux61).map_err(|e| e.to_string())?;
        let dsavmm = dsavmm_binary().map_err(|e| e.to_string())?;
        let mut vm = NestedVm::new()
            .dsavmm(&dsavmm)
            .file("/l2/vmlinux", &guest.vmlinux)
            .file("/l2/idxd", &guest.initramfs)
            .file("/l2/vmlinux61", &guest61.vmlinux)
            .file("/l2/idxd61", &guest61.initramfs)
            .expect_exit(None)
            .timeout(Duration::from_secs(1500));
        // Can the CPU that dsavmm runs on execute MOVDIR64B?
        let datapath = match vm.resolved_mode() {
            Mode::Direct => {
                let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                if cpu.split_whitespace().any(|f| f == "movdir64b") {
                    Ok(())
                } else {
                    Err("the host CPU does not execute MOVDIR64B".to_string())
                }
            }
            _ => match patched_qemu() {
                Ok(q) => {
                    vm = vm.patched_qemu(&q);
                    Ok(())
                }
                Err(e) => Err(format!(
                    "the rig's MOVDIR64B-capable QEMU is not available, so L1 runs on stock \
                     QEMU 7.2 whose TCG raises #UD on MOVDIR64B: {e}"
                )),
            },
        };
        let (movdir, dmatest) = if datapath.is_ok() {
            ("auto", "1")
        } else {
            // The bit survives KVM_SET_CPUID2 in the rig, so the driver loads and the control path
            // (plain MMIO) can be tested; a descriptor submission would #UD.
            ("on", "0")
        };
        let cmdline = format!("{L2_CMDLINE} rig.dmatest={dmatest}");
        let runs: Vec<Run> = RUNS
            .iter()
            .enumerate()
            .map(|(i, (vcpus, dsa))| {
                let vcpus = vcpus.to_string();
                let (kernel, initramfs) = if i == LINUX61_RUN {
                    ("/l2/vmlinux61", "/l2/idxd61")
                } else {
                    ("/l2/vmlinux", "/l2/idxd")
                };
                let args = [
                    "run",
                    "--kernel",
                    kernel,
                    "--initramfs",
                    initramfs,
                    "--cmdline",
                    &cmdline,
                    "--memory",
                    "512",
                    "--vcpus",
                    &vcpus,
                    "--serial",
                    "stdout",
                    "--dsa",
                    dsa,
                    "--movdir64b",
                    movdir,
                ];
                if i == API_RUN {
                    api_run(&args)
                } else if i == VFIO_USER_RUN {
                    server_run(&args)
                } else {
                    Run::dsavmm(args)
                }
            })
            .collect();
        let out = vm
            .run_all_retrying_l2_crashes(&runs)
            .map_err(|e| e.to_string())?;
        let reports = (0..RUNS.len())
            .map(|i| IdxdReport::parse(out.lines_of(i, Layer::L2).map(|l| l.text.as_str())))
            .collect();
        eprintln!(
            "rig mode {:?}: QEMU start to L1 /init {:?}, to /dev/kvm ready {:?}; L1 CPU executes \
             MOVDIR64B: {:?}; transcript {:?}",
            out.mode,
            out.l1_init,
            out.l1_ready,
            out.host_movdir64b(),
            out.log,
        );
        for (i, r) in out.runs.iter().enumerate() {
            eprintln!(
                "run {i} ({:?}): {:?}, exit {:?}",
                RUNS.get(i),
                r.ended.zip(r.started).map(|(e, s)| e - s),
                r.exit
            );
        }
        Ok(Shared {
            out,
            reports,
            datapath,
        })
    })
}

fn get() -> &'static Shared {
    match shared() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// The run's last L2 and dsavmm lines, for failure messages.
fn tail(s: &View, n: usize) -> String {
    format!(
        "run {} ({:?}):\n{}",
        s.run,
        RUNS.get(s.run),
        s.out
            .last_lines(&[Layer::L2, Layer::Dsavmm], Some(s.run), n)
            .join("\n")
    )
}

/// Assert that the named steps printed OK; print each step's host time since dsavmm started.
fn expect_steps(s: &View, names: &[&str]) {
    if s.report.start.is_none() {
        panic!(
            "the idxd guest's /init never started (no IDXD-START line); dsavmm exit {:?}\n{}",
            s.out.runs.get(s.run).and_then(|r| r.exit),
            tail(s, 40)
        );
    }
    for name in names {
        let Some(step) = s.report.step(name) else {
            panic!(
                "run {}: guest step {name:?} never ran; failed steps: {:?}\n{}",
                s.run,
                s.report
                    .failed_steps()
                    .iter()
                    .map(|s| &s.text)
                    .collect::<Vec<_>>(),
                tail(s, 40)
            );
        };
        assert_eq!(
            step.status,
            StepStatus::Ok,
            "run {}: guest step {name:?} failed: {}\nkernel log:\n{}\n{}",
            s.run,
            step.text,
            s.report.dmesg.join("\n"),
            tail(s, 30)
        );
        if let Some(line) = s
            .out
            .lines_of(s.run, Layer::L2)
            .find(|l| l.text.contains(&step.text))
        {
            eprintln!(
                "run {}: {name}: dsavmm start + {:?} (guest uptime {:?} s)",
                s.run,
                s.out.since_start(s.run, line),
                step.uptime
            );
        }
    }
}

/// idxd.ko loads (MOVDIR64B in the guest CPUID), probes the vDSA, and logs no failure or error.
#[test]
fn idxd_probes_the_vdsa_without_errors() {
    for s in get().views() {
        eprintln!(
            "run {}: {}",
            s.run,
            s.report.start.as_deref().unwrap_or("(no IDXD-START)")
        );
        let kernel = if s.run == LINUX61_RUN {
            "6.1."
        } else {
            "6.12."
        };
        assert!(
            s.report
                .start
                .as_deref()
                .is_some_and(|l| l.contains(&format!("kernel={kernel}"))),
            "run {}: the guest does not run Linux {kernel}x\n{}",
            s.run,
            tail(&s, 20)
        );
        expect_steps(&s, &["modules", "probe"]);
        let errors = s.report.idxd_errors();
        assert!(
            errors.is_empty(),
            "run {}: the idxd driver logged failures/errors:\n{}",
            s.run,
            errors.join("\n")
        );
        for l in s.report.dmesg.iter().filter(|l| l.contains("idxd")) {
            eprintln!("run {}: dmesg: {l}", s.run);
        }
    }
}

/// accel-config configures one group, one engine and one dedicated kernel WQ and enables the device
/// and the WQ; the WQ's dmaengine channel appears in /sys/class/dma.
#[test]
fn accel_config_enables_device_wq_and_channel() {
    for s in get().views() {
        expect_steps(&s, &["config", "enable-device", "enable-wq", "dma-channel"]);
    }
}

/// `accel-config list` shows the enabled device and WQ.
#[test]
fn accel_config_list_shows_the_state() {
    for s in get().views() {
        expect_steps(&s, &["list"]);
        let joined: String = s
            .report
            .list
            .iter()
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        // 6.1's idxd has no WQ `driver_name` attribute (6.12's binds the WQ to the driver it
        // names); there the WQ's type and name say it is the dmaengine channel.
        let driver = if s.run == LINUX61_RUN {
            "\"type\":\"kernel\",\"name\":\"dmaengine\""
        } else {
            "\"driver_name\":\"dmaengine\""
        };
        for want in [
            "\"dev\":\"dsa0\"",
            "\"dev\":\"wq0.0\"",
            "\"dev\":\"engine0.0\"",
            "\"state\":\"enabled\"",
            "\"mode\":\"dedicated\"",
            driver,
        ] {
            assert!(
                joined.contains(want),
                "run {}: accel-config list lacks {want}:\n{}",
                s.run,
                s.report.list.join("\n")
            );
        }
    }
}

/// dmatest through the dedicated WQ: every case, every thread, `N tests, 0 failures` with N equal to
/// the iterations asked for (N > 0); 2 MiB transfers (the WQ maximum) included.
/// Whether dmatest ran. When it did not (no CPU that executes MOVDIR64B), `false` only with the
/// explicit opt-out `DSAVMM_IDXD_ALLOW_NO_DATAPATH=1`, after a loud `SKIPPED: <test>` line; a panic
/// saying "DATA PATH NOT EXERCISED" otherwise.
fn datapath_ran(test: &str, shared: &Shared) -> bool {
    let Err(why) = &shared.datapath else {
        return true;
    };
    let msg = format!(
        "DATA PATH NOT EXERCISED: dmatest was not run because {why}. The control path tests ran \
         with --movdir64b on."
    );
    if std::env::var("DSAVMM_IDXD_ALLOW_NO_DATAPATH").as_deref() == Ok("1") {
        report_skip(
            test,
            &format!("{msg} (allowed by DSAVMM_IDXD_ALLOW_NO_DATAPATH=1)"),
        );
        return false;
    }
    panic!("{msg} Set DSAVMM_IDXD_ALLOW_NO_DATAPATH=1 to accept that.");
}

#[test]
fn dmatest_runs_with_zero_failures() {
    let shared = get();
    if !datapath_ran("dmatest_runs_with_zero_failures", shared) {
        return;
    }
    if shared.out.mode != Mode::Direct {
        assert_eq!(
            shared.out.host_movdir64b(),
            Some(true),
            "L1 runs on the patched QEMU but its CPU does not show MOVDIR64B"
        );
    }
    for s in shared.views() {
        assert!(s.datapath.is_ok());
        assert_eq!(
            s.report.movdir64b,
            Some(true),
            "the L2 CPUID lacks MOVDIR64B under --movdir64b auto\n{}",
            tail(&s, 20)
        );
        expect_steps(&s, &["dmatest-load"]);
        for (case, threads, buf, polled) in DMATEST_CASES {
            expect_steps(&s, &[&format!("dmatest:{case}")]);
            let sums = s.report.dmatest_case(case);
            assert_eq!(
                sums.len(),
                threads as usize,
                "run {}: dmatest case {case}: {} thread summaries, expected {threads}",
                s.run,
                sums.len()
            );
            for d in &sums {
                eprintln!(
                    "run {}: dmatest {case} (threads={threads} buf={buf} polled={polled}): {}",
                    s.run, d.summary
                );
                assert_eq!((d.buf, d.polled), (buf, polled), "case {case} parameters");
                assert!(
                    d.tests > 0 && d.tests == d.iters && d.failures == 0,
                    "run {}: dmatest case {case}: {}",
                    s.run,
                    d.summary
                );
            }
            // dmatest (verbose=1) logged each passed test with its length; the guest summed them.
            let tests: u64 = sums.iter().map(|d| d.tests).sum();
            let Some(b) = s.report.dmatest_bytes_of(case) else {
                panic!("run {}: no IDXD-DMATEST-BYTES line for case {case}", s.run);
            };
            assert_eq!(
                b.passed, tests,
                "run {}: case {case}: {} tests logged `test passed`, dmatest's summaries count {tests}",
                s.run, b.passed
            );
            if sums.iter().all(|d| d.norandom) {
                assert_eq!(b.bytes, tests * buf, "run {}: case {case}: {b:?}", s.run);
            } else {
                assert!(
                    b.bytes >= tests && b.bytes <= tests * buf,
                    "run {}: case {case}: random lengths outside 1..={buf}: {b:?}",
                    s.run
                );
            }
            eprintln!(
                "run {}: dmatest {case}: {tests} tests moved {} bytes",
                s.run, b.bytes
            );
            // The README's Performance table quotes these lines verbatim.
            let range = |v: Vec<f64>| {
                let (lo, hi) = (
                    v.iter().copied().fold(f64::INFINITY, f64::min),
                    v.iter().copied().fold(0.0, f64::max),
                );
                if threads > 1 {
                    format!("{lo:.0}-{hi:.0}")
                } else {
                    format!("{hi:.0}")
                }
            };
            let (vcpus, dsa) = RUNS.get(s.run).copied().unwrap_or((0, "?"));
            let kernel = if s.run == LINUX61_RUN {
                ", Linux 6.1"
            } else {
                ""
            };
            println!(
                "bench: linux_idxd run {} ({vcpus} vCPU(s), --dsa {dsa}{kernel}): dmatest {case} ({threads} \
                 thread(s), {}{buf} B{}): {} KB/s{}, {} iops, {tests} tests, {} failures",
                s.run,
                if sums.iter().all(|d| d.norandom) { "" } else { "random up to " },
                if polled { ", polled" } else { "" },
                range(sums.iter().map(|d| d.kb_per_s as f64).collect()),
                if threads > 1 { " per thread" } else { "" },
                range(sums.iter().map(|d| d.iops).collect()),
                sums.iter().map(|d| d.failures).sum::<u64>(),
            );
        }
        // Completions arrive by interrupt on the WQ's MSI-X vector (several may share one).
        let total: u64 = s
            .report
            .dmatest
            .iter()
            .filter(|d| d.case != "after-reenable")
            .map(|d| d.tests)
            .sum();
        eprintln!(
            "run {}: {total} dmatest descriptors, {:?} interrupts on the WQ vector before the re-enable",
            s.run, s.report.portal_irqs
        );
        assert!(
            s.report.portal_irqs.is_some_and(|n| n > 0),
            "run {}: no interrupt on the WQ's vector (idxd-portal) after dmatest",
            s.run
        );
        expect_steps(&s, &["dmatest-unload"]);
        if let Some(l) = s
            .report
            .dmesg
            .iter()
            .find(|l| l.contains("polled disabled"))
        {
            eprintln!(
                "run {}: note: dmatest turned polling off for this channel (idxd declares \
                 DMA_COMPLETION_NO_ORDER): {l}",
                s.run
            );
        }
    }
}

/// disable-wq, disable-device, and enable again work, without an oops; the guest's verdict is PASS and
/// dsavmm exits 0 after the guest powers off.
#[test]
fn disable_and_reenable_without_oops() {
    for s in get().views() {
        expect_steps(
            &s,
            &[
                "disable-wq",
                "disable-device",
                "reconfig",
                "reenable-device",
                "reenable-wq",
                "reenable-dma-channel",
                "final-disable",
            ],
        );
        assert!(
            s.report.oops.is_empty(),
            "run {}: the L2 kernel oopsed or warned:\n{}",
            s.run,
            s.report.oops.join("\n")
        );
        assert_eq!(
            s.report.verdict,
            Some(true),
            "guest verdict: failed steps {:?}\n{}",
            s.report
                .failed_steps()
                .iter()
                .map(|s| &s.text)
                .collect::<Vec<_>>(),
            tail(&s, 30)
        );
        assert_eq!(
            s.out.runs.get(s.run).and_then(|r| r.exit),
            Some(0),
            "dsavmm did not exit 0 after the guest powered off\n{}",
            tail(&s, 30)
        );
    }
}

/// The vDSA's own counters, read through the REST API after the guest halted, agree with what
/// dmatest did: one MEMMOVE per dmatest test, exactly the bytes dmatest's tests copied (the sum of
/// the lengths dmatest logged, `IDXD-DMATEST-BYTES`), all successful, with interrupts, and nothing
/// dropped. Without the data path this fails like [`dmatest_runs_with_zero_failures`] (same opt-out).
#[test]
fn vdsa_counters_through_the_api_match_dmatest() {
    let shared = get();
    if !datapath_ran("vdsa_counters_through_the_api_match_dmatest", shared) {
        return;
    }
    for run in [API_RUN, VFIO_USER_RUN] {
        check_counters(shared, run);
    }
}

/// Run `run`'s vDSA counters (read over the API) against its dmatest results.
fn check_counters(shared: &Shared, run: usize) -> serde_json::Value {
    let counters = match api_counters(&shared.out, run) {
        Ok(c) => c,
        Err(e) => panic!(
            "run {run}: {e}\n{}",
            shared
                .out
                .last_lines(&[Layer::L2, Layer::Dsavmm], Some(run), 30)
                .join("\n")
        ),
    };
    let report = &shared.reports[run];
    let tests: u64 = report.dmatest.iter().map(|d| d.tests).sum();
    assert!(tests > 0, "dmatest ran no test");
    let cases = report.dmatest_cases();
    let mut bytes = 0;
    for case in &cases {
        match report.dmatest_bytes_of(case) {
            Some(b) => bytes += b.bytes,
            None => panic!("API run: no IDXD-DMATEST-BYTES line for case {case}"),
        }
    }
    let passed: u64 = report.dmatest_bytes.iter().map(|b| b.passed).sum();
    assert_eq!(
        passed, tests,
        "API run: passed tests with a logged length vs dmatest's test count"
    );
    let memmove = counters["by_opcode"]["memmove"].as_u64().unwrap_or(0);
    eprintln!(
        "API run: dmatest {tests} tests, {bytes} bytes in {} cases; vDSA counters {counters}",
        cases.len()
    );
    assert_eq!(
        memmove, tests,
        "vDSA MEMMOVE count vs dmatest tests: {counters}"
    );
    assert_eq!(
        counters["bytes"].as_u64(),
        Some(bytes),
        "vDSA bytes vs the bytes dmatest's {tests} tests copied: {counters}"
    );
    let ok = counters["completion_status"]["0x01"].as_u64().unwrap_or(0);
    assert!(
        ok >= memmove,
        "fewer successful completions than copies: {counters}"
    );
    assert!(
        counters["completion_interrupts"].as_u64().unwrap_or(0) > 0,
        "{counters}"
    );
    for zero in [
        "dropped_portal_writes",
        "bad_portal_writes",
        "wq_full_drops",
        "software_errors",
    ] {
        assert_eq!(counters[zero].as_u64(), Some(0), "{zero}: {counters}");
    }
    counters
}

/// The vfio-user run: the server executed every descriptor, L2's MOVDIR64B stores went straight
/// into the mapped portal page (no portal store exited into dsavmm: exits per descriptor 0), and
/// the server took them from the page.
#[test]
fn vfio_user_portal_is_mapped_with_zero_exits_per_descriptor() {
    let shared = get();
    if !datapath_ran(
        "vfio_user_portal_is_mapped_with_zero_exits_per_descriptor",
        shared,
    ) {
        return;
    }
    let counters = check_counters(shared, VFIO_USER_RUN);
    let client = &counters["client"];
    let server = &counters["server"];
    println!(
        "bench: linux_idxd run {VFIO_USER_RUN} (--dsa {VFIO_USER_SPEC}): exits_per_descriptor={} \
         portal_exits={} register_messages={} mapped_descriptors={} trapped_descriptors={} \
         descriptors={}",
        counters["exits_per_descriptor"],
        client["portal_exits"],
        client["register_messages"],
        server["mapped_descriptors"],
        server["trapped_descriptors"],
        counters["descriptors"],
    );
    assert_eq!(client["portal"], "mapped", "{counters}");
    assert_eq!(client["portal_mapped_in_guest"], true, "{counters}");
    assert_eq!(client["portal_exits"].as_u64(), Some(0), "{counters}");
    assert_eq!(
        counters["exits_per_descriptor"].as_f64(),
        Some(0.0),
        "{counters}"
    );
    assert_eq!(
        server["mapped_descriptors"].as_u64(),
        counters["descriptors"].as_u64(),
        "every descriptor came through the mapped page: {counters}"
    );
}
