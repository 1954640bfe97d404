//! CRC generation and copy-with-CRC (CRC-32C, polynomial 0x1EDC6F41).
//!
//! Semantics from Intel DML `sources/core/src/crc.cpp` / `copy_crc.cpp` and
//! `sw_dispatcher/ref/crc.c`, which model the hardware as an MSB-first CRC engine:
//! - without "bypass CRC inversion and reflection" (flag bit 17) the seed is inverted and
//!   bit-reversed on the way in and the result bit-reversed and inverted on the way out;
//! - without "bypass data reflection" (flag bit 18) every data byte is bit-reversed;
//! - "read CRC seed" (flag bit 16) takes the seed from the u32 at the seed address (0x30)
//!   instead of the seed field (0x28).
//!
//! With no flags this is standard CRC-32C continued from `seed` (§6.3: seed 0 gives the
//! standard CRC-32C, a previous result continues it), computed by the `crc32c` crate (SSE4.2).
//! The result goes to completion record offset 0x10 (§7).

use vm_memory::GuestMemory;

use super::{check_ranges, check_size, mem, EngineLimits, OpResult};
use crate::dsa::descriptor::{flags, opcode, status, Descriptor};

type OpRes = Result<OpResult, OpResult>;

/// The CRC-32C polynomial in MSB-first form.
pub const POLY: u32 = 0x1EDC_6F41;

/// Streaming DSA CRC with the descriptor's operation-specific flags.
#[derive(Clone, Copy, Debug)]
pub struct DsaCrc {
    bypass_inv_refl: bool,
    bypass_data_refl: bool,
    /// Register: reflected (LSB-first) form when data is reflected, MSB-first otherwise.
    reg: u32,
}

impl DsaCrc {
    /// Starts a CRC with `seed` and the CRC flag bits of the descriptor.
    pub fn new(seed: u32, desc_flags: u32) -> Self {
        let bypass_inv_refl = desc_flags & flags::CRC_BYPASS_INV_REFL != 0;
        let bypass_data_refl = desc_flags & flags::CRC_BYPASS_DATA_REFL != 0;
        // DML: msb_init = bypass_inv_refl ? seed : reverse(!seed).
        let msb_init = if bypass_inv_refl {
            seed
        } else {
            (!seed).reverse_bits()
        };
        // With reflected data an MSB-first CRC over bit-reversed bytes is the bit-reversal of
        // the LSB-first (reflected) CRC with the bit-reversed register: keep the LSB form.
        let reg = if bypass_data_refl {
            msb_init
        } else {
            msb_init.reverse_bits()
        };
        DsaCrc {
            bypass_inv_refl,
            bypass_data_refl,
            reg,
        }
    }

    /// Feeds data.
    pub fn update(&mut self, data: &[u8]) {
        if self.bypass_data_refl {
            // MSB-first over `data` is the bit reversal of the reflected CRC over the
            // bit-reversed bytes with the bit-reversed register (the identity of `new`, applied
            // to reversed data), so the SSE4.2 path of `crc32c` does it too: a byte-serial
            // table walk ran at ~350 MB/s and made a batch of CRCs the slowest descriptor
            // (docs/dsa-device-model.md §15). Bytes are reversed 8 at a time into `buf`.
            let mut lsb = self.reg.reverse_bits();
            let mut buf = [0u8; 512];
            for chunk in data.chunks(buf.len()) {
                let Some(out) = buf.get_mut(..chunk.len()) else {
                    break;
                };
                let words = chunk.chunks_exact(8);
                let tail = words.remainder();
                let mut o = out.chunks_exact_mut(8);
                for (w, dst) in words.zip(&mut o) {
                    let mut q = [0u8; 8];
                    q.copy_from_slice(w);
                    // reverse_bits reverses the byte order too; swap_bytes puts it back.
                    let r = u64::from_le_bytes(q).reverse_bits().swap_bytes();
                    dst.copy_from_slice(&r.to_le_bytes());
                }
                for (b, dst) in tail.iter().zip(o.into_remainder()) {
                    *dst = b.reverse_bits();
                }
                lsb = !crc32c::crc32c_append(!lsb, out);
            }
            self.reg = lsb.reverse_bits();
        } else {
            // Raw reflected update: crc32c_append(x, d) = !raw(!x, d).
            self.reg = !crc32c::crc32c_append(!self.reg, data);
        }
    }

    /// The CRC value reported in the completion record.
    pub fn finish(&self) -> u32 {
        let msb = if self.bypass_data_refl {
            self.reg
        } else {
            self.reg.reverse_bits()
        };
        if self.bypass_inv_refl {
            msb
        } else {
            !msb.reverse_bits()
        }
    }
}

/// CRCGEN (source 0x10) and COPY_CRC (source 0x10, destination 0x18; source and destination
/// must not overlap, DML `validation.cpp` -> 0x16).
pub fn crc<M: GuestMemory + ?Sized>(mem: &M, desc: &Descriptor, limits: &EngineLimits) -> OpRes {
    let n = check_size(desc, limits)?;
    let copy = desc.opcode == opcode::COPY_CRC;
    if copy && mem::overlaps(desc.src, n, desc.dst, n) {
        return Err(OpResult::status(status::OVERLAP_BUFFERS));
    }
    let seed = if desc.flags & flags::CRC_READ_SEED != 0 {
        let mut b = [0u8; 4];
        mem::read(mem, desc.crc_seed_addr(), &mut b).map_err(|_| {
            let f = mem::check(mem, desc.crc_seed_addr(), 4, false)
                .err()
                .unwrap_or(mem::Fault {
                    addr: desc.crc_seed_addr(),
                    write: false,
                });
            OpResult::fault(limits, f, 0)
        })?;
        u32::from_le_bytes(b)
    } else {
        desc.crc_seed()
    };
    if copy {
        check_ranges(mem, limits, &[(desc.src, n, false), (desc.dst, n, true)])?;
    } else {
        check_ranges(mem, limits, &[(desc.src, n, false)])?;
    }
    let mut c = DsaCrc::new(seed, desc.flags);
    mem::with_scratch(mem::CHUNK, |buf| -> Result<(), OpResult> {
        let mut off = 0u64;
        while off < n {
            let len = (n - off).min(mem::CHUNK as u64) as usize;
            let a = buf.get_mut(..len).ok_or_else(OpResult::broken)?;
            mem::read(mem, desc.src + off, a).map_err(|_| OpResult::broken())?;
            c.update(a);
            if copy {
                mem::write(mem, desc.dst + off, a).map_err(|_| OpResult::broken())?;
            }
            off += len as u64;
        }
        Ok(())
    })?;
    let mut r = OpResult::success(n);
    r.cr.set_u32(0x10, c.finish());
    Ok(r)
}
