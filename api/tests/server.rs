//! Real HTTP over a temporary UNIX socket against a fake VMM thread that answers
//! `ApiRequest`s the way the VMM is meant to (channel + eventfd wake-up).

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api::*;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

mod common;
use common::{spawn_fake_vmm, FakeVmm};

struct Rig {
    _dir: TempDir,
    sock: PathBuf,
    server: Option<ApiServerHandle>,
    vmm: Option<JoinHandle<u64>>,
    kick: EventFd,
}

impl Rig {
    fn new() -> Self {
        Self::with(ApiServerOptions::default())
    }

    fn with(options: ApiServerOptions) -> Self {
        let dir = TempDir::new_with_prefix("/tmp/dsavmm-api-test").unwrap();
        let sock = dir.as_path().join("api.sock");
        Self::at(dir, sock, options)
    }

    fn at(dir: TempDir, sock: PathBuf, options: ApiServerOptions) -> Self {
        let (tx, rx) = channel();
        let evt = EventFd::new(0).unwrap();
        let server = start_api_server_with(&sock, tx, evt.try_clone().unwrap(), options).unwrap();
        let kick = evt.try_clone().unwrap();
        let vmm = spawn_fake_vmm(rx, evt);
        Rig {
            _dir: dir,
            sock,
            server: Some(server),
            vmm: Some(vmm),
            kick,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        api_call(&self.sock, method, path, body).unwrap()
    }

    /// Stops the server, then lets the fake VMM notice the closed channel.
    fn stop(&mut self) -> u64 {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        self.kick.write(1).unwrap();
        self.vmm.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fault(body: &str) -> String {
    let f: Fault =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a fault body: {body}: {e}"));
    assert!(!f.fault_message.is_empty());
    f.fault_message
}

/// Sends raw bytes on a fresh connection (with `Connection: close` in `req`) and returns the
/// whole response, headers included. Test-only: the real client is hyper.
fn raw(sock: &Path, req: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn every_route() {
    let rig = Rig::new();
    let (st, body) = rig.call("GET", "/", None);
    assert_eq!(st, 200);
    let info: InstanceInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(info.state, InstanceState::NotStarted);

    let (st, body) = rig.call("GET", "/version", None);
    assert_eq!(st, 200);
    let v: VersionInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v.vmm_version.as_str(), v.api_version.as_str()),
        (VMM_VERSION, API_VERSION)
    );

    let (st, body) = rig.call("GET", "/openapi.json", None);
    assert_eq!((st, body.as_str()), (200, OPENAPI_JSON));

    assert_eq!(
        rig.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpus":2,"memory_mib":512}"#)
        )
        .0,
        204
    );
    let (st, body) = rig.call("GET", "/machine-config", None);
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"vcpus":2,"memory_mib":512})
    );

    let bs = r#"{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0"}"#;
    assert_eq!(rig.call("PUT", "/boot-source", Some(bs)).0, 204);
    assert_eq!(
        rig.call("PUT", "/dsa/0", Some(r#"{"backend":"software","wqs":2}"#))
            .0,
        204
    );
    assert_eq!(
        rig.call("PUT", "/dsa/tmp", Some(r#"{"backend":"software"}"#))
            .0,
        204
    );
    assert_eq!(rig.call("DELETE", "/dsa/tmp", None).0, 204);
    let (st, body) = rig.call("GET", "/dsa/0", None);
    assert_eq!(st, 200);
    let d: DsaDeviceInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (d.config.wqs, d.config.engines, d.state.is_null()),
        (2, 1, true)
    );

    assert_eq!(
        rig.call("PUT", "/logger", Some(r#"{"level":"Debug"}"#)).0,
        204
    );
    let (st, body) = rig.call("GET", "/vm/config", None);
    assert_eq!(st, 200);
    let cfg = parse_config_file(&body).unwrap();
    assert_eq!(cfg.dsa.len(), 1);
    assert_eq!(
        cfg.boot_source.unwrap().boot_args.as_deref(),
        Some("console=ttyS0")
    );

    for action in ["InstanceStart", "Pause", "Resume", "SendCtrlAltDel"] {
        let body = format!(r#"{{"action_type":"{action}"}}"#);
        assert_eq!(rig.call("PUT", "/actions", Some(&body)).0, 204, "{action}");
    }
    let (_, body) = rig.call("GET", "/dsa/0", None);
    let d: DsaDeviceInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(d.counters["descriptors"]["memmove"], 3);

    let resp = raw(
        &rig.sock,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("content-type: text/plain; version=0.0.4"),
        "{resp}"
    );
    assert!(resp.contains("\ndsavmm_api_requests_total "), "{resp}");

    assert_eq!(
        rig.call("PUT", "/actions", Some(r#"{"action_type":"Shutdown"}"#))
            .0,
        204
    );
    let (_, body) = rig.call("GET", "/", None);
    assert_eq!(
        serde_json::from_str::<InstanceInfo>(&body).unwrap().state,
        InstanceState::Halted
    );
}

#[test]
fn every_error_class() {
    let rig = Rig::new();
    let expect = |method: &str, path: &str, body: Option<&str>, status: u16, needle: &str| {
        let (st, text) = rig.call(method, path, body);
        assert_eq!(st, status, "{method} {path} {body:?}: {text}");
        let msg = fault(&text);
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    };
    // 400: malformed, wrong types, unknown fields, ranges, missing body, bad ids, VMM refusal.
    expect("PUT", "/machine-config", Some("{"), 400, "EOF");
    expect(
        "PUT",
        "/machine-config",
        Some("not json"),
        400,
        "invalid request body",
    );
    expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpus":"2","memory_mib":1}"#),
        400,
        "invalid type",
    );
    expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpus":2,"memory_mib":1,"x":1}"#),
        400,
        "unknown field `x`",
    );
    expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpus":0,"memory_mib":1}"#),
        400,
        "vcpus = 0",
    );
    expect("PUT", "/machine-config", None, 400, "empty");
    expect(
        "PUT",
        "/dsa/0",
        Some(r#"{"backend":"software","wqs":9}"#),
        400,
        "wqs = 9",
    );
    expect(
        "PUT",
        "/dsa/0",
        Some(r#"{"backend":"software","total_wq_size":200}"#),
        400,
        "total_wq_size",
    );
    expect(
        "PUT",
        "/dsa/bad.id",
        Some(r#"{"backend":"software"}"#),
        400,
        "'.'",
    );
    expect("GET", "/dsa/%2F", None, 400, "device id");
    expect(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"Explode"}"#),
        400,
        "unknown variant",
    );
    expect(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        400,
        "no boot-source",
    );
    expect("PUT", "/logger", Some("{}"), 400, "at least one");
    expect(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/missing"}"#),
        400,
        "not found",
    );
    let bad_utf8 = raw(
        &rig.sock,
        b"PUT /logger HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\"\xff\xfe\"",
    );
    assert!(bad_utf8.starts_with("HTTP/1.1 400"), "{bad_utf8}");
    // 404: unknown paths and ids.
    expect("GET", "/nope", None, 404, "/nope");
    expect("GET", "/dsa/", None, 404, "no such path");
    expect("GET", "/dsa/7", None, 404, "no DSA device");
    expect("DELETE", "/dsa/7", None, 404, "no DSA device");
    // 405 with Allow.
    expect("POST", "/actions", Some("{}"), 405, "PUT");
    expect("DELETE", "/", None, 405, "GET");
    let resp = raw(
        &rig.sock,
        b"PATCH /dsa/0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.contains("allow: GET, PUT, DELETE\r\n"), "{resp}");
    // 409: the state forbids it.
    expect(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"Pause"}"#),
        409,
        "Pause is not possible",
    );
    assert_eq!(
        rig.call("PUT", "/boot-source", Some(r#"{"kernel_image_path":"/k"}"#))
            .0,
        204
    );
    assert_eq!(
        rig.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#)
        )
        .0,
        204
    );
    expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpus":2,"memory_mib":64}"#),
        409,
        "before boot",
    );
    expect(
        "PUT",
        "/dsa/1",
        Some(r#"{"backend":"software"}"#),
        409,
        "before boot",
    );
    expect(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"Resume"}"#),
        409,
        "Resume",
    );
    // 413: declared and chunked.
    let big = format!(r#"{{"kernel_image_path":"{}"}}"#, "a".repeat(70_000));
    expect("PUT", "/boot-source", Some(&big), 413, "65536");
    let mut chunked = b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 4096, "b".repeat(4096)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = raw(&rig.sock, &chunked);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("fault_message"), "{resp}");
    // The server still works after all that.
    assert_eq!(rig.call("GET", "/", None).0, 200);
}

#[test]
fn vmm_bugs_and_absence_are_5xx_not_hangs() {
    let opts = ApiServerOptions {
        reply_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let rig = Rig::with(opts);
    let (st, body) = rig.call("GET", "/dsa/drop", None);
    assert_eq!(st, 500);
    assert!(fault(&body).contains("dropped"));
    let (st, body) = rig.call("GET", "/dsa/wrongkind", None);
    assert_eq!(st, 500);
    assert!(fault(&body).contains("wrong kind"));
    // A slow VMM: 1500 ms > the 300 ms reply timeout.
    let (st, body) = rig.call("GET", "/dsa/slow", None);
    assert_eq!(st, 500);
    assert!(fault(&body).contains("did not answer"));

    // No VMM at all (receiver gone): 503.
    let dir = TempDir::new_with_prefix("/tmp/dsavmm-api-test").unwrap();
    let sock = dir.as_path().join("s");
    let (tx, rx) = channel();
    drop(rx);
    let server = start_api_server(&sock, tx, EventFd::new(0).unwrap()).unwrap();
    let (st, body) = api_call(&sock, "GET", "/", None).unwrap();
    assert_eq!(st, 503);
    fault(&body);
    // ...but the API thread's own routes still answer.
    assert_eq!(api_call(&sock, "GET", "/version", None).unwrap().0, 200);
    server.stop();
}

#[test]
fn socket_file_rules() {
    let dir = TempDir::new_with_prefix("/tmp/dsavmm-api-test").unwrap();
    let sock = dir.as_path().join("api.sock");

    // A stale socket (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    let (tx, _rx) = channel();
    let server = start_api_server(&sock, tx, EventFd::new(0).unwrap()).unwrap();
    let md = std::fs::symlink_metadata(&sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "socket mode");
    assert_eq!(api_call(&sock, "GET", "/version", None).unwrap().0, 200);
    // No leftovers of the private bind directory.
    let entries: Vec<_> = std::fs::read_dir(dir.as_path()).unwrap().collect();
    assert_eq!(entries.len(), 1);

    // A live socket is not stolen.
    let (tx2, _rx2) = channel();
    let err = start_api_server(&sock, tx2, EventFd::new(0).unwrap()).unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    assert_eq!(api_call(&sock, "GET", "/version", None).unwrap().0, 200);

    // Removed on stop.
    assert!(server.is_running());
    server.stop();
    assert!(!sock.exists());

    // ... and on drop.
    let (tx, _rx) = channel();
    drop(start_api_server(&sock, tx, EventFd::new(0).unwrap()).unwrap());
    assert!(!sock.exists());

    // A regular file is an error and is left alone.
    std::fs::write(&sock, b"precious").unwrap();
    let (tx, _rx) = channel();
    let err = start_api_server(&sock, tx, EventFd::new(0).unwrap()).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    // So is a directory.
    let d = dir.as_path().join("d");
    std::fs::create_dir(&d).unwrap();
    let (tx, _rx) = channel();
    assert!(start_api_server(&d, tx, EventFd::new(0).unwrap()).is_err());
    // A missing parent directory is an error, not a panic.
    let (tx, _rx) = channel();
    assert!(start_api_server(
        &dir.as_path().join("no/such.sock"),
        tx,
        EventFd::new(0).unwrap()
    )
    .is_err());
}

#[test]
fn many_concurrent_clients() {
    let rig = Rig::new();
    assert_eq!(
        rig.call("PUT", "/dsa/0", Some(r#"{"backend":"software"}"#))
            .0,
        204
    );
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let sock = rig.sock.clone();
            std::thread::spawn(move || {
                for j in 0..20 {
                    let path = if (i + j) % 2 == 0 { "/" } else { "/dsa/0" };
                    let (st, _) = api_call(&sock, "GET", path, None).unwrap();
                    assert_eq!(st, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (_, metrics) = rig.call("GET", "/metrics", None);
    assert!(
        metrics.contains("dsavmm_api_requests_total 642"),
        "{metrics}"
    );
}

#[test]
fn slow_clients_do_not_block_others() {
    let opts = ApiServerOptions {
        header_read_timeout: Duration::from_millis(3000),
        body_read_timeout: Duration::from_millis(3000),
        ..Default::default()
    };
    let rig = Rig::with(opts);
    // Half a request line and headers, then silence.
    let mut stalled_headers = UnixStream::connect(&rig.sock).unwrap();
    stalled_headers
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Complete headers, half a body, then silence.
    let mut stalled_body = UnixStream::connect(&rig.sock).unwrap();
    stalled_body
        .write_all(b"PUT /logger HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"lev")
        .unwrap();
    // A connection that sends nothing at all.
    let _silent = UnixStream::connect(&rig.sock).unwrap();

    let start = Instant::now();
    for _ in 0..50 {
        assert_eq!(rig.call("GET", "/", None).0, 200);
    }
    let took = start.elapsed();
    // Were the stalled clients blocking the server, nothing would finish before their 3 s
    // timeouts.
    assert!(
        took < Duration::from_millis(2500),
        "50 requests took {took:?} beside stalled clients"
    );

    // The stalled ones are cut off by the timeouts.
    stalled_body
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let mut resp = String::new();
    let _ = stalled_body.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("fault_message"));
    stalled_headers
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let mut buf = Vec::new();
    let r = stalled_headers.read_to_end(&mut buf);
    assert!(
        r.is_ok(),
        "the server closes a connection that stalls in its headers: {r:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[test]
fn busy_vmm_does_not_block_the_api_thread() {
    let rig = Rig::new();
    let sock = rig.sock.clone();
    let slow = std::thread::spawn(move || api_call(&sock, "GET", "/dsa/slow", None).unwrap().0);
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(rig.call("GET", "/version", None).0, 200);
    assert!(
        // Were the API thread blocked by the VMM, this would take about 1.4 s.
        start.elapsed() < Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(slow.join().unwrap(), 404);
}

#[test]
fn remote_verbs_and_config_file() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        verb: RemoteCommand,
    }
    let rig = Rig::new();
    let run = |args: &[&str]| {
        let mut argv = vec!["remote"];
        argv.extend_from_slice(args);
        run_remote(&rig.sock, &Cli::try_parse_from(argv).unwrap().verb)
    };
    assert!(run(&["info"]).unwrap().contains("\"NotStarted\""));
    assert_eq!(
        run(&["machine-config", "--vcpus", "4", "--memory-mib", "1024"]).unwrap(),
        ""
    );
    assert!(run(&["machine-config"]).unwrap().contains("1024"));
    run(&["add-dsa", "0", "--wqs", "8", "--engines", "4"]).unwrap();
    assert!(run(&["dsa", "0"]).unwrap().contains("\"wqs\": 8"));
    let err = run(&["add-dsa", "1", "--wqs", "9"]).unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("wqs = 9"), "{err}");
    assert_eq!(run(&["dsa", "9"]).unwrap_err().status(), 404);
    assert_eq!(run(&["pause"]).unwrap_err().status(), 409);
    run(&["boot-source", "--kernel", "/vmlinux", "--cmdline", "quiet"]).unwrap();
    run(&["logger", "--level", "Warn"]).unwrap();
    run(&["boot"]).unwrap();
    run(&["pause"]).unwrap();
    run(&["resume"]).unwrap();
    run(&["ctrl-alt-del"]).unwrap();
    assert!(run(&["metrics"]).unwrap().starts_with("# HELP"));
    assert!(run(&["openapi"]).unwrap().contains("\"openapi\""));
    assert!(run(&["version"]).unwrap().contains(VMM_VERSION));
    let config = run(&["config"]).unwrap();
    run(&["shutdown"]).unwrap();

    // The config file the VMM reported is a valid config file; applying it to a fresh VMM
    // through the same requests gives the same configuration.
    let parsed = parse_config_file(&config).unwrap();
    let mut fresh = FakeVmm::new();
    for req in parsed.clone().into_requests() {
        fresh.handle(req).unwrap();
    }
    match fresh.handle(ApiRequest::GetVmConfig).unwrap() {
        ApiReply::VmConfig(c) => assert_eq!(c, parsed),
        other => panic!("{other:?}"),
    }

    // No server at all: a clear I/O error, not a panic.
    let err = api_call(Path::new("/nonexistent/dsavmm.sock"), "GET", "/", None).unwrap_err();
    assert!(
        err.to_string()
            .contains("connecting to /nonexistent/dsavmm.sock"),
        "{err}"
    );
}

#[test]
fn wakeups_reach_the_vmm() {
    let mut rig = Rig::new();
    for _ in 0..10 {
        assert_eq!(rig.call("GET", "/", None).0, 200);
    }
    // One wake-up per request at least (sequential requests cannot coalesce), plus the
    // final kick; the VMM loop exits once the server (the sender) is gone.
    let wakeups = rig.stop();
    assert!(wakeups >= 10, "{wakeups}");
    assert!(!rig.sock.exists());
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let opts = ApiServerOptions {
        header_read_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let rig = Rig::with(opts);
    let mut s = UnixStream::connect(&rig.sock).unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now idle: the server must let go of the connection after the header timeout.
    let start = Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn stop_lets_requests_in_flight_finish() {
    let opts = ApiServerOptions {
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    };
    let mut rig = Rig::with(opts);
    // An idle keep-alive connection must not hold up the stop.
    let _idle = UnixStream::connect(&rig.sock).unwrap();
    let sock = rig.sock.clone();
    // The fake VMM answers "slow" after 1.5 s (404: no such device).
    let slow = std::thread::spawn(move || api_call(&sock, "GET", "/dsa/slow", None));
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    if let Some(s) = rig.server.take() {
        s.stop();
    }
    let waited = start.elapsed();
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    assert!(!rig.sock.exists());
}

#[test]
fn long_socket_paths() {
    // The private bind directory would not fit in sun_path; the target does.
    let dir = TempDir::new_with_prefix("/tmp/dsavmm-api-test").unwrap();
    let base = dir.as_path().as_os_str().len();
    let name = "s".repeat(107 - base - 1);
    let sock = dir.as_path().join(name);
    assert_eq!(sock.as_os_str().len(), 107);
    let (tx, _rx) = channel();
    let server = start_api_server(&sock, tx, EventFd::new(0).unwrap()).unwrap();
    let md = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(api_call(&sock, "GET", "/version", None).unwrap().0, 200);
    server.stop();
    assert!(!sock.exists());
    // A path too long for any UNIX socket is a clear error.
    let sock = dir.as_path().join("x".repeat(120));
    let (tx, _rx) = channel();
    let err = start_api_server(&sock, tx, EventFd::new(0).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("longer than the 107 bytes"),
        "{err}"
    );
}

/// A connection that sent part of a request line and headers and then went silent.
fn stalled(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    s
}

/// Whether the server has closed `s` (EOF or reset within `wait`).
fn closed_by_server(s: &mut UnixStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn stalled_connections_cannot_lock_out_a_client() {
    // The production limits: 128 connections, 5 s to send the headers.
    let opts = ApiServerOptions::default();
    let max = opts.max_connections;
    let rig = Rig::with(opts);
    // A hostile local client: 200 connections that never finish their headers, more than
    // the server holds.
    let mut held: Vec<UnixStream> = (0..200).map(|_| stalled(&rig.sock)).collect();
    // Every well-behaved request (one that goes to the VMM, one answered by the server
    // itself) is answered within 1 s, long before the 5 s header timeout would free a slot.
    for i in 0..20 {
        let path = if i % 2 == 0 { "/" } else { "/version" };
        let start = Instant::now();
        let (status, _) = rig.call("GET", path, None);
        let took = start.elapsed();
        assert_eq!(
            status,
            200,
            "request {i} beside {} stalled connections",
            held.len()
        );
        assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
        // And the attacker keeps refilling.
        held.push(stalled(&rig.sock));
    }
    // The oldest stalled connections were the ones evicted, the newest are still held.
    assert!(closed_by_server(&mut held[0], Duration::from_secs(1)));
    let newest = held.len() - 1;
    assert!(!closed_by_server(
        &mut held[newest],
        Duration::from_millis(200)
    ));
    assert!(held.len() > max);
}

#[test]
fn eviction_spares_requests_in_flight() {
    let opts = ApiServerOptions {
        max_connections: 8,
        ..Default::default()
    };
    let rig = Rig::with(opts);
    // A request the fake VMM takes 1.5 s to answer, on the oldest connection.
    let sock = rig.sock.clone();
    let slow = std::thread::spawn(move || api_call(&sock, "GET", "/dsa/slow", None).unwrap().0);
    std::thread::sleep(Duration::from_millis(200));
    // Fill and overfill the server with stalled connections: they evict each other, never
    // the busy one.
    let held: Vec<UnixStream> = (0..30).map(|_| stalled(&rig.sock)).collect();
    let start = Instant::now();
    assert_eq!(rig.call("GET", "/version", None).0, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(
        slow.join().unwrap(),
        404,
        "the busy connection got its answer"
    );
    drop(held);
}

#[test]
fn a_full_server_of_busy_connections_refuses_new_ones() {
    let opts = ApiServerOptions {
        max_connections: 2,
        ..Default::default()
    };
    let rig = Rig::with(opts);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let sock = rig.sock.clone();
            std::thread::spawn(move || api_call(&sock, "GET", "/dsa/slow", None).unwrap().0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Both slots hold a request the VMM is answering: nothing can be evicted.
    assert!(api_call(&rig.sock, "GET", "/version", None).is_err());
    for t in slow {
        assert_eq!(t.join().unwrap(), 404);
    }
    // Once they are answered the server takes new connections again.
    assert_eq!(rig.call("GET", "/version", None).0, 200);
}
