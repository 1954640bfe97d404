//! Seccomp: one default-deny BPF filter per thread kind, written as JSON in
//! `resources/seccomp/x86_64.json`, compiled by `seccompiler` at build time (`vmm/build.rs`) and
//! installed by each thread before it touches guest or API-client data.
//!
//! `--seccomp enforce` (the default) makes a forbidden system call raise SIGSYS; the handler here
//! names the thread kind and the call on stderr and ends the process with status
//! [`EXIT_FORBIDDEN_SYSCALL`] (the call itself never runs). `--seccomp log` lets it run and has the
//! kernel log it (audit type 1326: `dmesg | grep 'type=1326'`); `--seccomp off` installs nothing.
//!
//! Filters stack: a thread spawned after its parent installed a filter runs under both, so the
//! main thread's filter also allows what vCPU threads do (they are spawned by it), and the API
//! thread is spawned before the main thread installs its filter. Threads other than main also get
//! `deny_open` (installed first, as their own filter forbids `seccomp`), which fails every open
//! with EACCES: glibc's malloc may open /proc/sys/vm/overcommit_memory from any thread and copes
//! with the failure, and no other file is theirs to open.

use std::cell::Cell;
use std::fmt;

use seccompiler::{sock_filter, BpfProgram};
use thiserror::Error;

mod compiled {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// Exit status after a forbidden system call under `--seccomp enforce`: 128 + SIGSYS, as a shell
/// reports a process killed by that signal.
pub const EXIT_FORBIDDEN_SYSCALL: i32 = 128 + libc::SIGSYS;

/// What a filter does with a system call it does not allow.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Stop the process with a message naming the thread and the call (the default).
    #[default]
    Enforce,
    /// Allow the call and have the kernel log it (audit type 1326).
    Log,
    /// Install no filter.
    Off,
}

/// The kinds of thread that have a filter of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: configuration, VM build, the event loop.
    Main,
    /// The REST API server thread.
    Api,
    /// A vCPU thread (KVM_RUN, MMIO/PIO emulation, the DSA engine).
    Vcpu,
    /// `dsavmm remote`: an API client.
    Client,
    /// Every thread of `dsavmm dsa-server` (accept, relay, protocol, portal watcher).
    DsaServer,
}

impl ThreadKind {
    /// Every kind, in a fixed order.
    #[cfg(test)]
    pub const ALL: [ThreadKind; 5] = [
        Self::Main,
        Self::Api,
        Self::Vcpu,
        Self::Client,
        Self::DsaServer,
    ];

    /// The filter's name in the JSON file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Api => "api",
            Self::Vcpu => "vcpu",
            Self::Client => "client",
            Self::DsaServer => "dsa_server",
        }
    }

    /// Whether the thread also gets the `deny_open` filter.
    fn denies_open(self) -> bool {
        self != Self::Main
    }

    fn program(self, mode: SeccompMode) -> Option<&'static [(u16, u8, u8, u32)]> {
        use compiled::*;
        Some(match (self, mode) {
            (_, SeccompMode::Off) => return None,
            (Self::Main, SeccompMode::Enforce) => MAIN_ENFORCE,
            (Self::Main, SeccompMode::Log) => MAIN_LOG,
            (Self::Api, SeccompMode::Enforce) => API_ENFORCE,
            (Self::Api, SeccompMode::Log) => API_LOG,
            (Self::Vcpu, SeccompMode::Enforce) => VCPU_ENFORCE,
            (Self::Vcpu, SeccompMode::Log) => VCPU_LOG,
            (Self::Client, SeccompMode::Enforce) => CLIENT_ENFORCE,
            (Self::Client, SeccompMode::Log) => CLIENT_LOG,
            (Self::DsaServer, SeccompMode::Enforce) => DSA_SERVER_ENFORCE,
            (Self::DsaServer, SeccompMode::Log) => DSA_SERVER_LOG,
        })
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a filter could not be installed.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The kernel refused the filter (no seccomp, or no PR_SET_NO_NEW_PRIVS).
    #[error("cannot install the seccomp filter of the {kind} thread: {source} (--seccomp off runs without filters)")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// A thread's filters ready to install: built before they are needed, so installing allocates
/// nothing.
pub struct Filter {
    kind: ThreadKind,
    /// In installation order (`deny_open` first where it applies); empty for `--seccomp off`.
    programs: Vec<BpfProgram>,
}

/// One compiled program as seccompiler's type.
fn to_program(p: &[(u16, u8, u8, u32)]) -> BpfProgram {
    p.iter()
        .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
        .collect()
}

impl Filter {
    /// The filter of `kind` for `mode` (`Off`: installing does nothing).
    pub fn new(kind: ThreadKind, mode: SeccompMode) -> Filter {
        let mut programs = Vec::new();
        if let Some(p) = kind.program(mode) {
            if kind.denies_open() {
                programs.push(to_program(compiled::DENY_OPEN_ENFORCE));
            }
            programs.push(to_program(p));
        }
        Filter { kind, programs }
    }

    /// Installs the filters on the calling thread (and the threads it spawns later).
    pub fn install(&self) -> Result<(), SeccompError> {
        self.apply()?;
        tracing::debug!(
            "seccomp filters of the {} thread installed ({} programs)",
            self.kind,
            self.programs.len()
        );
        Ok(())
    }

    /// [`Filter::install`] without logging: safe in a child after fork (no lock taken).
    fn apply(&self) -> Result<(), SeccompError> {
        THREAD_KIND.with(|k| k.set(Some(self.kind)));
        for program in &self.programs {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                kind: self.kind,
                source,
            })?;
        }
        Ok(())
    }
}

thread_local! {
    /// The kind whose filter this thread installed, for the SIGSYS handler.
    static THREAD_KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Installs the process-wide SIGSYS handler that reports a forbidden call and exits. Call once,
/// before any filter is installed.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is an
    // `extern "C"` function with the SA_SIGINFO signature, and it only calls async-signal-safe
    // functions (write, _exit) and reads a const-initialised thread-local.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The SIGSYS part of `siginfo_t` on x86-64 (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

extern "C" fn on_sigsys(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; SigsysInfo matches its
    // x86-64 layout for SIGSYS, and every field read is plain data.
    let (code, nr) = unsafe {
        let i = &*(info as *const SigsysInfo);
        (i.code, i.syscall)
    };
    let kind = THREAD_KIND
        .try_with(|k| k.get())
        .ok()
        .flatten()
        .map_or("unfiltered", ThreadKind::name);
    let mut msg = MsgBuf::new();
    msg.push(b"dsavmm: error: seccomp: the ");
    msg.push(kind.as_bytes());
    msg.push(b" thread made system call ");
    msg.push_dec(nr);
    if code != SYS_SECCOMP {
        msg.push(b" (SIGSYS not from seccomp)");
    }
    msg.push(b", which its filter forbids; stopping (resources/seccomp/x86_64.json; --seccomp log allows and logs such calls)\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer outlives the call.
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::_exit(EXIT_FORBIDDEN_SYSCALL);
    }
}

/// A fixed buffer for the handler's message: no allocation in a signal handler.
struct MsgBuf {
    buf: [u8; 256],
    len: usize,
}

impl MsgBuf {
    fn new() -> Self {
        MsgBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_dec(&mut self, v: i32) {
        let mut digits = [0u8; 11];
        let mut i = digits.len();
        let neg = v < 0;
        let mut u = v.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        if neg {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests;
