//! [`NestedVm`]: build the rig's L1 initramfs, run QEMU (or dsavmm directly on a hardware KVM) with a
//! hard timeout, collect the tagged console lines, and name the layer that failed.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::env::{hw_kvm, target_dir, workspace_root};
use crate::guest::key_values;
use crate::parse::{Layer, Line, Parser, RunOutcome, Stage, Stream};
use crate::RigError;

/// How to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Direct when [`hw_kvm`] says the host has a hardware-backed KVM, nested otherwise. The environment
    /// variable `DSAVMM_RIG_MODE=nested|direct` overrides.
    Auto,
    /// Always through QEMU/L1.
    Nested,
    /// Always dsavmm on the host's /dev/kvm.
    Direct,
}

/// One command to run in L1 (or on the host when direct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// `None`: dsavmm; otherwise a program on L1's PATH (e.g. `qemu-system-x86_64` with
    /// [`NestedVm::with_qemu`]).
    pub program: Option<String>,
    /// Its arguments; paths inside L1 (see [`NestedVm::file`]).
    pub args: Vec<String>,
}

impl Run {
    /// `dsavmm ARGS...`.
    pub fn dsavmm<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Self {
        Run {
            program: None,
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// `PROGRAM ARGS...` (nested only).
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(program: &str, args: I) -> Self {
        Run {
            program: Some(program.to_string()),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// The reference VMM: QEMU 7.2 `-M microvm -accel kvm` on L1's KVM booting `kernel` (needs
    /// [`NestedVm::with_qemu`]).
    pub fn qemu_reference(
        kernel: &str,
        initramfs: &str,
        cmdline: &str,
        vcpus: u32,
        memory_mib: u32,
    ) -> Self {
        let (smp, mem) = (vcpus.to_string(), memory_mib.to_string());
        Run::command(
            "qemu-system-x86_64",
            [
                "-L",
                "/rig/qemu-fw",
                "-M",
                "microvm",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-smp",
                &smp,
                "-m",
                &mem,
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
                "-kernel",
                kernel,
                "-initrd",
                initramfs,
                "-append",
                cmdline,
            ],
        )
    }

    fn display(&self) -> String {
        let mut s = self.program.clone().unwrap_or_else(|| "dsavmm".to_string());
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(a));
        }
        s
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The collected result of a rig run.
#[derive(Debug, Clone)]
pub struct RigOutput {
    /// Nested or direct.
    pub mode: Mode,
    /// Every tagged line, in arrival order.
    pub lines: Vec<Line>,
    /// One entry per command, in order.
    pub runs: Vec<RunOutcome>,
    /// The commands, as L1's shell saw them.
    pub commands: Vec<String>,
    /// QEMU start to L1's /init (nested).
    pub l1_init: Option<Duration>,
    /// QEMU start to /dev/kvm ready in L1 (nested).
    pub l1_ready: Option<Duration>,
    /// QEMU's exit status (nested), when it exited by itself.
    pub qemu_exit: Option<i32>,
    /// Whether the hard timeout fired.
    pub timed_out: bool,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Full tagged transcript on disk.
    pub log: Option<PathBuf>,
}

impl RigOutput {
    /// Whether run `run`'s L2 kernel crashed (a panic or an oops on its console).
    pub fn l2_crashed(&self, run: usize) -> bool {
        self.lines_of(run, Layer::L2)
            .any(|l| l.text.contains("Kernel panic") || l.text.contains("Oops:"))
    }

    /// The exit status of the first command (the usual single dsavmm run).
    pub fn dsavmm_exit(&self) -> Option<i32> {
        self.runs.first().and_then(|r| r.exit)
    }

    /// Lines of `layer` during run `run`.
    pub fn lines_of(&self, run: usize, layer: Layer) -> impl Iterator<Item = &Line> {
        self.lines
            .iter()
            .filter(move |l| l.run == Some(run) && l.layer == layer)
    }

    /// The first line of `layer` in run `run` containing `needle`; otherwise an error naming dsavmm
    /// (when it did not exit 0) or `layer`, with the run's last lines.
    pub fn expect_line(&self, run: usize, layer: Layer, needle: &str) -> Result<&Line, RigError> {
        if let Some(l) = self.lines_of(run, layer).find(|l| l.text.contains(needle)) {
            return Ok(l);
        }
        let exit = self.runs.get(run).and_then(|r| r.exit);
        let cmd = self.commands.get(run).map(String::as_str).unwrap_or("?");
        let l2_lines = self.lines_of(run, Layer::L2).count();
        let printed = if l2_lines == 0 {
            " (the L2 console printed nothing at all)".to_string()
        } else {
            format!(" (the L2 console printed {l2_lines} lines)")
        };
        let (failed, why) = match exit {
            Some(0) => (
                layer,
                format!("run {run} (`{cmd}`) exited 0 but printed no line containing {needle:?}{printed}"),
            ),
            Some(c) => (
                Layer::Dsavmm,
                format!("run {run} (`{cmd}`) exited {c}; no line containing {needle:?}{printed}"),
            ),
            None => (
                Layer::Dsavmm,
                format!("run {run} (`{cmd}`) never finished; no line containing {needle:?}{printed}"),
            ),
        };
        Err(RigError {
            layer: failed,
            message: why,
            last_lines: self.last_lines(&[Layer::L2, Layer::Dsavmm, Layer::L1], Some(run), 25),
            log: self.log.clone(),
            output: Some(Box::new(self.clone())),
        })
    }

    /// Time from the start of run `run` to `line` (host wall clock).
    pub fn since_start(&self, run: usize, line: &Line) -> Option<Duration> {
        let start = self.runs.get(run)?.started?;
        line.t.checked_sub(start)
    }

    /// The last `n` lines of the given layers (of `run` when given), formatted with time and layer.
    pub fn last_lines(&self, layers: &[Layer], run: Option<usize>, n: usize) -> Vec<String> {
        let p = Parser {
            lines: self.lines.clone(),
            ..Parser::default()
        };
        p.last_lines(layers, run, n)
    }

    /// Whether the CPU dsavmm ran on executes MOVDIR64B: nested, L1's `RIG-L1-CPU movdir64b=yes|no`
    /// line; direct, the host's /proc/cpuinfo. `None` when unknown (an older L1 /init).
    pub fn host_movdir64b(&self) -> Option<bool> {
        match self.mode {
            Mode::Direct => std::fs::read_to_string("/proc/cpuinfo").ok().map(|c| {
                c.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "movdir64b"))
            }),
            _ => self.lines.iter().filter(|l| l.run.is_none()).find_map(|l| {
                let pos = l.text.find("RIG-L1-CPU movdir64b=")?;
                let v = l.text.get(pos + "RIG-L1-CPU movdir64b=".len()..)?;
                Some(v.trim_start().starts_with("yes"))
            }),
        }
    }

    /// The whole transcript, one tagged line per line.
    pub fn transcript(&self) -> String {
        transcript(&self.lines)
    }
}

fn transcript(lines: &[Line]) -> String {
    let mut s = String::new();
    for l in lines {
        let run = l.run.map(|r| format!(" run{r}")).unwrap_or_default();
        s.push_str(&format!(
            "[{:>8.3}s {:?}{run}] {}\n",
            l.t.as_secs_f64(),
            l.layer,
            l.text
        ));
    }
    s
}

/// Builder and runner for the nested rig.
#[derive(Debug, Clone)]
pub struct NestedVm {
    dsavmm: Option<PathBuf>,
    files: Vec<(String, PathBuf)>,
    with_qemu: bool,
    timeout: Option<Duration>,
    expect_exit: Option<i32>,
    mode: Mode,
    qemu: Option<PathBuf>,
    qemu_firmware: Option<PathBuf>,
    vfio_user: Option<PathBuf>,
    l1_cpus: Option<u32>,
}

impl Default for NestedVm {
    fn default() -> Self {
        Self::new()
    }
}

/// One rig at a time per test process: two TCG QEMUs on a 2-core machine would slow each other down.
static RIG_LOCK: Mutex<()> = Mutex::new(());

/// Runs retried by [`NestedVm::run_all_retrying_l2_crashes`] in this process (one test binary).
static L2_RETRIES: AtomicUsize = AtomicUsize::new(0);
/// More retries than this in one test process fail the rig run.
pub const MAX_L2_RETRIES: usize = 1;

/// Counts `n` more retries on `counter`: `Ok(total)` while the total stays within
/// [`MAX_L2_RETRIES`], `Err(total)` (nothing retried) beyond.
fn claim_retries(counter: &AtomicUsize, n: usize) -> Result<usize, usize> {
    let total = counter.fetch_add(n, Ordering::SeqCst) + n;
    if total > MAX_L2_RETRIES {
        Err(total)
    } else {
        Ok(total)
    }
}

/// Run `run`'s L2 lines from its first crash report on (for the error of a refused retry).
fn crash_lines(out: &RigOutput, run: usize) -> Vec<String> {
    let lines: Vec<&str> = out
        .lines_of(run, Layer::L2)
        .map(|l| l.text.as_str())
        .collect();
    let first = lines
        .iter()
        .position(|l| l.contains("Oops:") || l.contains("PANIC:") || l.contains("Kernel panic"))
        .unwrap_or(0);
    lines
        .iter()
        .skip(first)
        .take(30)
        .map(|l| l.to_string())
        .collect()
}

impl NestedVm {
    /// Where [`NestedVm::l2_kernel`] puts the kernel inside L1.
    pub const L2_KERNEL: &'static str = "/l2/kernel";
    /// Where [`NestedVm::l2_initramfs`] puts the initramfs inside L1.
    pub const L2_INITRAMFS: &'static str = "/l2/initramfs";

    /// A rig with no files, mode [`Mode::Auto`], exit status 0 expected from every command, and a
    /// default timeout of 120 s plus 90 s per command.
    pub fn new() -> Self {
        NestedVm {
            dsavmm: None,
            files: Vec::new(),
            with_qemu: false,
            timeout: None,
            expect_exit: Some(0),
            mode: Mode::Auto,
            qemu: None,
            qemu_firmware: None,
            vfio_user: None,
            l1_cpus: None,
        }
    }

    /// L1's vCPUs (QEMU `-smp`; default 1). More than one runs TCG multi-threaded, so that
    /// dsavmm's vCPU and engine threads in L1 can run at the same time.
    pub fn l1_cpus(mut self, n: u32) -> Self {
        self.l1_cpus = Some(n);
        self
    }

    /// The dsavmm binary (see [`crate::dsavmm_binary`]); it becomes `/bin/dsavmm` in L1.
    pub fn dsavmm(mut self, path: impl Into<PathBuf>) -> Self {
        self.dsavmm = Some(path.into());
        self
    }

    /// Put the host file `src` into L1 at the absolute path `dest`. In direct mode, an argument equal
    /// to `dest` is replaced by `src`.
    pub fn file(mut self, dest: &str, src: impl Into<PathBuf>) -> Self {
        self.files.push((dest.to_string(), src.into()));
        self
    }

    /// The L2 kernel, at [`NestedVm::L2_KERNEL`].
    pub fn l2_kernel(self, src: impl Into<PathBuf>) -> Self {
        self.file(Self::L2_KERNEL, src)
    }

    /// The L2 initramfs, at [`NestedVm::L2_INITRAMFS`].
    pub fn l2_initramfs(self, src: impl Into<PathBuf>) -> Self {
        self.file(Self::L2_INITRAMFS, src)
    }

    /// Also put QEMU into L1 (for [`Run::qemu_reference`]).
    pub fn with_qemu(mut self, yes: bool) -> Self {
        self.with_qemu = yes;
        self
    }

    /// Hard timeout for the whole rig run (QEMU is killed when it expires).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The exit status every command must have (`None`: any; the caller checks [`RigOutput::runs`]).
    pub fn expect_exit(mut self, code: Option<i32>) -> Self {
        self.expect_exit = code;
        self
    }

    /// Use this qemu-system-x86_64 for L1 instead of Debian's 7.2 (e.g. a build whose TCG executes
    /// MOVDIR64B); the environment variable `DSAVMM_RIG_QEMU` does the same for every rig.
    pub fn qemu_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu = Some(path.into());
        self
    }

    /// The firmware directory (`-L`) for L1's QEMU instead of Debian's qemu-system-data; the
    /// environment variable `DSAVMM_RIG_QEMU_FW` does the same for every rig.
    pub fn qemu_firmware(mut self, dir: impl Into<PathBuf>) -> Self {
        self.qemu_firmware = Some(dir.into());
        self
    }

    /// Run L1 on the MOVDIR64B-capable QEMU (see [`crate::patched_qemu`]): its binary and firmware.
    pub fn patched_qemu(self, q: &crate::PatchedQemu) -> Self {
        self.qemu_binary(&q.binary).qemu_firmware(&q.firmware)
    }

    /// L1 on q35 with an intel-iommu and a `vfio-user-pci` device served at `socket` on the
    /// host (a `dsavmm dsa-server` the caller started), and the vfio modules loaded in L1
    /// (`rig.sh --vfio-user`; needs the patched QEMU 10.2).
    pub fn vfio_user(mut self, socket: impl Into<PathBuf>) -> Self {
        self.vfio_user = Some(socket.into());
        self
    }

    /// Nested, direct, or auto.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The mode [`Mode::Auto`] resolves to on this host.
    pub fn resolved_mode(&self) -> Mode {
        match self.mode {
            Mode::Auto => match std::env::var("DSAVMM_RIG_MODE").as_deref() {
                Ok("nested") => Mode::Nested,
                Ok("direct") => Mode::Direct,
                _ if hw_kvm().is_ok() => Mode::Direct,
                _ => Mode::Nested,
            },
            m => m,
        }
    }

    /// One `dsavmm ARGS...` run.
    pub fn run(&self, args: &[&str]) -> Result<RigOutput, RigError> {
        self.run_all(&[Run::dsavmm(args.iter().copied())])
    }

    /// [`NestedVm::run_all`], then, in nested mode only, each run whose L2 kernel crashed with the
    /// TCG-emulation signature ([`crate::oops::tcg_double_fault`]) once more in a fresh L1 boot; its
    /// lines and outcome replace the first attempt's, and the first attempt is reported on stderr
    /// with its transcript. Any other L2 crash is left as it is (the tests then fail on it).
    ///
    /// Why: L2 runs on an SVM that QEMU's TCG emulates, and that emulation is not perfect: a CI run
    /// here saw one Debian L2 of ten double-fault right after a `cmpxchg16b` in
    /// `kmem_cache_alloc_node` with RFLAGS holding a pointer value (`EFLAGS: c11e12c2`), a failure
    /// that never recurred on rerun. A retry must stay rare to stay credible: the retries are counted
    /// per test process (one test binary is one suite; its tests share the process), and a second one
    /// is refused with an `L2` error, since an oops that comes back that often is not the recorded
    /// glitch. On a hardware KVM (direct mode) a crash is never retried.
    pub fn run_all_retrying_l2_crashes(&self, runs: &[Run]) -> Result<RigOutput, RigError> {
        let mut out = self.run_all(runs)?;
        if out.mode == Mode::Direct {
            return Ok(out);
        }
        let mut retry = Vec::new();
        for i in (0..runs.len()).filter(|&i| out.l2_crashed(i)) {
            match crate::oops::tcg_double_fault(out.lines_of(i, Layer::L2).map(|l| l.text.as_str()))
            {
                Some(sig) => retry.push((i, sig)),
                None => eprintln!(
                    "rig: the L2 kernel crashed in run {i} (transcript {:?}) without the TCG \
                     double-fault signature: not retried",
                    out.log
                ),
            }
        }
        if retry.is_empty() {
            return Ok(out);
        }
        let total = match claim_retries(&L2_RETRIES, retry.len()) {
            Ok(total) => total,
            Err(total) => {
                return Err(RigError {
                    layer: Layer::L2,
                    message: format!(
                        "the L2 kernel crashed with the TCG double-fault signature in run(s) \
                         {retry:?}, {total} retries in this test process in all (at most \
                         {MAX_L2_RETRIES} allowed): a crash this frequent is not the rare \
                         emulation glitch, and may be dsavmm's"
                    ),
                    last_lines: crash_lines(&out, retry[0].0),
                    log: out.log.clone(),
                    output: Some(Box::new(out)),
                })
            }
        };
        eprintln!(
            "rig: RETRY: the L2 kernel crashed with the TCG double-fault signature in run(s) {retry:?} \
             (transcript {:?}); running them once more in a fresh L1 boot (retry {} of at most \
             {MAX_L2_RETRIES} in this test process)",
            out.log,
            total
        );
        let crashed: Vec<usize> = retry.iter().map(|(i, _)| *i).collect();
        let again_runs: Vec<Run> = crashed
            .iter()
            .filter_map(|&i| runs.get(i).cloned())
            .collect();
        let again = self.run_all(&again_runs)?;
        out.lines
            .retain(|l| !l.run.is_some_and(|r| crashed.contains(&r)));
        for l in again.lines {
            if let Some(&orig) = l.run.and_then(|r| crashed.get(r)) {
                out.lines.push(Line {
                    run: Some(orig),
                    ..l
                });
            }
        }
        for (j, &i) in crashed.iter().enumerate() {
            if let (Some(slot), Some(r)) = (out.runs.get_mut(i), again.runs.get(j)) {
                *slot = r.clone();
            }
        }
        Ok(out)
    }

    /// Several commands, one after the other, in one L1 boot.
    pub fn run_all(&self, runs: &[Run]) -> Result<RigOutput, RigError> {
        let _guard = RIG_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let timeout = self.timeout.unwrap_or_else(|| {
            Duration::from_secs(120 + 90 * u64::try_from(runs.len()).unwrap_or(u64::MAX / 200))
        });
        match self.resolved_mode() {
            Mode::Direct => self.run_direct(runs, timeout),
            _ => self.run_nested(runs, timeout),
        }
    }

    fn build_args(&self, runs: &[Run]) -> Result<Vec<String>, RigError> {
        let mut a = vec!["build".to_string()];
        if let Some(d) = &self.dsavmm {
            a.push("--dsavmm".into());
            a.push(d.display().to_string());
        }
        for (dest, src) in &self.files {
            if !dest.starts_with('/') || dest.contains('=') {
                return Err(RigError::new(
                    Layer::Build,
                    format!("file destination {dest:?} must be absolute, without '='"),
                    vec![],
                ));
            }
            a.push("--file".into());
            a.push(format!("{dest}={}", src.display()));
        }
        if self.with_qemu {
            a.push("--with-qemu".into());
        }
        if let Some(s) = &self.vfio_user {
            a.push("--vfio-user".into());
            a.push(s.display().to_string());
        }
        for r in runs {
            if r.program.is_none() && self.dsavmm.is_none() {
                return Err(RigError::new(
                    Layer::Build,
                    "a dsavmm run needs NestedVm::dsavmm(path)",
                    vec![],
                ));
            }
            let line = r.display();
            if line.contains('\n') {
                return Err(RigError::new(
                    Layer::Build,
                    format!("a command may not contain a newline: {line:?}"),
                    vec![],
                ));
            }
            a.push("--run".into());
            a.push(line);
        }
        Ok(a)
    }

    fn run_nested(&self, runs: &[Run], timeout: Duration) -> Result<RigOutput, RigError> {
        let script = workspace_root().join("resources/rig/rig.sh");
        let args = self.build_args(runs)?;
        let mut build = Command::new("bash");
        build.arg(&script).args(&args).stdin(Stdio::null());
        if let Some(q) = &self.qemu {
            build.env("DSAVMM_RIG_QEMU", q);
        }
        if let Some(fw) = &self.qemu_firmware {
            build.env("DSAVMM_RIG_QEMU_FW", fw);
        }
        if let Some(n) = self.l1_cpus {
            build.env("DSAVMM_RIG_SMP", n.to_string());
        }
        let built = build.output().map_err(|e| {
            RigError::new(
                Layer::Build,
                format!("cannot run {}: {e}", script.display()),
                vec![],
            )
        })?;
        if !built.status.success() {
            let stderr = String::from_utf8_lossy(&built.stderr);
            return Err(RigError::new(
                Layer::Build,
                format!("{} build failed ({})", script.display(), built.status),
                tail_of(&stderr, 20),
            ));
        }
        let kv = key_values(&String::from_utf8_lossy(&built.stdout));
        let qemu = kv.iter().find(|(k, _)| k == "QEMU").map(|(_, v)| v.clone());
        let Some(qemu) = qemu else {
            return Err(RigError::new(
                Layer::Build,
                "rig.sh build printed no QEMU=",
                tail_of(&String::from_utf8_lossy(&built.stdout), 20),
            ));
        };
        let mut cmd = Command::new(&qemu);
        for (k, v) in &kv {
            if k == "QEMU_ARG" {
                cmd.arg(v);
            } else if k == "QEMU_ENV" {
                if let Some((name, value)) = v.split_once('=') {
                    cmd.env(name, value);
                }
            }
        }
        let commands: Vec<String> = runs.iter().map(Run::display).collect();
        let start = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RigError::new(Layer::Qemu, format!("cannot start {qemu}: {e}"), vec![]))?;
        let mut parser = Parser::default();
        let (status, timed_out) = pump(child, start, timeout, |t, _run, stream, line| {
            let before = parser.lines.len();
            parser.feed_nested(t, stream, line);
            echo(parser.lines.get(before..).unwrap_or_default());
        })?;
        let mut out = RigOutput {
            mode: Mode::Nested,
            lines: Vec::new(),
            runs: Vec::new(),
            commands,
            l1_init: parser.l1_init,
            l1_ready: parser.l1_ready,
            qemu_exit: status,
            timed_out,
            elapsed: start.elapsed(),
            log: None,
        };
        let verdict = nested_verdict(
            &parser,
            runs.len(),
            status,
            timed_out,
            timeout,
            self.expect_exit,
            &out.commands,
        );
        out.runs = std::mem::take(&mut parser.runs);
        out.runs.resize(runs.len(), RunOutcome::default());
        out.lines = std::mem::take(&mut parser.lines);
        out.log = write_log(&out);
        finish(out, verdict)
    }

    fn run_direct(&self, runs: &[Run], timeout: Duration) -> Result<RigOutput, RigError> {
        let Some(dsavmm) = &self.dsavmm else {
            return Err(RigError::new(
                Layer::Build,
                "direct mode needs NestedVm::dsavmm(path)",
                vec![],
            ));
        };
        let start = Instant::now();
        let deadline = start + timeout;
        let mut parser = Parser::default();
        let mut outcomes = Vec::new();
        let mut commands = Vec::new();
        let mut verdict: Option<(Layer, String)> = None;
        for (i, r) in runs.iter().enumerate() {
            if r.program.is_some() {
                verdict = Some((
                    Layer::Build,
                    format!(
                        "run {i}: only dsavmm runs can run directly on the host: {}",
                        r.display()
                    ),
                ));
                break;
            }
            let args: Vec<PathBuf> = r
                .args
                .iter()
                .map(|a| {
                    self.files
                        .iter()
                        .find(|(d, _)| d == a)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_else(|| PathBuf::from(a))
                })
                .collect();
            commands.push(format!(
                "{} {}",
                dsavmm.display(),
                args.iter()
                    .map(|a| shell_quote(&a.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            let child = Command::new(dsavmm)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    RigError::new(
                        Layer::Dsavmm,
                        format!("cannot start {}: {e}", dsavmm.display()),
                        vec![],
                    )
                })?;
            let started = start.elapsed();
            let left = deadline.saturating_duration_since(Instant::now());
            let (status, timed_out) = pump(child, start, left, |t, _, stream, line| {
                let before = parser.lines.len();
                parser.feed_direct(t, i, stream, line);
                echo(parser.lines.get(before..).unwrap_or_default());
            })?;
            outcomes.push(RunOutcome {
                started: Some(started),
                ended: Some(start.elapsed()),
                exit: status,
            });
            if timed_out {
                verdict = Some((
                    Layer::Dsavmm,
                    format!("run {i} did not exit within {timeout:?} (killed)"),
                ));
                break;
            }
            if let Some(code) = self.expect_exit {
                if status != Some(code) {
                    verdict = Some((
                        Layer::Dsavmm,
                        format!("run {i} exited {}, expected {code}", fmt_exit(status)),
                    ));
                    break;
                }
            }
        }
        outcomes.resize(runs.len(), RunOutcome::default());
        let mut out = RigOutput {
            mode: Mode::Direct,
            lines: std::mem::take(&mut parser.lines),
            runs: outcomes,
            commands,
            l1_init: None,
            l1_ready: None,
            qemu_exit: None,
            timed_out: false,
            elapsed: start.elapsed(),
            log: None,
        };
        out.log = write_log(&out);
        let verdict = verdict.map(|(layer, msg)| {
            let run = out
                .runs
                .iter()
                .position(|r| r.exit.is_none() || Some(r.exit) != self.expect_exit.map(Some));
            (
                layer,
                msg,
                out.last_lines(&[Layer::Dsavmm, Layer::L2], run, 25),
            )
        });
        finish(out, verdict)
    }
}

fn fmt_exit(e: Option<i32>) -> String {
    e.map(|c| c.to_string())
        .unwrap_or_else(|| "(killed by a signal)".to_string())
}

fn finish(
    out: RigOutput,
    verdict: Option<(Layer, String, Vec<String>)>,
) -> Result<RigOutput, RigError> {
    match verdict {
        None => Ok(out),
        Some((layer, message, last_lines)) => Err(RigError {
            layer,
            message,
            last_lines,
            log: out.log.clone(),
            output: Some(Box::new(out)),
        }),
    }
}

/// Decide whether a nested run succeeded and, if not, which layer failed.
fn nested_verdict(
    p: &Parser,
    expected_runs: usize,
    status: Option<i32>,
    timed_out: bool,
    timeout: Duration,
    expect_exit: Option<i32>,
    commands: &[String],
) -> Option<(Layer, String, Vec<String>)> {
    let l1 = |n| p.last_lines(&[Layer::Qemu, Layer::L1, Layer::Modules], None, n);
    let cmd = |i: usize| commands.get(i).map(String::as_str).unwrap_or("?");
    let run_tail = |i: usize| p.last_lines(&[Layer::L2, Layer::Dsavmm, Layer::L1], Some(i), 25);
    let ended = if timed_out {
        format!("the {timeout:?} timeout expired (QEMU killed)")
    } else {
        format!("QEMU exited with {}", fmt_exit(status))
    };
    match p.stage {
        Stage::Booting if !timed_out && p.console_lines == 0 => Some((
            Layer::Qemu,
            format!("{ended} before L1 printed anything"),
            p.last_lines(&[Layer::Qemu], None, 20),
        )),
        Stage::Booting => {
            let hint = if p.console_lines == 0 {
                " (no console output at all: QEMU hung or L1 died silently)"
            } else {
                ""
            };
            Some((
                Layer::L1,
                format!("L1 never reached its /init: {ended}{hint}"),
                l1(25),
            ))
        }
        Stage::Modules => Some((
            Layer::Modules,
            format!("L1 stopped while loading kvm modules: {ended}"),
            l1(25),
        )),
        Stage::ModulesFailed => Some((
            Layer::Modules,
            p.module_failure
                .clone()
                .unwrap_or_else(|| "module load failed".to_string()),
            l1(25),
        )),
        Stage::Running(i) if timed_out => Some((
            Layer::Dsavmm,
            format!("run {i} (`{}`) did not exit: {ended}", cmd(i)),
            run_tail(i),
        )),
        Stage::Running(i) => Some((
            Layer::L1,
            format!("L1 died during run {i} (`{}`): {ended}", cmd(i)),
            run_tail(i),
        )),
        Stage::Ready | Stage::Done if p.runs.len() < expected_runs => Some((
            Layer::L1,
            format!(
                "L1 ran {} of {expected_runs} commands: {ended}",
                p.runs.len()
            ),
            l1(25),
        )),
        Stage::Ready | Stage::Done => {
            if let Some(code) = expect_exit {
                for (i, r) in p.runs.iter().enumerate() {
                    if r.exit != Some(code) {
                        return Some((
                            Layer::Dsavmm,
                            format!(
                                "run {i} (`{}`) exited {}, expected {code}",
                                cmd(i),
                                fmt_exit(r.exit)
                            ),
                            run_tail(i),
                        ));
                    }
                }
            }
            if timed_out && p.stage == Stage::Ready {
                // All runs done but L1 did not power off: report, but the runs' results stand.
                return Some((
                    Layer::L1,
                    format!("L1 did not finish after its last run: {ended}"),
                    l1(15),
                ));
            }
            None
        }
    }
}

fn tail_of(s: &str, n: usize) -> Vec<String> {
    let v: Vec<String> = s.lines().rev().take(n).map(str::to_string).collect();
    v.into_iter().rev().collect()
}

fn echo(lines: &[Line]) {
    if std::env::var_os("DSAVMM_RIG_VERBOSE").is_some_and(|v| !v.is_empty()) {
        eprint!("{}", transcript(lines));
    }
}

/// Kills the child when dropped (a panic in the caller must not leave QEMU running).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Read the child's stdout and stderr line by line until both close or `timeout` passes (then kill
/// it); calls `f(time since start, run, stream, line)` for each line. Returns (exit code, timed out).
fn pump(
    child: Child,
    start: Instant,
    timeout: Duration,
    mut f: impl FnMut(Duration, usize, Stream, &str),
) -> Result<(Option<i32>, bool), RigError> {
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel::<(Instant, Stream, String)>();
    let mut readers = Vec::new();
    if let Some(o) = child.0.stdout.take() {
        readers.push(spawn_reader(o, Stream::Stdout, tx.clone()));
    }
    if let Some(e) = child.0.stderr.take() {
        readers.push(spawn_reader(e, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let deadline = start + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, s, line)) => f(t.saturating_duration_since(start), 0, s, &line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.0.kill();
                break;
            }
        }
    }
    let status = child.0.wait().map_err(|e| {
        RigError::new(
            Layer::Qemu,
            format!("waiting for the child failed: {e}"),
            vec![],
        )
    })?;
    // Drain what the readers still hold (the pipes close once the child is gone).
    while let Ok((t, s, line)) = rx.recv_timeout(Duration::from_secs(2)) {
        f(t.saturating_duration_since(start), 0, s, &line);
    }
    for r in readers {
        let _ = r.join();
    }
    Ok((status.code(), timed_out))
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    tx: mpsc::Sender<(Instant, Stream, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx
                        .send((
                            Instant::now(),
                            stream,
                            String::from_utf8_lossy(&buf).into_owned(),
                        ))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    })
}

/// Write the transcript under `<target>/rig-logs/`; returns its path.
fn write_log(out: &RigOutput) -> Option<PathBuf> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = target_dir().join("rig-logs");
    std::fs::create_dir_all(&dir).ok()?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{secs}-{}-{seq}.log", std::process::id()));
    let mut s = format!("mode: {:?}\n", out.mode);
    for (i, c) in out.commands.iter().enumerate() {
        s.push_str(&format!("run {i}: {c} -> {:?}\n", out.runs.get(i)));
    }
    s.push_str(&format!(
        "l1_init: {:?}, l1_ready: {:?}, qemu_exit: {:?}, timed_out: {}, elapsed: {:?}\n\n",
        out.l1_init, out.l1_ready, out.qemu_exit, out.timed_out, out.elapsed
    ));
    s.push_str(&out.transcript());
    std::fs::write(&path, s).ok()?;
    Some(path)
}

/// Path helper for callers that keep their own artifacts beside the rig's.
pub fn rig_cache_dir() -> PathBuf {
    std::env::var_os("DSAVMM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_retry_in_a_process_is_refused() {
        let c = AtomicUsize::new(0);
        assert_eq!(claim_retries(&c, 1), Ok(1));
        assert_eq!(claim_retries(&c, 1), Err(2));
        let c = AtomicUsize::new(0);
        assert_eq!(
            claim_retries(&c, 2),
            Err(2),
            "two crashed runs in one boot are two retries"
        );
    }

    #[test]
    fn quoting_survives_the_shell() {
        let r = Run::dsavmm(["run", "--cmdline", "a b 'c'"]);
        assert_eq!(r.display(), r#"dsavmm 'run' '--cmdline' 'a b '\''c'\'''"#);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s|' {}",
                r.display().trim_start_matches("dsavmm ")
            ))
            .output();
        let out = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert_eq!(out, "run|--cmdline|a b 'c'|");
    }

    fn parser_of(lines: &[&str]) -> Parser {
        let mut p = Parser::default();
        for l in lines {
            p.feed_nested(Duration::ZERO, Stream::Stdout, l);
        }
        p
    }

    #[test]
    fn verdicts_name_the_layer() {
        let cmds = vec!["dsavmm 'run'".to_string()];
        let t = Duration::from_secs(1);
        let v = nested_verdict(&Parser::default(), 1, Some(1), false, t, Some(0), &cmds);
        assert_eq!(v.map(|v| v.0), Some(Layer::Qemu));
        let v = nested_verdict(
            &parser_of(&["Linux version"]),
            1,
            Some(0),
            false,
            t,
            Some(0),
            &cmds,
        );
        assert_eq!(v.map(|v| v.0), Some(Layer::L1));
        let v = nested_verdict(
            &parser_of(&["RIG-L1-INIT", "RIG-MODULE-FAIL kvm-amd"]),
            1,
            Some(0),
            false,
            t,
            Some(0),
            &cmds,
        );
        assert_eq!(v.map(|v| v.0), Some(Layer::Modules));
        let p = parser_of(&[
            "RIG-L1-INIT",
            "RIG-L1-READY",
            "RIG-DSAVMM-START 0",
            "RIG-E: boom",
            "RIG-DSAVMM-EXIT=1 i=0",
            "RIG-L1-DONE",
        ]);
        let v = nested_verdict(&p, 1, Some(0), false, t, Some(0), &cmds);
        let v = v.map(|v| (v.0, v.2.iter().any(|l| l.contains("boom"))));
        assert_eq!(v, Some((Layer::Dsavmm, true)));
        assert!(nested_verdict(&p, 1, Some(0), false, t, None, &cmds).is_none());
        let p = parser_of(&[
            "RIG-L1-INIT",
            "RIG-L1-READY",
            "RIG-DSAVMM-START 0",
            "Linux booting",
        ]);
        let v = nested_verdict(&p, 1, None, true, t, Some(0), &cmds);
        assert_eq!(v.map(|v| v.0), Some(Layer::Dsavmm));
        let v = nested_verdict(&p, 1, Some(0), false, t, Some(0), &cmds);
        assert_eq!(v.map(|v| v.0), Some(Layer::L1));
    }
}
