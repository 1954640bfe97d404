//! Mediation: the guest programs the vDSA front end (its own registers, checked by the same
//! rules as the software backend); what it commits is translated onto the physical WQs,
//! groups and engines it was given, and nothing else of the physical device is ever written.
//!
//! Guest WQ `i` is physical WQ `wqs[i]`; guest group `g` is physical group `g`; guest engine
//! `e` is physical engine `e` (the guest sees at most as many groups and engines as the
//! device has). Translated, per command:
//! - ENABLE_DEVICE: every physical GRPCFG rewritten from the guest's (WQ bits translated,
//!   engines masked to the device's; of GRPFLGCFG only the guest's traffic classes A and B,
//!   which the 6.12 driver sets to 1 on DSA 1.0/2.0: no read-buffer reservations or limits
//!   from a guest), the size of each given WQ from the guest's, every WQ not given size 0;
//!   then the physical ENABLE_DEVICE, whose error is the guest's.
//! - ENABLE_WQ: the physical WQCFG of `wqs[i]` from the guest's, clamped: dedicated mode,
//!   priority 1..=15, threshold 0, no PASID or block-on-fault, max transfer and batch no
//!   larger than the device's; then the physical ENABLE_WQ. A physical WQ found enabled
//!   (left so by a crash of an earlier owner) is disabled, rewritten and enabled again, so
//!   the clamped configuration is the one that runs.
//! - DISABLE/DRAIN/ABORT/RESET_WQ, DRAIN_ALL/ABORT_ALL: the same command on the translated
//!   WQ set, one per 16-WQ block.
//! - DISABLE_DEVICE, RESET_DEVICE: the physical ones (this guest owns the function).
//!
//! The front end changes its own state on a teardown command whatever the physical device
//! answered (a guest must always be able to stop), and the guest's CMDSTS carries the
//! physical error when its own check passed.
//!
//! Besides configuration and commands, mediation writes only GENCTRL.softerr_int_en (before
//! ENABLE_DEVICE) and clears INTCAUSE and SWERR after reading a software error, which
//! [`super::swerr`] translates into the guest's.
//!
//! Descriptors never come here: the given WQs' portal pages are the guest's memory (see
//! [`super::device`]). A store that exits to dsavmm anyway is posted to the physical portal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::dsa::backend::{DsaBackend, Mirror, Submitted};
use crate::dsa::command::code;
use crate::dsa::config::Tables;
use crate::dsa::descriptor::{Descriptor, DESC_SIZE};
use crate::dsa::engine::{EngineLimits, Outcome, SwError};
use crate::dsa::regs;

use super::physical::{PhysicalCaps, PhysicalDsa};

/// What mediation needs of the physical device (a [`PhysicalDsa`], or a register model in
/// tests).
pub trait PhysicalPort: Send + Sync {
    /// Its geometry.
    fn caps(&self) -> PhysicalCaps;
    /// Runs a command polled; returns the CMDSTS error byte.
    fn command(&self, code: u32, operand: u32) -> u8;
    /// Writes WQCFG dword `d` of WQ `wq`.
    fn write_wqcfg(&self, wq: usize, d: usize, v: u32);
    /// Writes GRPCFG qword `q` of group `g`.
    fn write_grpcfg(&self, g: usize, q: usize, v: u64);
    /// Posts a descriptor to WQ `wq`'s portal from this process.
    fn post(&self, wq: usize, desc: &[u8; DESC_SIZE]) -> bool;
    /// OPCAP's four qwords.
    fn opcap(&self) -> [u64; 4];
    /// Reads BAR0 dword `off`.
    fn r32(&self, off: u64) -> u32;
    /// Writes BAR0 dword `off`: only GENCTRL, INTCAUSE and SWERR are written this way
    /// ([`PhysicalPort::enable_error_interrupts`], [`PhysicalPort::take_swerr`]).
    fn w32(&self, off: u64, v: u32);

    /// Sets GENCTRL.softerr_int_en, so that a software error signals the physical vector 0.
    /// A failed read (all ones) writes nothing: it would set every interrupt enable.
    fn enable_error_interrupts(&self) {
        let g = self.r32(regs::GENCTRL);
        if g != u32::MAX {
            self.w32(regs::GENCTRL, g | regs::GENCTRL_SOFTERR_INT_EN);
        }
    }

    /// Takes the pending software error: SWERR's four qwords when SWERR.valid says there is
    /// one. INTCAUSE's software-error cause is acknowledged first, then SWERR is read and its
    /// valid/overflow bits as read are cleared (both RW1C): an error logged after the read is
    /// valid again (and signalled again), so it is never lost behind an acknowledged cause.
    /// INTCAUSE's other causes are left as they are. An overflow left over from an error that
    /// came between the read and the clear is returned as an entry with only overflow set.
    fn take_swerr(&self) -> Option<[u64; 4]> {
        let cause = self.r32(regs::INTCAUSE);
        if cause != u32::MAX && cause & regs::INTCAUSE_SWERR != 0 {
            self.w32(regs::INTCAUSE, regs::INTCAUSE_SWERR);
        }
        let r64 = |off: u64| u64::from(self.r32(off)) | (u64::from(self.r32(off + 4)) << 32);
        let q0 = r64(regs::SWERR);
        let flags = q0 & (super::swerr::SWERR_VALID | super::swerr::SWERR_OVERFLOW);
        if q0 == u64::MAX || flags == 0 {
            return None;
        }
        let q = [
            q0,
            r64(regs::SWERR + 8),
            r64(regs::SWERR + 16),
            r64(regs::SWERR + 24),
        ];
        self.w32(regs::SWERR, flags as u32);
        Some(q)
    }
}

impl PhysicalPort for PhysicalDsa {
    fn caps(&self) -> PhysicalCaps {
        PhysicalDsa::caps(self)
    }
    fn command(&self, code: u32, operand: u32) -> u8 {
        PhysicalDsa::command(self, code, operand)
    }
    fn write_wqcfg(&self, wq: usize, d: usize, v: u32) {
        PhysicalDsa::write_wqcfg(self, wq, d, v)
    }
    fn write_grpcfg(&self, g: usize, q: usize, v: u64) {
        PhysicalDsa::write_grpcfg(self, g, q, v)
    }
    fn post(&self, wq: usize, desc: &[u8; DESC_SIZE]) -> bool {
        // The limited portal page the idxd driver uses (BAR2 + wq x 0x4000 + 0x1000).
        PhysicalDsa::post(self, wq, 0x1000, desc)
    }
    fn opcap(&self) -> [u64; 4] {
        let o = crate::dsa::regs::OPCAP;
        [0, 1, 2, 3].map(|i| self.r64(o + 8 * i))
    }
    fn r32(&self, off: u64) -> u32 {
        PhysicalDsa::r32(self, off)
    }
    fn w32(&self, off: u64, v: u32) {
        PhysicalDsa::w32(self, off, v)
    }
}

/// Counters of the mediation.
#[derive(Debug, Default)]
pub struct MediationCounters {
    /// Guest commands carried out on the physical device.
    pub commands: AtomicU64,
    /// Of those, refused by the physical device (its error went to the guest).
    pub physical_errors: AtomicU64,
    /// Portal stores that exited to dsavmm and were posted (0 when the pages are mapped).
    pub portal_exits: AtomicU64,
    /// Physical software errors forwarded to the guest's SWERR.
    pub swerrs_forwarded: AtomicU64,
    /// Physical software errors naming a WQ the guest was not given (not forwarded).
    pub swerrs_foreign: AtomicU64,
}

/// The backend of a mediated vDSA.
pub struct MediatedBackend {
    phys: Arc<dyn PhysicalPort>,
    wqs: Vec<usize>,
    counters: Arc<MediationCounters>,
}

/// GRPFLGCFG's traffic class A (\[2:0\]) and B (\[5:3\]) fields.
const GRPFLG_TRAFFIC_CLASSES: u64 = 0x3f;

/// The WQ-set operands (\[15:0\] bitmask, \[19:16\] block) naming `wqs`.
pub fn wq_set_operands(wqs: impl IntoIterator<Item = usize>) -> Vec<u32> {
    let mut blocks = std::collections::BTreeMap::<usize, u32>::new();
    for w in wqs {
        *blocks.entry(w / 16).or_default() |= 1 << (w % 16);
    }
    blocks
        .into_iter()
        .filter(|(b, _)| *b < 16)
        .map(|(b, m)| ((b as u32) << 16) | m)
        .collect()
}

impl MediatedBackend {
    /// Guest WQ `i` is physical WQ `wqs[i]`.
    pub fn new(
        phys: Arc<dyn PhysicalPort>,
        wqs: Vec<usize>,
        counters: Arc<MediationCounters>,
    ) -> Self {
        Self {
            phys,
            wqs,
            counters,
        }
    }

    fn physical(&self, guest_wq: usize) -> Option<usize> {
        self.wqs.get(guest_wq).copied()
    }

    fn run(&self, code: u32, operand: u32) -> u8 {
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        let e = self.phys.command(code, operand);
        if e != 0 {
            self.counters
                .physical_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("physical DSA refused command {code} ({operand:#x}): error {e:#04x}");
        }
        e
    }

    fn enable_device(&self, t: &Tables) -> u8 {
        let caps = self.phys.caps();
        let engines = if caps.engines >= 64 {
            u64::MAX
        } else {
            (1u64 << caps.engines) - 1
        };
        for g in 0..caps.groups {
            let mut bits = [0u64; 4];
            let mut eng = 0;
            if let Some(grp) = t.groups.get(g) {
                for (i, p) in self.wqs.iter().enumerate() {
                    if grp
                        .wqs
                        .get(i / 64)
                        .is_some_and(|q| q & (1 << (i % 64)) != 0)
                    {
                        bits[p / 64] |= 1 << (p % 64);
                    }
                }
                eng = grp.engines & engines;
            }
            for (q, v) in bits.iter().enumerate() {
                self.phys.write_grpcfg(g, q, *v);
            }
            self.phys.write_grpcfg(g, 4, eng);
            let tcs = t
                .groups
                .get(g)
                .map_or(0, |grp| grp.flags & GRPFLG_TRAFFIC_CLASSES);
            self.phys.write_grpcfg(g, 5, tcs);
        }
        for p in 0..caps.wqs {
            let size = self
                .wqs
                .iter()
                .position(|w| *w == p)
                .and_then(|i| t.wqs.get(i))
                .map_or(0, |w| u32::from(w.size()));
            self.phys.write_wqcfg(p, 0, size);
        }
        // A software error must reach the guest (swerr.rs): the physical device signals it only
        // with GENCTRL.softerr_int_en, which a reset clears.
        self.phys.enable_error_interrupts();
        self.run(code::ENABLE_DEVICE, 0)
    }

    fn enable_wq(&self, i: usize, t: &Tables) -> u8 {
        let (Some(p), Some(w)) = (self.physical(i), t.wqs.get(i)) else {
            return crate::dsa::command::status::INVALID_WQ;
        };
        let caps = self.phys.caps();
        let prio = u32::from(w.priority().clamp(1, 15));
        let xfer = u32::from(w.max_xfer_shift().min(caps.max_xfer_shift));
        let batch = u32::from(w.max_batch_shift().min(caps.max_batch_shift));
        let write = || {
            self.phys.write_wqcfg(p, 1, 0);
            self.phys.write_wqcfg(p, 2, 1 | (prio << 4));
            self.phys.write_wqcfg(p, 3, xfer | (batch << 5));
            for d in [4, 5] {
                self.phys.write_wqcfg(p, d, 0);
            }
        };
        write();
        let e = self.run(code::ENABLE_WQ, p as u32);
        if e != crate::dsa::command::status::WQ_ENABLED {
            return e;
        }
        // Enabled already: WQCFG is read-only then, so what runs is not what was just
        // clamped. Disable it, write again, enable.
        tracing::warn!("physical WQ {p} was enabled already: disabling and reconfiguring it");
        let e = self.run(code::DISABLE_WQ, wq_set_operands([p])[0]);
        if e != 0 {
            return e;
        }
        write();
        self.run(code::ENABLE_WQ, p as u32)
    }

    fn wqs_command(&self, op: u32, set: &[usize]) -> u8 {
        let phys: Vec<usize> = set.iter().filter_map(|w| self.physical(*w)).collect();
        let mut first = 0;
        for operand in wq_set_operands(phys) {
            let e = self.run(op, operand);
            if first == 0 {
                first = e;
            }
        }
        first
    }
}

impl DsaBackend for MediatedBackend {
    fn name(&self) -> &'static str {
        "vfio"
    }

    fn opcodes(&self) -> Vec<u8> {
        let cap = self.phys.opcap();
        (0..=255u8)
            .filter(|op| cap[usize::from(op / 64)] & (1 << (op % 64)) != 0)
            .collect()
    }

    fn mirror(&mut self, cmd: Mirror<'_>) -> u8 {
        match cmd {
            Mirror::EnableDevice(t) => self.enable_device(t),
            Mirror::DisableDevice => self.run(code::DISABLE_DEVICE, 0),
            Mirror::ResetDevice => self.run(code::RESET_DEVICE, 0),
            Mirror::EnableWq(i, t) => self.enable_wq(i, t),
            Mirror::Wqs(op, set) => self.wqs_command(op, set),
        }
    }

    fn submit(&mut self, wq: usize, desc: &[u8; DESC_SIZE], _limits: &EngineLimits) -> Submitted {
        self.counters.portal_exits.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = self.physical(wq) {
            self.phys.post(p, desc);
        }
        Submitted::Queued
    }

    fn reject(&mut self, _wq: usize, desc: &[u8; DESC_SIZE], status: u8) -> Outcome {
        // No guest memory here: the error goes to SWERR.
        let d = Descriptor::parse(desc);
        Outcome {
            opcode: d.opcode(),
            status,
            bytes: 0,
            record_written: false,
            interrupt: None,
            swerr: Some(SwError {
                status,
                opcode: d.opcode(),
                addr: d.completion_addr(),
                batch_index: None,
                invalid_flags: 0,
                write: true,
                pasid: 0,
                priv_: false,
            }),
            member_interrupts: Vec::new(),
        }
    }

    fn drain(&mut self, _wqs: &[usize]) -> Vec<(usize, Outcome)> {
        // The physical DRAIN was mirrored; completions went to the guest directly.
        Vec::new()
    }

    fn abort(&mut self, _wqs: &[usize]) {}

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests;
