//! The vDSA over vfio-user, with real processes and sockets: `dsavmm dsa-server` in one process,
//! `dsavmm selftest --dsa backend=vfio-user,socket=S` in another.
//!
//! - The whole self-test suite passes through the server with 1 and 2 vCPUs, 1 and 4 WQs, the
//!   portal mapped and trapped, and every case ends as it does with the in-process backend.
//! - The server killed mid-run stops the VM with one error line, promptly.
//! - Garbage on the socket (the framing check's fuzz-style test) never takes the server down:
//!   the next client is served.
//! - Clients are isolated: two at once each get a device of their own; beyond `--max-clients`
//!   a client is refused with a clear error.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{kvm_available, temp_dir};
use tests::selftest::CaseStatus;
use tests::{host_movdir64b_expected, SelftestReport};

const BIN: &str = env!("CARGO_BIN_EXE_dsavmm");

/// A running `dsavmm dsa-server`, killed on drop.
struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Server {
        let socket = dir.join(name);
        let child = Command::new(BIN)
            .args(["dsa-server", "--socket"])
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dsa-server");
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "dsa-server did not listen on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // That probe connection was a client too: let the server see it go.
        std::thread::sleep(Duration::from_millis(50));
        Server { child, socket }
    }

    fn spec(&self, portal: &str) -> String {
        format!(
            "backend=vfio-user,socket={},portal={portal}",
            self.socket.display()
        )
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dsavmm(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dsavmm")
}

fn report(out: &Output) -> SelftestReport {
    SelftestReport::parse(String::from_utf8_lossy(&out.stdout).lines())
}

fn kind(s: &CaseStatus) -> &'static str {
    match s {
        CaseStatus::Ok => "ok",
        CaseStatus::Fail(_) => "FAIL",
        CaseStatus::Skipped(_) => "skipped",
    }
}

/// Every case, by name, with how it ended.
fn outcomes(r: &SelftestReport) -> Vec<(String, &'static str)> {
    r.cases
        .iter()
        .map(|c| (c.name.clone(), kind(&c.status)))
        .collect()
}

#[test]
fn selftest_through_the_server_matches_in_process() {
    if !kvm_available("selftest_through_the_server_matches_in_process") {
        return;
    }
    let dir = temp_dir("vfio-user-suite");
    for wqs in ["1", "4"] {
        let mut server = Server::start(&dir, &format!("s{wqs}"), &["--wqs", wqs]);
        for vcpus in ["1", "2"] {
            let local = dsavmm(&[
                "selftest",
                "--vcpus",
                vcpus,
                "--dsa",
                &format!("backend=software,wqs={wqs}"),
            ]);
            let want = report(&local);
            assert!(
                local.status.success(),
                "in-process run failed:\n{}",
                String::from_utf8_lossy(&local.stdout)
            );
            for portal in ["mapped", "trapped"] {
                let what = format!("wqs={wqs} vcpus={vcpus} portal={portal}");
                let out = dsavmm(&["selftest", "--vcpus", vcpus, "--dsa", &server.spec(portal)]);
                let got = report(&out);
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{what}: exit {:?}\n{text}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                let summary = got.summary.expect("summary line");
                assert_eq!(summary.failed, 0, "{what}:\n{text}");
                assert_eq!(
                    outcomes(&got),
                    outcomes(&want),
                    "{what}: the cases ended differently from the in-process backend"
                );
                if host_movdir64b_expected().is_ok() {
                    got.check_data_path(1)
                        .unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
                }
                eprintln!(
                    "vfio-user {what}: {} passed, {} skipped (in-process: {} passed)",
                    summary.passed,
                    summary.skipped,
                    want.summary.map_or(0, |s| s.passed)
                );
            }
        }
        assert!(server.alive(), "the server exited");
    }
}

#[test]
fn server_killed_mid_run_stops_the_vm_with_one_error_line() {
    if !kvm_available("server_killed_mid_run_stops_the_vm_with_one_error_line") {
        return;
    }
    let dir = temp_dir("vfio-user-kill");
    let elf = common::selftest_elf(&dir);
    let mut server = Server::start(&dir, "s", &[]);
    for portal in ["mapped", "trapped"] {
        if !server.alive() {
            server = Server::start(&dir, &format!("s-{portal}"), &[]);
        }
        // A soak of more descriptors than the run will see: the guest is busy on the DSA.
        let vm = Command::new(BIN)
            .args(["--seccomp", "enforce", "run", "--kernel"])
            .arg(&elf)
            .args([
                "--cmdline",
                "console=ttyS0 selftest.soak=100000000",
                "--dsa",
                &server.spec(portal),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dsavmm");
        std::thread::sleep(Duration::from_millis(1500));
        server.child.kill().expect("kill the server");
        let _ = server.child.wait();
        let start = Instant::now();
        let out = vm.wait_with_output().expect("wait dsavmm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{portal}: {stderr}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{portal}: took {:?} to stop",
            start.elapsed()
        );
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{portal}: {stderr}");
        assert!(
            errors[0].contains("vfio-user server at") && errors[0].contains("stopping the VM"),
            "{portal}: {stderr}"
        );
    }
}

/// xorshift64*: the same sequence on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One hostile connection: garbage of several shapes, then a clean close.
fn garbage(socket: &Path, seed: u64) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut st = seed | 1;
    let header = |id: u16, cmd: u16, size: u32, flags: u32| {
        let mut h = Vec::new();
        h.extend_from_slice(&id.to_le_bytes());
        h.extend_from_slice(&cmd.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    };
    let msg: Vec<u8> = match seed % 7 {
        // Random bytes.
        0 => (0..4096).map(|_| next(&mut st) as u8).collect(),
        // A VERSION too short for its fixed part, then one without its NUL.
        1 => {
            let mut m = header(1, 1, 18, 0);
            m.extend_from_slice(&[0, 0]);
            let mut v = header(2, 1, 16 + 4 + 2, 0);
            v.extend_from_slice(&[0, 0, 1, 0, b'{', b'}']);
            m.extend(v);
            m
        }
        // A REGION_READ of 4 GiB, and a size beyond any message.
        2 => {
            let mut m = header(1, 9, 32, 0);
            m.extend_from_slice(&0u64.to_le_bytes());
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&u32::MAX.to_le_bytes());
            m.extend(header(2, 10, u32::MAX, 0));
            m
        }
        // Random headers of every command with random bodies.
        3 => {
            let mut m = Vec::new();
            for i in 0..200u16 {
                let body = (next(&mut st) % 64) as usize;
                m.extend(header(
                    i,
                    (next(&mut st) % 16) as u16,
                    (16 + body) as u32,
                    (next(&mut st) % 2) as u32 * 0x10,
                ));
                m.extend((0..body).map(|_| next(&mut st) as u8));
            }
            m
        }
        // A truncated header, then nothing.
        4 => header(1, 4, 32, 0)[..7].to_vec(),
        // A body the crate would skip (NO_REPLY on a REGION_READ), laid out as a VERSION
        // header too short for its fixed part; and a write to a region that does not exist
        // carrying another such header.
        6 => {
            let mut m = header(1, 9, 32, 0x10);
            m.extend(header(2, 1, 16, 0));
            let mut w = header(3, 10, 32 + 16, 0);
            w.extend_from_slice(&0u64.to_le_bytes());
            w.extend_from_slice(&10u32.to_le_bytes());
            w.extend_from_slice(&16u32.to_le_bytes());
            w.extend(header(4, 1, 21, 0));
            m.extend(w);
            m
        }
        // Region accesses before any negotiation, out of range.
        _ => {
            let mut m = Vec::new();
            for region in [0u32, 2, 7, 9, 10, 0xffff_ffff] {
                m.extend(header(1, 10, 32 + 8, 0));
                m.extend_from_slice(&u64::MAX.to_le_bytes());
                m.extend_from_slice(&region.to_le_bytes());
                m.extend_from_slice(&8u32.to_le_bytes());
                m.extend_from_slice(&[0xff; 8]);
            }
            m
        }
    };
    let _ = s.write_all(&msg);
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Read whatever comes back until the server closes or gives up.
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = std::io::copy(&mut s, &mut std::io::sink());
}

#[test]
fn garbage_on_the_socket_never_takes_the_server_down() {
    if !kvm_available("garbage_on_the_socket_never_takes_the_server_down") {
        return;
    }
    let dir = temp_dir("vfio-user-garbage");
    let mut server = Server::start(&dir, "s", &["--wqs", "1"]);
    for seed in 0..70u64 {
        garbage(&server.socket, seed);
        assert!(server.alive(), "the server died on garbage seed {seed}");
    }
    let out = dsavmm(&["selftest", "--dsa", &server.spec("mapped")]);
    assert!(
        out.status.success(),
        "after the garbage: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.alive());
}

#[test]
fn clients_are_isolated_and_bounded() {
    if !kvm_available("clients_are_isolated_and_bounded") {
        return;
    }
    let dir = temp_dir("vfio-user-clients");
    // Two at once: each enables, resets and disables its own device.
    let two = Server::start(&dir, "two", &["--max-clients", "2", "--wqs", "2"]);
    let spec = two.spec("mapped");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let spec = spec.clone();
            std::thread::spawn(move || dsavmm(&["selftest", "--vcpus", "2", "--dsa", &spec]))
        })
        .collect();
    for r in runs {
        let out = r.join().expect("join");
        assert!(
            out.status.success(),
            "a concurrent client: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // One at most: a second client while the first holds the device is refused.
    let one = Server::start(&dir, "one", &["--max-clients", "1"]);
    let holder = UnixStream::connect(&one.socket).expect("first client");
    std::thread::sleep(Duration::from_millis(100));
    let out = dsavmm(&["selftest", "--dsa", &one.spec("mapped")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second client was served: {stderr}");
    assert!(
        stderr.contains("dsavmm: error:") && stderr.contains("vfio-user server at"),
        "{stderr}"
    );
    drop(holder);
    std::thread::sleep(Duration::from_millis(200));
    let out = dsavmm(&["selftest", "--dsa", &one.spec("mapped")]);
    assert!(out.status.success(), "after the first client left");
}

#[test]
fn every_server_thread_runs_under_its_filter() {
    let dir = temp_dir("vfio-user-seccomp");
    let server = Server::start(&dir, "s", &[]);
    // A connected client (it sends nothing) starts a session: relay, protocol, reply, watcher.
    let _client = UnixStream::connect(&server.socket).expect("connect");
    let start = Instant::now();
    let threads = loop {
        let t: Vec<(String, u32)> = common::thread_seccomp(server.child.id())
            .into_iter()
            .map(|(name, _, filters)| (name, filters))
            .collect();
        if t.len() >= 5 || start.elapsed() > Duration::from_secs(5) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for role in ["dsa-relay", "dsa-proto", "dsa-reply", "dsa-portal"] {
        assert!(
            threads.iter().any(|(n, _)| n == role),
            "no {role} thread: {threads:?}"
        );
    }
    // dsa_server + deny_open on every thread, the accepting one included.
    assert!(
        threads.iter().all(|(_, n)| *n == 2),
        "a thread without both filters: {threads:?}"
    );
}
