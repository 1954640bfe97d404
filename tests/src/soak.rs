//! The soak benchmark's driver (`vmm/benches/soak.rs`; `vmm/tests/soak.rs` runs a short one,
//! ignored by default). One `dsavmm --api-sock` process boots the self-test guest in soak mode
//! (`selftest.soak=N`, resources/guests/selftest/src/dsatest/soak.rs): every vCPU submits its share
//! of N small descriptors round-robin over every WQ of every DSA and checks each completion.
//! Meanwhile a client thread sends API requests back to back (`http.rs`: good and bad ones,
//! keep-alive and short-lived connections) and counts the answers. The process's RSS, open fds
//! and threads are sampled while the guest idles before its first descriptor and after its last
//! one (`selftest.soak_hold_ms`, the VM still running), and the VMM's own counters
//! (`GET /metrics`) must account for exactly the descriptors the guest verified.

mod http;
mod procfs;
mod report;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use http::ApiCounts;
pub use procfs::Sample;
pub use report::{Counters, GuestSoak, SoakReport};

/// Largest RSS growth accepted by default (KiB). 8 MiB is under 8.4 bytes per descriptor of a
/// 1,000,000-descriptor soak and under 840 bytes per request of 10,000 API requests: any
/// allocation kept per descriptor (a heap block is at least 32 bytes) or per request (a
/// `/metrics` answer alone is several KiB) shows above it, while allocator arenas and buffers
/// that reach their working size in the first seconds stay well below it.
pub const RSS_BOUND_KIB: u64 = 8 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The dsavmm binary.
    pub dsavmm: PathBuf,
    /// Descriptors the guest submits in all (`selftest.soak`).
    pub descriptors: u64,
    /// API requests that must be answered while the soak runs (at least).
    pub api_requests: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// `--dsa` specs, one device each.
    pub dsa: Vec<String>,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// How long the guest idles before its first and after its last descriptor: the window
    /// in which the process is sampled.
    pub hold_ms: u64,
    /// Largest RSS growth accepted (KiB).
    pub rss_bound_kib: u64,
}

impl SoakOptions {
    /// The full soak: 1,000,000 descriptors, 10,000 API requests, 2 vCPUs, 2 DSAs of 4 WQs.
    pub fn new(dsavmm: PathBuf) -> Self {
        SoakOptions {
            dsavmm,
            descriptors: 1_000_000,
            api_requests: 10_000,
            vcpus: 2,
            dsa: vec!["backend=software,wqs=4".into(); 2],
            memory_mib: 128,
            hold_ms: 3000,
            rss_bound_kib: RSS_BOUND_KIB,
        }
    }

    /// [`SoakOptions::new`] with `DSAVMM_SOAK_DESCRIPTORS` and `DSAVMM_SOAK_API` applied.
    pub fn from_env(dsavmm: PathBuf) -> Result<Self, String> {
        let mut o = Self::new(dsavmm);
        for (var, slot) in [
            ("DSAVMM_SOAK_DESCRIPTORS", &mut o.descriptors),
            ("DSAVMM_SOAK_API", &mut o.api_requests),
        ] {
            if let Ok(v) = std::env::var(var) {
                *slot = v
                    .parse()
                    .map_err(|_| format!("{var}={v:?} is not a number"))?;
            }
        }
        if o.descriptors == 0 {
            return Err("DSAVMM_SOAK_DESCRIPTORS must be at least 1".into());
        }
        Ok(o)
    }
}

/// The dsavmm process, its console lines and its stderr; killed and cleaned up on drop.
struct Vmm {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Vmm {
    fn start(o: &SoakOptions) -> Result<Vmm, String> {
        let dir = std::env::temp_dir().join(format!("dsavmm-soak-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let elf = dir.join("selftest.elf");
        let made = Command::new(&o.dsavmm)
            .args(["selftest-image", "--output"])
            .arg(&elf)
            .status()
            .map_err(|e| format!("{}: {e}", o.dsavmm.display()))?;
        if !made.success() {
            return Err("dsavmm selftest-image failed".into());
        }
        let sock = dir.join("api.sock");
        let cmdline = format!(
            "console=ttyS0 selftest.vcpus={} selftest.mem_mib={} selftest.soak={} \
             selftest.soak_hold_ms={}",
            o.vcpus, o.memory_mib, o.descriptors, o.hold_ms
        );
        let mut cmd = Command::new(&o.dsavmm);
        cmd.arg("--api-sock").arg(&sock).args(["run", "--kernel"]);
        cmd.arg(&elf).args(["--cmdline", &cmdline]);
        cmd.args(["--vcpus", &o.vcpus.to_string()]);
        cmd.args(["--memory", &o.memory_mib.to_string()]);
        for d in &o.dsa {
            cmd.args(["--dsa", d]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", o.dsavmm.display()))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        }));
        Ok(Vmm {
            child,
            dir,
            sock,
            lines,
            seen: Vec::new(),
            stderr,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A failure message with the last console lines and, once the process ended, its stderr.
    fn fail(&mut self, what: &str) -> String {
        let tail = self.seen.len().saturating_sub(20);
        let mut msg = format!(
            "{what}\nlast console lines:\n{}",
            self.seen[tail..].join("\n")
        );
        if let Ok(Some(_)) = self.child.try_wait() {
            if let Some(s) = self.stderr.take().and_then(|t| t.join().ok()) {
                msg.push_str(&format!("\ndsavmm stderr:\n{s}"));
            }
        }
        msg
    }

    /// Waits up to `timeout` for a console line containing `text`.
    fn wait_line(&mut self, text: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return Ok(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.fail(&format!("no \"{text}\" within {timeout:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(&format!("dsavmm ended before \"{text}\"")))
                }
            }
        }
    }

    /// The lines printed so far without waiting.
    fn drain_lines(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    fn get(&mut self, path: &str) -> Result<String, String> {
        match http::call(&self.sock, "GET", path, None) {
            Ok(a) if a.status == 200 => Ok(a.body),
            Ok(a) => Err(self.fail(&format!("GET {path}: {} {}", a.status, a.body))),
            Err(e) => Err(self.fail(&format!("GET {path}: {e}"))),
        }
    }

    fn state_is(&mut self, state: &str) -> Result<bool, String> {
        let info = self.get("/")?.replace([' ', '\n'], "");
        Ok(info.contains(&format!("\"state\":\"{state}\"")))
    }

    fn sample(&mut self) -> Result<Sample, String> {
        procfs::sample(self.pid()).map_err(|e| self.fail(&format!("sampling dsavmm: {e}")))
    }

    /// Samples once the fd count is back to `fds` (connections the server is still closing), or
    /// after one second.
    fn settled_sample(&mut self, fds: u64) -> Result<Sample, String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let s = self.sample()?;
            if s.fds <= fds || Instant::now() >= deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `Shutdown` once the guest halted; dsavmm's exit status.
    fn shut_down(&mut self) -> Result<Option<i32>, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.state_is("Halted")? {
            if Instant::now() >= deadline {
                return Err(self.fail("the VM did not halt after the soak"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let body = r#"{"action_type": "Shutdown"}"#;
        match http::call(&self.sock, "PUT", "/actions", Some(body)) {
            Ok(a) if a.status == 204 => {}
            Ok(a) => return Err(self.fail(&format!("Shutdown: {} {}", a.status, a.body))),
            Err(e) => return Err(self.fail(&format!("Shutdown: {e}"))),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Ok(st.code()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return Err(self.fail("dsavmm did not exit after Shutdown")),
            }
        }
    }
}

/// Starts the API load on `sock`; stopping the returned flag ends it.
fn api_load(sock: &Path) -> (Arc<AtomicBool>, JoinHandle<ApiCounts>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, sock) = (stop.clone(), sock.to_path_buf());
    (stop, std::thread::spawn(move || http::load(&sock, &flag)))
}

/// Runs one soak. `Err` when the run could not be measured (the guest failed, dsavmm hung or
/// ended early); bounds are checked by [`SoakReport::problems`].
pub fn run(o: &SoakOptions) -> Result<SoakReport, String> {
    let mut vmm = Vmm::start(o)?;
    let start_line = vmm.wait_line("selftest: info soak start", Duration::from_secs(120))?;
    let wqs = report::word(&start_line, "wqs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let announced = Instant::now();
    let before = Counters::parse(&vmm.get("/metrics")?);
    std::thread::sleep(Duration::from_millis(100));
    let start = vmm.sample()?;
    // The guest idles `hold_ms` after its announcement: the load starts with the descriptors.
    std::thread::sleep(Duration::from_millis(o.hold_ms).saturating_sub(announced.elapsed()));
    let (stop, load) = api_load(&vmm.sock);
    // Generous: about 25 us per descriptor were measured on 2 shared cores.
    let budget =
        Duration::from_secs(120) + Duration::from_micros(250u64.saturating_mul(o.descriptors));
    let soak_line = vmm.wait_line("selftest: soak: ", budget);
    stop.store(true, Ordering::Release);
    let api = load.join().map_err(|_| "the API client thread panicked")?;
    let soak_line = soak_line?;
    let Some(guest) = GuestSoak::parse(&soak_line) else {
        return Err(vmm.fail(&format!("the soak failed: {soak_line}")));
    };
    let end = vmm.settled_sample(start.fds)?;
    vmm.drain_lines();
    if vmm.seen.iter().any(|l| l.contains(" passed, ")) || !vmm.state_is("Running")? {
        return Err(vmm.fail(
            "the end sample was taken after the guest's hold ended: raise SoakOptions::hold_ms",
        ));
    }
    let counters = Counters::parse(&vmm.get("/metrics")?).since(before);
    vmm.wait_line(" passed, ", Duration::from_secs(60))?;
    let exit_code = vmm.shut_down()?;
    Ok(SoakReport {
        guest,
        wqs,
        api,
        start,
        end,
        counters,
        exit_code,
    })
}
