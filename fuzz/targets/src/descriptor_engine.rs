//! The descriptor decoder and the software engine: one 64-byte descriptor (a BATCH reads its
//! list from guest RAM) executed against a small guest RAM whose contents come from the input.
//!
//! Input: byte 0 GENCAP/WQ choices (bit 0 overlap_copy, 1 cache_control, 2 drain_readback,
//! 3 dest_readback, 4 dsa2, 5 addresses masked to near RAM, 7:6 fault status), byte 1
//! max_xfer_size = 1 << (b % 22), byte 2 max_batch_size = 1 << (b % 6), byte 3 int_handles
//! = b % 10, then the descriptor (zero-padded), then the initial RAM contents.

use devices::dsa::descriptor::{status, CompletionRecord, Descriptor, COMP_SIZE, DESC_SIZE};
use devices::dsa::engine::{self, EngineLimits};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::Input;

/// Guest RAM at 0. Masked addresses cover twice this, so half of them fault.
pub const RAM: usize = 64 << 10;

/// The fault statuses the engine may be configured with (§10.2).
const FAULT_STATUS: [u8; 4] = [
    status::PAGE_FAULT_NOBOF,
    0x20,
    0x22,
    status::PAGE_FAULT_NOBOF,
];

/// Runs one input.
pub fn run(data: &[u8]) {
    outcome(data);
}

/// Runs one input; what it did, in a few words (the stable harness counts these).
pub fn outcome(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let [caps, xfer, batch, handles] = input.array::<4>();
    let limits = EngineLimits {
        max_xfer_size: 1 << (xfer % 22),
        max_batch_size: 1 << (batch % 6),
        overlap_copy: caps & 1 != 0,
        cache_control: caps & 2 != 0,
        drain_readback: caps & 4 != 0,
        dest_readback: caps & 8 != 0,
        dsa2: caps & 16 != 0,
        int_handles: u16::from(handles % 10),
        fault_status: FAULT_STATUS[usize::from(caps >> 6)],
    };
    let mut raw = input.array::<DESC_SIZE>();
    if caps & 32 != 0 {
        // Completion record, source, destination, and the operation-specific addresses
        // (destination 2, delta record, CRC seed address) near RAM; the size below 128 KiB.
        let mask = (2 * RAM as u64) - 1;
        for off in [0x08, 0x10, 0x18, 0x28, 0x30] {
            let v = u64::from_le_bytes(raw[off..off + 8].try_into().unwrap()) & mask;
            raw[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        let size = u32::from_le_bytes(raw[0x20..0x24].try_into().unwrap()) & 0x1_ffff;
        raw[0x20..0x24].copy_from_slice(&size.to_le_bytes());
    }

    let desc = Descriptor::parse(&raw);
    assert_eq!(desc.raw, raw);
    assert_eq!(desc.opcode, raw[7]);
    assert_eq!(
        desc.flags,
        u32::from_le_bytes(raw[4..8].try_into().unwrap()) & 0xff_ffff
    );

    // A completion record survives a round trip except its reserved byte 3.
    let mut rec = [0u8; COMP_SIZE];
    rec.copy_from_slice(&raw[..COMP_SIZE]);
    rec[3] = 0;
    assert_eq!(CompletionRecord::from_bytes(&rec).to_bytes(), rec);

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    let init = input.take(RAM);
    mem.write_slice(init, GuestAddress(0)).unwrap();

    let out = engine::execute(&mem, &desc, &limits);
    assert_eq!(out.opcode, desc.opcode);
    assert!(
        out.member_interrupts.len() <= limits.max_batch_size as usize,
        "{out:?}"
    );
    format!(
        "{} {:#04x}{}",
        engine::opcode_name(out.opcode),
        out.status,
        if out.swerr.is_some() { " swerr" } else { "" }
    )
}
