//! The vDSA over vfio-user (docs/vfio-user.md): `dsavmm dsa-server` serves the device model to
//! any vfio-user client ([`server`], [`session`]), and dsavmm is such a client ([`client`]).
//! The protocol itself is rust-vmm's `vfio_user` crate; [`wire`] is the framing check this
//! project puts in front of the crate's server, [`shared_portal`] the mapped portal pages.

pub mod client;
pub mod dma_space;
pub mod server;
pub mod session;
pub mod shared_portal;
pub mod wire;

/// Why the server could not start or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The socket path belongs to a server that is still running.
    #[error("{} is in use by a running server", .0.display())]
    SocketInUse(std::path::PathBuf),
    /// `max_clients` of 0.
    #[error("max-clients must be at least 1")]
    MaxClients,
    /// The device could not be built.
    #[error(transparent)]
    Device(#[from] crate::dsa::DsaError),
    /// The portal pages could not be created.
    #[error(transparent)]
    Portal(#[from] shared_portal::PortalError),
    /// The crate's server failed.
    #[error("vfio-user: {0}")]
    Protocol(vfio_user::Error),
    /// A client broke the message framing.
    #[error("malformed message: {0}")]
    Frame(#[from] wire::FrameError),
    /// The thread set-up hook (seccomp) failed.
    #[error("thread set-up: {0}")]
    ThreadStart(String),
}
