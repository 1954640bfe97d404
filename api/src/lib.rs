//! dsavmm's REST control API.
//!
//! - [`types`]: request/response bodies and the config file ([`parse_config_file`]).
//! - [`request`]: the seam to the VMM thread ([`ApiRequest`], [`ApiReply`], [`ApiMessage`]).
//! - [`server`]: hyper on a UNIX socket ([`start_api_server`]).
//! - [`router`]: the route table ([`ROUTES`]); [`openapi`]: the OpenAPI 3 document.
//! - [`client`]: [`api_call`] and the `dsavmm remote` verbs ([`RemoteCommand`]).
//! - [`metrics`]: Prometheus text helpers ([`prometheus_line`]).
//!
//! The crate knows nothing of the VMM or the devices: it validates input, hands the VMM
//! typed requests over a channel plus an eventfd, and turns typed replies into HTTP.
//!
//! # Wiring it into a VMM
//!
//! ```no_run
//! use std::sync::mpsc::channel;
//! use api::{ApiError, ApiReply, ApiRequest, ApiResponse};
//! use vmm_sys_util::eventfd::EventFd;
//!
//! fn handle(req: ApiRequest) -> ApiResponse {
//!     match req {
//!         ApiRequest::GetMetrics => Ok(ApiReply::Metrics(api::prometheus_line("up", &[], 1u8))),
//!         other => Err(ApiError::Conflict(format!("{other:?} is not possible now"))),
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, rx) = channel();
//! let api_evt = EventFd::new(libc::EFD_NONBLOCK)?;            // register with the event manager
//! let server = api::start_api_server("/tmp/dsavmm.sock".as_ref(), tx, api_evt.try_clone()?)?;
//! // In the event-manager subscriber for `api_evt` (EPOLLIN):
//! let _ = api_evt.read();                                     // reset; EAGAIN is harmless
//! while let Ok(msg) = rx.try_recv() {                         // one wake-up may cover many
//!     msg.respond(handle);                                    // never blocks on a vCPU
//! }
//! // On exit (also after a `Shutdown` action was answered):
//! server.stop();                                              // joins the thread, removes the socket
//! # Ok(())
//! # }
//! ```
//!
//! A `--config-file` is applied through the same handler:
//! `for r in api::parse_config_file(&text)?.into_requests() { handle(r)?; }`.

pub mod client;
mod error;
pub mod metrics;
pub mod openapi;
pub mod request;
pub mod router;
pub mod server;
pub mod types;

pub use client::{api_call, run_remote, ApiConnection, RemoteCommand};
pub use error::{ApiError, Fault};
pub use metrics::{prometheus_header, prometheus_line, PROMETHEUS_CONTENT_TYPE};
pub use openapi::OPENAPI_JSON;
pub use request::{ApiMessage, ApiReply, ApiRequest, ApiResponse, ReplyReceiver, ReplySender};
pub use router::ROUTES;
pub use server::{
    start_api_server, start_api_server_with, ApiServerHandle, ApiServerOptions, ThreadStart,
};
pub use types::{
    parse_config_file, Action, ActionType, BootSource, DsaBackend, DsaDeviceConfig, DsaDeviceInfo,
    DsaEntry, DsaExecution, InstanceInfo, InstanceState, LogLevel, LoggerConfig, MachineConfig,
    PortalMode, Validate, VersionInfo, VmConfig,
};

/// The VMM version reported by `GET /version` (the workspace version).
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The API version; equals `info.version` of `api/openapi.json`.
pub const API_VERSION: &str = "1.0.0";
