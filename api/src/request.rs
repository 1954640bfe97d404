//! The seam between the API thread and the VMM thread.
//!
//! The API thread parses and validates an HTTP request into an [`ApiRequest`], sends an
//! [`ApiMessage`] (the request plus a one-shot [`ReplySender`]) over a
//! `std::sync::mpsc::Sender<ApiMessage>`, and writes 1 to an `EventFd` so that the VMM's
//! event-manager loop wakes up. The VMM, on that event:
//!
//! ```ignore
//! let _ = api_evt.read();                    // reset the eventfd counter
//! while let Ok(msg) = api_rx.try_recv() {    // drain: one write may cover many messages
//!     let response = vmm.handle(msg.request); // never blocks on a vCPU
//!     msg.reply.send(response);
//! }
//! ```
//!
//! The API thread awaits the reply asynchronously, so other connections keep being served
//! while the VMM works. A request never waits on a vCPU: the VMM answers from its own
//! state (the vCPUs are signalled, not joined, for Pause/Shutdown).

use tokio::sync::oneshot;

use crate::types::{
    Action, BootSource, DsaDeviceConfig, DsaDeviceInfo, InstanceInfo, LoggerConfig, MachineConfig,
    VmConfig,
};
use crate::ApiError;

/// A validated request for the VMM thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /` → [`ApiReply::InstanceInfo`].
    GetInstanceInfo,
    /// `GET /vm/config` → [`ApiReply::VmConfig`]: the whole configuration, as a config file.
    GetVmConfig,
    /// `PUT /machine-config` → [`ApiReply::Empty`]; 409 after boot.
    PutMachineConfig(MachineConfig),
    /// `GET /machine-config` → [`ApiReply::MachineConfig`].
    GetMachineConfig,
    /// `PUT /boot-source` → [`ApiReply::Empty`]; 409 after boot; 400 if a file is missing.
    PutBootSource(BootSource),
    /// `PUT /dsa/{id}` → [`ApiReply::Empty`]; creates or replaces; 409 after boot.
    PutDsa(String, DsaDeviceConfig),
    /// `GET /dsa/{id}` → [`ApiReply::DsaDevice`]; 404 for an unknown id.
    GetDsa(String),
    /// `DELETE /dsa/{id}` → [`ApiReply::Empty`]; 404 for an unknown id; 409 after boot.
    DeleteDsa(String),
    /// `PUT /actions` → [`ApiReply::Empty`]; 409 when the state forbids the action.
    Action(Action),
    /// `GET /metrics` → [`ApiReply::Metrics`] (Prometheus text, see [`crate::prometheus_line`]).
    GetMetrics,
    /// `PUT /logger` → [`ApiReply::Empty`].
    PutLogger(LoggerConfig),
}

/// A successful answer from the VMM.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiReply {
    /// 204 No Content.
    Empty,
    /// 200, JSON.
    InstanceInfo(InstanceInfo),
    /// 200, JSON.
    VmConfig(VmConfig),
    /// 200, JSON.
    MachineConfig(MachineConfig),
    /// 200, JSON.
    DsaDevice(DsaDeviceInfo),
    /// 200, `text/plain; version=0.0.4` (Prometheus exposition format).
    Metrics(String),
}

/// What the VMM answers: a reply, or an error whose variant sets the HTTP status.
pub type ApiResponse = Result<ApiReply, ApiError>;

impl ApiRequest {
    /// Whether `reply` is the kind of reply this request must get (the API thread turns a
    /// mismatch into a 500, since it is a VMM bug).
    pub fn accepts(&self, reply: &ApiReply) -> bool {
        matches!(
            (self, reply),
            (ApiRequest::GetInstanceInfo, ApiReply::InstanceInfo(_))
                | (ApiRequest::GetVmConfig, ApiReply::VmConfig(_))
                | (ApiRequest::GetMachineConfig, ApiReply::MachineConfig(_))
                | (ApiRequest::GetDsa(_), ApiReply::DsaDevice(_))
                | (ApiRequest::GetMetrics, ApiReply::Metrics(_))
                | (ApiRequest::PutMachineConfig(_), ApiReply::Empty)
                | (ApiRequest::PutBootSource(_), ApiReply::Empty)
                | (ApiRequest::PutDsa(..), ApiReply::Empty)
                | (ApiRequest::DeleteDsa(_), ApiReply::Empty)
                | (ApiRequest::Action(_), ApiReply::Empty)
                | (ApiRequest::PutLogger(_), ApiReply::Empty)
        )
    }
}

impl VmConfig {
    /// The config file as the sequence of API requests that applies it (logger first, then
    /// machine-config, boot-source, and each DSA in order). Lets the VMM apply a
    /// `--config-file` through the same handler as the API.
    pub fn into_requests(self) -> Vec<ApiRequest> {
        let mut out = Vec::with_capacity(3 + self.dsa.len());
        if let Some(l) = self.logger {
            out.push(ApiRequest::PutLogger(l));
        }
        if let Some(m) = self.machine_config {
            out.push(ApiRequest::PutMachineConfig(m));
        }
        if let Some(b) = self.boot_source {
            out.push(ApiRequest::PutBootSource(b));
        }
        out.extend(
            self.dsa
                .into_iter()
                .map(|d| ApiRequest::PutDsa(d.id, d.config)),
        );
        out
    }
}

/// The per-request reply channel. Sending never blocks; dropping it unsent makes the API
/// thread answer 500 ("the VMM dropped the request").
#[derive(Debug)]
pub struct ReplySender(oneshot::Sender<ApiResponse>);

/// The receiving half of [`ReplySender`] (used by the API thread, and by tests).
#[derive(Debug)]
pub struct ReplyReceiver(oneshot::Receiver<ApiResponse>);

impl ReplySender {
    /// A new reply channel.
    pub fn pair() -> (ReplySender, ReplyReceiver) {
        let (tx, rx) = oneshot::channel();
        (ReplySender(tx), ReplyReceiver(rx))
    }

    /// Sends the VMM's answer. A client that went away in the meantime is not an error.
    pub fn send(self, response: ApiResponse) {
        // The receiver is gone only when the HTTP connection closed; nothing to do then.
        let _ = self.0.send(response);
    }

    /// Whether the waiting side is gone (the client disconnected).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl ReplyReceiver {
    /// Waits for the reply (async; used by the API thread).
    pub async fn recv(self) -> Option<ApiResponse> {
        self.0.await.ok()
    }

    /// Waits for the reply, blocking the calling thread. Never call it from an async task.
    pub fn blocking_recv(self) -> Option<ApiResponse> {
        self.0.blocking_recv().ok()
    }
}

/// What travels over the request channel: a request and where to answer it.
#[derive(Debug)]
pub struct ApiMessage {
    /// The validated request.
    pub request: ApiRequest,
    /// Where the VMM sends its [`ApiResponse`].
    pub reply: ReplySender,
}

impl ApiMessage {
    /// Answers the message with `handler(request)`.
    pub fn respond(self, handler: impl FnOnce(ApiRequest) -> ApiResponse) {
        let ApiMessage { request, reply } = self;
        reply.send(handler(request));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ActionType, DsaEntry};

    #[test]
    fn reply_kinds() {
        assert!(ApiRequest::GetMetrics.accepts(&ApiReply::Metrics(String::new())));
        assert!(!ApiRequest::GetMetrics.accepts(&ApiReply::Empty));
        let act = ApiRequest::Action(Action {
            action_type: ActionType::Pause,
        });
        assert!(act.accepts(&ApiReply::Empty));
    }

    #[test]
    fn config_into_requests_order() {
        let c = VmConfig {
            machine_config: Some(MachineConfig {
                vcpus: 1,
                memory_mib: 64,
            }),
            boot_source: None,
            dsa: vec![DsaEntry {
                id: "0".into(),
                config: DsaDeviceConfig::default(),
            }],
            logger: Some(LoggerConfig {
                level: None,
                log_path: Some("/tmp/l".into()),
            }),
        };
        let r = c.into_requests();
        assert!(matches!(r[0], ApiRequest::PutLogger(_)));
        assert!(matches!(r[1], ApiRequest::PutMachineConfig(_)));
        assert!(matches!(&r[2], ApiRequest::PutDsa(id, _) if id == "0"));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn reply_channel() {
        let (tx, rx) = ReplySender::pair();
        let msg = ApiMessage {
            request: ApiRequest::GetMetrics,
            reply: tx,
        };
        std::thread::spawn(move || msg.respond(|_| Ok(ApiReply::Metrics("x 1\n".into()))));
        assert_eq!(
            rx.blocking_recv().unwrap().unwrap(),
            ApiReply::Metrics("x 1\n".into())
        );
        let (tx, rx) = ReplySender::pair();
        drop(tx);
        assert!(rx.blocking_recv().is_none());
    }
}
