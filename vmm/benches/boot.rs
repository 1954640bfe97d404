//! Boot benchmark: the built-in self-test guest booted N times by dsavmm and, interleaved in
//! the same run, by QEMU (`-M microvm -accel kvm`, Debian's 7.2 from the rig's cache) on the same
//! ELF. Prints the medians of process start to the guest's first serial line and to VMM exit,
//! their ratios, each VMM's peak RSS, and dsavmm's own peak RSS minus the guest RAM it touched.
//!
//! `cargo bench -p vmm --bench boot` (`DSAVMM_BENCH_ROUNDS=N`, default 10). Without QEMU
//! (rig.sh fetch failed) only dsavmm's figures are printed. The last line, `bench: boot: ...`, sums
//! up the run; the README's Performance table quotes it verbatim.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    first_line: Duration,
    exit: Duration,
    max_rss_kib: u64,
    stderr: String,
}

/// Runs `cmd`, timing the first stdout line and the exit; peak RSS from wait4's rusage.
fn measure(mut cmd: Command) -> Option<Sample> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().ok()?;
    let stdout = child.stdout.take()?;
    let stderr = child.stderr.take()?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let mut first_line = None;
    for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
        first_line.get_or_insert_with(|| start.elapsed());
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    if r <= 0 {
        return None;
    }
    Some(Sample {
        first_line: first_line?,
        exit,
        max_rss_kib: usage.ru_maxrss as u64,
        stderr: err_thread.join().unwrap_or_default(),
    })
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

/// QEMU 7.2 from the rig's cache: binary, environment, firmware directory.
struct Qemu {
    bin: PathBuf,
    env: Vec<(String, String)>,
    fw: PathBuf,
}

/// QEMU 7.2 and its firmware directory from the rig's cache (`resources/rig/rig.sh fetch`).
fn qemu() -> Option<Qemu> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("resources/rig/rig.sh"))
        .arg("fetch")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut bin = None;
    let mut env = Vec::new();
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("QEMU=") {
            bin = Some(PathBuf::from(v));
        } else if let Some(kv) = l.strip_prefix("QEMU_ENV=") {
            let (k, v) = kv.split_once('=')?;
            env.push((k.to_string(), v.to_string()));
        }
    }
    let pkg = std::env::var("DSAVMM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join("target/cache"))
        .join("pkg");
    let fw = std::fs::read_dir(&pkg)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("usr/share/qemu"))
        .find(|p| p.join("bios-microvm.bin").exists())?;
    Some(Qemu { bin: bin?, env, fw })
}

fn main() {
    let rounds: usize = std::env::var("DSAVMM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dsavmm = env!("CARGO_BIN_EXE_dsavmm");
    let dir = std::env::temp_dir().join(format!("dsavmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let elf = dir.join("selftest.elf");
    let ok = Command::new(dsavmm)
        .args(["selftest-image", "--output"])
        .arg(&elf)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "cannot write the self-test ELF");
    let cmdline = "console=ttyS0 selftest.mem_mib=64 selftest.vcpus=1";
    let qemu = qemu();
    if qemu.is_none() {
        eprintln!("QEMU not available (resources/rig/rig.sh fetch failed): dsavmm only");
    }

    let (mut d, mut q) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut c = Command::new(dsavmm);
        c.args([
            "--log-level",
            "info",
            "run",
            "--memory",
            "64",
            "--movdir64b",
            "off",
        ])
        .arg("--kernel")
        .arg(&elf)
        .args(["--cmdline", cmdline]);
        if let Some(s) = measure(c) {
            d.push(s);
        }
        if let Some(Qemu { bin, env, fw }) = &qemu {
            let mut c = Command::new(bin);
            c.envs(env.iter().map(|(k, v)| (k, v)))
                .arg("-L")
                .arg(fw)
                .args([
                    "-M",
                    "microvm",
                    "-accel",
                    "kvm",
                    "-cpu",
                    "host,-arch-capabilities",
                    "-m",
                    "64",
                    "-nographic",
                    "-no-reboot",
                    "-nodefaults",
                    "-serial",
                    "stdio",
                    "-device",
                    "isa-debug-exit,iobase=0xf4,iosize=0x04",
                    "-kernel",
                ])
                .arg(&elf)
                .args(["-append", cmdline]);
            if let Some(s) = measure(c) {
                q.push(s);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!d.is_empty(), "dsavmm never booted the guest");
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    let overhead: Vec<u64> = d
        .iter()
        .filter_map(|s| {
            let i = s.stderr.find("overhead ")?;
            s.stderr[i + 9..].split_whitespace().next()?.parse().ok()
        })
        .collect();
    let d_first = median(d.iter().map(|s| s.first_line).collect());
    let d_exit = median(d.iter().map(|s| s.exit).collect());
    let d_rss = median(d.iter().map(|s| s.max_rss_kib).collect());
    let d_overhead = if overhead.is_empty() {
        0
    } else {
        median(overhead)
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("boot of the self-test guest, {rounds} rounds interleaved, medians:");
    println!(
        "  dsavmm: first serial line {:8.2} ms, exit {:8.2} ms, peak RSS {d_rss} KiB, \
         VMM overhead (peak RSS - guest RAM touched) {d_overhead} KiB",
        ms(d_first),
        ms(d_exit),
    );
    if q.is_empty() {
        println!(
            "bench: boot: {rounds} rounds, medians: dsavmm first serial line {:.1} ms, exit {:.0} ms, \
             peak RSS {:.1} MiB, peak RSS minus guest RAM touched {:.1} MiB (QEMU not available)",
            ms(d_first),
            ms(d_exit),
            mib(d_rss),
            mib(d_overhead)
        );
        return;
    }
    let q_first = median(q.iter().map(|s| s.first_line).collect());
    let q_exit = median(q.iter().map(|s| s.exit).collect());
    let q_rss = median(q.iter().map(|s| s.max_rss_kib).collect());
    println!(
        "  qemu:   first serial line {:8.2} ms, exit {:8.2} ms, peak RSS {q_rss} KiB",
        ms(q_first),
        ms(q_exit)
    );
    println!(
        "bench: boot: {rounds} rounds interleaved, medians, dsavmm vs QEMU: first serial line {:.1} ms \
         vs {:.1} ms ({:.1}x), exit {:.0} ms vs {:.0} ms ({:.1}x), peak RSS {:.1} MiB vs {:.1} MiB; \
         dsavmm peak RSS minus guest RAM touched {:.1} MiB",
        ms(d_first),
        ms(q_first),
        ms(q_first) / ms(d_first),
        ms(d_exit),
        ms(q_exit),
        ms(q_exit) / ms(d_exit),
        mib(d_rss),
        mib(q_rss),
        mib(d_overhead)
    );
}
