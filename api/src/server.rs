//! The HTTP/1.1 server on a UNIX socket.
//!
//! One thread ("dsavmm-api") runs a current-thread tokio runtime with hyper 1.x. Each
//! connection is its own task, so a slow or stalled client only holds its own connection
//! (and is dropped after the header/body read timeouts). The number of connections is
//! bounded; when all slots are taken, a new connection evicts the one that has been idle or
//! incomplete the longest (see [`Registry`]), so stalled clients cannot lock others out. Requests the VMM must answer go
//! over the [`ApiMessage`] channel with an eventfd wake-up (see [`crate::request`]); the
//! task awaits the per-request reply without blocking the runtime. `GET /version` and
//! `GET /openapi.json` are answered here.
//!
//! The socket is created with mode 0600 (bound inside a private 0700 directory, then
//! hard-linked into place, so there is no window with a wider mode and an existing file is
//! never replaced by accident). An existing non-socket file at the path is an error, a
//! live socket is an error, a stale socket (connection refused) is replaced. The socket is
//! removed when the [`ApiServerHandle`] is stopped or dropped.

use std::convert::Infallible;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::sync::{oneshot, Notify, Semaphore};
use vmm_sys_util::eventfd::EventFd;

use crate::metrics::PROMETHEUS_CONTENT_TYPE;
use crate::request::{ApiMessage, ApiReply, ApiRequest, ReplySender};
use crate::router::{resolve, Endpoint};
use crate::types::VersionInfo;
use crate::{ApiError, API_VERSION, OPENAPI_JSON, VMM_VERSION};

/// Tunables of the server; [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Largest accepted request body (413 above it). Default 64 KiB.
    pub body_limit: usize,
    /// Time a client has to send the request line and headers. Default 5 s.
    pub header_read_timeout: Duration,
    /// Time a client has to send the body once headers are in (408 after it). Default 10 s.
    pub body_read_timeout: Duration,
    /// Time the VMM has to answer (500 after it: a VMM bug). Default 60 s.
    pub reply_timeout: Duration,
    /// Connections open at once. When all are open, a new connection evicts the one idle
    /// (or still sending its request) the longest; it is refused only when every connection
    /// has a request the VMM is answering. Default 128.
    pub max_connections: usize,
    /// On stop, how long requests in flight may take to finish (their answers are still
    /// written, e.g. the 204 of a `Shutdown` action). Default 2 s.
    pub shutdown_grace: Duration,
    /// Run on the API thread before it reads its first request (the VMM installs the thread's
    /// seccomp filter here); an error fails [`start_api_server_with`]. Default none.
    pub thread_start: Option<ThreadStart>,
}

/// A hook run first on the API thread; see [`ApiServerOptions::thread_start`].
#[derive(Clone)]
pub struct ThreadStart(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for ThreadStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadStart(..)")
    }
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            body_limit: 64 * 1024,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(60),
            max_connections: 128,
            shutdown_grace: Duration::from_secs(2),
            thread_start: None,
        }
    }
}

/// The running server. Dropping it (or [`ApiServerHandle::stop`]) stops the thread and
/// removes the socket file, if the file at the path is still the one it created.
#[derive(Debug)]
pub struct ApiServerHandle {
    path: PathBuf,
    inode: (u64, u64),
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the server thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the server: no new connections; requests in flight finish (up to
    /// [`ApiServerOptions::shutdown_grace`]), idle connections close; joins the thread and
    /// removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Waits until the server thread ends by itself (only on a fatal listener error), then
    /// removes the socket.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the API server thread panicked");
            }
        }
        // Remove the socket only if it is still ours (not replaced by another process).
        if let Ok(md) = fs::symlink_metadata(&self.path) {
            if (md.dev(), md.ino()) == self.inode {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the API server on `path` with the default [`ApiServerOptions`].
///
/// Requests for the VMM are sent on `to_vmm` and announced by writing 1 to `wake` (a clone
/// of the EventFd the VMM's event loop watches). On return the socket accepts connections.
pub fn start_api_server(
    path: &Path,
    to_vmm: Sender<ApiMessage>,
    wake: EventFd,
) -> Result<ApiServerHandle, ApiError> {
    start_api_server_with(path, to_vmm, wake, ApiServerOptions::default())
}

/// [`start_api_server`] with explicit options.
pub fn start_api_server_with(
    path: &Path,
    to_vmm: Sender<ApiMessage>,
    wake: EventFd,
    options: ApiServerOptions,
) -> Result<ApiServerHandle, ApiError> {
    let (listener, inode) = bind_socket(path)?;
    let cleanup = |e: ApiError| {
        let _ = fs::remove_file(path);
        e
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| cleanup(ApiError::io("setting the API socket non-blocking", e)))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| cleanup(ApiError::io("creating the API runtime", e)))?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::from_std(listener)
            .map_err(|e| cleanup(ApiError::io("registering the API socket", e)))?
    };
    let ctx = Arc::new(Ctx {
        to_vmm,
        wake,
        options,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let thread_start = ctx.options.thread_start.clone();
    let thread = std::thread::Builder::new()
        .name("dsavmm-api".into())
        .spawn(move || {
            let started = thread_start.map_or(Ok(()), |f| (f.0)());
            let ok = started.is_ok();
            let _ = started_tx.send(started);
            if ok {
                runtime.block_on(serve(listener, ctx, stop_rx));
            }
        })
        .map_err(|e| cleanup(ApiError::io("spawning the API thread", e)))?;
    let started = started_rx
        .recv()
        .unwrap_or_else(|_| Err("the API thread ended before it started serving".into()));
    if let Err(e) = started {
        let _ = thread.join();
        return Err(cleanup(ApiError::ThreadStart(e)));
    }
    Ok(ApiServerHandle {
        path: path.to_path_buf(),
        inode,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Removes the private temporary directory used for binding, whatever happens.
struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0.join("s"));
        let _ = fs::remove_dir(&self.0);
    }
}

fn bind_socket(path: &Path) -> Result<(std::os::unix::net::UnixListener, (u64, u64)), ApiError> {
    let shown = path.display().to_string();
    // sun_path holds 107 bytes and a NUL; a longer path could be created (by link()) but
    // no client could connect() to it.
    const SUN_PATH_MAX: usize = 107;
    if path.as_os_str().len() > SUN_PATH_MAX {
        return Err(ApiError::io(
            format!("API socket path {shown}"),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("longer than the {SUN_PATH_MAX} bytes a UNIX socket address holds"),
            ),
        ));
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::io(format!("inspecting {shown}"), e)),
        Ok(md) if md.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ApiError::io(
                        format!("API socket {shown}"),
                        io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "another process is serving on this socket",
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!("replacing stale API socket {shown}");
                    fs::remove_file(path)
                        .map_err(|e| ApiError::io(format!("removing stale socket {shown}"), e))?;
                }
                Err(e) => return Err(ApiError::io(format!("probing existing socket {shown}"), e)),
            }
        }
        Ok(_) => {
            return Err(ApiError::io(
                format!("API socket path {shown}"),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket exists there; refusing to replace it",
                ),
            ))
        }
    }

    // Bind inside a fresh 0700 directory beside the target, set 0600, then hard-link the
    // socket into place: link() fails with EEXIST rather than replacing a file that
    // appeared in the meantime, and the socket is never reachable with a wider mode.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(
        ".dsavmm-api-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // If the private path would not fit in sun_path, bind at the target and chmod at once
    // (the mode is then wider than 0600, within the umask, for the few microseconds in
    // between).
    if tmp.as_os_str().len() + 2 > SUN_PATH_MAX {
        let listener = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| ApiError::io(format!("binding API socket {shown}"), e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| ApiError::io("setting the API socket's mode to 0600", e))?;
        let md = fs::symlink_metadata(path)
            .map_err(|e| ApiError::io(format!("inspecting {shown}"), e))?;
        return Ok((listener, (md.dev(), md.ino())));
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| ApiError::io(format!("creating {}", tmp.display()), e))?;
    let guard = TempDirGuard(tmp);
    let tmp_sock = guard.0.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&tmp_sock)
        .map_err(|e| ApiError::io(format!("binding the API socket near {shown}"), e))?;
    fs::set_permissions(&tmp_sock, fs::Permissions::from_mode(0o600))
        .map_err(|e| ApiError::io("setting the API socket's mode to 0600", e))?;
    fs::hard_link(&tmp_sock, path)
        .map_err(|e| ApiError::io(format!("creating API socket {shown}"), e))?;
    drop(guard);
    let md =
        fs::symlink_metadata(path).map_err(|e| ApiError::io(format!("inspecting {shown}"), e))?;
    Ok((listener, (md.dev(), md.ino())))
}

struct Ctx {
    to_vmm: Sender<ApiMessage>,
    wake: EventFd,
    options: ApiServerOptions,
}

/// The open connections, for eviction when the server is full.
///
/// A connection is *busy* while the VMM works on one of its requests; otherwise it is idle
/// (between keep-alive requests) or incomplete (still sending its request line, headers or
/// body). When every slot is taken, a new connection evicts the connection that has been
/// idle or incomplete the longest, so a client that holds connections open without
/// completing requests can never lock a well-behaved client out. Only when every open
/// connection is busy is a new one refused.
#[derive(Default)]
struct Registry {
    conns: std::collections::BTreeMap<u64, ConnInfo>,
    next_id: u64,
    /// Ticks on every accept and every finished request: orders connections by how long
    /// they have been idle.
    clock: u64,
}

struct ConnInfo {
    /// Requests of this connection the VMM is working on (hyper serves one at a time).
    busy: u32,
    /// [`Registry::clock`] when the connection last became idle (or was accepted).
    idle_since: u64,
    evict: Arc<Notify>,
}

type SharedRegistry = Arc<std::sync::Mutex<Registry>>;

fn lock(reg: &SharedRegistry) -> std::sync::MutexGuard<'_, Registry> {
    // The registry holds no invariant a panicking holder could break half-way.
    reg.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn add(&mut self) -> (u64, Arc<Notify>) {
        let id = self.next_id;
        self.next_id += 1;
        self.clock += 1;
        let evict = Arc::new(Notify::new());
        self.conns.insert(
            id,
            ConnInfo {
                busy: 0,
                idle_since: self.clock,
                evict: evict.clone(),
            },
        );
        (id, evict)
    }

    /// Tells the connection idle or incomplete for the longest time to close; false when
    /// every connection is busy.
    fn evict_oldest_idle(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.busy == 0)
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.conns.remove(&id)) {
            Some(c) => {
                // notify_one keeps the wake-up if the task is not waiting at this moment.
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn set_busy(&mut self, id: u64, busy: bool) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(c) = self.conns.get_mut(&id) {
            if busy {
                c.busy += 1;
            } else {
                c.busy = c.busy.saturating_sub(1);
                c.idle_since = clock;
            }
        }
    }
}

/// Marks a connection busy while it lives (a request the VMM is answering).
struct BusyGuard {
    reg: SharedRegistry,
    id: u64,
}

impl BusyGuard {
    fn new(reg: &SharedRegistry, id: u64) -> Self {
        lock(reg).set_busy(id, true);
        BusyGuard {
            reg: reg.clone(),
            id,
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.reg).set_busy(self.id, false);
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct ConnGuard {
    reg: SharedRegistry,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.reg).conns.remove(&self.id);
    }
}

/// How long a new connection waits for an evicted one to give back its slot. The evicted
/// task only has to be polled once on this same thread, so this is never reached in
/// practice; it bounds the wait should that task be stuck.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

async fn serve(listener: tokio::net::UnixListener, ctx: Arc<Ctx>, mut stop: oneshot::Receiver<()>) {
    let max = ctx.options.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let registry: SharedRegistry = Arc::default();
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !lock(&registry).evict_oldest_idle() {
                    tracing::warn!(
                        "API connection limit ({max}) reached with every connection busy; \
                         closing a new connection"
                    );
                    drop(stream);
                    continue;
                }
                tracing::debug!(
                    "API connection limit ({max}) reached; evicted the connection idle the longest"
                );
                match tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        tracing::warn!(
                            "an evicted API connection did not close; closing a new connection"
                        );
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let (id, evict) = lock(&registry).add();
        let ctx = ctx.clone();
        let reg = registry.clone();
        let mut drain = drain_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _registered = ConnGuard {
                reg: reg.clone(),
                id,
            };
            let service =
                hyper::service::service_fn(|req| handle(ctx.clone(), reg.clone(), id, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ctx.options.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("API connection ended: {e}");
                        }
                        break;
                    }
                    _ = drain.changed(), if !draining => {
                        // Finish the request in flight, then close.
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = evict.notified() => {
                        tracing::debug!("API connection evicted to make room for a new one");
                        break;
                    }
                }
            }
        });
    }
    // Stop accepting, let the connections finish what they are doing, then return (which
    // drops the runtime and with it any connection still open).
    drop(listener);
    let _ = drain_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(ctx.options.shutdown_grace, slots.acquire_many(all)).await;
}

type HttpResponse = Response<Full<Bytes>>;

async fn handle(
    ctx: Arc<Ctx>,
    reg: SharedRegistry,
    id: u64,
    req: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let response = match dispatch(&ctx, &reg, id, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status() >= 500 {
                tracing::error!("API {method} {path}: {e}");
            } else {
                tracing::debug!("API {method} {path}: {e}");
            }
            error_response(&e)
        }
    };
    Ok(response)
}

async fn dispatch(
    ctx: &Ctx,
    reg: &SharedRegistry,
    id: u64,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let route = resolve(req.method().as_str(), req.uri().path())?;
    let body = if route.has_body() {
        read_body(ctx, req).await?
    } else {
        Bytes::new()
    };
    match route.build(&body)? {
        Endpoint::Version => json_response(&VersionInfo {
            vmm_version: VMM_VERSION.into(),
            api_version: API_VERSION.into(),
        }),
        Endpoint::OpenApi => Ok(response(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(OPENAPI_JSON.as_bytes()),
        )),
        Endpoint::Vmm(request) => {
            // The request is complete: from here until the answer the connection is not
            // evicted (a client still sending its headers or body is).
            let _busy = BusyGuard::new(reg, id);
            forward(ctx, request).await
        }
    }
}

/// Most bytes of an oversized body read and thrown away before the 413 goes out. A client that
/// is still sending when the server closes the connection gets a reset instead of the 413, so a
/// moderately oversized body is drained first; anything larger is cut off.
const OVERSIZE_DRAIN_MAX: u64 = 1 << 20;

async fn read_body(ctx: &Ctx, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = ctx.options.body_limit;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > OVERSIZE_DRAIN_MAX) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = req.into_body();
    let read = async {
        let mut buf = Vec::new();
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::BadRequest(format!("failed to read the request body: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            seen += data.len() as u64;
            if seen > OVERSIZE_DRAIN_MAX {
                break;
            }
            if seen <= limit as u64 {
                buf.extend_from_slice(&data);
            }
        }
        if seen > limit as u64 {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(ctx.options.body_read_timeout, read).await {
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            ctx.options.body_read_timeout.as_secs_f64()
        ))),
        Ok(r) => r,
    }
}

async fn forward(ctx: &Ctx, request: ApiRequest) -> Result<HttpResponse, ApiError> {
    let (reply, receiver) = ReplySender::pair();
    let expected = request.clone();
    ctx.to_vmm
        .send(ApiMessage { request, reply })
        .map_err(|_| {
            ApiError::Unavailable("the VMM is not taking requests (it is exiting)".into())
        })?;
    if let Err(e) = ctx.wake.write(1) {
        tracing::error!("waking the VMM thread failed: {e}");
    }
    let answer = tokio::time::timeout(ctx.options.reply_timeout, receiver.recv())
        .await
        .map_err(|_| {
            ApiError::Internal(format!(
                "the VMM did not answer within {} s",
                ctx.options.reply_timeout.as_secs_f64()
            ))
        })?
        .ok_or_else(|| {
            ApiError::Internal("the VMM dropped the request without answering".into())
        })??;
    if !expected.accepts(&answer) {
        return Err(ApiError::Internal(format!(
            "the VMM answered {expected:?} with the wrong kind of reply"
        )));
    }
    match answer {
        ApiReply::Empty => Ok(response(StatusCode::NO_CONTENT, "", Bytes::new())),
        ApiReply::InstanceInfo(v) => json_response(&v),
        ApiReply::VmConfig(v) => json_response(&v),
        ApiReply::MachineConfig(v) => json_response(&v),
        ApiReply::DsaDevice(v) => json_response(&v),
        ApiReply::Metrics(text) => Ok(response(
            StatusCode::OK,
            PROMETHEUS_CONTENT_TYPE,
            Bytes::from(text),
        )),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> HttpResponse {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if !content_type.is_empty() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    r
}

fn json_response<T: Serialize>(value: &T) -> Result<HttpResponse, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ApiError::Internal(format!("serializing the reply: {e}")))?;
    Ok(response(
        StatusCode::OK,
        "application/json",
        Bytes::from(body),
    ))
}

fn error_response(err: &ApiError) -> HttpResponse {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&err.to_fault()).unwrap_or_else(|_| {
        br#"{"fault_message":"internal error while formatting an error"}"#.to_vec()
    });
    let mut r = response(status, "application/json", Bytes::from(body));
    match err {
        ApiError::MethodNotAllowed { allow, .. } => {
            if let Ok(v) = HeaderValue::from_str(allow) {
                r.headers_mut().insert(ALLOW, v);
            }
        }
        // The rest of the body was not read: do not reuse the connection.
        ApiError::PayloadTooLarge { .. } | ApiError::RequestTimeout(_) => {
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    r
}
