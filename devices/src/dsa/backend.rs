//! The backend seam: who executes descriptors once the front end has accepted them.
//!
//! The front end (registers, WQ state, portals, MSI-X) is the same for every backend. The
//! [`SoftwareBackend`] runs the software engine synchronously over guest memory (the
//! `exec=inline` device and `dsa-server`); [`super::workers::WorkerBackend`] queues for engine
//! threads and reports completions through [`DsaBackend::completed`]; the mediated backend (a
//! physical DSA WQ through VFIO) posts to the hardware, which writes its own records.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::config::Tables;
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

/// A command the front end accepted, for a backend that carries it out on a physical device
/// as well (the mediated VFIO backend). WQ indices are the guest's.
#[derive(Clone, Copy, Debug)]
pub enum Mirror<'a> {
    /// ENABLE_DEVICE, with the guest's GRPCFG/WQCFG tables as they are now.
    EnableDevice(&'a Tables),
    /// DISABLE_DEVICE.
    DisableDevice,
    /// RESET_DEVICE.
    ResetDevice,
    /// ENABLE_WQ of this WQ, with the guest's tables.
    EnableWq(usize, &'a Tables),
    /// DISABLE_WQ, DRAIN_WQ, ABORT_WQ or RESET_WQ (the command code) of these WQs; DRAIN_ALL
    /// and ABORT_ALL come as DRAIN_WQ and ABORT_WQ of every WQ.
    Wqs(u32, &'a [usize]),
}

/// Executes descriptors for the front end.
pub trait DsaBackend: Send {
    /// Carries out a command the front end accepted, before the front end commits it; a
    /// non-zero CMDSTS error code makes the command fail with it. The software engine has
    /// nothing to mirror.
    fn mirror(&mut self, _cmd: Mirror<'_>) -> u8 {
        0
    }
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
    /// The number the next descriptor submitted to `wq` gets (submission order). With
    /// [`DsaBackend::oldest_outstanding`] the front end tells when everything submitted before
    /// a command has finished. A backend that finishes work within `submit` or `drain` keeps
    /// the default.
    fn next_seq(&self, _wq: usize) -> u64 {
        0
    }
    /// The number of the oldest descriptor of `wq` not finished yet (queued or executing);
    /// `None` when nothing is outstanding.
    fn oldest_outstanding(&self, _wq: usize) -> Option<u64> {
        None
    }
    /// Takes the outcomes of descriptors that finished since the last call, in completion
    /// order (records already written). For a backend that completes on its own threads.
    fn completed(&mut self) -> Vec<(usize, Outcome)> {
        Vec::new()
    }
    /// Descriptors each engine executed (empty when the backend has no engines of its own).
    fn engine_descriptors(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Returns the outcomes of `wqs`' queued work (records already written): a backend that
    /// finishes work only when asked waits for it here; one with its own threads returns what
    /// has finished, the front end having waited through `oldest_outstanding`.
    fn drain(&mut self, wqs: &[usize]) -> Vec<(usize, Outcome)>;
    /// Drops all queued work of `wqs` without completion records.
    fn abort(&mut self, wqs: &[usize]);
    /// Drops everything (RESET_DEVICE).
    fn reset(&mut self);
}

/// Where the software engine finds the memory a descriptor names, at the moment it runs.
pub trait DmaMemory: Send + Sync {
    /// The address space now (the caller holds the device lock).
    fn snapshot(&self) -> Arc<GuestMemoryMmap<()>>;
}

/// Guest RAM that never changes (the in-process device).
pub(crate) struct FixedMemory(pub(crate) Arc<GuestMemoryMmap<()>>);

impl DmaMemory for FixedMemory {
    fn snapshot(&self) -> Arc<GuestMemoryMmap<()>> {
        self.0.clone()
    }
}

/// The software engine over guest RAM, synchronous in the caller's thread.
///
/// The memory is a snapshot taken per descriptor: a vfio-user server changes its DMA space on
/// every DMA_MAP and DMA_UNMAP (under the device lock, so never while a descriptor runs).
pub struct SoftwareBackend {
    mem: Arc<dyn DmaMemory>,
}

impl SoftwareBackend {
    /// A backend executing over `mem`.
    pub fn new(mem: Arc<GuestMemoryMmap<()>>) -> Self {
        Self {
            mem: Arc::new(FixedMemory(mem)),
        }
    }

    /// A backend executing over whatever `mem` holds when a descriptor runs.
    pub fn with_dma(mem: Arc<dyn DmaMemory>) -> Self {
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
        Submitted::Done(engine::execute(&*self.mem.snapshot(), &d, limits))
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
            let mem = self.mem.snapshot();
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
