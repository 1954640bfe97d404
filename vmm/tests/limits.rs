//! Limits: vCPU counts, memory sizes, DSA device counts and DSA geometry beyond what dsavmm
//! supports are refused with one clear message, the same way on the CLI, in a config file and
//! through the REST API (issue 16). None of this needs KVM: every check runs before a VM is built.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::api_call;

fn dsavmm(args: &[String]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .args(args)
        .output()
        .expect("run dsavmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails with exactly one `dsavmm: error:` line (warnings aside) that contains `needle`.
fn one_error(args: &[String], needle: &str) {
    let (code, err) = dsavmm(args);
    assert_ne!(code, 0, "{args:?} should fail");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("dsavmm: warning:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line for {args:?}: {err:?}");
    assert!(lines[0].starts_with("dsavmm: error:"), "{err:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsavmm-limits-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn cli_refuses_too_many_dsa_devices() {
    let mut args = strings(&["selftest"]);
    for _ in 0..32 {
        args.extend(strings(&["--dsa", "backend=software"]));
    }
    one_error(
        &args,
        "--dsa is given 32 times: at most 31 DSA devices are supported",
    );
}

#[test]
fn cli_refuses_dsa_geometry_and_machine_shape_beyond_the_limits() {
    for (spec, needle) in [
        ("backend=software,wqs=9", "wqs must be 1..=8, got 9"),
        ("backend=software,wqs=0", "wqs must be 1..=8, got 0"),
        ("backend=software,engines=5", "engines must be 1..=4, got 5"),
        ("backend=software,groups=5", "groups must be 1..=4, got 5"),
        (
            "backend=software,wq-size=129",
            "between the number of WQs and 128, got 129",
        ),
        (
            "backend=software,max-xfer-shift=32",
            "max transfer shift must be 21..=26",
        ),
        (
            "backend=software,max-batch-shift=11",
            "max batch shift must be 5..=10",
        ),
        (
            "backend=software,max-xfer-shift=22",
            "max transfer shift + max batch shift must be at most 31",
        ),
    ] {
        let (code, err) = dsavmm(&strings(&["selftest", "--dsa", spec]));
        assert_eq!(code, 2, "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: {needle:?} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    one_error(
        &strings(&["selftest", "--vcpus", "255"]),
        "--vcpus 255 is out of range: 1 to 254",
    );
    one_error(
        &strings(&["selftest", "--memory", "1047553"]),
        "--memory 1047553 MiB is too large",
    );
}

#[test]
fn config_file_refuses_what_the_vmm_cannot_build() {
    let dir = tmp_dir("config");
    let file = dir.join("vm.json");
    let with = |machine: &str, devices: usize| {
        let dsa: Vec<String> = (0..devices)
            .map(|i| format!(r#"{{"id": "d{i}", "backend": "software"}}"#))
            .collect();
        let text = format!(
            r#"{{"machine-config": {machine}, "boot-source": {{"kernel_image_path": "/nonexistent"}}, "dsa": [{}]}}"#,
            dsa.join(",")
        );
        std::fs::write(&file, text).unwrap();
        let args = vec!["--config-file".to_string(), file.display().to_string()];
        args
    };
    one_error(
        &with(r#"{"vcpus": 1, "memory_mib": 64}"#, 32),
        "dsa: 32 DSA devices is too many: at most 31 are supported",
    );
    one_error(
        &with(r#"{"vcpus": 255, "memory_mib": 64}"#, 1),
        "vcpus = 255 is out of range; it must be between 1 and 254",
    );
    one_error(
        &with(r#"{"vcpus": 1, "memory_mib": 8}"#, 1),
        "memory_mib = 8 is out of range; it must be between 16 and 1047552",
    );
    one_error(
        &with(r#"{"vcpus": 1, "memory_mib": 2000000}"#, 1),
        "memory_mib = 2000000 is out of range",
    );
    // 31 devices pass validation: the failure is then the missing kernel, not the count.
    one_error(
        &with(r#"{"vcpus": 2, "memory_mib": 64}"#, 31),
        "/nonexistent",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct Server {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn api_refuses_a_device_beyond_the_limit_and_out_of_range_shapes() {
    let dir = tmp_dir("api");
    let sock = dir.join("api.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .arg("--api-sock")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dsavmm");
    let s = Server { child, sock, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while api_call(&s.sock, "GET", "/version", None).is_err() {
        assert!(Instant::now() < deadline, "API socket never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let call = |method: &str, path: &str, body: Option<&str>| {
        api_call(&s.sock, method, path, body).expect("API call")
    };
    let dev = Some(r#"{"backend": "software"}"#);
    for i in 0..31 {
        assert_eq!(call("PUT", &format!("/dsa/d{i}"), dev).0, 204, "device {i}");
    }
    let (code, body) = call("PUT", "/dsa/one-too-many", dev);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("32 DSA devices is too many: at most 31 are supported"),
        "{body}"
    );
    // Replacing an existing device is not adding one.
    assert_eq!(
        call(
            "PUT",
            "/dsa/d0",
            Some(r#"{"backend": "software", "wqs": 2}"#)
        )
        .0,
        204
    );
    // After a removal there is room again.
    assert_eq!(call("DELETE", "/dsa/d30", None).0, 204);
    assert_eq!(call("PUT", "/dsa/one-too-many", dev).0, 204);

    for (body, needle) in [
        (
            r#"{"vcpus": 255, "memory_mib": 64}"#,
            "vcpus = 255 is out of range; it must be between 1 and 254",
        ),
        (
            r#"{"vcpus": 1, "memory_mib": 15}"#,
            "memory_mib = 15 is out of range; it must be between 16 and 1047552",
        ),
        (
            r#"{"vcpus": 1, "memory_mib": 1047553}"#,
            "memory_mib = 1047553 is out of range",
        ),
    ] {
        let (code, text) = call("PUT", "/machine-config", Some(body));
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    let (code, text) = call(
        "PUT",
        "/dsa/d1",
        Some(r#"{"backend": "software", "wqs": 9}"#),
    );
    assert_eq!(code, 400);
    assert!(text.contains("wqs = 9 is out of range"), "{text}");
}
