//! BATCH: a list of descriptors in guest memory, executed in order.
//!
//! Rules (§6.3 and 7; uapi status names; DML `batch.cpp`):
//! - descriptor list at 0x10 must be 64-byte aligned, else 0x18 (`DSA_COMP_DESCLIST_ALIGN`);
//! - count at 0x20 must be > 1 and <= the WQ's max batch size, else 0x14;
//! - a list outside guest RAM gives 0x06 (`DSA_COMP_BATCH_PAGE_FAULT`) with the fault address;
//! - each member writes its own completion record and may request its own interrupt;
//! - a member with the fence flag runs only if every earlier member succeeded; otherwise it and
//!   all later members are abandoned;
//! - the batch record's "bytes completed" field is the number of members processed and its
//!   status is 0x05 when any member's status was not success (DML counts false-predicate as a
//!   failure too), else 0x01;
//! - BATCH and DRAIN are not allowed inside a batch (member status 0x10, see `run_op`).
//!
//! DPDK `drivers/dma/idxd` agrees: `idxd_hw_defs.h` documents `completed_size` as "data length,
//! or descriptors for batch"; members are submitted with CRAV but without RCR, so a successful
//! member leaves its record at status 0 ("successful descriptors are not written back
//! normally", `get_comp_status`); and a batch of one is padded with a fenced NOOP because the
//! count must be at least 2.

use vm_memory::GuestMemory;

use super::{execute_inner, mem, EngineLimits, OpResult};
use crate::dsa::descriptor::{flags, status, Descriptor, DESC_SIZE};

type OpRes = Result<OpResult, OpResult>;

/// Executes a batch descriptor.
pub fn batch<M: GuestMemory + ?Sized>(mem: &M, desc: &Descriptor, limits: &EngineLimits) -> OpRes {
    let count = desc.xfer_size;
    if count < 2 || count > limits.max_batch_size {
        return Err(OpResult::status(status::DESC_CNT_ERANGE));
    }
    let list = desc.src;
    if !list.is_multiple_of(DESC_SIZE as u64) {
        return Err(OpResult::status(status::DESCLIST_ALIGN));
    }
    if let Err(f) = mem::check(mem, list, u64::from(count) * DESC_SIZE as u64, false) {
        let mut r = OpResult::status(status::BATCH_PAGE_FAULT);
        r.cr.fault_addr = f.addr;
        return Err(r);
    }
    let mut res = OpResult::success(0);
    let mut any_failed = false;
    let mut completed: u32 = 0;
    for i in 0..count {
        let mut raw = [0u8; DESC_SIZE];
        let at = list + u64::from(i) * DESC_SIZE as u64;
        if mem::read(mem, at, &mut raw).is_err() {
            // The list was checked above; a failure now is a fault reading the list.
            res.cr.status = status::BATCH_PAGE_FAULT;
            res.cr.fault_addr = at;
            break;
        }
        let member = Descriptor::parse(&raw);
        if member.flags & flags::FENCE != 0 && any_failed {
            break;
        }
        let o = execute_inner(mem, &member, limits, Some(i));
        completed += 1;
        res.bytes = res.bytes.saturating_add(o.bytes);
        if o.status != status::SUCCESS {
            any_failed = true;
        }
        if let Some(h) = o.interrupt {
            res.member_interrupts.push(h);
        }
        if res.member_swerr.is_none() {
            res.member_swerr = o.swerr;
        }
    }
    if res.cr.status == status::SUCCESS && any_failed {
        res.cr.status = status::BATCH_FAIL;
    }
    res.cr.bytes_completed = completed;
    Ok(res)
}
