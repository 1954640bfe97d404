//! The DPDK guest's console protocol (`resources/guests/linux/init-dpdk.sh`): its steps, the output of
//! Debian's `dpdk-test`, and the dmadev instances and op counts that output names.

use crate::idxd::Step;

/// One test run of `dmadev_autotest` on an instance (`DMA Dev <id>: Running <name> Tests`), with
/// its op counts as the last progress line printed them (each is cumulative over the run, so a
/// later line replaces an earlier one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DmadevRun {
    /// `copy`, `burst capacity`, `fill`, ...
    pub name: String,
    /// `Ops submitted`.
    pub submitted: u64,
    /// `Ops completed`.
    pub completed: u64,
    /// `Errors`.
    pub errors: u64,
}

/// One dmadev instance that `dmadev_autotest` tested (`### Test dmadev instance <id> [<name>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DmadevInstance {
    /// DPDK's device name: the PCI address and queue of an idxd WQ (`0000:00:03.0-q0`), or
    /// `dma_skeleton` for the software skeleton of the API tests.
    pub name: String,
    /// Its test runs, in order.
    pub runs: Vec<DmadevRun>,
}

impl DmadevInstance {
    /// The run called `name`.
    pub fn run(&self, name: &str) -> Option<&DmadevRun> {
        self.runs.iter().find(|r| r.name == name)
    }
    /// Ops submitted over all runs.
    pub fn submitted(&self) -> u64 {
        self.runs.iter().map(|r| r.submitted).sum()
    }
    /// Ops completed over all runs.
    pub fn completed(&self) -> u64 {
        self.runs.iter().map(|r| r.completed).sum()
    }
    /// Errors over all runs.
    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }
}

/// One size of `dpdk-copy-bench` (`PERF size=... ratio=... verified=...`): DMA through the dmadev and
/// CPU memcpy of the same buffers, timed side by side in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyBench {
    /// Bytes per copy.
    pub size: u64,
    /// Copies per side.
    pub ops: u64,
    /// Bytes per side.
    pub bytes: u64,
    /// DMA throughput, MB/s (10^6 bytes per second).
    pub dma_mbps: f64,
    /// memcpy throughput, MB/s.
    pub memcpy_mbps: f64,
    /// dma_mbps / memcpy_mbps.
    pub ratio: f64,
    /// DMA copies compared byte for byte with their source.
    pub verified: u64,
}

impl CopyBench {
    fn parse(line: &str) -> Option<CopyBench> {
        let rest = line.strip_prefix("PERF ")?;
        let u = |k: &str| value(rest, k).and_then(|v| v.parse::<u64>().ok());
        let f = |k: &str| value(rest, k).and_then(|v| v.parse::<f64>().ok());
        Some(CopyBench {
            size: u("size=")?,
            ops: u("ops=")?,
            bytes: u("bytes=")?,
            dma_mbps: f("dma_mbps=")?,
            memcpy_mbps: f("memcpy_mbps=")?,
            ratio: f("ratio=")?,
            verified: u("verified=")?,
        })
    }
}

/// Everything the DPDK guest printed, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DpdkReport {
    /// The `DPDK-START` line, when printed.
    pub start: Option<String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Every `DPDK-OUT <step>: <line>` as (step, line).
    pub out: Vec<(String, String)>,
    /// The kernel log lines the guest dumped (`DPDK-DMESG`).
    pub dmesg: Vec<String>,
    /// The dmadev instances `dmadev_autotest` tested, in order.
    pub instances: Vec<DmadevInstance>,
    /// Whether dpdk-test printed `Test OK`.
    pub test_ok: bool,
    /// dpdk-copy-bench's sizes, in order.
    pub bench: Vec<CopyBench>,
    /// The device dpdk-copy-bench used (`PERF-DONE dev=<name>`), once it finished.
    pub bench_done: Option<String>,
    /// `Some(true)` for `DPDK-VERDICT PASS`, `Some(false)` for FAIL.
    pub verdict: Option<bool>,
}

fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    text.get(start..)?.split_whitespace().next()
}

/// `Ops submitted: 1\tOps completed: 1\tErrors: 0` -> (1, 1, 0).
fn parse_ops(line: &str) -> Option<(u64, u64, u64)> {
    let num = |k: &str| value(line, k).and_then(|v| v.parse::<u64>().ok());
    Some((
        num("Ops submitted: ")?,
        num("Ops completed: ")?,
        num("Errors: ")?,
    ))
}

impl DpdkReport {
    /// Parse the L2 console lines of one run.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> DpdkReport {
        let mut r = DpdkReport::default();
        for raw in lines {
            let l = raw.trim_end();
            let Some(pos) = l.find("DPDK-") else { continue };
            let Some(m) = l.get(pos..) else { continue };
            if m.starts_with("DPDK-START ") {
                r.start = Some(m.to_string());
            } else if let Some(rest) = m.strip_prefix("DPDK-STEP ") {
                if let Some(step) = Step::parse(rest, m) {
                    r.steps.push(step);
                }
            } else if let Some(rest) = m.strip_prefix("DPDK-OUT ") {
                let Some((step, line)) = rest.split_once(": ") else {
                    continue;
                };
                match step {
                    "copy-bench" => r.bench_line(line),
                    "dmadev_autotest" => r.out_line(line),
                    _ => {}
                }
                r.out.push((step.to_string(), line.to_string()));
            } else if let Some(rest) = m.strip_prefix("DPDK-DMESG ") {
                r.dmesg.push(rest.to_string());
            } else if let Some(rest) = m.strip_prefix("DPDK-VERDICT ") {
                r.verdict = Some(rest.trim_start().starts_with("PASS"));
            }
        }
        r
    }

    /// Account one line of dpdk-copy-bench's output.
    fn bench_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(b) = CopyBench::parse(line) {
            self.bench.push(b);
        } else if let Some(rest) = line.strip_prefix("PERF-DONE ") {
            self.bench_done = value(rest, "dev=").map(str::to_string);
        }
    }

    /// Account one line of dpdk-test's output.
    fn out_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("### Test dmadev instance ") {
            let name = rest
                .split_once('[')
                .and_then(|(_, n)| n.split_once(']'))
                .map(|(n, _)| n)
                .unwrap_or(rest);
            self.instances.push(DmadevInstance {
                name: name.to_string(),
                ..DmadevInstance::default()
            });
        } else if let Some(i) = self.instances.last_mut() {
            if let Some((s, c, e)) = parse_ops(line) {
                if let Some(run) = i.runs.last_mut() {
                    (run.submitted, run.completed, run.errors) = (s, c, e);
                }
            } else if let Some(run) = line
                .split_once(": Running ")
                .and_then(|(_, r)| r.split_once(" Tests"))
            {
                i.runs.push(DmadevRun {
                    name: run.0.to_string(),
                    ..DmadevRun::default()
                });
            }
        }
        if line == "Test OK" {
            self.test_ok = true;
        }
    }

    /// The step called `name`, if it was printed.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The output lines of one step.
    pub fn out_of<'a>(&'a self, step: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.out
            .iter()
            .filter(move |(s, _)| s == step)
            .map(|(_, l)| l.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idxd::StepStatus;

    const SAMPLE: &[&str] = &[
        "DPDK-START nproc=1 uptime=3.10 movdir64b=yes kernel=6.12.117+deb12-amd64",
        "DPDK-STEP modules OK uptime=3.20 ",
        "DPDK-OUT dmadev_autotest: ### Test dmadev instance 0 [dma_skeleton]",
        "DPDK-OUT dmadev_autotest: DMA Dev 0: Running copy Tests  ",
        "DPDK-OUT dmadev_autotest: Ops submitted: 85120\tOps completed: 85120\tErrors: 0",
        "DPDK-OUT dmadev_autotest: ### Test dmadev instance 1 [0000:00:03.0-q0]",
        "DPDK-OUT dmadev_autotest: DMA Dev 1: Running copy Tests  ",
        "DPDK-OUT dmadev_autotest: Ops submitted: 133\tOps completed: 133\tErrors: 0",
        "DPDK-OUT dmadev_autotest-log: EAL: a log line between two progress lines",
        "DPDK-OUT dmadev_autotest: Ops submitted: 85120\tOps completed: 85120\tErrors: 0",
        "DPDK-OUT dmadev_autotest: DMA Dev 1: Running burst capacity Tests  ",
        "DPDK-OUT dmadev_autotest: Ops submitted: 65536\tOps completed: 65536\tErrors: 0",
        "DPDK-OUT dmadev_autotest: DMA Dev 1: Running fill Tests  ",
        "DPDK-OUT dmadev_autotest: Ops submitted: 6\tOps completed: 6\tErrors: 0",
        "DPDK-OUT dmadev_autotest: Test OK",
        "DPDK-OUT copy-bench: PERF size=4096 ops=4096 bytes=16777216 dma_ns=1 memcpy_ns=2 \
         dma_mbps=812.5 memcpy_mbps=1625.0 ratio=0.500 verified=4096",
        "DPDK-OUT copy-bench: PERF size=x",
        "DPDK-OUT copy-bench: PERF-DONE dev=0000:00:03.0-q0",
        "DPDK-DMESG [ 4.0] uio_pci_generic 0000:00:03.0: No IRQ assigned to device",
        "DPDK-STEP dmadev_autotest FAIL uptime=9.00 (dpdk-test exited 1)",
        "noise DPDK-VERDICT FAIL steps= dmadev_autotest",
    ];

    #[test]
    fn parses_the_protocol() {
        let r = DpdkReport::parse(SAMPLE.iter().copied());
        assert!(r.start.as_deref().unwrap_or("").contains("kernel=6.12"));
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.step("modules").map(|s| s.status), Some(StepStatus::Ok));
        assert_eq!(
            r.step("dmadev_autotest").map(|s| s.status),
            Some(StepStatus::Fail)
        );
        assert_eq!(r.instances.len(), 2);
        let q = &r.instances[1];
        assert_eq!(q.name, "0000:00:03.0-q0");
        let names: Vec<&str> = q.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["copy", "burst capacity", "fill"]);
        assert_eq!(q.run("fill").map(|r| r.submitted), Some(6));
        // A later progress line of a run replaces the earlier one (cumulative counts).
        assert_eq!(
            (q.submitted(), q.completed(), q.errors()),
            (150662, 150662, 0)
        );
        assert!(r.test_ok);
        assert_eq!(r.out_of("dmadev_autotest").count(), 12);
        assert_eq!(r.dmesg.len(), 1);
        assert_eq!(r.verdict, Some(false));
        assert_eq!(r.bench.len(), 1);
        let b = &r.bench[0];
        assert_eq!(
            (b.size, b.ops, b.bytes, b.verified),
            (4096, 4096, 16777216, 4096)
        );
        assert_eq!((b.dma_mbps, b.memcpy_mbps, b.ratio), (812.5, 1625.0, 0.5));
        assert_eq!(r.bench_done.as_deref(), Some("0000:00:03.0-q0"));
    }

    #[test]
    fn ignores_malformed_lines() {
        let r = DpdkReport::parse([
            "DPDK-STEP",
            "DPDK-OUT no separator",
            "DPDK-OUT dmadev_autotest: Ops submitted: many",
        ]);
        assert!(r.steps.is_empty());
        assert!(r.instances.is_empty());
        assert_eq!(r.out.len(), 1);
    }
}
