//! The vfio-user server's message path below the socket: the framing check
//! (`devices::vfio_user::wire`) that stands in front of the `vfio_user` crate's server, and the
//! per-client device (`devices::vfio_user::session::Session`) that the crate's server calls with
//! each forwarded message.
//!
//! Input: a stream of client messages, each a 16-byte header, its body (as long as the header
//! says, cut short by the end of the input), and one byte whose low two bits are how many
//! descriptors came with it (a DMA_MAP's descriptor is a small sealed memfd; others are
//! eventfds). At most 64 messages per input.
//!
//! Checks: a forwarded message is exactly what the crate's fixed-size reads consume (so it can
//! never read past a message or take its tail for the next header); the session never panics
//! on what was forwarded; its statistics region stays valid JSON.

use std::fs::File;

use devices::dsa::DsaConfig;
use devices::vfio_user::session::{Session, STATS_REGION};
use devices::vfio_user::wire::{self, cmd, Header, Verdict, HEADER_SIZE};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};

use crate::Input;

/// Runs one input.
pub fn run(data: &[u8]) {
    outcome(data);
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(x)
}

/// The bytes the crate's server reads for a message of `command` (header included), given
/// the message; `None` where it reads a variable tail (VERSION, REGION_WRITE: checked apart).
fn fixed_size(command: u16) -> Option<usize> {
    Some(match command {
        cmd::DMA_MAP => 48,
        cmd::DMA_UNMAP => 40,
        cmd::DEVICE_GET_INFO => 32,
        cmd::DEVICE_GET_REGION_INFO => 48,
        cmd::DEVICE_GET_IRQ_INFO => 32,
        cmd::DEVICE_SET_IRQS => 36,
        cmd::REGION_READ => 32,
        cmd::DEVICE_RESET => 16,
        _ => return None,
    })
}

fn descriptors(n: usize, command: u16) -> Vec<File> {
    (0..n)
        .filter_map(|_| {
            if command == cmd::DMA_MAP {
                devices::vfio_user::shared_portal::memfd(c"fuzz-dma", 0x10000).ok()
            } else {
                let e = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).ok()?;
                use std::os::fd::{FromRawFd, IntoRawFd};
                // SAFETY: the eventfd's descriptor, owned by nothing else from here on.
                Some(unsafe { File::from_raw_fd(e.into_raw_fd()) })
            }
        })
        .collect()
}

/// Applies a forwarded message to the session as the crate's server would.
fn apply(s: &mut Session, m: &[u8], fds: Vec<File>) -> &'static str {
    let h = {
        let mut b = [0u8; HEADER_SIZE];
        b.copy_from_slice(&m[..HEADER_SIZE]);
        Header::parse(&b)
    };
    let body = &m[HEADER_SIZE..];
    let r = match h.command {
        cmd::REGION_READ => {
            let count = (u32_at(body, 12) as usize).min(0x10000);
            let mut buf = vec![0u8; count];
            s.region_read(u32_at(body, 8), u64_at(body, 0), &mut buf)
        }
        cmd::REGION_WRITE => s.region_write(u32_at(body, 8), u64_at(body, 0), &body[16..]),
        cmd::DMA_MAP => s.dma_map(
            DmaMapFlags::from_bits_truncate(u32_at(body, 4)),
            u64_at(body, 8),
            u64_at(body, 16),
            u64_at(body, 24),
            fds.into_iter().next(),
        ),
        cmd::DMA_UNMAP => s.dma_unmap(
            DmaUnmapFlags::from_bits_truncate(u32_at(body, 4)),
            u64_at(body, 8),
            u64_at(body, 16),
        ),
        cmd::DEVICE_SET_IRQS => s.set_irqs(
            u32_at(body, 8),
            u32_at(body, 4),
            u32_at(body, 12),
            u32_at(body, 16),
            fds,
        ),
        cmd::DEVICE_RESET => s.reset(),
        _ => Ok(()),
    };
    if r.is_ok() {
        "applied"
    } else {
        "backend error"
    }
}

/// Runs one input; what it did, in a few words (the stable harness counts these).
pub fn outcome(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let cfg = DsaConfig {
        wqs: 2,
        engines: 1,
        groups: 1,
        total_wq_size: 32,
        ..DsaConfig::default()
    };
    let mut session = match Session::new(cfg) {
        Ok(s) => s,
        Err(e) => return format!("no session: {e}"),
    };
    let mut last = "empty";
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let header = Header::parse(&input.array::<HEADER_SIZE>());
        let len = match wire::body_len(&header) {
            Ok(n) => n,
            Err(_) => {
                last = "framing error";
                break;
            }
        };
        let body = input.take(len);
        if body.len() < len {
            last = "truncated";
            break;
        }
        let nfds = usize::from(input.u8() & 3);
        match wire::check(&header, body, nfds) {
            Verdict::Reject(_) => last = "rejected",
            Verdict::Forward(m) => {
                let forwarded = Header::parse(&m[..HEADER_SIZE].try_into().expect("header"));
                assert_eq!(forwarded.size as usize, m.len(), "size field of {header:?}");
                // The crate returns before reading the body of these with NO_REPLY, and of a
                // region access to a region it lacks: such a message must never get through.
                if matches!(
                    header.command,
                    cmd::VERSION
                        | cmd::DEVICE_GET_INFO
                        | cmd::DEVICE_GET_REGION_INFO
                        | cmd::DEVICE_GET_IRQ_INFO
                        | cmd::REGION_READ
                ) {
                    assert_eq!(header.flags & wire::FLAG_NO_REPLY, 0, "{header:?}");
                }
                if matches!(header.command, cmd::REGION_READ | cmd::REGION_WRITE) {
                    assert!(u32_at(&m, 24) < wire::NUM_REGIONS, "{header:?}");
                }
                match header.command {
                    cmd::VERSION => {
                        let json = &m[HEADER_SIZE + 4..];
                        assert_eq!(json.last(), Some(&0));
                        assert!(!json[..json.len() - 1].contains(&0));
                    }
                    cmd::REGION_WRITE => {
                        assert_eq!(m.len(), 32 + u32_at(&m, 28) as usize)
                    }
                    c => assert_eq!(Some(m.len()), fixed_size(c), "command {c}"),
                }
                last = apply(&mut session, &m, descriptors(nfds, header.command));
            }
        }
    }
    let mut stats = vec![0u8; 0x10000];
    if session.region_read(STATS_REGION, 0, &mut stats).is_ok() {
        let end = stats.iter().position(|b| *b == 0).unwrap_or(stats.len());
        assert!(
            serde_json::from_slice::<serde_json::Value>(&stats[..end]).is_ok(),
            "the statistics region is not JSON"
        );
    }
    last.into()
}
