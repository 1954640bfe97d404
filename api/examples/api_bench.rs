//! API benchmark: time from `start_api_server` to a connectable socket, and request latency
//! (median, p99) under N concurrent keep-alive clients, beside a sequential `curl` loop.
//!
//! Without `--sock` it starts its own server with a trivial in-process fake VMM (measures
//! the API layer alone). With `--sock PATH` it measures a running `dsavmm --api-sock PATH`.
//!
//! `cargo run --release -p api --example api_bench -- [--sock PATH] [--clients 8]
//!  [--requests 2000] [--path / --path /dsa/0] [--curl 200]`

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use api::{
    start_api_server, ApiConnection, ApiReply, ApiRequest, DsaDeviceConfig, DsaDeviceInfo,
    InstanceInfo, InstanceState,
};
use clap::Parser;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

#[derive(Parser)]
struct Args {
    /// Socket of a running dsavmm; omitted: an in-process server with a fake VMM.
    #[arg(long)]
    sock: Option<PathBuf>,
    /// Concurrent clients (one keep-alive connection and thread each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests per client per path.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Paths to GET (repeatable).
    #[arg(long = "path", default_values_t = ["/".to_string(), "/dsa/0".to_string()])]
    paths: Vec<String>,
    /// Sequential curl invocations for the baseline (0 to skip).
    #[arg(long, default_value_t = 200)]
    curl: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(label: &str, mut lat: Vec<Duration>) {
    lat.sort();
    // `bench: api_bench ...` lines; the README's Performance table quotes them verbatim.
    println!(
        "bench: api_bench {label}: n={} median {:.1} us, p99 {:.1} us",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6
    );
}

/// Starts a server with a fake VMM thread; returns what keeps them alive.
fn fake_server(dir: &TempDir) -> (api::ApiServerHandle, PathBuf) {
    let sock = dir.as_path().join("bench.sock");
    // Start-up time: median of 20 fresh servers, from the call to a successful connect.
    let mut starts = Vec::new();
    for _ in 0..20 {
        let (tx, _rx) = channel();
        let t0 = Instant::now();
        let server = start_api_server(&sock, tx, EventFd::new(0).expect("eventfd"))
            .expect("start the API server");
        std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        starts.push(t0.elapsed());
        server.stop();
    }
    report("API start -> socket connectable", starts);

    let (tx, rx) = channel::<api::ApiMessage>();
    let evt = EventFd::new(0).expect("eventfd");
    let server = start_api_server(&sock, tx, evt.try_clone().expect("eventfd clone"))
        .expect("start the API server");
    std::thread::spawn(move || loop {
        if evt.read().is_err() {
            return;
        }
        while let Ok(msg) = rx.try_recv() {
            msg.respond(|req| match req {
                ApiRequest::GetInstanceInfo => Ok(ApiReply::InstanceInfo(InstanceInfo {
                    id: "bench".into(),
                    state: InstanceState::Running,
                    vmm_version: api::VMM_VERSION.into(),
                })),
                ApiRequest::GetDsa(id) => Ok(ApiReply::DsaDevice(DsaDeviceInfo {
                    id,
                    config: DsaDeviceConfig::default(),
                    state: serde_json::json!({"enabled": true}),
                    counters: serde_json::json!({"descriptors": {"memmove": 0}}),
                })),
                other => Err(api::ApiError::NotFound(format!("{other:?}"))),
            });
        }
    });
    (server, sock)
}

fn main() {
    let args = Args::parse();
    let dir = TempDir::new_with_prefix("/tmp/dsavmm-api-bench").expect("temp dir");
    let (_server, sock) = match &args.sock {
        Some(s) => (None, s.clone()),
        None => {
            let (server, sock) = fake_server(&dir);
            (Some(server), sock)
        }
    };

    for path in &args.paths {
        let threads: Vec<_> = (0..args.clients)
            .map(|_| {
                let sock = sock.clone();
                let path = path.clone();
                let n = args.requests;
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        let mut conn = ApiConnection::connect(&sock).await.expect("connect");
                        let mut lat = Vec::with_capacity(n);
                        for _ in 0..n {
                            let t0 = Instant::now();
                            let (status, _) = conn.call("GET", &path, None).await.expect("call");
                            lat.push(t0.elapsed());
                            assert_eq!(status, 200, "GET {path}");
                        }
                        lat
                    })
                })
            })
            .collect();
        let lat: Vec<Duration> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("client thread"))
            .collect();
        report(
            &format!("GET {path} ({} keep-alive clients)", args.clients),
            lat,
        );
    }

    if args.curl > 0 {
        for path in &args.paths {
            let mut lat = Vec::with_capacity(args.curl);
            for _ in 0..args.curl {
                let t0 = Instant::now();
                let out = Command::new("curl")
                    .args(["-sf", "-o", "/dev/null", "--unix-socket"])
                    .arg(&sock)
                    .arg(format!("http://localhost{path}"))
                    .status();
                match out {
                    Ok(s) if s.success() => lat.push(t0.elapsed()),
                    Ok(s) => {
                        eprintln!("curl GET {path} failed: {s}");
                        break;
                    }
                    Err(e) => {
                        eprintln!("curl not runnable ({e}); skipping the baseline");
                        return;
                    }
                }
            }
            report(
                &format!("curl loop GET {path} (1 client, process each)"),
                lat,
            );
        }
    }
}
