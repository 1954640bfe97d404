//! The backend seam: who executes descriptors once the front end has accepted them.
//!
//! The front end (registers, WQ state, portals, MSI-X) is the same for every backend. The
//! [`SoftwareBackend`] runs the software engine synchronously over guest memory; a mediated
//! backend (a physical DSA WQ through VFIO) would queue and report completions later through
//! [`DsaBackend::drain`].

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::descriptor::{Descriptor, DESC_SIZE};
use super::engine::{self, EngineLimits, Outcome, SwError};

/// Completion record flag CRAV (descriptor flags bit 2, docs/dsa-device-model.md §6.2).
pub const FLAG_CRAV: u32 = 1 << 2;

/// Result of handing a descriptor to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Executed; the completion record (if any) is already in guest memory.
    Done(Outcome),
    /// Accepted; its outcome comes later from [`DsaBackend::drain`].
    Queued,
}

/// Executes descriptors for the front end.
pub trait DsaBackend: Send {
    /// Short name for logs and the API ("software").
    fn name(&self) -> &'static str;
    /// Opcodes to advertise in OPCAP.
    fn opcodes(&self) -> Vec<u8>;
    /// Executes (or queues) `desc`, accepted on WQ `wq` with that WQ's limits.
    fn submit(&mut self, wq: usize, desc: &[u8; DESC_SIZE], limits: &EngineLimits) -> Submitted;
    /// Completes `desc` with error `status` without executing it (for example 0x19, invalid
    /// interrupt handle): writes the completion record if CRAV allows, else reports SWERR.
    fn reject(&mut self, wq: usize, desc: &[u8; DESC_SIZE], status: u8) -> Outcome;
    /// Descriptors of `wq` accepted and not yet completed.
    fn occupancy(&self, _wq: usize) -> u16 {
        0
    }
    /// Waits for all queued work of `wqs` and returns its outcomes (records already written).
    fn drain(&mut self, wqs: &[usize]) -> Vec<(usize, Outcome)>;
    /// Drops all queued work of `wqs` without completion records.
    fn abort(&mut self, wqs: &[usize]);
    /// Drops everything (RESET_DEVICE).
    fn reset(&mut self);
}

/// The software engine over guest RAM, synchronous in the caller's thread.
///
/// The memory is an atomic snapshot: a vfio-user server replaces it on every DMA_MAP and
/// DMA_UNMAP (under the device lock, so never while a descriptor runs).
pub struct SoftwareBackend {
    mem: GuestMemoryAtomic<GuestMemoryMmap<()>>,
}

impl SoftwareBackend {
    /// A backend executing over `mem`.
    pub fn new(mem: Arc<GuestMemoryMmap<()>>) -> Self {
        Self { mem: mem.into() }
    }

    /// A backend executing over whatever `mem` holds when a descriptor runs.
    pub fn with_atomic(mem: GuestMemoryAtomic<GuestMemoryMmap<()>>) -> Self {
        Self { mem }
    }
}

impl DsaBackend for SoftwareBackend {
    fn name(&self) -> &'static str {
        "software"
    }

    fn opcodes(&self) -> Vec<u8> {
        engine::SUPPORTED_OPCODES.to_vec()
    }

    fn submit(&mut self, _wq: usize, desc: &[u8; DESC_SIZE], limits: &EngineLimits) -> Submitted {
        let d = Descriptor::parse(desc);
        Submitted::Done(engine::execute(&*self.mem.memory(), &d, limits))
    }

    fn reject(&mut self, _wq: usize, desc: &[u8; DESC_SIZE], status: u8) -> Outcome {
        let d = Descriptor::parse(desc);
        let mut out = Outcome {
            opcode: d.opcode(),
            status,
            bytes: 0,
            record_written: false,
            interrupt: None,
            swerr: None,
            member_interrupts: Vec::new(),
        };
        let addr = d.completion_addr();
        let swerr = |s| {
            Some(SwError {
                status: s,
                opcode: d.opcode(),
                addr,
                batch_index: None,
                invalid_flags: 0,
                write: true,
                pasid: 0,
                priv_: false,
            })
        };
        if d.flags() & FLAG_CRAV == 0 {
            out.swerr = swerr(status);
        } else if !addr.is_multiple_of(32) {
            out.swerr = swerr(0x1b);
        } else {
            // Section 7: bytes 1..32 first, the status byte last.
            let mem = self.mem.memory();
            let ok = mem
                .write_slice(&[0u8; 31], GuestAddress(addr.wrapping_add(1)))
                .is_ok()
                && mem.write_obj(status, GuestAddress(addr)).is_ok();
            if ok {
                out.record_written = true;
            } else {
                out.swerr = swerr(0x1a);
            }
        }
        out
    }

    fn drain(&mut self, _wqs: &[usize]) -> Vec<(usize, Outcome)> {
        Vec::new()
    }

    fn abort(&mut self, _wqs: &[usize]) {}

    fn reset(&mut self) {}
}
