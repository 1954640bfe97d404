//! The DSA software engine: executes one descriptor (and, for BATCH, its descriptor list)
//! against guest memory and writes its completion record, status byte last.
//!
//! Entry point: [`execute`]. One module per operation family: [`movefill`] (memmove, fill,
//! dualcast, cache flush), [`compare`], [`delta`], [`crc`], [`dif`], [`batch`].
//!
//! Where the rules come from (comments in each module cite the exact source):
//! - `docs/dsa-device-model.md` §6, §7 and §10 (layout, flags, status codes, order of
//!   checks, completion-record write rules);
//! - Linux `include/uapi/linux/idxd.h` (field offsets, `DSA_COMP_*`, `IDXD_OP_FLAG_*`);
//! - Intel DML `sources/core/src/validation.cpp` (per-operation validation: sizes, alignment,
//!   overlap, delta sizes, DIF sizes) and the DML kernels (`crc.cpp`, `create_delta.cpp`,
//!   `compare.cpp`, `batch.cpp`, `dif_impl/dml_dif.c`, `sw_dispatcher/ref/*.c`);
//! - Intel accel-config `test/dsa_prep.c` and Intel dsa-perf-micros `prep.c` (how real clients
//!   fill descriptors, e.g. which flags are reserved for which opcode).

pub mod batch;
pub mod compare;
pub mod crc;
pub mod delta;
pub mod dif;
pub mod mem;
pub mod movefill;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::descriptor::{
    flags, opcode, status, CompletionRecord, Descriptor, COMP_ALIGN, COMP_SIZE,
};
use mem::Fault;

/// Limits and capabilities the engine enforces; the front end fills them from GENCAP/WQCFG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    /// Maximum transfer size in bytes (WQCFG.max_xfer_shift; §0 trap 11: 2 MiB).
    pub max_xfer_size: u64,
    /// Maximum descriptors in a batch (WQCFG.max_batch_shift; §0 trap 11: 32).
    pub max_batch_size: u32,
    /// GENCAP.overlap_copy (§2.3, [R] 1): MEMMOVE may overlap; otherwise 0x16.
    pub overlap_copy: bool,
    /// GENCAP.cache_control_mem (§2.3, [R] 1): the CC flag is allowed.
    pub cache_control: bool,
    /// GENCAP.drain_readback (§2.3, [R] 0): drain readback flags allowed.
    pub drain_readback: bool,
    /// GENCAP.dest_readback (§2.3, [R] 0): the destination-readback flag is allowed.
    pub dest_readback: bool,
    /// DSA 2.0 descriptor features (steering-tag selector flags). VERSION 1.0 device: false.
    pub dsa2: bool,
    /// Number of valid interrupt handles (the WQ vectors' MSI-X table size when interrupt
    /// handles are not in use, §0 trap 7). 0 disables the check. With RCI set and
    /// `int_handle >= int_handles` the descriptor fails with 0x19 and raises nothing.
    pub int_handles: u16,
    /// Status for an address outside guest RAM. Default 0x03 (page fault, block-on-fault off,
    /// with the fault address and bit 7 for a write); §10.2 also allows 0x22 / 0x20.
    pub fault_status: u8,
}

impl Default for EngineLimits {
    /// §0 trap 11: the WQ defaults are 2 MiB and 32 descriptors.
    fn default() -> Self {
        EngineLimits {
            max_xfer_size: 2 << 20,
            max_batch_size: 32,
            overlap_copy: true,
            cache_control: true,
            drain_readback: false,
            dest_readback: false,
            dsa2: false,
            int_handles: 0,
            fault_status: status::PAGE_FAULT_NOBOF,
        }
    }
}

/// An error the front end must report through SWERR (§10.1): it could not go into a
/// completion record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwError {
    /// Error code (a completion status code, e.g. 0x1A, 0x1B, or the failed status with CRAV 0).
    pub status: u8,
    /// Opcode of the descriptor.
    pub opcode: u8,
    /// Fault address (completion-record address for 0x1A/0x1B, the fault address otherwise).
    pub addr: u64,
    /// Index in the batch when the descriptor was a batch member (SWERR qword 1 [15:0]).
    pub batch_index: Option<u32>,
    /// Invalid flags for status 0x11 (SWERR qword 1 [63:32]).
    pub invalid_flags: u32,
    /// The fault was on a write (SWERR bit 5).
    pub write: bool,
    /// Descriptor PASID field.
    pub pasid: u32,
    /// Descriptor priv bit.
    pub priv_: bool,
}

/// What executing one descriptor did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Opcode of the descriptor.
    pub opcode: u8,
    /// Completion status written (DSA_COMP_*, possibly with bit 7), or the status that would
    /// have been written when no record was written.
    pub status: u8,
    /// Bytes processed (for BATCH: the sum over its members).
    pub bytes: u64,
    /// A completion record was written to guest memory.
    pub record_written: bool,
    /// `Some(int_handle)`: raise that MSI-X vector (RCI set; not when the completion record
    /// address itself was bad, which goes to SWERR).
    pub interrupt: Option<u16>,
    /// Error for SWERR (and INTCAUSE/vector 0 when GENCTRL enables it).
    pub swerr: Option<SwError>,
    /// BATCH only: interrupt handles requested by members (RCI in a member), in completion
    /// order. Raise them before `interrupt`.
    pub member_interrupts: Vec<u16>,
}

/// Opcodes the engine executes; the front end advertises them in OPCAP (§2.7). This
/// is the DSA 1.0 set (the same bits as real SPR: OPCAP[0] = 0x1_003F_03FF).
pub const SUPPORTED_OPCODES: &[u8] = &[
    opcode::NOOP,
    opcode::BATCH,
    opcode::DRAIN,
    opcode::MEMMOVE,
    opcode::MEMFILL,
    opcode::COMPARE,
    opcode::COMPVAL,
    opcode::CR_DELTA,
    opcode::AP_DELTA,
    opcode::DUALCAST,
    opcode::CRCGEN,
    opcode::COPY_CRC,
    opcode::DIF_CHECK,
    opcode::DIF_INS,
    opcode::DIF_STRP,
    opcode::DIF_UPDT,
    opcode::CFLUSH,
];

/// OPCAP as four qwords (§2.7: qword i holds opcodes 64i..64i+63).
pub fn opcap() -> [u64; 4] {
    let mut cap = [0u64; 4];
    for &op in SUPPORTED_OPCODES {
        if let Some(q) = cap.get_mut(usize::from(op / 64)) {
            *q |= 1u64 << (op % 64);
        }
    }
    cap
}

/// A short name for counters and logs.
pub fn opcode_name(op: u8) -> &'static str {
    match op {
        opcode::NOOP => "noop",
        opcode::BATCH => "batch",
        opcode::DRAIN => "drain",
        opcode::MEMMOVE => "memmove",
        opcode::MEMFILL => "memfill",
        opcode::COMPARE => "compare",
        opcode::COMPVAL => "compval",
        opcode::CR_DELTA => "create_delta",
        opcode::AP_DELTA => "apply_delta",
        opcode::DUALCAST => "dualcast",
        opcode::CRCGEN => "crcgen",
        opcode::COPY_CRC => "copy_crc",
        opcode::DIF_CHECK => "dif_check",
        opcode::DIF_INS => "dif_insert",
        opcode::DIF_STRP => "dif_strip",
        opcode::DIF_UPDT => "dif_update",
        opcode::CFLUSH => "cache_flush",
        _ => "unknown",
    }
}

/// Result of one operation before its completion record is written.
#[derive(Clone, Debug, Default)]
pub struct OpResult {
    /// The record contents (status included).
    pub cr: CompletionRecord,
    /// Bytes processed.
    pub bytes: u64,
    /// BATCH: member interrupts.
    pub member_interrupts: Vec<u16>,
    /// BATCH: the first member SWERR.
    pub member_swerr: Option<SwError>,
}

impl OpResult {
    /// A record with just a status.
    pub fn status(s: u8) -> Self {
        OpResult {
            cr: CompletionRecord {
                status: s,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Success after processing `bytes`.
    pub fn success(bytes: u64) -> Self {
        let mut r = Self::status(status::SUCCESS);
        r.bytes = bytes;
        r
    }

    /// A fault outside guest RAM (§7: bit 7 = fault on a write, page-fault codes only;
    /// fault address at 0x08; `done` bytes completed).
    pub fn fault(limits: &EngineLimits, f: Fault, done: u32) -> Self {
        let code = limits.fault_status & status::CODE_MASK;
        let mut s = code;
        if f.write && matches!(code, status::PAGE_FAULT_NOBOF | status::PAGE_FAULT_IR) {
            s |= status::WRITE_FAULT;
        }
        let mut r = Self::status(s);
        r.cr.fault_addr = f.addr;
        r.cr.bytes_completed = done;
        r
    }

    /// A broken transfer after the ranges were checked (should not happen): hardware error.
    pub fn broken() -> Self {
        Self::status(status::HW_ERR1)
    }
}

/// Checks a transfer size (§10.2: 0 or > max gives 0x13).
pub(crate) fn check_size(desc: &Descriptor, limits: &EngineLimits) -> Result<u64, OpResult> {
    let n = u64::from(desc.xfer_size);
    if n == 0 || n > limits.max_xfer_size {
        return Err(OpResult::status(status::XFER_ERANGE));
    }
    Ok(n)
}

/// Checks that ranges are in guest RAM; the first fault becomes the result.
pub(crate) fn check_ranges<M: GuestMemory + ?Sized>(
    mem: &M,
    limits: &EngineLimits,
    ranges: &[(u64, u64, bool)],
) -> Result<(), OpResult> {
    for &(addr, len, write) in ranges {
        mem::check(mem, addr, len, write).map_err(|f| OpResult::fault(limits, f, 0))?;
    }
    Ok(())
}

/// Flags not allowed for this descriptor (§10.2: 0x11 with the offending bits).
fn invalid_flags(desc: &Descriptor, limits: &EngineLimits) -> u32 {
    let f = desc.flags;
    let op = desc.opcode;
    // Bit 6 is reserved (uapi idxd.h has no flag there; §6.2).
    let mut bad = f & flags::RSVD6;
    // Steering-tag selectors exist from DSA 2.0 on (§6.2).
    if !limits.dsa2 {
        bad |= f & (flags::CRSTS | flags::DSTS);
    }
    // Destination readback needs GENCAP bit 8; cache control needs GENCAP bit 2 (§6.2).
    if !limits.dest_readback {
        bad |= f & flags::DRDBK;
    }
    if !limits.cache_control {
        bad |= f & flags::CC;
    }
    // Operations that write no destination: cache control and strict ordering are reserved
    // (Intel dsa-perf-micros `test_prep_desc` clears them as "resv_flags" for exactly these).
    if matches!(
        op,
        opcode::NOOP | opcode::COMPARE | opcode::COMPVAL | opcode::CRCGEN | opcode::DIF_CHECK
    ) {
        bad |= f & (flags::CC | flags::STORD);
    }
    // Operation-specific flags 23:16 (§6.2; DML `specific_flags.hpp`).
    let allowed_op = match op {
        opcode::DRAIN if limits.drain_readback => 0x000F_0000,
        opcode::DUALCAST if limits.dsa2 => flags::DUALCAST_DEST2_STS,
        opcode::CRCGEN | opcode::COPY_CRC => {
            flags::CRC_READ_SEED | flags::CRC_BYPASS_INV_REFL | flags::CRC_BYPASS_DATA_REFL
        }
        _ => 0,
    };
    bad |= f & flags::OP_SPECIFIC_MASK & !allowed_op;
    bad
}

/// Bytes 0x28..0x40 an operation defines (bit i = byte 0x28 + i), from `struct dsa_hw_desc`
/// in uapi idxd.h and §6.3. `None`: not checked (NOOP, DRAIN and BATCH are filled
/// loosely by real clients: accel-config `dsa_prep_noop`/`dsa_prep_drain` set addresses).
fn defined_op_bytes(op: u8) -> Option<u32> {
    Some(match op {
        opcode::NOOP | opcode::DRAIN | opcode::BATCH => return None,
        opcode::MEMMOVE | opcode::CFLUSH => 0,
        // 0x28 pattern high 8 bytes (DSA 2.0 16-byte fill): accepted, unused in 1.0.
        opcode::MEMFILL => 0xFF,
        opcode::COMPARE | opcode::COMPVAL => 0x1,
        // 0x28 delta address, 0x30 max delta size, 0x38 expected-result mask.
        opcode::CR_DELTA => 0xFFF | (1 << 16),
        // 0x28 delta record size.
        opcode::AP_DELTA => 0xF,
        // 0x28 destination 2.
        opcode::DUALCAST => 0xFF,
        // 0x28 seed, 0x30 seed address.
        opcode::CRCGEN | opcode::COPY_CRC => 0xF | (0xFF << 8),
        // 0x28 src DIF flags, 0x2A DIF flags, 0x30..0x38 source tags.
        opcode::DIF_CHECK | opcode::DIF_STRP => 0x5 | (0xFF << 8),
        // 0x29 dest DIF flags, 0x2A DIF flags, 0x38..0x40 dest tags.
        opcode::DIF_INS => 0x6 | (0xFF << 16),
        // 0x28..0x2B flags, 0x30..0x40 source and destination tags.
        opcode::DIF_UPDT => 0x7 | (0xFFFF << 8),
        _ => return None,
    })
}

fn reserved_nonzero(desc: &Descriptor) -> bool {
    if desc.rsvd1 != 0 {
        return true;
    }
    let Some(defined) = defined_op_bytes(desc.opcode) else {
        return false;
    };
    (0..24usize).any(|i| defined & (1 << i) == 0 && desc.byte(0x28 + i) != 0)
}

/// Executes one descriptor and writes its completion record (§7 write rules):
/// the record is written when RCR = 1, or when CRAV = 1 and the status is not success; bytes
/// 0x01-0x1F first, then the status byte. Batch descriptors run their list here too.
pub fn execute<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
) -> Outcome {
    execute_inner(mem, desc, limits, None)
}

pub(crate) fn execute_inner<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
    batch_index: Option<u32>,
) -> Outcome {
    let f = desc.flags;
    let crav = f & flags::CRAV != 0;
    let rcr = f & flags::RCR != 0;
    let rci = f & flags::RCI != 0;
    let cra = desc.completion_addr;
    let swerr = |st: u8, addr: u64, invalid_flags: u32, write: bool| SwError {
        status: st,
        opcode: desc.opcode,
        addr,
        batch_index,
        invalid_flags,
        write,
        pasid: desc.pasid,
        priv_: desc.priv_,
    };
    let mut out = Outcome {
        opcode: desc.opcode,
        status: status::SUCCESS,
        bytes: 0,
        record_written: false,
        interrupt: None,
        swerr: None,
        member_interrupts: Vec::new(),
    };

    let mut cr_slice = None;
    // The completion record address is checked before the operation runs: a record that cannot
    // be written is reported through SWERR (§10.1: 0x1B misaligned, 0x1A translation).
    if crav {
        if !cra.is_multiple_of(COMP_ALIGN) {
            out.status = status::CRA_ALIGN;
            out.swerr = Some(swerr(status::CRA_ALIGN, cra, 0, true));
            return out;
        }
        cr_slice = mem::single(mem, cra, COMP_SIZE as u64, true);
        if cr_slice.is_none() && mem::check(mem, cra, COMP_SIZE as u64, true).is_err() {
            out.status = status::CRA_XLAT;
            out.swerr = Some(swerr(status::CRA_XLAT, cra, 0, true));
            return out;
        }
    } else if rcr {
        // A record is requested but there is no address for it: invalid flags, and the only
        // place to say so is SWERR [R].
        out.status = status::INVALID_FLAGS;
        out.swerr = Some(swerr(status::INVALID_FLAGS, 0, flags::RCR, false));
        if rci {
            out.interrupt = Some(desc.int_handle);
        }
        return out;
    }

    let res = run_op(mem, desc, limits, batch_index.is_some());
    out.status = res.cr.status;
    out.bytes = res.bytes;
    out.member_interrupts = res.member_interrupts;
    out.swerr = res.member_swerr;
    let ok = res.cr.status == status::SUCCESS;

    if crav && (rcr || !ok) {
        let written = match cr_slice {
            Some(s) => write_record_slice(&s, &res.cr),
            None => write_record(mem, cra, &res.cr),
        };
        match written {
            Ok(()) => out.record_written = true,
            Err(()) => out.swerr = Some(swerr(status::CRA_XLAT, cra, 0, true)),
        }
    } else if !crav && !ok {
        // §10.1: CRAV = 0 with an error status goes to SWERR with that status.
        let st = res.cr.status & status::CODE_MASK;
        let inv = if st == status::INVALID_FLAGS {
            res.cr.u32_at(0x10)
        } else {
            0
        };
        out.swerr = Some(swerr(
            st,
            res.cr.fault_addr,
            inv,
            res.cr.status & status::WRITE_FAULT != 0,
        ));
    }
    if rci && res.cr.status != status::INT_HANDLE_INVAL {
        out.interrupt = Some(desc.int_handle);
    }
    out
}

/// Writes a completion record: bytes 1..32 first, then (after a release fence) the status
/// byte, so a guest polling the status never sees a half-written record (§7, 0 trap 7).
fn write_record<M: GuestMemory + ?Sized>(
    mem: &M,
    cra: u64,
    cr: &CompletionRecord,
) -> Result<(), ()> {
    let bytes = cr.to_bytes();
    let body = bytes.get(1..).ok_or(())?;
    mem.write_slice(body, GuestAddress(cra + 1))
        .map_err(|_| ())?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    mem.store(
        cr.status,
        GuestAddress(cra),
        std::sync::atomic::Ordering::Release,
    )
    .or_else(|_| mem.write_obj(cr.status, GuestAddress(cra)))
    .map_err(|_| ())
}

/// [`write_record`] for a record inside one region (one lookup instead of three).
fn write_record_slice<B: vm_memory::bitmap::BitmapSlice>(
    s: &vm_memory::VolatileSlice<'_, B>,
    cr: &CompletionRecord,
) -> Result<(), ()> {
    let bytes = cr.to_bytes();
    let body = bytes.get(1..).ok_or(())?;
    s.subslice(1, COMP_SIZE - 1)
        .map_err(|_| ())?
        .copy_from(body);
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    s.store(cr.status, 0, std::sync::atomic::Ordering::Release)
        .map_err(|_| ())
}

/// Validation common to all operations, in the order of §10.2 (opcode, flags,
/// reserved fields), then the operation itself (size, alignment, overlap, execution).
fn run_op<M: GuestMemory + ?Sized>(
    mem: &M,
    desc: &Descriptor,
    limits: &EngineLimits,
    in_batch: bool,
) -> OpResult {
    let op = desc.opcode;
    if !SUPPORTED_OPCODES.contains(&op) {
        return OpResult::status(status::BAD_OPCODE);
    }
    // A batch cannot contain a batch or a drain (DML `batch.cpp` dispatches neither; it fails
    // the batch for them). Reported as an unsupported opcode for that member.
    if in_batch && matches!(op, opcode::BATCH | opcode::DRAIN) {
        return OpResult::status(status::BAD_OPCODE);
    }
    let bad = invalid_flags(desc, limits);
    if bad != 0 {
        let mut r = OpResult::status(status::INVALID_FLAGS);
        // §7: offending flags [23:0] at record offset 0x10.
        r.cr.set_u32(0x10, bad);
        return r;
    }
    if reserved_nonzero(desc) {
        return OpResult::status(status::NOZERO_RESERVE);
    }
    // uapi `DSA_COMP_INT_HANDLE_INVAL` (0x19): a completion interrupt to a vector that does not
    // exist.
    if desc.flags & flags::RCI != 0
        && limits.int_handles != 0
        && desc.int_handle >= limits.int_handles
    {
        return OpResult::status(status::INT_HANDLE_INVAL);
    }
    let r = match op {
        opcode::NOOP => Ok(OpResult::success(0)),
        opcode::DRAIN => movefill::drain(mem, desc, limits),
        opcode::MEMMOVE => movefill::memmove(mem, desc, limits),
        opcode::MEMFILL => movefill::memfill(mem, desc, limits),
        opcode::DUALCAST => movefill::dualcast(mem, desc, limits),
        opcode::CFLUSH => movefill::cache_flush(mem, desc, limits),
        opcode::COMPARE => compare::compare(mem, desc, limits),
        opcode::COMPVAL => compare::compare_pattern(mem, desc, limits),
        opcode::CR_DELTA => delta::create_delta(mem, desc, limits),
        opcode::AP_DELTA => delta::apply_delta(mem, desc, limits),
        opcode::CRCGEN | opcode::COPY_CRC => crc::crc(mem, desc, limits),
        opcode::DIF_CHECK | opcode::DIF_STRP | opcode::DIF_INS | opcode::DIF_UPDT => {
            dif::dif(mem, desc, limits)
        }
        opcode::BATCH => batch::batch(mem, desc, limits),
        _ => Err(OpResult::status(status::BAD_OPCODE)),
    };
    r.unwrap_or_else(|e| e)
}

#[cfg(test)]
pub(crate) mod tests;
