//! The framing check that stands in front of the `vfio_user` crate's server.
//!
//! The crate's `Server` trusts every header it reads (docs/vfio-user.md, "What the crate lacks"):
//! a VERSION shorter than its fixed part underflows a subtraction, a capabilities string
//! without its NUL panics, a REGION_READ count allocates up to 4 GiB, a short read of a header
//! is taken as a whole one, and a message longer than the crate's structure leaves the rest
//! in the stream as the next "header". So dsa-server reads each client message in full here,
//! checks it against the vfio-user specification (QEMU's docs/interop/vfio-user.rst), trims
//! the variable tails the crate does not read, and only then forwards it. A message whose
//! framing is sound but whose content is not gets an error reply; one whose framing is
//! broken ends the connection.

/// Bytes of the message header (id, command, size, flags, error).
pub const HEADER_SIZE: usize = 16;
/// The most data one REGION_READ/REGION_WRITE may move: the crate's server advertises
/// `max_data_xfer_size` 1 MiB.
pub const MAX_DATA_XFER: u32 = 1 << 20;
/// The longest message accepted (a REGION_WRITE of [`MAX_DATA_XFER`] bytes).
pub const MAX_MESSAGE: u32 = (HEADER_SIZE + 16) as u32 + MAX_DATA_XFER;
/// The longest VERSION capabilities string accepted.
pub const MAX_VERSION_JSON: usize = 4096;
/// Regions the server announces (BAR0..5, ROM, config, VGA, statistics): REGION_READ/WRITE
/// must name one of them.
pub const NUM_REGIONS: u32 = 10;
/// The most vectors one SET_IRQS may name (a PCI function has at most 2048 MSI-X vectors).
pub const MAX_IRQS: u32 = 2048;

/// Header flag: this message is a reply.
pub const FLAG_REPLY: u32 = 1;
/// Header flag: no reply wanted.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// Header flag: the reply reports an error.
pub const FLAG_ERROR: u32 = 1 << 5;

/// vfio-user command numbers (specification, "Commands").
pub mod cmd {
    /// VFIO_USER_VERSION
    pub const VERSION: u16 = 1;
    /// VFIO_USER_DMA_MAP
    pub const DMA_MAP: u16 = 2;
    /// VFIO_USER_DMA_UNMAP
    pub const DMA_UNMAP: u16 = 3;
    /// VFIO_USER_DEVICE_GET_INFO
    pub const DEVICE_GET_INFO: u16 = 4;
    /// VFIO_USER_DEVICE_GET_REGION_INFO
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    /// VFIO_USER_DEVICE_GET_REGION_IO_FDS
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    /// VFIO_USER_DEVICE_GET_IRQ_INFO
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    /// VFIO_USER_DEVICE_SET_IRQS
    pub const DEVICE_SET_IRQS: u16 = 8;
    /// VFIO_USER_REGION_READ
    pub const REGION_READ: u16 = 9;
    /// VFIO_USER_REGION_WRITE
    pub const REGION_WRITE: u16 = 10;
    /// VFIO_USER_DMA_READ (server to client only)
    pub const DMA_READ: u16 = 11;
    /// VFIO_USER_DMA_WRITE (server to client only)
    pub const DMA_WRITE: u16 = 12;
    /// VFIO_USER_DEVICE_RESET
    pub const DEVICE_RESET: u16 = 13;
}

/// A message header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Message ID, echoed by the reply.
    pub id: u16,
    /// Command number.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type (bits 0..4), no-reply (4), error (5).
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Decodes the 16 header bytes.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32_at(4),
            flags: u32_at(8),
            error: u32_at(12),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// The error reply to this command.
    pub fn error_reply(self, errno: i32) -> Self {
        Self {
            id: self.id,
            command: self.command,
            size: HEADER_SIZE as u32,
            flags: FLAG_REPLY | FLAG_ERROR,
            error: errno as u32,
        }
    }
}

/// A message whose framing cannot be trusted: the connection must end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The size field is below the header or above [`MAX_MESSAGE`].
    #[error("message size {0} outside {HEADER_SIZE}..={MAX_MESSAGE}")]
    Size(u32),
    /// A client sent something other than a command.
    #[error("message type {0:#x} from a client (only commands are allowed)")]
    NotACommand(u32),
}

/// What to do with a well-framed message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward these bytes (the message, its size field adjusted when trimmed) with at most
    /// the given number of the received descriptors.
    Forward(Vec<u8>),
    /// Do not forward; reply with this errno.
    Reject(i32),
}

/// Checks a header before its body is read: the body is `size - 16` bytes.
pub fn body_len(h: &Header) -> Result<usize, FrameError> {
    if h.size < HEADER_SIZE as u32 || h.size > MAX_MESSAGE {
        return Err(FrameError::Size(h.size));
    }
    if h.flags & 0xf != 0 {
        return Err(FrameError::NotACommand(h.flags & 0xf));
    }
    Ok(h.size as usize - HEADER_SIZE)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8).map_or(0, |x| {
        u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]])
    })
}

/// The message as forwarded: the first `keep` body bytes, the size field set to match.
fn trimmed(h: &Header, body: &[u8], keep: usize) -> Verdict {
    let mut hdr = *h;
    hdr.size = (HEADER_SIZE + keep) as u32;
    let mut m = hdr.to_bytes().to_vec();
    m.extend_from_slice(&body[..keep]);
    Verdict::Forward(m)
}

/// Checks one whole client message (`body` is what followed the header, `fds` the number of
/// descriptors that came with it).
pub fn check(h: &Header, body: &[u8], fds: usize) -> Verdict {
    use libc::{EINVAL, ENOSYS, ENOTSUP};
    let fixed = |n: usize| -> Result<(), i32> {
        if body.len() < n {
            Err(EINVAL)
        } else {
            Ok(())
        }
    };
    let no_fds = || if fds == 0 { Ok(()) } else { Err(EINVAL) };
    // The crate's server returns early, before reading the body, for these commands with
    // NO_REPLY set (and for a REGION_WRITE to a region it does not have): the unread body
    // would then be taken as the next header. So they are refused here.
    let reply_needed = || {
        if h.flags & FLAG_NO_REPLY != 0 {
            Err(EINVAL)
        } else {
            Ok(())
        }
    };
    let region_ok = |r: u32| if r < NUM_REGIONS { Ok(()) } else { Err(EINVAL) };
    let r: Result<usize, i32> = (|| match h.command {
        cmd::VERSION => {
            no_fds()?;
            reply_needed()?;
            fixed(5)?;
            let json = &body[4..];
            let major = u16::from_le_bytes([body[0], body[1]]);
            if major != 0 || json.len() > MAX_VERSION_JSON {
                return Err(ENOTSUP);
            }
            // One NUL, at the end; the rest UTF-8 (the crate parses it as JSON).
            let (last, text) = json.split_last().ok_or(EINVAL)?;
            if *last != 0 || text.contains(&0) || std::str::from_utf8(text).is_err() {
                return Err(EINVAL);
            }
            Ok(body.len())
        }
        cmd::DMA_MAP => {
            if fds > 1 {
                return Err(EINVAL);
            }
            fixed(32)?;
            let (addr, size) = (u64_at(body, 16), u64_at(body, 24));
            if size == 0 || addr.checked_add(size).is_none() {
                return Err(EINVAL);
            }
            Ok(32)
        }
        cmd::DMA_UNMAP => {
            no_fds()?;
            fixed(24)?;
            // GET_DIRTY_PAGE_INFO (bit 1) carries a bitmap the crate does not read.
            if u32_at(body, 4) & 2 != 0 {
                return Err(ENOTSUP);
            }
            // UNMAP_ALL (bit 2) names no range.
            if u32_at(body, 4) & 4 != 0 && (u64_at(body, 8) != 0 || u64_at(body, 16) != 0) {
                return Err(EINVAL);
            }
            Ok(24)
        }
        cmd::DEVICE_GET_INFO => {
            no_fds()?;
            reply_needed()?;
            fixed(16)?;
            Ok(16)
        }
        cmd::DEVICE_GET_REGION_INFO | cmd::DEVICE_GET_IRQ_INFO => {
            no_fds()?;
            reply_needed()?;
            let n = if h.command == cmd::DEVICE_GET_REGION_INFO {
                32
            } else {
                16
            };
            fixed(n)?;
            Ok(n)
        }
        cmd::DEVICE_SET_IRQS => {
            fixed(20)?;
            let (flags, start, count) = (u32_at(body, 4), u32_at(body, 12), u32_at(body, 16));
            // DATA_BOOL carries an array the crate does not read.
            if flags & vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_BOOL != 0 {
                return Err(ENOTSUP);
            }
            if count > MAX_IRQS || start.checked_add(count).is_none_or(|e| e > MAX_IRQS) {
                return Err(EINVAL);
            }
            let eventfds = flags & vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_EVENTFD != 0;
            if (!eventfds && fds > 0) || fds > count as usize {
                return Err(EINVAL);
            }
            Ok(20)
        }
        cmd::REGION_READ => {
            no_fds()?;
            reply_needed()?;
            region_ok(u32_at(body, 8))?;
            if body.len() != 16 || u32_at(body, 12) > MAX_DATA_XFER {
                return Err(EINVAL);
            }
            Ok(16)
        }
        cmd::REGION_WRITE => {
            no_fds()?;
            fixed(16)?;
            region_ok(u32_at(body, 8))?;
            let count = u32_at(body, 12);
            if count > MAX_DATA_XFER || body.len() != 16 + count as usize {
                return Err(EINVAL);
            }
            Ok(body.len())
        }
        cmd::DEVICE_RESET => {
            no_fds()?;
            Ok(0)
        }
        cmd::DEVICE_GET_REGION_IO_FDS | 14 => Err(ENOTSUP),
        cmd::DMA_READ | cmd::DMA_WRITE => Err(EINVAL),
        _ => Err(ENOSYS),
    })();
    match r {
        Ok(keep) => trimmed(h, body, keep),
        Err(e) => Verdict::Reject(e),
    }
}

/// Fixes a reply of the crate's server on its way out: it sends error replies with errno 0,
/// which clients may take for success; such a reply gets EIO.
pub fn fix_reply(h: &mut Header) {
    if h.flags & FLAG_ERROR != 0 && h.error == 0 {
        h.error = libc::EIO as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(command: u16, body: usize) -> Header {
        Header {
            id: 7,
            command,
            size: (HEADER_SIZE + body) as u32,
            flags: 0,
            error: 0,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            id: 0x1234,
            command: 9,
            size: 48,
            flags: FLAG_NO_REPLY,
            error: 3,
        };
        assert_eq!(Header::parse(&h.to_bytes()), h);
    }

    #[test]
    fn framing_bounds() {
        assert_eq!(body_len(&hdr(1, 0)), Ok(0));
        let mut h = hdr(1, 0);
        h.size = 15;
        assert_eq!(body_len(&h), Err(FrameError::Size(15)));
        h.size = MAX_MESSAGE + 1;
        assert_eq!(body_len(&h), Err(FrameError::Size(MAX_MESSAGE + 1)));
        h.size = 16;
        h.flags = FLAG_REPLY;
        assert_eq!(body_len(&h), Err(FrameError::NotACommand(1)));
    }

    #[test]
    fn version_needs_one_trailing_nul_and_major_0() {
        let mut body = vec![0, 0, 1, 0];
        body.extend_from_slice(b"{}\0");
        assert!(matches!(
            check(&hdr(cmd::VERSION, body.len()), &body, 0),
            Verdict::Forward(_)
        ));
        for bad in [&b"{}"[..], b"{\0}\0", b"", b"\xff\0"] {
            let mut b = vec![0, 0, 1, 0];
            b.extend_from_slice(bad);
            assert_eq!(
                check(&hdr(cmd::VERSION, b.len()), &b, 0),
                Verdict::Reject(libc::EINVAL),
                "{bad:?}"
            );
        }
        let mut b = vec![1, 0, 0, 0];
        b.extend_from_slice(b"{}\0");
        assert_eq!(
            check(&hdr(cmd::VERSION, b.len()), &b, 0),
            Verdict::Reject(libc::ENOTSUP)
        );
        // Too short for major/minor: rejected, not an underflow.
        assert_eq!(
            check(&hdr(cmd::VERSION, 2), &[0, 0], 0),
            Verdict::Reject(libc::EINVAL)
        );
    }

    #[test]
    fn long_fixed_messages_are_trimmed() {
        let body = vec![0u8; 40];
        match check(&hdr(cmd::DEVICE_GET_INFO, 40), &body, 0) {
            Verdict::Forward(m) => {
                assert_eq!(m.len(), HEADER_SIZE + 16);
                let mut h = [0u8; HEADER_SIZE];
                h.copy_from_slice(&m[..HEADER_SIZE]);
                assert_eq!(Header::parse(&h).size, 32);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn region_access_counts_are_bounded() {
        let mut body = vec![0u8; 16];
        body[12..16].copy_from_slice(&(MAX_DATA_XFER + 1).to_le_bytes());
        assert_eq!(
            check(&hdr(cmd::REGION_READ, 16), &body, 0),
            Verdict::Reject(libc::EINVAL)
        );
        body[12..16].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(
            check(&hdr(cmd::REGION_READ, 16), &body, 0),
            Verdict::Forward(_)
        ));
        // A write whose count disagrees with its size.
        assert_eq!(
            check(
                &hdr(cmd::REGION_WRITE, 16 + 4),
                &[body.clone(), vec![0; 4]].concat(),
                0
            ),
            Verdict::Reject(libc::EINVAL)
        );
        assert!(matches!(
            check(&hdr(cmd::REGION_WRITE, 24), &[body, vec![0; 8]].concat(), 0),
            Verdict::Forward(_)
        ));
    }

    #[test]
    fn descriptors_only_where_the_spec_allows_them() {
        assert_eq!(
            check(&hdr(cmd::DEVICE_GET_INFO, 16), &[0; 16], 1),
            Verdict::Reject(libc::EINVAL)
        );
        let mut map = vec![0u8; 32];
        map[24..32].copy_from_slice(&4096u64.to_le_bytes());
        assert!(matches!(
            check(&hdr(cmd::DMA_MAP, 32), &map, 1),
            Verdict::Forward(_)
        ));
        assert_eq!(
            check(&hdr(cmd::DMA_MAP, 32), &map, 2),
            Verdict::Reject(libc::EINVAL)
        );
        // A wrapping window.
        map[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            check(&hdr(cmd::DMA_MAP, 32), &map, 1),
            Verdict::Reject(libc::EINVAL)
        );
        let mut irqs = vec![0u8; 20];
        irqs[4..8].copy_from_slice(
            &(vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_EVENTFD
                | vfio_bindings::bindings::vfio::VFIO_IRQ_SET_ACTION_TRIGGER)
                .to_le_bytes(),
        );
        irqs[16..20].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            check(&hdr(cmd::DEVICE_SET_IRQS, 20), &irqs, 2),
            Verdict::Forward(_)
        ));
        assert_eq!(
            check(&hdr(cmd::DEVICE_SET_IRQS, 20), &irqs, 3),
            Verdict::Reject(libc::EINVAL)
        );
    }

    #[test]
    fn no_reply_and_absent_regions_where_the_crate_would_skip_the_body() {
        for c in [
            cmd::VERSION,
            cmd::DEVICE_GET_INFO,
            cmd::DEVICE_GET_REGION_INFO,
            cmd::DEVICE_GET_IRQ_INFO,
            cmd::REGION_READ,
        ] {
            let body = vec![0u8; 64];
            let mut h = hdr(c, 64);
            h.flags = FLAG_NO_REPLY;
            assert_eq!(check(&h, &body, 0), Verdict::Reject(libc::EINVAL), "{c}");
        }
        let mut w = vec![0u8; 24];
        w[8..12].copy_from_slice(&NUM_REGIONS.to_le_bytes());
        w[12..16].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            check(&hdr(cmd::REGION_WRITE, 24), &w, 0),
            Verdict::Reject(libc::EINVAL)
        );
        // A posted write to a real region is fine.
        w[8..12].copy_from_slice(&0u32.to_le_bytes());
        let mut h = hdr(cmd::REGION_WRITE, 24);
        h.flags = FLAG_NO_REPLY;
        assert!(matches!(check(&h, &w, 0), Verdict::Forward(_)));
    }

    #[test]
    fn unknown_and_server_side_commands_are_refused() {
        assert_eq!(check(&hdr(99, 0), &[], 0), Verdict::Reject(libc::ENOSYS));
        assert_eq!(
            check(&hdr(cmd::DMA_READ, 0), &[], 0),
            Verdict::Reject(libc::EINVAL)
        );
        assert_eq!(
            check(&hdr(cmd::DEVICE_GET_REGION_IO_FDS, 0), &[], 0),
            Verdict::Reject(libc::ENOTSUP)
        );
    }

    #[test]
    fn error_replies_get_an_errno() {
        let mut h = hdr(cmd::REGION_READ, 0).error_reply(0);
        fix_reply(&mut h);
        assert_eq!(h.error, libc::EIO as u32);
        let mut ok = hdr(cmd::REGION_READ, 0);
        ok.flags = FLAG_REPLY;
        fix_reply(&mut ok);
        assert_eq!(ok.error, 0);
    }
}
