//! The REST API end to end: a real `dsavmm --api-sock` process, real HTTP over the UNIX socket,
//! real KVM guests. Skips (with the reason) where /dev/kvm is absent.

mod common;

use common::{kvm_available, selftest_elf};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::api_call;

struct Vmm {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl Vmm {
    fn start(name: &str, extra: &[&str]) -> Vmm {
        let dir = std::env::temp_dir().join(format!("dsavmm-api-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
            .arg("--api-sock")
            .arg(&sock)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dsavmm");
        let deadline = Instant::now() + Duration::from_secs(10);
        while api_call(&sock, "GET", "/version", None).is_err() {
            assert!(Instant::now() < deadline, "API socket never came up");
            std::thread::sleep(Duration::from_millis(10));
        }
        Vmm { child, sock, dir }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        api_call(&self.sock, method, path, body).expect("API call")
    }

    fn ok(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let (code, text) = self.call(method, path, body);
        assert!((200..300).contains(&code), "{method} {path}: {code} {text}");
        text
    }

    /// `PUT /actions` with `action_type` = `name`.
    fn action(&self, name: &str) -> (u16, String) {
        let body = format!(r#"{{"action_type": "{name}"}}"#);
        self.call("PUT", "/actions", Some(&body))
    }

    fn state(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok("GET", "/", None)).unwrap();
        v["state"].as_str().unwrap().to_string()
    }

    fn wait_state(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state() != want {
            assert!(Instant::now() < deadline, "never reached {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(!self.sock.exists(), "socket left behind");
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "dsavmm did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal 64-bit ELF whose code runs `out 0x80, al` in a loop (never ends by itself).
fn spin_elf(dir: &Path) -> PathBuf {
    const BASE: u64 = 0x10_0000;
    let code = [0xe6u8, 0x80, 0xeb, 0xfc]; // out 0x80, al; jmp -4
    let mut e = Vec::new();
    // ELF header.
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(BASE + 0x78).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    // One PT_LOAD covering the whole file at BASE.
    let size = 0x78 + code.len() as u64;
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&5u32.to_le_bytes());
    for v in [0u64, BASE, BASE, size, size, 0x1000] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&code);
    let p = dir.join("spin.elf");
    std::fs::write(&p, e).unwrap();
    p
}

fn pio_exits(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("dsavmm_vcpu_pio_exits_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn configure_boot_pause_resume_shutdown() {
    if !kvm_available("configure_boot_pause_resume_shutdown") {
        return;
    }
    let vmm = Vmm::start("lifecycle", &[]);
    let elf = spin_elf(&vmm.dir);
    assert_eq!(vmm.state(), "NotStarted");
    vmm.ok(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpus": 2, "memory_mib": 64}"#),
    );
    let mc: serde_json::Value =
        serde_json::from_str(&vmm.ok("GET", "/machine-config", None)).unwrap();
    assert_eq!(mc["vcpus"], 2);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, elf.display());
    vmm.ok("PUT", "/boot-source", Some(&boot));
    vmm.ok(
        "PUT",
        "/dsa/0",
        Some(r#"{"backend": "software", "wqs": 2}"#),
    );
    vmm.ok("PUT", "/dsa/spare", Some(r#"{"backend": "software"}"#));
    vmm.ok("DELETE", "/dsa/spare", None);
    assert_eq!(vmm.call("GET", "/dsa/spare", None).0, 404);
    assert_eq!(vmm.action("InstanceStart").0, 204);
    assert_eq!(vmm.state(), "Running");

    // The guest's port writes show in the metrics while it runs.
    let m1 = pio_exits(&vmm.ok("GET", "/metrics", None));
    std::thread::sleep(Duration::from_millis(100));
    let m2 = pio_exits(&vmm.ok("GET", "/metrics", None));
    assert!(m2 > m1, "guest not running: {m1} -> {m2}");

    assert_eq!(vmm.action("Pause").0, 204);
    assert_eq!(vmm.state(), "Paused");
    let p1 = pio_exits(&vmm.ok("GET", "/metrics", None));
    std::thread::sleep(Duration::from_millis(100));
    let p2 = pio_exits(&vmm.ok("GET", "/metrics", None));
    assert_eq!(p1, p2, "vCPUs ran while paused");
    assert_eq!(vmm.action("Resume").0, 204);
    std::thread::sleep(Duration::from_millis(100));
    assert!(pio_exits(&vmm.ok("GET", "/metrics", None)) > p2);

    // The device as the guest left it (it never touched it).
    let dsa: serde_json::Value = serde_json::from_str(&vmm.ok("GET", "/dsa/0", None)).unwrap();
    assert_eq!(dsa["state"]["enabled"], false);
    assert_eq!(dsa["counters"]["descriptors"], 0);
    assert_eq!(dsa["state"]["wqs"].as_array().unwrap().len(), 2);

    // State-dependent refusals.
    assert_eq!(
        vmm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpus": 1, "memory_mib": 64}"#)
        )
        .0,
        409
    );
    assert_eq!(
        vmm.call("PUT", "/dsa/1", Some(r#"{"backend": "software"}"#))
            .0,
        409
    );
    assert_eq!(vmm.action("InstanceStart").0, 409);
    assert_eq!(vmm.action("Resume").0, 409);

    assert_eq!(vmm.action("Shutdown").0, 204);
    assert_eq!(vmm.wait_exit(), 0);
}

#[test]
fn selftest_guest_over_api_then_halted() {
    if !kvm_available("selftest_guest_over_api_then_halted") {
        return;
    }
    let vmm = Vmm::start("selftest", &[]);
    let elf = selftest_elf(&vmm.dir);
    vmm.ok(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpus": 2, "memory_mib": 64}"#),
    );
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 selftest.vcpus=2 selftest.mem_mib=64"}}"#,
        elf.display()
    );
    vmm.ok("PUT", "/boot-source", Some(&boot));
    vmm.ok("PUT", "/dsa/0", Some(r#"{"backend": "software"}"#));
    assert_eq!(vmm.action("InstanceStart").0, 204);
    vmm.wait_state("Halted");
    // Counters and state stay readable after the guest ended.
    let dsa: serde_json::Value = serde_json::from_str(&vmm.ok("GET", "/dsa/0", None)).unwrap();
    assert!(dsa["counters"].is_object(), "{dsa}");
    assert_eq!(vmm.action("Pause").0, 409);
    assert_eq!(vmm.action("Shutdown").0, 204);
    // The guest's own exit status (0 failures) becomes dsavmm's.
    assert_eq!(vmm.wait_exit(), 0);
}

#[test]
fn error_classes() {
    if !kvm_available("error_classes") {
        return;
    }
    let vmm = Vmm::start("errors", &[]);
    let fault = |(code, body): (u16, String), want: u16| {
        assert_eq!(code, want, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(
            !v["fault_message"].as_str().unwrap_or("").is_empty(),
            "{body}"
        );
    };
    fault(vmm.call("PUT", "/machine-config", Some("{not json")), 400);
    fault(
        vmm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpus": 0, "memory_mib": 64}"#),
        ),
        400,
    );
    fault(
        vmm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpus": 1, "memory_mib": 1}"#),
        ),
        400,
    );
    fault(
        vmm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpus": 1, "memory_mib": 64, "x": 1}"#),
        ),
        400,
    );
    fault(
        vmm.call(
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/nonexistent"}"#),
        ),
        400,
    );
    fault(
        vmm.call(
            "PUT",
            "/dsa/0",
            Some(r#"{"backend": "software", "wqs": 99}"#),
        ),
        400,
    );
    fault(vmm.action("InstanceStart"), 400);
    fault(vmm.action("Pause"), 409);
    fault(vmm.call("GET", "/nope", None), 404);
    fault(vmm.call("GET", "/dsa/7", None), 404);
    fault(vmm.call("DELETE", "/machine-config", None), 405);
    let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "a".repeat(200_000));
    fault(vmm.call("PUT", "/boot-source", Some(&big)), 413);
    // A kernel that is not a kernel fails at start with 400, and the VMM stays usable.
    let text = vmm.dir.join("text");
    std::fs::write(&text, "not a kernel").unwrap();
    vmm.ok(
        "PUT",
        "/boot-source",
        Some(&format!(r#"{{"kernel_image_path": "{}"}}"#, text.display())),
    );
    fault(vmm.action("InstanceStart"), 400);
    assert_eq!(vmm.state(), "NotStarted");
    let spec: serde_json::Value =
        serde_json::from_str(&vmm.ok("GET", "/openapi.json", None)).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    vmm.ok("PUT", "/logger", Some(r#"{"level": "Debug"}"#));
    assert_eq!(vmm.action("Shutdown").0, 204);
    assert_eq!(vmm.wait_exit(), 0);
}

#[test]
fn run_with_api_sock_and_remote_client() {
    if !kvm_available("run_with_api_sock_and_remote_client") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dsavmm-api-{}-run-elf", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = spin_elf(&dir);
    let vmm = Vmm::start(
        "run",
        &[
            "run",
            "--kernel",
            elf.to_str().unwrap(),
            "--dsa",
            "backend=software,wqs=1",
        ],
    );
    assert_eq!(vmm.state(), "Running");
    let remote = |verb: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
            .arg("remote")
            .arg("--api-sock")
            .arg(&vmm.sock)
            .args(verb)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = remote(&["info"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Running"), "{out}");
    assert_eq!(remote(&["pause"]).0, Some(0));
    assert_eq!(vmm.state(), "Paused");
    assert_eq!(remote(&["resume"]).0, Some(0));
    let (code, out) = remote(&["dsa", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"wqs\""), "{out}");
    assert_eq!(remote(&["shutdown"]).0, Some(0));
    assert_eq!(vmm.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn config_file_boots_the_vm() {
    if !kvm_available("config_file_boots_the_vm") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dsavmm-api-{}-cfg", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = selftest_elf(&dir);
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"machine-config": {{"vcpus": 1, "memory_mib": 64}},
                "boot-source": {{"kernel_image_path": "{}", "boot_args": "selftest.vcpus=1 selftest.mem_mib=64"}},
                "dsa": [{{"id": "0", "backend": "software", "wqs": 1}}]}}"#,
            elf.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .arg("--config-file")
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
