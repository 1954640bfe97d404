//! `dsavmm dsa-server`: the listening socket, one [`Session`] per client, and the relay that
//! puts the [`wire`] check in front of the `vfio_user` crate's server.
//!
//! Per client (threads named so that seccomp and `ps -T` tell them apart):
//!
//! ```text
//!  client ──> dsa-relay  (read a whole message, wire::check, forward or reply EINVAL)
//!                │ private socket (a 0700 directory, unlinked once connected)
//!                v
//!             dsa-proto  (vfio_user::Server::run -> Session: regions, DMA, IRQs, reset)
//!                │ replies (errno 0 in error replies fixed) and their fds
//!  client <── dsa-reply
//!             dsa-portal (the mapped-portal watcher)
//! ```
//!
//! A client that disconnects, breaks the framing or exits ends its session: its device (WQs,
//! engines, DMA windows, eventfds) is dropped; the server goes on accepting. At most
//! `max_clients` sessions run at once; a client beyond that is told nothing and closed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::session::Session;
use super::shared_portal;
use super::wire::{self, Header, Verdict, HEADER_SIZE};
use super::ServerError;
use crate::dsa::DsaConfig;

/// Called once on the accepting thread before the first client: the VMM installs its seccomp
/// filter there, and every session thread inherits it.
pub type ThreadStart = Arc<dyn Fn(&'static str) -> Result<(), String> + Send + Sync>;

/// What `dsa-server` serves.
#[derive(Clone)]
pub struct ServerOptions {
    /// The listening socket's path.
    pub socket: PathBuf,
    /// Geometry of each client's vDSA.
    pub dsa: DsaConfig,
    /// Sessions at once.
    pub max_clients: usize,
    /// Offer BAR2 as mmappable shared pages (besides trapped region writes).
    pub mmap_portals: bool,
    /// Set-up hook of the accepting thread (inherited by every session thread).
    pub thread_start: Option<ThreadStart>,
}

/// How long a reply may wait for a client that does not read its socket.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most descriptors one message may carry (as the crate's server reads them).
const MAX_FDS: usize = 16;

/// A bound server, not yet accepting.
pub struct DsaServer {
    listener: UnixListener,
    path: PathBuf,
    opts: ServerOptions,
    active: Arc<AtomicUsize>,
}

impl Drop for DsaServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ServerError {
    move |e| ServerError::Io(what, e)
}

/// Binds `path`; a socket file nobody listens on any more (a server that died) is replaced,
/// a live one is an error.
fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::SocketInUse(path.to_path_buf()));
            }
            tracing::info!("replacing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
            UnixListener::bind(path).map_err(io_err("bind"))
        }
        Err(e) => Err(ServerError::Io("bind", e)),
    }
}

impl DsaServer {
    /// Validates the geometry and binds the socket.
    pub fn bind(opts: ServerOptions) -> Result<Self, ServerError> {
        opts.dsa.validate().map_err(crate::dsa::DsaError::from)?;
        if opts.max_clients == 0 {
            return Err(ServerError::MaxClients);
        }
        let listener = bind(&opts.socket)?;
        Ok(Self {
            listener,
            path: opts.socket.clone(),
            opts,
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Sessions running now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Accepts clients until `stop` is set (checked between connections; a connection to
    /// the socket wakes the loop).
    pub fn run(&self, stop: &AtomicBool) -> Result<(), ServerError> {
        if let Some(f) = &self.opts.thread_start {
            f("dsa-accept").map_err(ServerError::ThreadStart)?;
        }
        let mut next_id = 0u64;
        while !stop.load(Ordering::Acquire) {
            let (stream, _) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Out of descriptors or memory, or a client that gave up while queued: the
                // server goes on (after a pause, so that a full table can drain).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(
                            libc::EMFILE
                                | libc::ENFILE
                                | libc::ENOMEM
                                | libc::ENOBUFS
                                | libc::ECONNABORTED
                                | libc::EPROTO
                                | libc::EPERM
                        )
                    ) =>
                {
                    tracing::warn!("accept: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                Err(e) => return Err(ServerError::Io("accept", e)),
            };
            if stop.load(Ordering::Acquire) {
                break;
            }
            next_id += 1;
            if self.active() >= self.opts.max_clients {
                tracing::warn!(
                    "client {next_id} refused: {} of {} sessions in use",
                    self.active(),
                    self.opts.max_clients
                );
                continue;
            }
            self.active.fetch_add(1, Ordering::AcqRel);
            let opts = self.opts.clone();
            let active = self.active.clone();
            let spawned = std::thread::Builder::new()
                .name("dsa-relay".into())
                .spawn(move || {
                    tracing::info!("client {next_id} connected");
                    match run_session(stream, &opts, next_id) {
                        Ok(()) => tracing::info!("client {next_id} gone; its device was reset"),
                        Err(e) => tracing::warn!("client {next_id} dropped: {e}"),
                    }
                    active.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                self.active.fetch_sub(1, Ordering::AcqRel);
                tracing::error!("cannot start a session thread: {e}");
            }
        }
        Ok(())
    }
}

/// A directory only this user can enter, for the relay's private socket.
fn private_dir(id: u64) -> Result<PathBuf, ServerError> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::DirBuilderExt;
    // Unpredictable (another user cannot pre-create it), from the kernel's random bytes.
    let nonce = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let dir = std::env::temp_dir().join(format!(
        "dsavmm-dsa-{}-{id}-{nonce:016x}",
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("create the private socket directory"))?;
    Ok(dir)
}

/// Ends a session whichever way it ends: stops the watcher and shuts both sockets down, so
/// that every thread of the session returns (the protocol and reply threads see EOF).
struct Teardown {
    stop: Arc<AtomicBool>,
    sockets: Vec<UnixStream>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for s in &self.sockets {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn run_session(client: UnixStream, opts: &ServerOptions, id: u64) -> Result<(), ServerError> {
    let session = Session::new(opts.dsa)?;
    let dir = private_dir(id)?;
    let inner_path = dir.join("s");
    let server = vfio_user::Server::new(
        &inner_path,
        true,
        session.irqs(),
        session.regions(opts.mmap_portals),
    );
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            return Err(ServerError::Protocol(e));
        }
    };
    let inner = UnixStream::connect(&inner_path);
    let _ = std::fs::remove_file(&inner_path);
    let _ = std::fs::remove_dir(&dir);
    let inner = inner.map_err(io_err("connect the relay"))?;
    let clone = |s: &UnixStream| s.try_clone().map_err(io_err("clone a session socket"));
    let (client_out, inner_in) = (clone(&client)?, clone(&inner)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let result = {
        let _teardown = Teardown {
            stop: stop.clone(),
            sockets: vec![clone(&client)?, clone(&inner)?],
        };
        let (portal, dev, counters) =
            (session.portal(), session.device(), session.watch_counters());
        let watch_stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("dsa-portal".into())
                .spawn(move || {
                    shared_portal::watch(portal, dev, watch_stop, counters);
                    Ok(())
                })
                .map_err(io_err("spawn the portal watcher"))?,
        );
        let mut session = session;
        threads.push(
            std::thread::Builder::new()
                .name("dsa-proto".into())
                .spawn(move || {
                    let r = server.run(&mut session).map_err(ServerError::Protocol);
                    // One line per session with its counters (what the device ran, the DMA
                    // windows it was given), for the operator and the rig tests.
                    tracing::info!("client {id} summary: {}", session.summary());
                    r
                })
                .map_err(io_err("spawn the protocol thread"))?,
        );
        let (tx, rx) = std::sync::mpsc::channel();
        // A client that stops reading its replies gets a bounded wait, then the session ends.
        let _ = client_out.set_write_timeout(Some(REPLY_TIMEOUT));
        let reply = std::thread::Builder::new()
            .name("dsa-reply".into())
            .spawn(move || {
                let r = pump_replies(&inner_in, &client_out, rx);
                // A client that stopped reading (or left) must not leave the request side
                // blocked on a full socket: end both directions.
                let _ = inner_in.shutdown(std::net::Shutdown::Both);
                let _ = client_out.shutdown(std::net::Shutdown::Both);
                r
            })
            .map_err(io_err("spawn the reply thread"))?;
        let r = pump_requests(&client, &inner, &tx);
        // The client is done sending: the crate answers what it has, then sees EOF, and the
        // reply thread sends those answers before it ends.
        drop(tx);
        let _ = inner.shutdown(std::net::Shutdown::Write);
        if let Ok(Err(e)) = reply.join() {
            tracing::debug!("client {id}: {e}");
        }
        r
        // `_teardown` ends the rest of the session here, on every path.
    };
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            tracing::debug!("client {id}: {e}");
        }
    }
    result
}

/// What the reply thread sends back for each request, in request order.
enum Pending {
    /// Forwarded to the crate, which answers it; the client asked for no reply (only an error
    /// reply then reaches it).
    Forwarded { no_reply: bool },
    /// Refused by the framing check: this error reply.
    Rejected([u8; HEADER_SIZE]),
}

/// Receives up to `buf.len()` bytes and the descriptors that came with them.
fn recv_some(s: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<File>)> {
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at `buf`, live and writable for its length; `raw` has room
    // for MAX_FDS descriptors, which is all recvmsg is told it may install.
    let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let fds = raw[..nfds]
        .iter()
        // SAFETY: recvmsg just installed these descriptors for us; nothing else owns them.
        .map(|fd| unsafe { File::from_raw_fd(*fd) })
        .collect();
    Ok((n, fds))
}

/// A message as read: header, body, the descriptors that came with it.
type Message = (Header, Vec<u8>, Vec<File>);

/// Reads one whole message: header (with any descriptors) and body. `None` at a clean EOF.
fn read_message(s: &UnixStream, check: bool) -> Result<Option<Message>, ServerError> {
    let mut h = [0u8; HEADER_SIZE];
    let (n, fds) = recv_some(s, &mut h).map_err(io_err("receive"))?;
    if n == 0 {
        return Ok(None);
    }
    if n < HEADER_SIZE {
        (&*s)
            .read_exact(&mut h[n..])
            .map_err(io_err("receive a header"))?;
    }
    let header = Header::parse(&h);
    let len = if check {
        wire::body_len(&header)?
    } else {
        (header.size as usize).saturating_sub(HEADER_SIZE)
    };
    let mut body = vec![0u8; len];
    (&*s)
        .read_exact(&mut body)
        .map_err(io_err("receive a message body"))?;
    Ok(Some((header, body, fds)))
}

/// Sends `msg` with `fds` (attached to its first bytes), all of it.
fn send_message(s: &UnixStream, msg: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let sent = if fds.is_empty() {
        0
    } else {
        s.send_with_fds(&[msg], fds)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?
    };
    (&*s).write_all(&msg[sent..])
}

fn pump_requests(
    client: &UnixStream,
    inner: &UnixStream,
    order: &std::sync::mpsc::Sender<Pending>,
) -> Result<(), ServerError> {
    let gone = || ServerError::Io("reply thread", std::io::ErrorKind::BrokenPipe.into());
    while let Some((header, body, fds)) = read_message(client, true)? {
        let no_reply = header.flags & wire::FLAG_NO_REPLY != 0;
        match wire::check(&header, &body, fds.len()) {
            Verdict::Forward(mut msg) => {
                // The crate always answers; the reply thread drops a success the client did
                // not want, so replies stay in request order.
                let flags = header.flags & !wire::FLAG_NO_REPLY;
                msg[8..12].copy_from_slice(&flags.to_le_bytes());
                order
                    .send(Pending::Forwarded { no_reply })
                    .map_err(|_| gone())?;
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                send_message(inner, &msg, &raw).map_err(io_err("forward"))?;
            }
            Verdict::Reject(errno) => {
                tracing::debug!(
                    "rejected command {} ({} bytes): errno {errno}",
                    header.command,
                    header.size
                );
                order
                    .send(Pending::Rejected(header.error_reply(errno).to_bytes()))
                    .map_err(|_| gone())?;
            }
        }
    }
    Ok(())
}

fn pump_replies(
    inner: &UnixStream,
    out: &UnixStream,
    order: std::sync::mpsc::Receiver<Pending>,
) -> Result<(), ServerError> {
    for pending in order {
        match pending {
            Pending::Rejected(reply) => (&*out).write_all(&reply).map_err(io_err("reply"))?,
            Pending::Forwarded { no_reply } => {
                let Some((mut header, body, fds)) = read_message(inner, false)? else {
                    return Ok(());
                };
                wire::fix_reply(&mut header);
                if no_reply && header.flags & wire::FLAG_ERROR == 0 {
                    continue;
                }
                let mut msg = header.to_bytes().to_vec();
                msg.extend_from_slice(&body);
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                send_message(out, &msg, &raw).map_err(io_err("send a reply"))?;
            }
        }
    }
    Ok(())
}
