//! TEMPORARY stand-in for `dsa::descriptor` and `dsa::engine`, which the software-engine branch
//! (dsa-engine) provides. DELETE THIS FILE AT MERGE and replace the `engine_stub` lines in
//! `dsa/mod.rs` with `pub mod descriptor; pub mod engine;`.
//!
//! It implements exactly the interface the front end uses, with NOOP, DRAIN and MEMMOVE only, so
//! the front end and its driver-sequence test can run before the real engine lands.

/// Stand-in for `dsa/descriptor.rs`.
pub mod descriptor {
    /// Size of a descriptor.
    pub const DESC_SIZE: usize = 64;

    /// A parsed 64-byte descriptor (REFERENCE.md section 6.1).
    #[derive(Clone, Copy, Debug)]
    pub struct Descriptor {
        raw: [u8; DESC_SIZE],
    }

    impl Descriptor {
        /// Parses the raw bytes (never fails; validation happens at execution).
        pub fn parse(raw: &[u8; DESC_SIZE]) -> Self {
            Self { raw: *raw }
        }
        fn u32_at(&self, o: usize) -> u32 {
            u32::from_le_bytes([
                self.raw[o],
                self.raw[o + 1],
                self.raw[o + 2],
                self.raw[o + 3],
            ])
        }
        fn u64_at(&self, o: usize) -> u64 {
            u64::from(self.u32_at(o)) | (u64::from(self.u32_at(o + 4)) << 32)
        }
        /// Opcode (byte 7).
        pub fn opcode(&self) -> u8 {
            self.raw[7]
        }
        /// Flags \[23:0\] of dword 1.
        pub fn flags(&self) -> u32 {
            self.u32_at(4) & 0x00ff_ffff
        }
        /// Completion interrupt handle (0x24).
        pub fn int_handle(&self) -> u16 {
            u16::from_le_bytes([self.raw[0x24], self.raw[0x25]])
        }
        /// Flag RCI (bit 4).
        pub fn wants_completion_interrupt(&self) -> bool {
            self.flags() & 0x10 != 0
        }
        /// Completion record address (0x08).
        pub fn completion_addr(&self) -> u64 {
            self.u64_at(8)
        }
        /// Source (0x10).
        pub fn src(&self) -> u64 {
            self.u64_at(0x10)
        }
        /// Destination (0x18).
        pub fn dst(&self) -> u64 {
            self.u64_at(0x18)
        }
        /// Transfer size (0x20).
        pub fn xfer_size(&self) -> u32 {
            self.u32_at(0x20)
        }
    }
}

/// Stand-in for `dsa/engine/mod.rs`.
pub mod engine {
    use super::descriptor::Descriptor;
    use vm_memory::{Bytes, GuestAddress, GuestMemory};

    /// Limits of the WQ a descriptor came from.
    #[derive(Clone, Copy, Debug)]
    pub struct EngineLimits {
        /// Max transfer size in bytes.
        pub max_xfer_size: u64,
        /// Max descriptors in a batch.
        pub max_batch_size: u32,
    }

    impl Default for EngineLimits {
        fn default() -> Self {
            Self {
                max_xfer_size: 1 << 21,
                max_batch_size: 32,
            }
        }
    }

    /// An error that could not go into a completion record.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SwError {
        /// Status code.
        pub status: u8,
        /// Opcode.
        pub opcode: u8,
        /// Fault address.
        pub addr: u64,
    }

    /// What executing one descriptor did.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Outcome {
        /// Opcode.
        pub opcode: u8,
        /// Completion status.
        pub status: u8,
        /// Bytes processed.
        pub bytes: u64,
        /// A completion record was written.
        pub record_written: bool,
        /// Interrupt handle to raise (RCI).
        pub interrupt: Option<u16>,
        /// Error for SWERR.
        pub swerr: Option<SwError>,
    }

    /// Opcodes this stub executes.
    pub const SUPPORTED_OPCODES: &[u8] = &[0x00, 0x02, 0x03];

    /// Name of an opcode.
    pub fn opcode_name(op: u8) -> &'static str {
        match op {
            0x00 => "nop",
            0x02 => "drain",
            0x03 => "memmove",
            _ => "unknown",
        }
    }

    /// Executes NOOP, DRAIN and MEMMOVE.
    pub fn execute<M: GuestMemory>(mem: &M, desc: &Descriptor, limits: &EngineLimits) -> Outcome {
        let op = desc.opcode();
        let (status, bytes) = match op {
            0x00 | 0x02 => (1, 0),
            0x03 => {
                let n = u64::from(desc.xfer_size());
                if n == 0 || n > limits.max_xfer_size {
                    (0x13, 0)
                } else {
                    let mut buf = vec![0u8; n as usize];
                    if mem.read_slice(&mut buf, GuestAddress(desc.src())).is_err()
                        || mem.write_slice(&buf, GuestAddress(desc.dst())).is_err()
                    {
                        (0x22, 0)
                    } else {
                        (1, n)
                    }
                }
            }
            _ => (0x10, 0),
        };
        let flags = desc.flags();
        let crav = flags & 0x4 != 0;
        let rcr = flags & 0x8 != 0;
        let mut out = Outcome {
            opcode: op,
            status,
            bytes,
            record_written: false,
            interrupt: desc.wants_completion_interrupt().then(|| desc.int_handle()),
            swerr: None,
        };
        if crav && (rcr || status != 1) {
            let a = desc.completion_addr();
            if !a.is_multiple_of(32) {
                out.swerr = Some(SwError {
                    status: 0x1b,
                    opcode: op,
                    addr: a,
                });
            } else if mem.write_slice(&[0u8; 31], GuestAddress(a + 1)).is_ok()
                && mem.write_obj(status, GuestAddress(a)).is_ok()
            {
                out.record_written = true;
            } else {
                out.swerr = Some(SwError {
                    status: 0x1a,
                    opcode: op,
                    addr: a,
                });
            }
        } else if status != 1 {
            out.swerr = Some(SwError {
                status,
                opcode: op,
                addr: 0,
            });
        }
        out
    }
}
