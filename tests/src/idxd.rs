//! The idxd guest's console protocol (`resources/guests/linux/init-idxd.sh`): steps, dmatest results,
//! the kernel log it dumps, and the checks the Linux idxd test applies to them.

/// Outcome of one guest step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// `IDXD-STEP <name> OK`.
    Ok,
    /// `IDXD-STEP <name> FAIL`.
    Fail,
    /// `IDXD-STEP <name> SKIP`.
    Skip,
}

/// One `IDXD-STEP` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The step name (`modules`, `enable-wq`, `dmatest:t1-4k`, ...).
    pub name: String,
    /// OK, FAIL or SKIP.
    pub status: StepStatus,
    /// The guest uptime in seconds when the step ended, when printed.
    pub uptime: Option<f64>,
    /// The whole line.
    pub text: String,
}

/// One dmatest thread summary (`IDXD-DMATEST ... | ... summary N tests, F failures X iops Y KB/s (R)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Dmatest {
    /// The guest's case name.
    pub case: String,
    /// threads_per_chan of the case.
    pub threads: u32,
    /// test_buf_size of the case.
    pub buf: u64,
    /// iterations per thread.
    pub iters: u64,
    /// The `polled` parameter as requested.
    pub polled: bool,
    /// The `norandom` parameter (every transfer exactly `buf` bytes) as requested.
    pub norandom: bool,
    /// Tests this thread ran.
    pub tests: u64,
    /// Failures this thread saw.
    pub failures: u64,
    /// iops as dmatest prints it.
    pub iops: f64,
    /// Throughput in KB/s as dmatest prints it.
    pub kb_per_s: u64,
    /// dmatest's own summary text (from the thread name on).
    pub summary: String,
}

/// The bytes one dmatest case copied (`IDXD-DMATEST-BYTES case=<c> passed=<n> bytes=<b>`): the guest
/// runs dmatest with `verbose=1`, which logs every passed test with its length, and sums them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmatestBytes {
    /// The guest's case name.
    pub case: String,
    /// Tests of the case (all threads) that logged `test passed`.
    pub passed: u64,
    /// The sum of their transfer lengths.
    pub bytes: u64,
}

/// Everything the idxd guest printed, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdxdReport {
    /// The `IDXD-START` line, when printed.
    pub start: Option<String>,
    /// Whether the L2 CPUID showed MOVDIR64B (`IDXD-START ... movdir64b=yes`).
    pub movdir64b: Option<bool>,
    /// Whether the guest was told to run dmatest (`IDXD-START ... dmatest=1`).
    pub dmatest_enabled: Option<bool>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Every dmatest thread summary, in order.
    pub dmatest: Vec<Dmatest>,
    /// Every case's byte total, in order.
    pub dmatest_bytes: Vec<DmatestBytes>,
    /// The kernel log lines the guest dumped (`IDXD-DMESG`).
    pub dmesg: Vec<String>,
    /// `accel-config list` output (`IDXD-LIST`).
    pub list: Vec<String>,
    /// `Some(true)` for `IDXD-VERDICT PASS`, `Some(false)` for FAIL.
    pub verdict: Option<bool>,
    /// Lines anywhere on the L2 console that look like a kernel oops, BUG or warning.
    pub oops: Vec<String>,
    /// Interrupts of the WQ's vector (`idxd-portal` in /proc/interrupts, all CPUs) after the dmatest
    /// cases, when printed.
    pub portal_irqs: Option<u64>,
    /// The engines sysfs lists in the WQ's group (`IDXD-INFO group0.0 engines=a,b`).
    pub group_engines: Vec<String>,
}

/// Sum the per-CPU counts of a /proc/interrupts line (`27:  526  0  PCI-MSIX-... idxd-portal`).
fn irq_count(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(':')?;
    let counts: Vec<u64> = rest
        .split_whitespace()
        .map_while(|w| w.parse::<u64>().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Markers of a kernel oops, BUG, WARN or panic on the console.
const OOPS_MARKERS: [&str; 7] = [
    "Oops",
    "BUG:",
    "WARNING:",
    "Call Trace",
    "general protection fault",
    "Kernel panic",
    "invalid opcode",
];

impl Step {
    /// A `<PREFIX>-STEP <name> OK|FAIL|SKIP [detail]` line: `rest` follows the marker, `line` is
    /// the whole marker line. Any status but OK and SKIP is a failure.
    pub fn parse(rest: &str, line: &str) -> Option<Step> {
        let mut w = rest.split_whitespace();
        let (name, status) = (w.next()?, w.next()?);
        let status = match status {
            "OK" => StepStatus::Ok,
            "SKIP" => StepStatus::Skip,
            _ => StepStatus::Fail,
        };
        Some(Step {
            name: name.to_string(),
            status,
            uptime: value(rest, "uptime=").and_then(|v| v.parse().ok()),
            text: line.to_string(),
        })
    }
}

/// Whether a console line looks like a kernel oops, BUG, WARN or panic.
pub fn is_oops_line(line: &str) -> bool {
    OOPS_MARKERS.iter().any(|m| line.contains(m))
}

fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    text.get(start..)?.split_whitespace().next()
}

/// Parse a dmatest summary `...: summary 200 tests, 0 failures 1234.56 iops 5678 KB/s (0)`.
fn parse_summary(s: &str) -> Option<(u64, u64, f64, u64)> {
    let rest = s.get(s.find(" summary ")? + " summary ".len()..)?;
    let mut w = rest.split_whitespace();
    let tests = w.next()?.parse().ok()?;
    (w.next()? == "tests,").then_some(())?;
    let failures = w.next()?.parse().ok()?;
    (w.next()? == "failures").then_some(())?;
    let iops = w.next()?.parse().ok()?;
    (w.next()? == "iops").then_some(())?;
    let kb = w.next()?.parse().ok()?;
    (w.next()? == "KB/s").then_some((tests, failures, iops, kb))
}

impl IdxdReport {
    /// Parse the L2 console lines of one run.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> IdxdReport {
        let mut r = IdxdReport::default();
        for raw in lines {
            let l = raw.trim_end();
            if is_oops_line(l) {
                r.oops.push(l.to_string());
            }
            // The marker may follow other console output on the same line.
            let Some(pos) = l.find("IDXD-") else { continue };
            let Some(m) = l.get(pos..) else { continue };
            if let Some(rest) = m.strip_prefix("IDXD-START ") {
                r.start = Some(m.to_string());
                r.movdir64b = value(rest, "movdir64b=").map(|v| v == "yes");
                r.dmatest_enabled = value(rest, "dmatest=").map(|v| v == "1");
            } else if let Some(rest) = m.strip_prefix("IDXD-STEP ") {
                if let Some(step) = Step::parse(rest, m) {
                    r.steps.push(step);
                }
            } else if let Some(rest) = m.strip_prefix("IDXD-DMATEST-BYTES ") {
                let num = |k: &str| value(rest, k).and_then(|v| v.parse::<u64>().ok());
                if let (Some(case), Some(passed), Some(bytes)) =
                    (value(rest, "case="), num("passed="), num("bytes="))
                {
                    r.dmatest_bytes.push(DmatestBytes {
                        case: case.to_string(),
                        passed,
                        bytes,
                    });
                }
            } else if let Some(rest) = m.strip_prefix("IDXD-DMATEST ") {
                let Some((params, summary)) = rest.split_once(" | ") else {
                    continue;
                };
                let Some((tests, failures, iops, kb_per_s)) = parse_summary(summary) else {
                    continue;
                };
                let num = |k: &str| value(params, k).and_then(|v| v.parse::<u64>().ok());
                let summary = summary
                    .find("dmatest: ")
                    .and_then(|p| summary.get(p + "dmatest: ".len()..))
                    .unwrap_or(summary);
                r.dmatest.push(Dmatest {
                    case: value(params, "case=").unwrap_or("?").to_string(),
                    threads: num("threads=")
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(0),
                    buf: num("buf=").unwrap_or(0),
                    iters: num("iters=").unwrap_or(0),
                    polled: num("polled=") == Some(1),
                    norandom: num("norandom=") == Some(1),
                    tests,
                    failures,
                    iops,
                    kb_per_s,
                    summary: summary.to_string(),
                });
            } else if let Some(rest) = m.strip_prefix("IDXD-DMESG ") {
                r.dmesg.push(rest.to_string());
            } else if let Some(rest) = m.strip_prefix("IDXD-INFO irq ") {
                if rest.contains("idxd-portal") {
                    if let Some(n) = irq_count(rest) {
                        r.portal_irqs = Some(r.portal_irqs.unwrap_or(0) + n);
                    }
                }
            } else if let Some(rest) = m.strip_prefix("IDXD-INFO group0.0 engines=") {
                r.group_engines = rest
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
            } else if let Some(rest) = m.strip_prefix("IDXD-LIST ") {
                r.list.push(rest.to_string());
            } else if let Some(rest) = m.strip_prefix("IDXD-VERDICT ") {
                r.verdict = Some(rest.trim_start().starts_with("PASS"));
            }
        }
        r
    }

    /// The step called `name`, if it was printed (the first one when repeated).
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Every step that failed.
    pub fn failed_steps(&self) -> Vec<&Step> {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Fail)
            .collect()
    }

    /// Kernel log lines of the idxd driver that report a failure or error (case-insensitive
    /// "fail" or "error" on a line mentioning idxd or dsa).
    pub fn idxd_errors(&self) -> Vec<&str> {
        self.dmesg
            .iter()
            .map(String::as_str)
            .filter(|l| {
                let low = l.to_ascii_lowercase();
                (low.contains("idxd") || low.contains(" dsa"))
                    && (low.contains("fail") || low.contains("error"))
            })
            .collect()
    }

    /// The dmatest summaries of one case.
    pub fn dmatest_case(&self, case: &str) -> Vec<&Dmatest> {
        self.dmatest.iter().filter(|d| d.case == case).collect()
    }

    /// The byte total of one case, when printed.
    pub fn dmatest_bytes_of(&self, case: &str) -> Option<&DmatestBytes> {
        self.dmatest_bytes.iter().find(|b| b.case == case)
    }

    /// The guest's wall time of one passed dmatest case: from `echo 1 > run` to the return of
    /// `cat wait` (`elapsed_from=` and `ended=` of its OK step, /proc/uptime, 10 ms steps).
    pub fn dmatest_seconds(&self, case: &str) -> Option<f64> {
        let step = self.step(&format!("dmatest:{case}"))?;
        let field = |k: &str| {
            step.text
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let (t0, t1) = (field("elapsed_from=")?, field("ended=")?);
        (t1 >= t0).then_some(t1 - t0)
    }

    /// The dmatest case names, in the order they first appear among the steps.
    pub fn dmatest_cases(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter_map(|s| s.name.strip_prefix("dmatest:"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[&str] = &[
        "IDXD-START nproc=2 uptime=1.50 movdir64b=yes dmatest=1",
        "IDXD-DMESG [    2.000000] idxd 0000:00:01.0: Intel(R) Accelerator Device (v100)",
        "IDXD-DMESG [    2.000001] idxd 0000:00:01.0: Unable to turn on user SVA feature.",
        "IDXD-STEP modules OK uptime=2.10 ",
        "IDXD-STEP enable-wq OK uptime=3.00 (accel-config enable-wq dsa0/wq0.0)",
        "IDXD-LIST [",
        "IDXD-DMATEST case=t1-4k threads=1 buf=4096 iters=200 polled=0 norandom=0 | [    5.1] dmatest: \
         dma0chan0-copy0: summary 200 tests, 0 failures 512.33 iops 1024 KB/s (0)",
        "IDXD-DMATEST-BYTES case=t1-4k passed=200 bytes=409600",
        "IDXD-DMATEST-BYTES case=bad passed=x bytes=1",
        "IDXD-STEP dmatest:t1-4k OK uptime=6.00 threads=1 elapsed_from=4.25 ended=5.75",
        "IDXD-INFO group0.0 engines=engine0.0,engine0.1",
        "IDXD-INFO irq  26:          0          2  PCI-MSIX-0000:00:01.0   0-edge      idxd-misc",
        "IDXD-INFO irq  27:        526          3  PCI-MSIX-0000:00:01.0   1-edge      idxd-portal",
        "IDXD-STEP disable-wq FAIL uptime=7.00 (accel-config disable-wq dsa0/wq0.0 exited 1)",
        "[    8.0] BUG: kernel NULL pointer dereference, address: 0000000000000000",
        "noise IDXD-VERDICT FAIL steps= disable-wq",
    ];

    #[test]
    fn parses_the_protocol() {
        let r = IdxdReport::parse(SAMPLE.iter().copied());
        assert_eq!(r.movdir64b, Some(true));
        assert_eq!(r.dmatest_enabled, Some(true));
        assert_eq!(r.steps.len(), 4);
        assert_eq!(r.step("enable-wq").map(|s| s.status), Some(StepStatus::Ok));
        assert_eq!(r.step("enable-wq").and_then(|s| s.uptime), Some(3.0));
        assert_eq!(r.failed_steps().len(), 1);
        assert_eq!(r.dmatest.len(), 1);
        let d = &r.dmatest[0];
        assert_eq!((d.tests, d.failures, d.kb_per_s), (200, 0, 1024));
        assert_eq!((d.threads, d.buf, d.iters, d.polled), (1, 4096, 200, false));
        assert!(!d.norandom);
        assert!(d.summary.starts_with("dma0chan0-copy0: summary"));
        assert_eq!(
            r.dmatest_bytes,
            vec![DmatestBytes {
                case: "t1-4k".into(),
                passed: 200,
                bytes: 409600
            }]
        );
        assert_eq!(r.dmatest_bytes_of("t1-4k").map(|b| b.bytes), Some(409600));
        assert_eq!(r.dmatest_cases(), vec!["t1-4k"]);
        assert_eq!(r.list, vec!["[".to_string()]);
        assert_eq!(r.verdict, Some(false));
        assert_eq!(r.oops.len(), 1);
        assert!(r.idxd_errors().is_empty());
        assert_eq!(r.portal_irqs, Some(529));
        assert_eq!(r.dmatest_seconds("t1-4k"), Some(1.5));
        assert_eq!(r.dmatest_seconds("t2-64k"), None);
        assert_eq!(r.group_engines, vec!["engine0.0", "engine0.1"]);
    }

    #[test]
    fn finds_driver_errors() {
        let r = IdxdReport::parse([
            "IDXD-DMESG [ 1.0] idxd 0000:00:01.0: Failed to request irq -22.",
            "IDXD-DMESG [ 1.0] dmatest: Started 1 threads using dma0chan0",
            "IDXD-DMESG [ 1.0] module verification failed: signature and/or required key missing",
        ]);
        assert_eq!(r.idxd_errors().len(), 1);
    }

    #[test]
    fn rejects_malformed_summaries() {
        assert_eq!(
            parse_summary("x: summary 5 tests, 1 failures 2.00 iops 3 KB/s (0)"),
            Some((5, 1, 2.0, 3))
        );
        assert_eq!(parse_summary("x: summary five tests"), None);
        assert_eq!(parse_summary("no summary here"), None);
    }
}
