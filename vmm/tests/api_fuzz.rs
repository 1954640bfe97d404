//! Schema-based fuzzing of a real `dsavmm --api-sock` with schemathesis (PyPI), bounded in count
//! and time, over a loopback bridge to the UNIX socket (`api/schemathesis.sh`): no 5xx, and every
//! response matches the OpenAPI document. `PUT /actions` is left out (its Shutdown would end the
//! VMM under test); the actions are covered by `tests/api.rs`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn openapi_fuzz_finds_no_server_errors() {
    let dir = std::env::temp_dir().join(format!("dsavmm-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .arg("--api-sock")
        .arg(&sock)
        // The fuzzer sends arbitrary paths (log files, kernels): nothing may land in the checkout.
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dsavmm");
    let deadline = Instant::now() + Duration::from_secs(10);
    while api::api_call(&sock, "GET", "/version", None).is_err() {
        assert!(Instant::now() < deadline, "API socket never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/schemathesis.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&sock)
        .current_dir(&dir)
        .env("SCHEMATHESIS_SKIP_ACTIONS", "1")
        .env("SCHEMATHESIS_MAX_EXAMPLES", "10")
        .env("SCHEMATHESIS_MAX_TIME", "90")
        .output()
        .expect("run api/schemathesis.sh");
    let alive = vmm.try_wait().map(|s| s.is_none()).unwrap_or(false);
    let _ = vmm.kill();
    let _ = vmm.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("passed"), "schemathesis ran no case:\n{text}");
    assert!(alive, "dsavmm died under the fuzzer");
    // PUT /logger never creates files, whatever path the fuzzer sent.
    let created: Vec<_> = std::fs::read_dir(std::env::current_dir().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| {
            let n = n.to_string_lossy();
            !["Cargo.toml", "benches", "build.rs", "src", "tests"].contains(&n.as_ref())
        })
        .collect();
    assert!(
        created.is_empty(),
        "files appeared in the package dir: {created:?}"
    );
}
