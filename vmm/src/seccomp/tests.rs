//! Each thread kind's compiled filters, installed in a forked child: a forbidden call stops the
//! process with the message and status of `--seccomp enforce`, runs under `--seccomp log`, the
//! calls every thread makes pass, and an open fails with EACCES on every thread but main.

use super::*;

use std::io::Read;
use std::os::fd::FromRawFd;

/// A call no filter allows and that has no side effect when `log` lets it run.
const FORBIDDEN: libc::c_long = libc::SYS_getppid;

/// What the child did: its exit status and what it wrote on stderr.
struct Child {
    status: i32,
    stderr: String,
    pid: i32,
}

/// Forks; the child installs `kind`'s filter for `mode`, makes a few calls every thread makes,
/// then (if `forbidden`) a forbidden one, and exits 0.
fn run_child(kind: ThreadKind, mode: SeccompMode, forbidden: bool) -> Child {
    let filter = Filter::new(kind, mode);
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array for pipe(2).
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child calls only async-signal-safe functions and seccompiler's apply_filter
    // (prctl + seccomp on a program built before the fork) before _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: as above; plain system calls on valid arguments, then _exit.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::close(fds[0]);
            if install_sigsys_handler().is_err() || filter.apply().is_err() {
                libc::_exit(90);
            }
            let mut buf = [0u8; 16];
            if libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) != 16 {
                libc::_exit(91);
            }
            let mut ts: libc::timespec = std::mem::zeroed();
            libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED || libc::munmap(p, 4096) != 0 {
                libc::_exit(92);
            }
            if forbidden && libc::syscall(FORBIDDEN) <= 0 {
                libc::_exit(93);
            }
            // glibc's malloc open: main may open files, every other kind gets EACCES and lives.
            let fd = libc::open(
                c"/proc/sys/vm/overcommit_memory".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            let denied = fd < 0 && *libc::__errno_location() == libc::EACCES;
            if fd >= 0 {
                libc::close(fd);
            }
            let want_denied = kind.denies_open() && mode != SeccompMode::Off;
            if denied != want_denied {
                libc::_exit(94);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: fds[1] is ours and open.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is an open pipe end that nothing else owns.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut stderr = String::new();
    let _ = pipe.read_to_string(&mut stderr);
    let mut status = 0;
    // SAFETY: pid is our child; status is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died by signal: {status:#x}");
    Child {
        status: libc::WEXITSTATUS(status),
        stderr,
        pid,
    }
}

#[test]
fn every_kind_compiles_to_a_loadable_program() {
    for kind in ThreadKind::ALL {
        for mode in [SeccompMode::Enforce, SeccompMode::Log] {
            let p = kind.program(mode).expect("a program");
            assert!(
                !p.is_empty() && p.len() < 4096,
                "{kind} {mode:?}: {}",
                p.len()
            );
        }
        assert!(kind.program(SeccompMode::Off).is_none());
    }
}

#[test]
fn enforce_stops_a_forbidden_call_of_each_kind_with_a_message() {
    for kind in ThreadKind::ALL {
        let c = run_child(kind, SeccompMode::Enforce, true);
        assert_eq!(c.status, EXIT_FORBIDDEN_SYSCALL, "{kind}: {}", c.stderr);
        let want = format!("the {kind} thread made system call {FORBIDDEN},");
        assert!(c.stderr.contains(&want), "{kind}: {}", c.stderr);
    }
}

#[test]
fn enforce_lets_the_common_calls_of_each_kind_through() {
    for kind in ThreadKind::ALL {
        let c = run_child(kind, SeccompMode::Enforce, false);
        assert_eq!(c.status, 0, "{kind}: {}", c.stderr);
    }
}

#[test]
fn off_installs_nothing() {
    let c = run_child(ThreadKind::Vcpu, SeccompMode::Off, true);
    assert_eq!(c.status, 0, "{}", c.stderr);
}

#[test]
fn log_lets_a_forbidden_call_of_each_kind_run() {
    let mut kmsg = open_kmsg();
    if let Some(k) = kmsg.as_mut() {
        drain(k);
    }
    let mut pids = Vec::new();
    for kind in ThreadKind::ALL {
        let c = run_child(kind, SeccompMode::Log, true);
        assert_eq!(c.status, 0, "{kind}: {}", c.stderr);
        assert!(c.stderr.is_empty(), "{kind}: {}", c.stderr);
        pids.push(c.pid);
    }
    // The kernel's log line is the kernel's business (audit may be off or rate-limited): report
    // what it shows without failing on it.
    match kmsg.as_mut() {
        Some(k) => {
            let text = drain(k);
            let logged = pids
                .iter()
                .filter(|p| {
                    text.lines().any(|l| {
                        l.contains("type=1326")
                            && l.contains(&format!(" pid={p} "))
                            && l.contains(&format!("syscall={FORBIDDEN} "))
                    })
                })
                .count();
            eprintln!(
                "seccomp log: the kernel logged {logged} of {} forbidden calls",
                pids.len()
            );
        }
        None => eprintln!("seccomp log: /dev/kmsg is not readable, the kernel's log not checked"),
    }
}

/// /dev/kmsg with non-blocking reads, where it is readable.
fn open_kmsg() -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()
}

/// Everything /dev/kmsg holds now (one record per read).
fn drain(k: &mut std::fs::File) -> String {
    let mut all = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match k.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    all
}
