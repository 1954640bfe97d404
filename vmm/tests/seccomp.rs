//! Every dsavmm thread runs under its seccomp filter: a real `dsavmm --api-sock S selftest`
//! process is watched through /proc/PID/task/*/status while the guest runs, for each
//! `--seccomp` mode. (What each kind's filter does with a forbidden call is tested on the
//! compiled filters in `vmm/src/seccomp/tests.rs`; that the guest, API and rig suites pass under
//! the default `enforce` is the rest of the test suite.)

mod common;

use common::{kvm_available, temp_dir};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::api_call;

/// Per thread name: the most seccomp filters seen on it and its seccomp mode then.
type Seen = BTreeMap<String, (u32, u32)>;

/// Runs the self-test guest with an API socket and `--seccomp mode`, sampling the threads until
/// the guest has halted; then checks a `remote` call and shuts down. Returns what was seen.
fn watch(test: &str, mode: &str) -> Seen {
    let dir = temp_dir(test);
    let sock = dir.join("api.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .arg("--seccomp")
        .arg(mode)
        .arg("--api-sock")
        .arg(&sock)
        .args(["selftest", "--vcpus", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsavmm");
    let pid = child.id();
    let mut seen = Seen::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for (name, mode, filters) in common::thread_seccomp(pid) {
            let e = seen.entry(name).or_insert((mode, filters));
            if filters > e.1 {
                *e = (mode, filters);
            }
        }
        if seen.contains_key("vcpu") && state(&sock).as_deref() == Some("Halted") {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            panic!(
                "dsavmm --seccomp {mode} exited early ({st}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "the guest never halted");
        std::thread::sleep(Duration::from_millis(1));
    }
    let remote = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .arg("--seccomp")
        .arg(mode)
        .arg("--api-sock")
        .arg(&sock)
        .args(["remote", "info"])
        .output()
        .expect("run dsavmm remote");
    assert!(
        remote.status.success(),
        "dsavmm --seccomp {mode} remote info: {}",
        String::from_utf8_lossy(&remote.stderr)
    );
    let (code, _) = api_call(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Shutdown"}"#),
    )
    .expect("Shutdown");
    assert_eq!(code, 204);
    let out = child.wait_with_output().expect("wait for dsavmm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{mode}: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(" 0 failed"),
        "{mode}: the guest failed:\n{stdout}"
    );
    assert!(!stderr.contains("seccomp"), "{mode}: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    seen
}

/// The instance state over the API, if it answers.
fn state(sock: &Path) -> Option<String> {
    let (_, body) = api_call(sock, "GET", "/", None).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["state"].as_str().map(str::to_string)
}

/// The expected `(Seccomp, Seccomp_filters)` of each thread kind with filters on: the API thread
/// is spawned before the main thread installs its filter and has its own and `deny_open`; vCPU
/// threads inherit the main thread's and add `deny_open` and their own.
fn expect_filtered(mode: &str, seen: &Seen) {
    for (name, want) in [("dsavmm", (2, 1)), ("dsavmm-api", (2, 2)), ("vcpu", (2, 3))] {
        assert_eq!(
            seen.get(name),
            Some(&want),
            "--seccomp {mode}: thread {name} (all seen: {seen:?})"
        );
    }
}

#[test]
fn enforce_filters_every_thread() {
    if !kvm_available("enforce_filters_every_thread") {
        return;
    }
    expect_filtered("enforce", &watch("seccomp-enforce", "enforce"));
}

#[test]
fn log_filters_every_thread() {
    if !kvm_available("log_filters_every_thread") {
        return;
    }
    expect_filtered("log", &watch("seccomp-log", "log"));
}

#[test]
fn off_filters_no_thread() {
    if !kvm_available("off_filters_no_thread") {
        return;
    }
    let seen = watch("seccomp-off", "off");
    assert!(seen.contains_key("dsavmm-api"), "{seen:?}");
    for (name, (mode, filters)) in &seen {
        assert_eq!((*mode, *filters), (0, 0), "--seccomp off: thread {name}");
    }
}
