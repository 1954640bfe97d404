//! The command interface: CMD / CMDSTS (docs/dsa-device-model.md §4).
//!
//! A command runs inside the MMIO write unless it must wait for descriptors submitted before
//! it that are still queued or executing on engine workers (drains, aborts, disables and
//! resets, section 4.2): then CMDSTS reads "active" (bit 31) and the command stays pending
//! until the reap after the last of them ([`DsaDevice::reap`]); nothing blocks meanwhile.
//! Aborts drop the queued ones first and wait only for those on an engine; disables and
//! resets refuse new descriptors for their WQs while they wait. A CMD write while a command is
//! active is ignored and counted. When a command ends CMDSTS holds `err | result << 8`. Only
//! when CMD bit 31 (int_req) was set does the device set INTCAUSE bit 1 and send MSI-X vector
//! 0 (traps 4 and 5); the probe reset (0x0050_0000) is polled and must not raise anything.

use super::backend::Mirror;
use super::regs::{Registers, INTCAUSE_CMD, STATE_DISABLED, STATE_ENABLED, TOTAL_RDBUFS};
use super::DsaDevice;

/// Command codes (section 4.2).
pub mod code {
    /// Enable device.
    pub const ENABLE_DEVICE: u32 = 1;
    /// Disable device.
    pub const DISABLE_DEVICE: u32 = 2;
    /// Drain all.
    pub const DRAIN_ALL: u32 = 3;
    /// Abort all.
    pub const ABORT_ALL: u32 = 4;
    /// Reset device.
    pub const RESET_DEVICE: u32 = 5;
    /// Enable WQ (operand: WQ index).
    pub const ENABLE_WQ: u32 = 6;
    /// Disable WQ (operand: WQ set).
    pub const DISABLE_WQ: u32 = 7;
    /// Drain WQ.
    pub const DRAIN_WQ: u32 = 8;
    /// Abort WQ.
    pub const ABORT_WQ: u32 = 9;
    /// Reset WQ.
    pub const RESET_WQ: u32 = 10;
    /// Drain PASID.
    pub const DRAIN_PASID: u32 = 11;
    /// Abort PASID.
    pub const ABORT_PASID: u32 = 12;
    /// Request interrupt handle (not advertised).
    pub const REQUEST_INT_HANDLE: u32 = 13;
    /// Release interrupt handle (not advertised).
    pub const RELEASE_INT_HANDLE: u32 = 14;
}

/// CMDSTS error codes (section 4.3).
pub mod status {
    /// Success.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid command code.
    pub const INVALID_CMD: u8 = 0x01;
    /// Invalid WQ index.
    pub const INVALID_WQ: u8 = 0x02;
    /// Non-zero reserved field.
    pub const RESERVED_FIELD: u8 = 0x04;
    /// ENABLE_DEVICE: not disabled.
    pub const DEV_ENABLED: u8 = 0x10;
    /// ENABLE_DEVICE: bus master disabled.
    pub const BUS_MASTER_OFF: u8 = 0x12;
    /// ENABLE_WQ: device not enabled.
    pub const WQ_DEV_NOT_ENABLED: u8 = 0x20;
    /// ENABLE_WQ: already enabled.
    pub const WQ_ENABLED: u8 = 0x21;
    /// ENABLE_WQ: size 0.
    pub const WQ_SIZE: u8 = 0x22;
    /// ENABLE_WQ: priority 0.
    pub const WQ_PRIORITY: u8 = 0x23;
    /// ENABLE_WQ: mode not supported.
    pub const WQ_MODE: u8 = 0x24;
    /// ENABLE_WQ: bof without GENCAP.bof.
    pub const WQ_BOF: u8 = 0x25;
    /// ENABLE_WQ: pasid_en inconsistent.
    pub const WQ_PASID: u8 = 0x26;
    /// ENABLE_WQ: max batch above the device's.
    pub const WQ_MAX_BATCH: u8 = 0x27;
    /// ENABLE_WQ: max transfer above the device's.
    pub const WQ_MAX_XFER: u8 = 0x28;
    /// DISABLE_DEVICE: not enabled.
    pub const DEV_NOT_ENABLED: u8 = 0x31;
    /// WQ commands: WQ not enabled.
    pub const WQ_NOT_ENABLED: u8 = 0x32;
}

/// CMDSTS bit 31: a command is in progress.
pub const CMDSTS_ACTIVE: u32 = 1 << 31;
/// CMD bit 31: request a completion interrupt.
pub const CMD_INT_REQ: u32 = 1 << 31;
/// CMD bits 30:25 are reserved.
const CMD_RESERVED: u32 = 0x7e00_0000;

/// Decodes a WQ-set operand (section 4.2: \[15:0\] bitmask within block, \[19:16\] block).
pub fn wq_set(operand: u32, num_wqs: usize) -> Result<Vec<usize>, u8> {
    let block = ((operand >> 16) & 0xf) as usize;
    let mut v = Vec::new();
    for bit in 0..16 {
        if operand & (1 << bit) != 0 {
            let wq = block * 16 + bit;
            if wq >= num_wqs {
                return Err(status::INVALID_WQ);
            }
            v.push(wq);
        }
    }
    Ok(v)
}

/// A command waiting for the descriptors submitted before it.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    cmd: u32,
    /// Each WQ it waits for, with the number its next descriptor had when the command came.
    marks: Vec<(usize, u64)>,
    /// The command disables or resets these WQs: portal writes to them are dropped meanwhile.
    closing: bool,
}

impl Pending {
    /// Whether a portal write to `wq` must be dropped while this command waits.
    pub(crate) fn closes(&self, wq: usize) -> bool {
        self.closing && self.marks.iter().any(|(w, _)| *w == wq)
    }
}

impl DsaDevice {
    /// Executes a CMD register write, or leaves it pending (CMDSTS active) while work it must
    /// wait for is outstanding.
    pub(crate) fn write_cmd(&mut self, cmd: u32) {
        if self.pending.is_some() {
            // A device reset is taken at any time (the driver's probe and kexec paths write it
            // without looking at CMDSTS, then poll it): it replaces the waiting command, whose
            // end is never signalled. Anything else waits its turn.
            if (cmd >> 20) & 0x1f == code::RESET_DEVICE && cmd & CMD_RESERVED == 0 {
                tracing::debug!("DSA RESET_DEVICE replaces a pending command");
                self.pending = None;
            } else {
                self.stats.commands_while_active += 1;
                tracing::debug!("DSA CMD {cmd:#010x} ignored: a command is active");
                return;
            }
        }
        self.regs.cmd = cmd;
        self.regs.cmdsts = CMDSTS_ACTIVE;
        if let Some((wqs, abort, closing)) = self.waits_for(cmd) {
            if abort {
                self.backend.abort(&wqs);
            }
            let marks = wqs.iter().map(|&w| (w, self.backend.next_seq(w))).collect();
            let p = Pending {
                cmd,
                marks,
                closing,
            };
            if self.outstanding(&p) {
                tracing::debug!("DSA CMD {cmd:#010x} waits for the work before it");
                self.pending = Some(p);
                return;
            }
        }
        self.finish_cmd(cmd);
    }

    /// Finishes the pending command once the work before it is done.
    pub(crate) fn finish_pending(&mut self) {
        let Some(p) = &self.pending else {
            return;
        };
        if self.outstanding(p) {
            return;
        }
        let cmd = p.cmd;
        self.pending = None;
        self.finish_cmd(cmd);
    }

    /// Whether a descriptor submitted before `p` is still queued or executing.
    fn outstanding(&self, p: &Pending) -> bool {
        p.marks.iter().any(|&(w, mark)| {
            self.backend
                .oldest_outstanding(w)
                .is_some_and(|oldest| oldest < mark)
        })
    }

    /// The WQs command `cmd` waits for before it runs, whether it aborts their queued work
    /// first, and whether it closes them to new descriptors meanwhile.
    fn waits_for(&self, cmd: u32) -> Option<(Vec<usize>, bool, bool)> {
        if cmd & CMD_RESERVED != 0 {
            return None;
        }
        let op = (cmd >> 20) & 0x1f;
        let n = self.tables.wqs.len();
        let all = || (0..n).collect::<Vec<_>>();
        match op {
            code::DISABLE_DEVICE if self.regs.state == STATE_ENABLED => Some((all(), false, true)),
            code::DRAIN_ALL | code::DRAIN_PASID => Some((all(), false, false)),
            code::ABORT_ALL | code::ABORT_PASID => Some((all(), true, false)),
            code::RESET_DEVICE => Some((all(), true, true)),
            code::DISABLE_WQ | code::DRAIN_WQ | code::ABORT_WQ | code::RESET_WQ => {
                let set = wq_set(cmd & 0xf_ffff, n).ok()?;
                let abort = matches!(op, code::ABORT_WQ | code::RESET_WQ);
                let closing = matches!(op, code::DISABLE_WQ | code::RESET_WQ);
                Some((set, abort, closing))
            }
            _ => None,
        }
    }

    /// Runs command `cmd` and ends it: CMDSTS, the counters, the completion interrupt.
    fn finish_cmd(&mut self, cmd: u32) {
        let op = (cmd >> 20) & 0x1f;
        let operand = cmd & 0xf_ffff;
        let (err, result) = if cmd & CMD_RESERVED != 0 {
            (status::RESERVED_FIELD, 0)
        } else {
            self.run(op, operand)
        };
        self.regs.cmdsts = u32::from(err) | (result << 8);
        self.stats.commands += 1;
        if err != status::SUCCESS {
            self.stats.command_errors += 1;
        }
        tracing::debug!("DSA CMD {cmd:#010x} -> CMDSTS {:#010x}", self.regs.cmdsts);
        // Traps 4/5: INTCAUSE.CMD and vector 0 only for int_req, after CMDSTS is final.
        if cmd & CMD_INT_REQ != 0 {
            self.raise_misc(INTCAUSE_CMD);
        }
    }

    fn run(&mut self, op: u32, operand: u32) -> (u8, u32) {
        let n = self.tables.wqs.len();
        let e = match op {
            code::ENABLE_DEVICE => self.enable_device(),
            code::DISABLE_DEVICE => self.disable_device(),
            code::DRAIN_ALL | code::DRAIN_PASID => {
                let all: Vec<usize> = (0..n).collect();
                // Mirrored to the enabled WQs only: a drain/abort-all does not fail on a
                // disabled one, a physical DRAIN/ABORT_WQ would (0x32).
                let e = self
                    .backend
                    .mirror(Mirror::Wqs(code::DRAIN_WQ, &self.enabled_wqs()));
                self.drain(all);
                e
            }
            code::ABORT_ALL | code::ABORT_PASID => {
                let all: Vec<usize> = (0..n).collect();
                // Mirrored to the enabled WQs only: a drain/abort-all does not fail on a
                // disabled one, a physical DRAIN/ABORT_WQ would (0x32).
                let e = self
                    .backend
                    .mirror(Mirror::Wqs(code::ABORT_WQ, &self.enabled_wqs()));
                self.abort(all);
                e
            }
            code::RESET_DEVICE => self.reset_device(),
            code::ENABLE_WQ => self.enable_wq(operand as usize),
            code::DISABLE_WQ | code::DRAIN_WQ | code::ABORT_WQ | code::RESET_WQ => {
                match wq_set(operand, n) {
                    Err(e) => e,
                    Ok(set) => self.wq_command(op, set),
                }
            }
            // 13/14 need CMDCAP bits 13/14, which are not advertised; 0 and 15-31 are invalid.
            _ => status::INVALID_CMD,
        };
        (e, 0)
    }

    /// ENABLE_DEVICE (section 4.4 \[R\]).
    fn enable_device(&mut self) -> u8 {
        if self.regs.state != STATE_DISABLED {
            return status::DEV_ENABLED;
        }
        if !self.pci.bus_master_enabled() {
            return status::BUS_MASTER_OFF;
        }
        if let Err(e) = self
            .tables
            .check(u32::from(self.cfg.total_wq_size), TOTAL_RDBUFS)
        {
            return e;
        }
        let e = self.backend.mirror(Mirror::EnableDevice(&self.tables));
        if e != status::SUCCESS {
            return e;
        }
        self.regs.state = STATE_ENABLED;
        status::SUCCESS
    }

    /// DISABLE_DEVICE: finish in-flight work, disable all WQs, keep the configuration.
    fn disable_device(&mut self) -> u8 {
        if self.regs.state != STATE_ENABLED {
            return status::DEV_NOT_ENABLED;
        }
        let n = self.tables.wqs.len();
        let e = self.backend.mirror(Mirror::DisableDevice);
        self.drain((0..n).collect());
        self.tables.wqs.iter_mut().for_each(|w| {
            w.enabled = false;
            w.occupancy = 0;
        });
        self.regs.state = STATE_DISABLED;
        e
    }

    /// RESET_DEVICE: abort everything without completion records, then the reset values of
    /// section 2.19 (PCI config space, the MSI-X table and PBA are untouched). Returns the
    /// backend's error (a mediated device's physical one); the reset happens regardless.
    fn reset_device(&mut self) -> u8 {
        // What finished before the reset is signalled first (its records are written).
        let all: Vec<usize> = (0..self.tables.wqs.len()).collect();
        for (wq, out) in self.backend.drain(&all) {
            self.complete(wq, out);
        }
        let e = self.backend.mirror(Mirror::ResetDevice);
        self.backend.reset();
        self.regs.reset();
        self.tables.reset();
        e
    }

    /// ENABLE_WQ checks in the order of section 4.4 \[R\].
    fn enable_wq(&mut self, wq: usize) -> u8 {
        let gencap = self.caps.gencap;
        let dev_xfer = ((gencap >> 16) & 0x1f) as u8;
        let dev_batch = ((gencap >> 21) & 0xf) as u8;
        let enabled = self.regs.state == STATE_ENABLED;
        let Some(w) = self.tables.wqs.get(wq) else {
            return status::INVALID_WQ;
        };

        let e = if !enabled {
            status::WQ_DEV_NOT_ENABLED
        } else if w.enabled {
            status::WQ_ENABLED
        } else if w.size() == 0 {
            status::WQ_SIZE
        } else if w.priority() == 0 {
            status::WQ_PRIORITY // trap 12
        } else if !w.dedicated() {
            status::WQ_MODE // no shared mode (WQCAP bit 48 = 0)
        } else if w.bof() {
            status::WQ_BOF // GENCAP.block_on_fault = 0
        } else if w.pasid_en() {
            status::WQ_PASID // no PASID capability
        } else if w.max_batch_shift() > dev_batch {
            status::WQ_MAX_BATCH
        } else if w.max_xfer_shift() > dev_xfer {
            status::WQ_MAX_XFER
        } else {
            self.backend.mirror(Mirror::EnableWq(wq, &self.tables))
        };
        if e == status::SUCCESS {
            if let Some(w) = self.tables.wqs.get_mut(wq) {
                w.enabled = true;
                w.occupancy = 0;
            }
        }
        e
    }

    /// The WQs enabled now.
    fn enabled_wqs(&self) -> Vec<usize> {
        (0..self.tables.wqs.len())
            .filter(|w| self.tables.wqs.get(*w).is_some_and(|q| q.enabled))
            .collect()
    }

    fn wq_command(&mut self, op: u32, set: Vec<usize>) -> u8 {
        let not_enabled = set
            .iter()
            .any(|w| self.tables.wqs.get(*w).is_none_or(|q| !q.enabled));
        let physical = if !(op == code::DISABLE_WQ && not_enabled) {
            self.backend.mirror(Mirror::Wqs(op, &set))
        } else {
            status::SUCCESS
        };
        let e = self.wq_command_locally(op, set, not_enabled);
        if e == status::SUCCESS {
            physical
        } else {
            e
        }
    }

    /// The front end's part of a WQ-set command.
    fn wq_command_locally(&mut self, op: u32, set: Vec<usize>, not_enabled: bool) -> u8 {
        match op {
            code::DISABLE_WQ => {
                if not_enabled {
                    return status::WQ_NOT_ENABLED;
                }
                self.drain(set.clone());
                for w in set {
                    if let Some(q) = self.tables.wqs.get_mut(w) {
                        q.enabled = false;
                        q.occupancy = 0;
                    }
                }
                status::SUCCESS
            }
            code::DRAIN_WQ => {
                self.drain(set);
                if not_enabled {
                    status::WQ_NOT_ENABLED
                } else {
                    status::SUCCESS
                }
            }
            code::ABORT_WQ => {
                self.abort(set);
                if not_enabled {
                    status::WQ_NOT_ENABLED
                } else {
                    status::SUCCESS
                }
            }
            _ => {
                // RESET_WQ: abort, disable, clear the writable WQCFG fields (trap 10). Size is
                // frozen while the device is enabled, so it survives then (see Wq::clear).
                self.abort(set.clone());
                let keep_size = self.regs.state == STATE_ENABLED;
                for w in set {
                    if let Some(q) = self.tables.wqs.get_mut(w) {
                        q.clear(keep_size);
                    }
                }
                status::SUCCESS
            }
        }
    }

    /// Waits for the backend's in-flight work on `wqs` and signals its completions.
    fn drain(&mut self, wqs: Vec<usize>) {
        let done = self.backend.drain(&wqs);
        for (wq, outcome) in done {
            self.complete(wq, outcome);
        }
        for w in wqs {
            let left = self.backend.occupancy(w);
            if let Some(q) = self.tables.wqs.get_mut(w) {
                q.occupancy = left;
            }
        }
    }

    /// Ends an abort of `wqs`: their queued work was dropped when the command came
    /// (`write_cmd`, without records), and what finished before it is signalled now, so that
    /// nothing of these WQs completes after the command. Descriptors submitted while the abort
    /// waited are not dropped: they came after it.
    fn abort(&mut self, wqs: Vec<usize>) {
        for (wq, out) in self.backend.drain(&wqs) {
            self.complete(wq, out);
        }
        for w in wqs {
            let left = self.backend.occupancy(w);
            if let Some(q) = self.tables.wqs.get_mut(w) {
                q.occupancy = left;
            }
        }
    }
}

impl Registers {
    /// Records a software error in SWERR (section 10.1): fills it, or sets overflow if an
    /// error is already valid. Returns whether it was newly valid.
    pub fn record_swerr(&mut self, q0: u64, q1: u64, addr: u64) -> bool {
        if self.swerr[0] & 1 != 0 {
            self.swerr[0] |= 2;
            return false;
        }
        self.swerr = [q0 | 1, q1, addr, 0];
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wq_set_decoding() {
        assert_eq!(wq_set(0x1, 8), Ok(vec![0]));
        assert_eq!(wq_set(0x81, 8), Ok(vec![0, 7]));
        assert_eq!(wq_set(0x100, 8), Err(status::INVALID_WQ));
        // wq17 = block 1 bit 1 (section 4.2 example 0x8071_0002).
        assert_eq!(wq_set(0x1_0002, 8), Err(status::INVALID_WQ));
        assert_eq!(wq_set(0x1_0002, 32), Ok(vec![17]));
        assert_eq!(wq_set(0, 8), Ok(vec![]));
    }
}
