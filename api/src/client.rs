//! The client side: HTTP over the UNIX socket with hyper, and the verbs of
//! `dsavmm remote --api-sock PATH <verb>` (like Cloud Hypervisor's `ch-remote`).

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::ApiError;

/// How long one blocking [`api_call`] may take in total.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// One keep-alive HTTP/1.1 connection to the API socket (async; for tests and benchmarks
/// that issue many requests). Must be used inside a tokio runtime with I/O enabled.
pub struct ApiConnection {
    sender: SendRequest<Full<Bytes>>,
}

impl ApiConnection {
    /// Connects to the socket and performs the HTTP/1 handshake. The connection task is
    /// spawned on the current runtime.
    pub async fn connect(sock: &Path) -> Result<Self, ApiError> {
        let stream = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(|e| ApiError::io(format!("connecting to {}", sock.display()), e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("API client connection ended: {e}");
            }
        });
        Ok(ApiConnection { sender })
    }

    /// Sends one request and returns the status and the body (lossily decoded as UTF-8).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), ApiError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| ApiError::BadRequest(format!("invalid HTTP method {method:?}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))?;
        self.sender
            .ready()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// Sends one request to the API socket and waits for the answer (blocking; builds a small
/// runtime of its own, so do not call it from inside an async task). Returns the HTTP
/// status and the body; an HTTP error status is *not* an `Err` here.
pub fn api_call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ApiError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ApiError::io("creating the client runtime", e))?;
    runtime.block_on(async {
        let exchange = async {
            let mut conn = ApiConnection::connect(sock).await?;
            conn.call(method, path, body).await
        };
        tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                ApiError::Transport(format!(
                    "no answer from {} within {} s",
                    sock.display(),
                    CLIENT_TIMEOUT.as_secs()
                ))
            })?
    })
}

/// The verbs of `dsavmm remote`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum RemoteCommand {
    /// Show the instance id, state and VMM version (GET /).
    Info,
    /// Show the VMM and API versions (GET /version).
    Version,
    /// Show the whole configuration as a config file (GET /vm/config).
    Config,
    /// Show the machine configuration, or set it with both --vcpus and --memory-mib.
    MachineConfig {
        /// Number of vCPUs.
        #[arg(long, requires = "memory_mib")]
        vcpus: Option<u32>,
        /// Guest memory in MiB.
        #[arg(long, requires = "vcpus")]
        memory_mib: Option<u64>,
    },
    /// Set the kernel, initrd and kernel command line (PUT /boot-source).
    BootSource {
        /// Guest kernel (vmlinux ELF or bzImage).
        #[arg(long)]
        kernel: String,
        /// Initramfs.
        #[arg(long)]
        initrd: Option<String>,
        /// Kernel command line.
        #[arg(long)]
        cmdline: Option<String>,
    },
    /// Add or replace a virtual DSA before boot (PUT /dsa/ID); omitted values use defaults.
    AddDsa {
        /// Device id.
        id: String,
        /// Execution backend.
        #[arg(long, default_value = "software")]
        backend: String,
        /// Work queues (1-8).
        #[arg(long)]
        wqs: Option<u32>,
        /// Engines (1-4).
        #[arg(long)]
        engines: Option<u32>,
        /// Groups (1-4).
        #[arg(long)]
        groups: Option<u32>,
        /// Sum of all WQ sizes (1-128).
        #[arg(long)]
        total_wq_size: Option<u32>,
        /// Largest transfer is 2^N bytes (21-26; with the batch shift at most 31).
        #[arg(long)]
        max_xfer_shift: Option<u32>,
        /// Largest batch is 2^N descriptors (5-10).
        #[arg(long)]
        max_batch_shift: Option<u32>,
    },
    /// Show a virtual DSA: configuration, guest-programmed state and counters (GET /dsa/ID).
    Dsa {
        /// Device id.
        id: String,
    },
    /// Remove a virtual DSA before boot (DELETE /dsa/ID).
    RemoveDsa {
        /// Device id.
        id: String,
    },
    /// Boot the configured VM (action InstanceStart).
    Boot,
    /// Pause the vCPUs (action Pause).
    Pause,
    /// Resume the vCPUs (action Resume).
    Resume,
    /// Stop the VM and the VMM (action Shutdown).
    Shutdown,
    /// Send Ctrl-Alt-Del to the guest (action SendCtrlAltDel).
    CtrlAltDel,
    /// Print the Prometheus metrics (GET /metrics).
    Metrics,
    /// Change the log level and/or destination (PUT /logger).
    Logger {
        /// Off, Error, Warn, Info, Debug or Trace.
        #[arg(long)]
        level: Option<String>,
        /// Log file.
        #[arg(long)]
        log_path: Option<String>,
    },
    /// Print the OpenAPI document (GET /openapi.json).
    Openapi,
    /// Any request: METHOD PATH [JSON-BODY].
    Call {
        /// HTTP method (GET, PUT, DELETE).
        method: String,
        /// Path, e.g. /dsa/0.
        path: String,
        /// JSON body.
        body: Option<String>,
    },
}

/// One HTTP request: method, path, optional JSON body.
pub type PlannedCall = (String, String, Option<String>);

fn action(kind: &str) -> PlannedCall {
    (
        "PUT".into(),
        "/actions".into(),
        Some(json!({ "action_type": kind }).to_string()),
    )
}

fn get(path: &str) -> PlannedCall {
    ("GET".into(), path.into(), None)
}

/// Drops `None` fields so that the server applies its defaults.
fn object(fields: &[(&str, serde_json::Value)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

impl RemoteCommand {
    /// The HTTP request this verb makes. Values are checked by the server, not here.
    pub fn plan(&self) -> PlannedCall {
        match self {
            RemoteCommand::Info => get("/"),
            RemoteCommand::Version => get("/version"),
            RemoteCommand::Config => get("/vm/config"),
            RemoteCommand::MachineConfig {
                vcpus: Some(vcpus),
                memory_mib: Some(memory_mib),
            } => (
                "PUT".into(),
                "/machine-config".into(),
                Some(json!({ "vcpus": vcpus, "memory_mib": memory_mib }).to_string()),
            ),
            RemoteCommand::MachineConfig { .. } => get("/machine-config"),
            RemoteCommand::BootSource {
                kernel,
                initrd,
                cmdline,
            } => (
                "PUT".into(),
                "/boot-source".into(),
                Some(object(&[
                    ("kernel_image_path", json!(kernel)),
                    ("initrd_path", json!(initrd)),
                    ("boot_args", json!(cmdline)),
                ])),
            ),
            RemoteCommand::AddDsa {
                id,
                backend,
                wqs,
                engines,
                groups,
                total_wq_size,
                max_xfer_shift,
                max_batch_shift,
            } => (
                "PUT".into(),
                format!("/dsa/{id}"),
                Some(object(&[
                    ("backend", json!(backend)),
                    ("wqs", json!(wqs)),
                    ("engines", json!(engines)),
                    ("groups", json!(groups)),
                    ("total_wq_size", json!(total_wq_size)),
                    ("max_xfer_shift", json!(max_xfer_shift)),
                    ("max_batch_shift", json!(max_batch_shift)),
                ])),
            ),
            RemoteCommand::Dsa { id } => get(&format!("/dsa/{id}")),
            RemoteCommand::RemoveDsa { id } => ("DELETE".into(), format!("/dsa/{id}"), None),
            RemoteCommand::Boot => action("InstanceStart"),
            RemoteCommand::Pause => action("Pause"),
            RemoteCommand::Resume => action("Resume"),
            RemoteCommand::Shutdown => action("Shutdown"),
            RemoteCommand::CtrlAltDel => action("SendCtrlAltDel"),
            RemoteCommand::Metrics => get("/metrics"),
            RemoteCommand::Logger { level, log_path } => (
                "PUT".into(),
                "/logger".into(),
                Some(object(&[
                    ("level", json!(level)),
                    ("log_path", json!(log_path)),
                ])),
            ),
            RemoteCommand::Openapi => get("/openapi.json"),
            RemoteCommand::Call { method, path, body } => {
                (method.to_ascii_uppercase(), path.clone(), body.clone())
            }
        }
    }
}

/// Runs a verb against the socket. Returns the text to print (pretty JSON, Prometheus
/// text, or an empty string for 204); an HTTP error status becomes the matching
/// [`ApiError`] carrying the server's `fault_message`.
pub fn run_remote(sock: &Path, command: &RemoteCommand) -> Result<String, ApiError> {
    let (method, path, body) = command.plan();
    let (status, text) = api_call(sock, &method, &path, body.as_deref())?;
    if !(200..300).contains(&status) {
        return Err(ApiError::from_response(status, &text));
    }
    Ok(match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if !text.is_empty() => serde_json::to_string_pretty(&v).unwrap_or(text),
        _ => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        verb: RemoteCommand,
    }

    fn plan(args: &[&str]) -> PlannedCall {
        let mut argv = vec!["remote"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().verb.plan()
    }

    #[test]
    fn verbs_map_to_calls() {
        assert_eq!(plan(&["info"]), get("/"));
        assert_eq!(plan(&["machine-config"]), get("/machine-config"));
        let (m, p, b) = plan(&["machine-config", "--vcpus", "2", "--memory-mib", "128"]);
        assert_eq!((m.as_str(), p.as_str()), ("PUT", "/machine-config"));
        let v: serde_json::Value = serde_json::from_str(&b.unwrap()).unwrap();
        assert_eq!(v, json!({"vcpus": 2, "memory_mib": 128}));
        assert!(Cli::try_parse_from(["remote", "machine-config", "--vcpus", "2"]).is_err());
        let (_, p, b) = plan(&["add-dsa", "0", "--wqs", "4"]);
        assert_eq!(p, "/dsa/0");
        let v: serde_json::Value = serde_json::from_str(&b.unwrap()).unwrap();
        assert_eq!(v, json!({"backend": "software", "wqs": 4}));
        assert_eq!(plan(&["dsa", "0"]), get("/dsa/0"));
        assert_eq!(plan(&["remove-dsa", "0"]).0, "DELETE");
        let (_, p, b) = plan(&["ctrl-alt-del"]);
        assert_eq!(p, "/actions");
        assert_eq!(b.unwrap(), r#"{"action_type":"SendCtrlAltDel"}"#);
        assert_eq!(
            plan(&["boot"]).2.unwrap(),
            r#"{"action_type":"InstanceStart"}"#
        );
        let (_, _, b) = plan(&[
            "boot-source",
            "--kernel",
            "/k",
            "--cmdline",
            "console=ttyS0",
        ]);
        let v: serde_json::Value = serde_json::from_str(&b.unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"})
        );
        assert_eq!(plan(&["call", "get", "/metrics"]), get("/metrics"));
    }
}
