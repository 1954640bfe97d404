//! The 64-byte DSA work descriptor and the 32-byte completion record (docs/dsa-device-model.md §6
//! and §7), plus the opcode, flag and status constants the software engine uses.
//!
//! Layouts follow Linux `include/uapi/linux/idxd.h` (`struct dsa_hw_desc`,
//! `struct dsa_completion_record`, `enum dsa_opcode`, `enum dsa_completion_status`,
//! `IDXD_OP_FLAG_*`). A descriptor comes from the guest and is never trusted: [`Descriptor::parse`]
//! only decodes little-endian fields out of the raw bytes; every check happens in the engine.

/// Size of a DSA descriptor in bytes (one MOVDIR64B payload, §6).
pub const DESC_SIZE: usize = 64;
/// Size of a DSA completion record in bytes (§7).
pub const COMP_SIZE: usize = 32;
/// Required alignment of a completion record address (§7; status 0x1B otherwise).
pub const COMP_ALIGN: u64 = 32;

/// Opcodes (`enum dsa_opcode` in uapi idxd.h; §6.3).
pub mod opcode {
    /// No operation; still writes a completion record (dmaengine DMA_INTERRUPT, §8).
    pub const NOOP: u8 = 0x00;
    /// Batch: a list of descriptors in guest memory.
    pub const BATCH: u8 = 0x01;
    /// Drain: ordering is done by the front end; the engine completes it at once.
    pub const DRAIN: u8 = 0x02;
    /// Memory move (overlap allowed when GENCAP.overlap_copy = 1).
    pub const MEMMOVE: u8 = 0x03;
    /// Memory fill with an 8-byte pattern.
    pub const MEMFILL: u8 = 0x04;
    /// Compare two buffers.
    pub const COMPARE: u8 = 0x05;
    /// Compare a buffer with an 8-byte pattern ("compval").
    pub const COMPVAL: u8 = 0x06;
    /// Create a delta record.
    pub const CR_DELTA: u8 = 0x07;
    /// Apply a delta record.
    pub const AP_DELTA: u8 = 0x08;
    /// Copy one source to two destinations.
    pub const DUALCAST: u8 = 0x09;
    /// CRC-32C generation.
    pub const CRCGEN: u8 = 0x10;
    /// Copy with CRC-32C generation.
    pub const COPY_CRC: u8 = 0x11;
    /// T10 DIF check.
    pub const DIF_CHECK: u8 = 0x12;
    /// T10 DIF insert.
    pub const DIF_INS: u8 = 0x13;
    /// T10 DIF strip.
    pub const DIF_STRP: u8 = 0x14;
    /// T10 DIF update.
    pub const DIF_UPDT: u8 = 0x15;
    /// Cache flush (a no-op for a software device).
    pub const CFLUSH: u8 = 0x20;
}

/// Descriptor flag bits, dword at 0x04 bits 23:0 (`IDXD_OP_FLAG_*`; §6.2).
pub mod flags {
    /// Fence: inside a batch, wait for (and depend on) earlier descriptors.
    pub const FENCE: u32 = 1 << 0;
    /// Block on fault (the software engine never blocks: behaves as 0).
    pub const BOF: u32 = 1 << 1;
    /// Completion record address valid.
    pub const CRAV: u32 = 1 << 2;
    /// Request completion record (also on success).
    pub const RCR: u32 = 1 << 3;
    /// Request completion interrupt.
    pub const RCI: u32 = 1 << 4;
    /// Completion-record steering-tag selector (DSA 2.0).
    pub const CRSTS: u32 = 1 << 5;
    /// Reserved bit 6.
    pub const RSVD6: u32 = 1 << 6;
    /// Check result (compare, compval, create delta).
    pub const CHECK_RESULT: u32 = 1 << 7;
    /// Cache control: destination writes allocate in cache.
    pub const CC: u32 = 1 << 8;
    /// Address 1 traffic-class select.
    pub const ADDR1_TCS: u32 = 1 << 9;
    /// Address 2 traffic-class select.
    pub const ADDR2_TCS: u32 = 1 << 10;
    /// Address 3 traffic-class select.
    pub const ADDR3_TCS: u32 = 1 << 11;
    /// Completion-record traffic-class select.
    pub const CR_TCS: u32 = 1 << 12;
    /// Strict ordering of destination writes.
    pub const STORD: u32 = 1 << 13;
    /// Destination readback (needs GENCAP bit 8).
    pub const DRDBK: u32 = 1 << 14;
    /// Destination steering-tag selector (DSA 2.0).
    pub const DSTS: u32 = 1 << 15;
    /// Operation-specific flags, bits 23:16.
    pub const OP_SPECIFIC_MASK: u32 = 0x00FF_0000;

    /// Drain: readback address 1 valid.
    pub const DRAIN_READBACK1: u32 = 1 << 16;
    /// Drain: readback address 2 valid.
    pub const DRAIN_READBACK2: u32 = 1 << 17;
    /// Drain: suppress implicit TC-A readback.
    pub const DRAIN_SUPPRESS_TCA: u32 = 1 << 18;
    /// Drain: suppress implicit TC-B readback.
    pub const DRAIN_SUPPRESS_TCB: u32 = 1 << 19;
    /// Dualcast: destination-2 steering-tag selector (DSA 2.0).
    pub const DUALCAST_DEST2_STS: u32 = 1 << 16;
    /// CRC / copy-CRC: read the seed from the seed address (DML `crc_specific_flag::read_crc_seed`).
    pub const CRC_READ_SEED: u32 = 1 << 16;
    /// CRC / copy-CRC: bypass CRC inversion and reflection.
    pub const CRC_BYPASS_INV_REFL: u32 = 1 << 17;
    /// CRC / copy-CRC: bypass data reflection.
    pub const CRC_BYPASS_DATA_REFL: u32 = 1 << 18;
}

/// Completion status codes (`enum dsa_completion_status` in uapi idxd.h; §7).
pub mod status {
    /// Not yet complete (the device never writes it as a final status).
    pub const NONE: u8 = 0x00;
    /// Success.
    pub const SUCCESS: u8 = 0x01;
    /// Success with false predicate (check-result mismatch).
    pub const SUCCESS_PRED: u8 = 0x02;
    /// Partial completion: page fault, block-on-fault off.
    pub const PAGE_FAULT_NOBOF: u8 = 0x03;
    /// Partial completion: page response error.
    pub const PAGE_FAULT_IR: u8 = 0x04;
    /// Batch: one or more descriptors failed.
    pub const BATCH_FAIL: u8 = 0x05;
    /// Batch: page fault reading the descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// Apply delta: offsets not increasing.
    pub const DR_OFFSET_NOINC: u8 = 0x07;
    /// Apply delta: offset beyond the transfer size.
    pub const DR_OFFSET_ERANGE: u8 = 0x08;
    /// DIF error.
    pub const DIF_ERR: u8 = 0x09;
    /// Unsupported opcode.
    pub const BAD_OPCODE: u8 = 0x10;
    /// Invalid flags (offending flags in the record at 0x10).
    pub const INVALID_FLAGS: u8 = 0x11;
    /// Non-zero reserved field.
    pub const NOZERO_RESERVE: u8 = 0x12;
    /// Invalid transfer size.
    pub const XFER_ERANGE: u8 = 0x13;
    /// Descriptor count out of range (batch).
    pub const DESC_CNT_ERANGE: u8 = 0x14;
    /// Delta record size out of range.
    pub const DR_ERANGE: u8 = 0x15;
    /// Overlapping buffers.
    pub const OVERLAP_BUFFERS: u8 = 0x16;
    /// Dualcast destination addresses differ in bits 11:0.
    pub const DCAST_ERR: u8 = 0x17;
    /// Descriptor list not 64-byte aligned.
    pub const DESCLIST_ALIGN: u8 = 0x18;
    /// Invalid interrupt handle.
    pub const INT_HANDLE_INVAL: u8 = 0x19;
    /// Fault translating the completion record address.
    pub const CRA_XLAT: u8 = 0x1A;
    /// Completion record address not 32-byte aligned.
    pub const CRA_ALIGN: u8 = 0x1B;
    /// Misaligned address.
    pub const ADDR_ALIGN: u8 = 0x1C;
    /// Privilege error.
    pub const PRIV_BAD: u8 = 0x1D;
    /// Traffic-class configuration error.
    pub const TRAFFIC_CLASS_CONF: u8 = 0x1E;
    /// Fault on a drain readback address.
    pub const PFAULT_RDBA: u8 = 0x1F;
    /// Hardware error.
    pub const HW_ERR1: u8 = 0x20;
    /// Hardware error (completion timeout / unsuccessful completion).
    pub const HW_ERR_DRB: u8 = 0x21;
    /// Address translation failure.
    pub const TRANSLATION_FAIL: u8 = 0x22;
    /// Mask of the code part of the status byte (bit 7 is the write-fault bit).
    pub const CODE_MASK: u8 = 0x7F;
    /// Status bit 7: the page fault was on a write.
    pub const WRITE_FAULT: u8 = 0x80;

    /// Every code the engine may produce (without the write-fault bit).
    pub const ALL: &[u8] = &[
        SUCCESS,
        SUCCESS_PRED,
        PAGE_FAULT_NOBOF,
        PAGE_FAULT_IR,
        BATCH_FAIL,
        BATCH_PAGE_FAULT,
        DR_OFFSET_NOINC,
        DR_OFFSET_ERANGE,
        DIF_ERR,
        BAD_OPCODE,
        INVALID_FLAGS,
        NOZERO_RESERVE,
        XFER_ERANGE,
        DESC_CNT_ERANGE,
        DR_ERANGE,
        OVERLAP_BUFFERS,
        DCAST_ERR,
        DESCLIST_ALIGN,
        INT_HANDLE_INVAL,
        CRA_XLAT,
        CRA_ALIGN,
        ADDR_ALIGN,
        PRIV_BAD,
        TRAFFIC_CLASS_CONF,
        PFAULT_RDBA,
        HW_ERR1,
        HW_ERR_DRB,
        TRANSLATION_FAIL,
    ];

    /// Whether `s` (with or without the write-fault bit) is a code the device may write.
    pub fn is_valid(s: u8) -> bool {
        let code = s & CODE_MASK;
        // Bit 7 is only meaningful on page-fault codes (§7).
        if s & WRITE_FAULT != 0 && !matches!(code, PAGE_FAULT_NOBOF | PAGE_FAULT_IR) {
            return false;
        }
        ALL.contains(&code)
    }
}

fn le_u16(raw: &[u8; DESC_SIZE], off: usize) -> u16 {
    let mut b = [0u8; 2];
    if let Some(s) = raw.get(off..off + 2) {
        b.copy_from_slice(s);
    }
    u16::from_le_bytes(b)
}

fn le_u32(raw: &[u8; DESC_SIZE], off: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = raw.get(off..off + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

fn le_u64(raw: &[u8; DESC_SIZE], off: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = raw.get(off..off + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// Parsed view of a 64-byte DSA descriptor (`struct dsa_hw_desc`, §6.1). Never trusted:
/// the fields are decoded as-is; the engine validates them.
///
/// Byte layout (little-endian):
/// - `0x00` u32: `[19:0]` PASID, `[30:20]` reserved, `[31]` priv
/// - `0x04` u32: `[23:0]` flags (§6.2), `[31:24]` opcode (§6.3)
/// - `0x08` u64: completion record address (32-byte aligned, §7)
/// - `0x10` u64: source / pattern / descriptor list / readback 1 / delta record (apply)
/// - `0x18` u64: destination / source 2 / compare pattern / readback 2
/// - `0x20` u32: transfer size / descriptor count (batch)
/// - `0x24` u16: completion interrupt handle
/// - `0x26` u16: reserved
/// - `0x28` 24 bytes: operation-specific (§6.3), see the accessors below
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// PASID (`0x00` bits 19:0). Dedicated WQs use WQCFG instead.
    pub pasid: u32,
    /// Privilege bit (`0x00` bit 31).
    pub priv_: bool,
    /// Reserved bits 30:20 of dword 0.
    pub rsvd0: u16,
    /// Flags, 24 bits (`0x04` bits 23:0).
    pub flags: u32,
    /// Opcode (`0x04` bits 31:24).
    pub opcode: u8,
    /// Completion record address (`0x08`).
    pub completion_addr: u64,
    /// Source address / pattern / descriptor list (`0x10`).
    pub src: u64,
    /// Destination / source 2 / compare pattern (`0x18`).
    pub dst: u64,
    /// Transfer size / descriptor count (`0x20`).
    pub xfer_size: u32,
    /// Completion interrupt handle (`0x24`).
    pub int_handle: u16,
    /// Reserved (`0x26`).
    pub rsvd1: u16,
    /// The raw 64 bytes as received.
    pub raw: [u8; DESC_SIZE],
}

impl Descriptor {
    /// Decodes the common fields of a raw descriptor. Never fails.
    pub fn parse(raw: &[u8; DESC_SIZE]) -> Self {
        let dw0 = le_u32(raw, 0x00);
        let dw1 = le_u32(raw, 0x04);
        Descriptor {
            pasid: dw0 & 0xF_FFFF,
            priv_: dw0 & (1 << 31) != 0,
            rsvd0: ((dw0 >> 20) & 0x7FF) as u16,
            flags: dw1 & 0x00FF_FFFF,
            opcode: (dw1 >> 24) as u8,
            completion_addr: le_u64(raw, 0x08),
            src: le_u64(raw, 0x10),
            dst: le_u64(raw, 0x18),
            xfer_size: le_u32(raw, 0x20),
            int_handle: le_u16(raw, 0x24),
            rsvd1: le_u16(raw, 0x26),
            raw: *raw,
        }
    }

    /// The opcode (`0x07`).
    pub fn opcode(&self) -> u8 {
        self.opcode
    }

    /// The 24 flag bits.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The completion interrupt handle (`0x24`): the MSI-X entry when interrupt handles are not
    /// in use (§0 trap 7).
    pub fn int_handle(&self) -> u16 {
        self.int_handle
    }

    /// Request completion interrupt flag (RCI, bit 4).
    pub fn wants_completion_interrupt(&self) -> bool {
        self.flags & flags::RCI != 0
    }

    /// The completion record address (`0x08`).
    pub fn completion_addr(&self) -> u64 {
        self.completion_addr
    }

    /// Byte at `off` of the raw descriptor (0 when out of range).
    pub fn byte(&self, off: usize) -> u8 {
        self.raw.get(off).copied().unwrap_or(0)
    }

    /// Little-endian u16 at `off`.
    pub fn u16_at(&self, off: usize) -> u16 {
        le_u16(&self.raw, off)
    }

    /// Little-endian u32 at `off`.
    pub fn u32_at(&self, off: usize) -> u32 {
        le_u32(&self.raw, off)
    }

    /// Little-endian u64 at `off`.
    pub fn u64_at(&self, off: usize) -> u64 {
        le_u64(&self.raw, off)
    }

    /// Compare / compval expected result (`0x28`, u8).
    pub fn expected_result(&self) -> u8 {
        self.byte(0x28)
    }

    /// Create delta: delta record address (`0x28`).
    pub fn delta_addr(&self) -> u64 {
        self.u64_at(0x28)
    }

    /// Create delta: maximum delta record size (`0x30`).
    pub fn max_delta_size(&self) -> u32 {
        self.u32_at(0x30)
    }

    /// Create delta: expected-result mask (`0x38`).
    pub fn expected_result_mask(&self) -> u8 {
        self.byte(0x38)
    }

    /// Apply delta: delta record size (`0x28`).
    pub fn delta_rec_size(&self) -> u32 {
        self.u32_at(0x28)
    }

    /// Dualcast: destination 2 (`0x28`).
    pub fn dest2(&self) -> u64 {
        self.u64_at(0x28)
    }

    /// CRC: seed (`0x28`).
    pub fn crc_seed(&self) -> u32 {
        self.u32_at(0x28)
    }

    /// CRC: seed address (`0x30`).
    pub fn crc_seed_addr(&self) -> u64 {
        self.u64_at(0x30)
    }

    /// DIF: source DIF flags (`0x28`; check, strip, update).
    pub fn src_dif_flags(&self) -> u8 {
        self.byte(0x28)
    }

    /// DIF: destination DIF flags (`0x29`; insert, update).
    pub fn dst_dif_flags(&self) -> u8 {
        self.byte(0x29)
    }

    /// DIF: DIF flags (`0x2A`: block size, seed/result inversion).
    pub fn dif_flags(&self) -> u8 {
        self.byte(0x2A)
    }

    /// DIF: source tags (`0x30` ref tag seed, `0x34` app tag mask, `0x36` app tag seed).
    pub fn src_tags(&self) -> (u32, u16, u16) {
        (self.u32_at(0x30), self.u16_at(0x34), self.u16_at(0x36))
    }

    /// DIF: destination tags (`0x38` ref tag seed, `0x3C` app tag mask, `0x3E` app tag seed).
    pub fn dst_tags(&self) -> (u32, u16, u16) {
        (self.u32_at(0x38), self.u16_at(0x3C), self.u16_at(0x3E))
    }
}

/// A DSA completion record (`struct dsa_completion_record`, §7), 32 bytes:
/// - `0x00` status (bit 7: fault on write), `0x01` result / DIF status, `0x02` fault info,
///   `0x03` reserved
/// - `0x04` u32 bytes completed (batch: descriptors completed)
/// - `0x08` u64 fault address
/// - `0x10` 16 bytes operation-specific (invalid flags, delta size, CRC, DIF tags)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionRecord {
    /// Status byte (written last).
    pub status: u8,
    /// Result byte.
    pub result: u8,
    /// Fault info (DSA 2.0; 0 here).
    pub fault_info: u8,
    /// Bytes completed or descriptors completed.
    pub bytes_completed: u32,
    /// Fault address.
    pub fault_addr: u64,
    /// Operation-specific bytes at 0x10.
    pub op_specific: [u8; 16],
}

impl CompletionRecord {
    /// Serialises the record.
    pub fn to_bytes(&self) -> [u8; COMP_SIZE] {
        let mut b = [0u8; COMP_SIZE];
        b[0] = self.status;
        b[1] = self.result;
        b[2] = self.fault_info;
        b[4..8].copy_from_slice(&self.bytes_completed.to_le_bytes());
        b[8..16].copy_from_slice(&self.fault_addr.to_le_bytes());
        b[16..32].copy_from_slice(&self.op_specific);
        b
    }

    /// Parses a record (used by tests and by callers that read records back).
    pub fn from_bytes(b: &[u8; COMP_SIZE]) -> Self {
        let mut op_specific = [0u8; 16];
        op_specific.copy_from_slice(&b[16..32]);
        let mut bc = [0u8; 4];
        bc.copy_from_slice(&b[4..8]);
        let mut fa = [0u8; 8];
        fa.copy_from_slice(&b[8..16]);
        CompletionRecord {
            status: b[0],
            result: b[1],
            fault_info: b[2],
            bytes_completed: u32::from_le_bytes(bc),
            fault_addr: u64::from_le_bytes(fa),
            op_specific,
        }
    }

    /// Stores a little-endian u32 in the operation-specific area at record offset `off`
    /// (0x10..0x20).
    pub fn set_u32(&mut self, off: usize, v: u32) {
        if let Some(d) = off
            .checked_sub(0x10)
            .and_then(|o| self.op_specific.get_mut(o..o + 4))
        {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Stores a little-endian u16 in the operation-specific area at record offset `off`.
    pub fn set_u16(&mut self, off: usize, v: u16) {
        if let Some(d) = off
            .checked_sub(0x10)
            .and_then(|o| self.op_specific.get_mut(o..o + 2))
        {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Reads a little-endian u32 from the operation-specific area at record offset `off`.
    pub fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(s) = off
            .checked_sub(0x10)
            .and_then(|o| self.op_specific.get(o..o + 4))
        {
            b.copy_from_slice(s);
        }
        u32::from_le_bytes(b)
    }

    /// Reads a little-endian u16 from the operation-specific area at record offset `off`.
    pub fn u16_at(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        if let Some(s) = off
            .checked_sub(0x10)
            .and_then(|o| self.op_specific.get(o..o + 2))
        {
            b.copy_from_slice(s);
        }
        u16::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_common_fields() {
        let mut raw = [0u8; DESC_SIZE];
        raw[0..4].copy_from_slice(&(0x8000_0000u32 | 0x12345).to_le_bytes());
        raw[4..8].copy_from_slice(&((0x03u32 << 24) | 0x1C).to_le_bytes());
        raw[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        raw[16..24].copy_from_slice(&0x2000u64.to_le_bytes());
        raw[24..32].copy_from_slice(&0x3000u64.to_le_bytes());
        raw[32..36].copy_from_slice(&4096u32.to_le_bytes());
        raw[36..38].copy_from_slice(&3u16.to_le_bytes());
        let d = Descriptor::parse(&raw);
        assert_eq!(d.pasid, 0x12345);
        assert!(d.priv_);
        assert_eq!(d.opcode(), opcode::MEMMOVE);
        assert_eq!(d.flags(), 0x1C);
        assert!(d.wants_completion_interrupt());
        assert_eq!(d.completion_addr(), 0x1000);
        assert_eq!(d.src, 0x2000);
        assert_eq!(d.dst, 0x3000);
        assert_eq!(d.xfer_size, 4096);
        assert_eq!(d.int_handle(), 3);
    }

    #[test]
    fn completion_record_roundtrip() {
        let mut cr = CompletionRecord {
            status: 0x83,
            result: 1,
            bytes_completed: 77,
            fault_addr: 0xdead_beef,
            ..Default::default()
        };
        cr.set_u32(0x10, 0xAABB_CCDD);
        cr.set_u16(0x1E, 0x1234);
        let b = cr.to_bytes();
        assert_eq!(b[0], 0x83);
        assert_eq!(&b[16..20], &0xAABB_CCDDu32.to_le_bytes());
        assert_eq!(CompletionRecord::from_bytes(&b), cr);
        assert_eq!(cr.u16_at(0x1E), 0x1234);
        // Out-of-range offsets are ignored, never panic.
        cr.set_u32(0x1E, 1);
        cr.set_u32(0x2, 1);
        assert_eq!(cr.u32_at(0x40), 0);
    }

    #[test]
    fn status_validity() {
        assert!(status::is_valid(status::SUCCESS));
        assert!(status::is_valid(
            status::PAGE_FAULT_NOBOF | status::WRITE_FAULT
        ));
        assert!(!status::is_valid(status::SUCCESS | status::WRITE_FAULT));
        assert!(!status::is_valid(0));
        assert!(!status::is_valid(0xFF));
    }
}
