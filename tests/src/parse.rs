//! Console protocol of the rig: turns the raw lines of QEMU's stdout/stderr (L1's serial console, on
//! which dsavmm's stdout, the L2 console, also appears) into tagged lines, and decides which layer failed.
//!
//! The markers are printed by `resources/rig/l1-init.sh`; its header documents them.

use std::time::Duration;

/// Where a line came from, and the stages a rig run passes through (used to name the one that failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The host side: building artifacts, locating binaries, spawning processes.
    Build,
    /// QEMU itself (its stderr, or a failure to start).
    Qemu,
    /// The L1 kernel and its /init (the emulated host).
    L1,
    /// Loading irqbypass, ccp, kvm, kvm-amd in L1 and getting /dev/kvm.
    Modules,
    /// dsavmm (or the command of a run): its stderr and its exit status.
    Dsavmm,
    /// The L2 guest: dsavmm's stdout, which is the guest's serial console.
    L2,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Build => "build (host side)",
            Layer::Qemu => "QEMU start",
            Layer::L1 => "L1 boot",
            Layer::Modules => "module load in L1",
            Layer::Dsavmm => "dsavmm",
            Layer::L2 => "L2 guest",
        })
    }
}

/// Which pipe of the spawned process a raw line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout: the L1 console (nested) or the L2 console (direct).
    Stdout,
    /// stderr: QEMU's own messages (nested) or dsavmm's log (direct).
    Stderr,
}

/// One tagged output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Time since the rig process (QEMU, or dsavmm when direct) was started.
    pub t: Duration,
    /// Where it came from.
    pub layer: Layer,
    /// The run (index into the list of commands) that was active, if any.
    pub run: Option<usize>,
    /// The text, without line terminator and without the `RIG-E: ` tag.
    pub text: String,
}

/// Outcome of one command run inside L1 (or directly on the host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// When `RIG-DSAVMM-START` was seen.
    pub started: Option<Duration>,
    /// When `RIG-DSAVMM-EXIT` was seen.
    pub ended: Option<Duration>,
    /// The exit status (`None`: the run never finished).
    pub exit: Option<i32>,
}

/// Where the L1 boot stands, as far as the console has told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// Nothing from L1's user space yet.
    #[default]
    Booting,
    /// /init is running and loading modules.
    Modules,
    /// A module failed to load, or /dev/kvm is missing.
    ModulesFailed,
    /// /dev/kvm is there; no run active.
    Ready,
    /// Run N is active.
    Running(usize),
    /// `RIG-L1-DONE` was printed.
    Done,
}

/// The incremental console parser.
#[derive(Debug, Default)]
pub struct Parser {
    /// Tagged lines so far.
    pub lines: Vec<Line>,
    /// One entry per run that started.
    pub runs: Vec<RunOutcome>,
    /// Current stage.
    pub stage: Stage,
    /// When `RIG-L1-INIT` was seen.
    pub l1_init: Option<Duration>,
    /// When `RIG-L1-READY` was seen.
    pub l1_ready: Option<Duration>,
    /// The reason modules failed (`RIG-MODULE-FAIL <m>` or `RIG-KVM-MISSING`).
    pub module_failure: Option<String>,
    /// Number of raw stdout lines seen (any content).
    pub console_lines: usize,
}

fn marker_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    text.get(start..)?.split_whitespace().next()
}

impl Parser {
    /// Feed one raw line of the nested rig (QEMU's stdout or stderr).
    pub fn feed_nested(&mut self, t: Duration, stream: Stream, raw: &str) {
        let text = raw.trim_end_matches(['\r', '\n']);
        if stream == Stream::Stderr {
            self.push(t, Layer::Qemu, text);
            return;
        }
        self.console_lines += 1;
        if text.trim().is_empty() {
            return;
        }
        let current = match self.stage {
            Stage::Running(i) => Some(i),
            _ => None,
        };
        if text.contains("RIG-L1-INIT") {
            self.l1_init = Some(t);
            self.stage = Stage::Modules;
            self.push(t, Layer::L1, text);
        } else if let Some(pos) = text.find("RIG-MODULE-FAIL") {
            self.module_failure = text.get(pos..).map(str::to_string);
            self.stage = Stage::ModulesFailed;
            self.push(t, Layer::Modules, text);
        } else if text.contains("RIG-KVM-MISSING") {
            self.module_failure = Some("modules loaded but /dev/kvm is missing".to_string());
            self.stage = Stage::ModulesFailed;
            self.push(t, Layer::Modules, text);
        } else if text.contains("RIG-L1-READY") {
            self.l1_ready = Some(t);
            self.stage = Stage::Ready;
            self.push(t, Layer::L1, text);
        } else if let Some(idx) = marker_value(text, "RIG-DSAVMM-START ")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|_| text.trim_start().starts_with("RIG-DSAVMM-START"))
        {
            while self.runs.len() <= idx {
                self.runs.push(RunOutcome::default());
            }
            if let Some(r) = self.runs.get_mut(idx) {
                r.started = Some(t);
            }
            self.stage = Stage::Running(idx);
            self.push_run(t, Layer::L1, Some(idx), text);
        } else if let Some(code) = marker_value(text, "RIG-DSAVMM-EXIT=") {
            let idx = marker_value(text, "i=")
                .and_then(|v| v.parse::<usize>().ok())
                .or(current);
            if let Some(r) = idx.and_then(|i| self.runs.get_mut(i)) {
                r.ended = Some(t);
                r.exit = Some(code.parse::<i32>().unwrap_or(-1));
            }
            self.stage = Stage::Ready;
            self.push_run(t, Layer::L1, idx, text);
        } else if text.contains("RIG-L1-DONE") {
            self.stage = Stage::Done;
            self.push(t, Layer::L1, text);
        } else if let Some(rest) = text.strip_prefix("L1-KMSG: ") {
            let run = self
                .runs
                .len()
                .checked_sub(1)
                .filter(|_| self.stage != Stage::Modules);
            self.push_run(t, Layer::L1, run, rest);
        } else if let Some(rest) = text.strip_prefix("RIG-E: ") {
            self.push_run(t, Layer::Dsavmm, current, rest);
        } else if current.is_some() {
            self.push_run(t, Layer::L2, current, text);
        } else if self.stage == Stage::Modules || self.stage == Stage::ModulesFailed {
            self.push(t, Layer::Modules, text);
        } else {
            self.push(t, Layer::L1, text);
        }
    }

    /// Feed one raw line of a direct (non-nested) dsavmm run `run`.
    pub fn feed_direct(&mut self, t: Duration, run: usize, stream: Stream, raw: &str) {
        let text = raw.trim_end_matches(['\r', '\n']);
        if text.trim().is_empty() {
            return;
        }
        let layer = match stream {
            Stream::Stdout => Layer::L2,
            Stream::Stderr => Layer::Dsavmm,
        };
        self.push_run(t, layer, Some(run), text);
    }

    fn push(&mut self, t: Duration, layer: Layer, text: &str) {
        let run = match self.stage {
            Stage::Running(i) => Some(i),
            _ => None,
        };
        self.push_run(t, layer, run, text);
    }

    fn push_run(&mut self, t: Duration, layer: Layer, run: Option<usize>, text: &str) {
        self.lines.push(Line {
            t,
            layer,
            run,
            text: text.to_string(),
        });
    }

    /// The last `n` lines whose layer is one of `layers` (and of `run`, when given).
    pub fn last_lines(&self, layers: &[Layer], run: Option<usize>, n: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .lines
            .iter()
            .rev()
            .filter(|l| layers.contains(&l.layer) && (run.is_none() || l.run == run))
            .take(n)
            .map(|l| format!("[{:>7.2}s {:?}] {}", l.t.as_secs_f64(), l.layer, l.text))
            .collect();
        v.reverse();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut Parser, lines: &[&str]) {
        for (i, l) in lines.iter().enumerate() {
            p.feed_nested(Duration::from_millis(i as u64), Stream::Stdout, l);
        }
    }

    #[test]
    fn full_transcript_is_tagged() {
        let mut p = Parser::default();
        feed(
            &mut p,
            &[
                "[    0.79] PCI: Fatal: No config space access function found",
                "RIG-L1-INIT uptime=4.34",
                "L1-KMSG: [    5.70] kvm_amd: Nested Paging enabled",
                "RIG-L1-READY uptime=6.11",
                "RIG-DSAVMM-START 0 uptime=6.14",
                "RIG-E: dsavmm: starting",
                "L2-INIT-MARKER nproc=2\r",
                "",
                "RIG-DSAVMM-EXIT=0 i=0 uptime=31.17",
                "L1-KMSG: kvm: Unhandled WRMSR",
                "RIG-DSAVMM-START 1 uptime=32",
                "RIG-DSAVMM-EXIT=3 i=1 uptime=33",
                "RIG-L1-DONE",
            ],
        );
        assert_eq!(p.stage, Stage::Done);
        assert_eq!(p.runs.len(), 2);
        assert_eq!(p.runs[0].exit, Some(0));
        assert_eq!(p.runs[1].exit, Some(3));
        let l2: Vec<_> = p.lines.iter().filter(|l| l.layer == Layer::L2).collect();
        assert_eq!(l2.len(), 1);
        assert_eq!(l2[0].text, "L2-INIT-MARKER nproc=2");
        assert_eq!(l2[0].run, Some(0));
        let d: Vec<_> = p
            .lines
            .iter()
            .filter(|l| l.layer == Layer::Dsavmm)
            .collect();
        assert_eq!(d[0].text, "dsavmm: starting");
        assert!(p.l1_init.is_some() && p.l1_ready.is_some());
        let kmsg = p.lines.iter().find(|l| l.text.contains("WRMSR"));
        assert_eq!(kmsg.map(|l| (l.layer, l.run)), Some((Layer::L1, Some(0))));
    }

    #[test]
    fn module_failure_is_recorded() {
        let mut p = Parser::default();
        feed(
            &mut p,
            &[
                "RIG-L1-INIT uptime=1",
                "insmod: can't insert 'kvm-amd.ko'",
                "RIG-MODULE-FAIL kvm-amd",
            ],
        );
        assert_eq!(p.stage, Stage::ModulesFailed);
        assert_eq!(p.module_failure.as_deref(), Some("RIG-MODULE-FAIL kvm-amd"));
        assert_eq!(p.last_lines(&[Layer::Modules], None, 5).len(), 2);
    }

    #[test]
    fn stderr_is_qemu_and_markers_inside_text_are_not_runs() {
        let mut p = Parser::default();
        p.feed_nested(
            Duration::ZERO,
            Stream::Stderr,
            "qemu: could not load kernel",
        );
        p.feed_nested(Duration::ZERO, Stream::Stdout, "echo RIG-DSAVMM-START x");
        assert_eq!(p.lines[0].layer, Layer::Qemu);
        assert!(p.runs.is_empty());
    }

    #[test]
    fn direct_lines() {
        let mut p = Parser::default();
        p.feed_direct(
            Duration::ZERO,
            0,
            Stream::Stdout,
            "L2-INIT-MARKER nproc=1\r\n",
        );
        p.feed_direct(Duration::ZERO, 0, Stream::Stderr, "error: no /dev/kvm");
        assert_eq!(p.lines[0].layer, Layer::L2);
        assert_eq!(p.lines[1].layer, Layer::Dsavmm);
    }
}
