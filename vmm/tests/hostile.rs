//! `dsavmm selftest --hostile --vcpus 2` on this machine's /dev/kvm: the self-test guest attacks
//! its DSA (registers, MSI-X, configuration space, portals, bad descriptors and batches, a flood
//! from both vCPUs; `resources/guests/selftest/src/hostile.rs`), then runs the normal cases on the
//! same device. dsavmm must exit 0 with `0 failed`, every hostile case `ok` with operations
//! performed, every normal DSA data case `ok` afterwards (where MOVDIR64B is expected to work),
//! nothing panicked or stopped the VM, its log stayed short, and its peak RSS stayed under
//! [`MAX_RSS_MIB`].

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kvm_available;
use tests::{host_movdir64b_expected, report_note, SelftestReport};

/// Peak resident set of dsavmm allowed for the hostile run, in MiB. Measured on this machine
/// (`ru_maxrss`): about 8 MiB, the same as a normal run, for some 50,000 hostile operations. A
/// hardware KVM also counts the guest pages touched (this image, its DMA buffers, the 4 MiB
/// sandbox). The bound leaves room for that but not for a leak per descriptor or per register
/// write, nor for touching the whole 256 MiB guest.
const MAX_RSS_MIB: u64 = 64;
/// A hostile run takes about 10 s here; more than this is a hang.
const TIMEOUT: Duration = Duration::from_secs(180);
/// Lines dsavmm may write to stderr: its start-up warning, a few rate-limited warnings about
/// BARs the guest placed over other ranges, the first #UD note. A guest must not be able to
/// fill the log.
const MAX_STDERR_LINES: usize = 16;

/// What the run produced.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss_kib: u64,
}

/// Runs dsavmm with `args`, killing it after [`TIMEOUT`]; reaps it with `wait4` for its peak RSS.
// The child is reaped by `wait4` (which std's `Child::wait` cannot do: it drops the rusage).
#[allow(clippy::zombie_processes)]
fn run_dsavmm(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dsavmm");
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain-data struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (std's `Child` is never waited on here);
        // `status` and `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if start.elapsed() > TIMEOUT {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Run {
        code,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    }
}

#[test]
fn hostile_guest_then_normal_pass() {
    const TEST: &str = "hostile_guest_then_normal_pass";
    if !kvm_available(TEST) {
        return;
    }
    let args = ["selftest", "--hostile", "--vcpus", "2"];
    let started = Instant::now();
    let run = run_dsavmm(&args);
    let took = started.elapsed();
    let all = format!("{}\n--- stderr ---\n{}", run.stdout, run.stderr);
    let seed = run
        .stdout
        .lines()
        .find(|l| l.contains("info hostile seed="))
        .unwrap_or("(no seed line)")
        .to_string();
    let ctx = format!("{args:?}, {seed} (rerun with --seed to replay)");
    assert!(
        took < TIMEOUT,
        "{ctx}: dsavmm did not finish in {TIMEOUT:?} (killed): a hang\n{all}"
    );
    for bad in ["panicked", "dsavmm: error", "RUST_BACKTRACE"] {
        assert!(
            !run.stderr.contains(bad),
            "{ctx}: stderr has {bad:?}\n{all}"
        );
    }
    let report = SelftestReport::parse(run.stdout.lines());
    let summary = report
        .summary
        .unwrap_or_else(|| panic!("{ctx}: no summary line\n{all}"));
    assert_eq!(summary.failed, 0, "{ctx}: {summary:?}\n{all}");
    assert_eq!(run.code, Some(0), "{ctx}: exit status\n{all}");
    let stderr_lines = run.stderr.lines().count();
    assert!(
        stderr_lines <= MAX_STDERR_LINES,
        "{ctx}: {stderr_lines} lines on stderr (at most {MAX_STDERR_LINES}): a guest can fill the \
         log\n{all}"
    );
    let rss_mib = run.max_rss_kib / 1024;
    assert!(
        rss_mib < MAX_RSS_MIB,
        "{ctx}: dsavmm peak RSS {rss_mib} MiB, bound {MAX_RSS_MIB} MiB\n{all}"
    );
    match host_movdir64b_expected() {
        Ok(why) => {
            let ops = report
                .check_hostile(1)
                .unwrap_or_else(|e| panic!("{ctx}: hostile cases ({why}): {e}\n{all}"));
            // The normal pass on the same device afterwards.
            if let Err(e) = report.check_data_path(1) {
                panic!("{ctx}: the normal DSA cases after the hostile ones ({why}): {e}\n{all}");
            }
            let list: Vec<String> = ops.iter().map(|(c, n)| format!("{c}={n}")).collect();
            eprintln!(
                "{TEST}: {} in {took:.1?}, peak RSS {rss_mib} MiB, {}",
                list.join(" "),
                seed.trim_start_matches("selftest: info ")
            );
        }
        Err(why) => report_note(
            TEST,
            &format!("MOVDIR64B not expected to work here ({why}): hostile cases not required"),
        ),
    }
}
