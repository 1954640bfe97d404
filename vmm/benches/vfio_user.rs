//! vfio-user benchmark: the self-test guest's DSA figures with the in-process software backend,
//! a `dsavmm dsa-server` with the portal trapped (a REGION_WRITE message per store) and with it
//! mapped (shared pages), interleaved round by round in one run on the same machine.
//!
//! Per mode, the medians over the rounds of what the guest measures itself (guest TSC):
//! MEMMOVE 64 B and 64 KiB per descriptor (polled), completion-interrupt latency (submit to
//! handler); and from dsavmm's `/metrics` after the run, the portal stores that exited into
//! dsavmm per descriptor executed. Ratios are against the in-process backend of the same run.
//!
//! `cargo bench -p vmm --bench vfio_user` (`DSAVMM_BENCH_ROUNDS=N`, default 5). The last line,
//! `bench: vfio-user: ...`, sums up the run; the README's table quotes it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dsavmm");

#[derive(Clone, Copy, Default)]
struct Figures {
    memmove_64_ns: f64,
    memmove_64k_ns: f64,
    irq_median_us: f64,
    exits_per_desc: f64,
}

fn api(sock: &Path, method: &str, path: &str, body: &str) -> String {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The number after `key=` on the first console line containing `line`.
fn figure(console: &str, line: &str, key: &str) -> Option<f64> {
    let l = console.lines().find(|l| l.contains(line))?;
    let v = l.split_whitespace().find_map(|w| w.strip_prefix(key))?;
    v.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

fn run_once(dir: &Path, round: usize, mode: &str, spec: &str) -> Option<Figures> {
    let sock = dir.join(format!("api-{mode}-{round}.sock"));
    let console = dir.join(format!("console-{mode}-{round}.txt"));
    let _ = std::fs::remove_file(&sock);
    let mut vm = Command::new(BIN)
        .arg("--api-sock")
        .arg(&sock)
        .args(["selftest", "--serial"])
        .arg(&console)
        .args(["--dsa", spec])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let start = Instant::now();
    let text = loop {
        let t = std::fs::read_to_string(&console).unwrap_or_default();
        if t.contains(" passed, ") || start.elapsed() > Duration::from_secs(120) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let metrics = api(&sock, "GET", "/metrics", "");
    api(&sock, "PUT", "/actions", r#"{"action_type": "Shutdown"}"#);
    let _ = vm.wait();
    let descriptors = metric(&metrics, "dsavmm_dsa_descriptors_total");
    let exits = if mode == "in-process" {
        metric(&metrics, "dsavmm_vcpu_direct_stores_total")
    } else {
        metric(&metrics, "dsavmm_dsa_portal_exits_total")
    };
    Some(Figures {
        memmove_64_ns: figure(&text, "memmove size=64 ", "ns_per_desc=")?,
        memmove_64k_ns: figure(&text, "memmove size=65536 ", "ns_per_desc=")?,
        irq_median_us: figure(&text, "completion interrupt latency", "median=")?,
        exits_per_desc: if descriptors > 0.0 {
            exits / descriptors
        } else {
            f64::NAN
        },
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn start_server(dir: &Path) -> Option<(Child, PathBuf)> {
    let socket = dir.join("dsa.sock");
    let child = Command::new(BIN)
        .args(["dsa-server", "--socket"])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = Instant::now();
    while !socket.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((child, socket))
}

fn main() {
    if std::fs::File::open("/dev/kvm").is_err() {
        println!("bench: vfio-user: SKIPPED: /dev/kvm not available");
        return;
    }
    let rounds: usize = std::env::var("DSAVMM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("dsavmm-bench-vfio-user-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let Some((mut server, socket)) = start_server(&dir) else {
        println!("bench: vfio-user: cannot start dsa-server");
        return;
    };
    let s = socket.display();
    let modes = [
        ("in-process", "backend=software".to_string()),
        (
            "trapped",
            format!("backend=vfio-user,socket={s},portal=trapped"),
        ),
        (
            "mapped",
            format!("backend=vfio-user,socket={s},portal=mapped"),
        ),
    ];
    let mut samples: Vec<Vec<Figures>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for (i, (mode, spec)) in modes.iter().enumerate() {
            match run_once(&dir, round, mode, spec) {
                Some(f) => samples[i].push(f),
                None => println!("bench: vfio-user: {mode} round {round}: no figures"),
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let med = |i: usize, f: fn(&Figures) -> f64| median(samples[i].iter().map(f).collect());
    let base = (
        med(0, |f| f.memmove_64_ns),
        med(0, |f| f.memmove_64k_ns),
        med(0, |f| f.irq_median_us),
    );
    println!(
        "{:<11} {:>14} {:>14} {:>16} {:>14}",
        "mode", "64 B ns/desc", "64 KiB ns/desc", "IRQ median us", "exits/desc"
    );
    let mut summary = Vec::new();
    for (i, (mode, _)) in modes.iter().enumerate() {
        let (a, b, c, e) = (
            med(i, |f| f.memmove_64_ns),
            med(i, |f| f.memmove_64k_ns),
            med(i, |f| f.irq_median_us),
            med(i, |f| f.exits_per_desc),
        );
        println!(
            "{mode:<11} {a:>9.0} ({:.2}x) {b:>9.0} ({:.2}x) {c:>11.0} ({:.2}x) {e:>14.2}",
            a / base.0,
            b / base.1,
            c / base.2
        );
        summary.push(format!(
            "{mode} 64B {:.2}x 64KiB {:.2}x irq {:.2}x exits/desc {e:.2}",
            a / base.0,
            b / base.1,
            c / base.2
        ));
    }
    println!(
        "bench: vfio-user: {rounds} rounds, vs in-process: {}",
        summary[1..].join("; ")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
