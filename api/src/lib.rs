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
pub use server::{start_api_server, start_api_server_with, ApiServerHandle, ApiServerOptions};
pub use types::{
    parse_config_file, Action, ActionType, BootSource, DsaBackend, DsaDeviceConfig, DsaDeviceInfo,
    DsaEntry, InstanceInfo, InstanceState, LogLevel, LoggerConfig, MachineConfig, Validate,
    VersionInfo, VmConfig,
};

/// The VMM version reported by `GET /version` (the workspace version).
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The API version; equals `info.version` of `api/openapi.json`.
pub const API_VERSION: &str = "1.0.0";
