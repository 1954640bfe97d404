//! The tiny x86-64 decoder for the instructions that reach dsavmm as KVM emulation failures:
//! MOVDIR64B (`66 [REX] 0F 38 F8 /r`) and MOVDIRI (`[REX] 0F 38 F9 /r`), in 64-bit mode.
//!
//! KVM's emulator lacks both (docs/dsa-device-model.md §0, trap 2), so a guest store to a trapped DSA
//! portal arrives with the raw instruction bytes. The exit's `insn_size` is the number of bytes
//! fetched, not the instruction length: the length comes from this decoder.

/// A decoded memory operand: `base + index * scale + disp` (RIP-relative when `rip_relative`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register number (0-15), if any.
    pub base: Option<u8>,
    /// Index register number and scale, if any.
    pub index: Option<(u8, u8)>,
    /// Displacement (sign-extended).
    pub disp: i64,
    /// RIP-relative: the address is the next instruction's RIP + disp.
    pub rip_relative: bool,
    /// Segment override prefix (the last one wins, as on the CPU). Only FS and GS carry a base in
    /// 64-bit mode; the others matter for which fault a non-canonical address raises.
    pub segment: Option<Segment>,
    /// 32-bit address size (0x67 prefix): the effective address is computed modulo 2^32.
    pub addr32: bool,
}

impl MemOperand {
    /// Whether the access goes through SS (an explicit SS override, or RSP/RBP as the base with
    /// no override): a non-canonical address then raises #SS(0) instead of #GP(0).
    pub fn uses_stack_segment(&self) -> bool {
        match self.segment {
            Some(seg) => seg == Segment::Ss,
            None => !self.rip_relative && matches!(self.base, Some(4) | Some(5)),
        }
    }
}

/// Segment override prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// ES override (0x26).
    Es,
    /// CS override (0x2e).
    Cs,
    /// SS override (0x36).
    Ss,
    /// DS override (0x3e).
    Ds,
    /// FS override (0x64).
    Fs,
    /// GS override (0x65).
    Gs,
}

/// What the instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectStore {
    /// MOVDIR64B: 64 bytes from `src` to the address held in register `dst_reg`.
    Movdir64b {
        /// Register holding the destination address.
        dst_reg: u8,
        /// 32-bit address size (0x67 prefix): the destination register is read as 32 bits.
        addr32: bool,
        /// The 64-byte source.
        src: MemOperand,
    },
    /// MOVDIRI: 4 or 8 bytes from register `src_reg` to `dst`.
    Movdiri {
        /// Register holding the value.
        src_reg: u8,
        /// The destination.
        dst: MemOperand,
        /// 8 with REX.W, else 4.
        size: u8,
    },
}

/// A decoded instruction and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The operation.
    pub op: DirectStore,
    /// Instruction length in bytes.
    pub len: usize,
}

/// Why bytes were not a supported instruction.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Ran out of bytes.
    #[error("instruction truncated")]
    Truncated,
    /// Not MOVDIR64B/MOVDIRI, or an encoding they do not allow (register operand, LOCK, REP,
    /// REX not directly before the opcode): the guest gets #UD, never a guess.
    #[error("not a MOVDIR64B/MOVDIRI memory form")]
    Unsupported,
    /// Longer than the architectural 15 bytes (#GP(0) on the CPU).
    #[error("instruction longer than 15 bytes")]
    TooLong,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self
            .bytes
            .get(self.pos..self.pos + N)
            .ok_or(DecodeError::Truncated)?;
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
}

/// The longest x86 instruction, in bytes.
pub const MAX_INSN_LEN: usize = 15;

/// Decodes one instruction at the start of `bytes` (64-bit mode). `Truncated` means more bytes
/// are needed (the caller may fetch them); `bytes` beyond 15 are never looked at.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let full = bytes.len() >= MAX_INSN_LEN;
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    match decode_bytes(bytes) {
        Err(DecodeError::Truncated) if full => Err(DecodeError::TooLong),
        other => other,
    }
}

/// The REX byte directly before the byte at `pos - 1` (the opcode's first byte), or 0.
fn last_rex(bytes: &[u8], pos: usize) -> u8 {
    match pos.checked_sub(2).and_then(|i| bytes.get(i)) {
        Some(&b) if (0x40..=0x4f).contains(&b) => b,
        _ => 0,
    }
}

fn decode_bytes(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let (mut opsize, mut addr32, mut segment) = (false, false, None);
    let mut b = c.next()?;
    // Legacy prefixes and REX. Only a REX directly before the opcode counts: one followed by a
    // legacy prefix is ignored (SDM vol. 2A 2.2.1), and a later REX replaces an earlier one.
    loop {
        match b {
            0x40..=0x4f => {} // counted below only if directly before the opcode
            0x66 => opsize = true,
            0x67 => addr32 = true,
            0x26 => segment = Some(Segment::Es),
            0x2e => segment = Some(Segment::Cs),
            0x36 => segment = Some(Segment::Ss),
            0x3e => segment = Some(Segment::Ds),
            0x64 => segment = Some(Segment::Fs),
            0x65 => segment = Some(Segment::Gs),
            // LOCK is #UD on both; F2/F3 0F 38 F8 are ENQCMD(S), which dsavmm does not emulate.
            0xf0 | 0xf2 | 0xf3 => return Err(DecodeError::Unsupported),
            _ => break,
        }
        b = c.next()?;
    }
    // The loop ended on a byte that is neither a prefix nor a REX: REX, if any, came just before.
    let rex = last_rex(bytes, c.pos);
    if b != 0x0f || c.next()? != 0x38 {
        return Err(DecodeError::Unsupported);
    }
    let opcode = c.next()?;
    let modrm = c.next()?;
    let md = modrm >> 6;
    if md == 3 {
        return Err(DecodeError::Unsupported); // both need a memory operand
    }
    let reg = ((modrm >> 3) & 7) | ((rex & 0x4) << 1);
    let rm = modrm & 7;
    let rex_b = (rex & 0x1) << 3;
    let rex_x = (rex & 0x2) << 2;

    let mut mem = MemOperand {
        base: None,
        index: None,
        disp: 0,
        rip_relative: false,
        segment,
        addr32,
    };
    let mut force_disp32 = false;
    if rm == 4 {
        let sib = c.next()?;
        let scale = 1u8 << (sib >> 6);
        let index = ((sib >> 3) & 7) | rex_x;
        let base = sib & 7;
        if index != 4 {
            mem.index = Some((index, scale));
        }
        if base == 5 && md == 0 {
            force_disp32 = true;
        } else {
            mem.base = Some(base | rex_b);
        }
    } else if rm == 5 && md == 0 {
        mem.rip_relative = true;
        force_disp32 = true;
    } else {
        mem.base = Some(rm | rex_b);
    }
    mem.disp = match (md, force_disp32) {
        (1, _) => i64::from(c.next()? as i8),
        (2, _) | (0, true) => i64::from(i32::from_le_bytes(c.take::<4>()?)),
        _ => 0,
    };

    let op = match (opcode, opsize) {
        (0xf8, true) => DirectStore::Movdir64b {
            dst_reg: reg,
            addr32,
            src: mem,
        },
        (0xf9, false) => DirectStore::Movdiri {
            src_reg: reg,
            dst: mem,
            size: if rex & 0x8 != 0 { 8 } else { 4 },
        },
        _ => return Err(DecodeError::Unsupported),
    };
    Ok(Decoded { op, len: c.pos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movdir64b_rax_from_rdx() {
        // movdir64b rax, [rdx]  => 66 0f 38 f8 02
        let d = decode(&[0x66, 0x0f, 0x38, 0xf8, 0x02, 0xcc]).unwrap();
        assert_eq!(d.len, 5);
        assert_eq!(
            d.op,
            DirectStore::Movdir64b {
                dst_reg: 0,
                addr32: false,
                src: MemOperand {
                    base: Some(2),
                    index: None,
                    disp: 0,
                    rip_relative: false,
                    segment: None,
                    addr32: false,
                }
            }
        );
    }

    #[test]
    fn movdir64b_rex_sib_disp() {
        // movdir64b r9, [r10 + r11*4 + 0x10] => 66 4f 0f 38 f8 4c 9a 10
        let d = decode(&[0x66, 0x4f, 0x0f, 0x38, 0xf8, 0x4c, 0x9a, 0x10]).unwrap();
        assert_eq!(d.len, 8);
        let DirectStore::Movdir64b { dst_reg, src, .. } = d.op else {
            panic!()
        };
        assert_eq!(dst_reg, 9);
        assert_eq!(src.base, Some(10));
        assert_eq!(src.index, Some((11, 4)));
        assert_eq!(src.disp, 0x10);
    }

    #[test]
    fn rip_relative_and_disp32() {
        // movdir64b rcx, [rip + 0x100] => 66 0f 38 f8 0d 00 01 00 00
        let d = decode(&[0x66, 0x0f, 0x38, 0xf8, 0x0d, 0, 1, 0, 0]).unwrap();
        assert_eq!(d.len, 9);
        let DirectStore::Movdir64b { src, .. } = d.op else {
            panic!()
        };
        assert!(src.rip_relative);
        assert_eq!(src.disp, 0x100);
        // [rsp - 8]: SIB with no index, disp8 => 66 0f 38 f8 44 24 f8
        let d = decode(&[0x66, 0x0f, 0x38, 0xf8, 0x44, 0x24, 0xf8]).unwrap();
        let DirectStore::Movdir64b { src, .. } = d.op else {
            panic!()
        };
        assert_eq!((src.base, src.index, src.disp), (Some(4), None, -8));
    }

    #[test]
    fn movdiri_forms() {
        // movdiri [rdi], rax (REX.W) => 48 0f 38 f9 07
        let d = decode(&[0x48, 0x0f, 0x38, 0xf9, 0x07]).unwrap();
        assert_eq!(d.len, 5);
        assert!(matches!(
            d.op,
            DirectStore::Movdiri {
                size: 8,
                src_reg: 0,
                ..
            }
        ));
        let d = decode(&[0x0f, 0x38, 0xf9, 0x07]).unwrap();
        assert!(matches!(d.op, DirectStore::Movdiri { size: 4, .. }));
    }

    #[test]
    fn rejects_other_and_truncated() {
        assert_eq!(decode(&[0x90]), Err(DecodeError::Unsupported));
        assert_eq!(
            decode(&[0x66, 0x0f, 0x38, 0xf8, 0xc2]),
            Err(DecodeError::Unsupported)
        );
        assert_eq!(
            decode(&[0x0f, 0x38, 0xf8, 0x02]),
            Err(DecodeError::Unsupported)
        );
        assert_eq!(decode(&[0x66, 0x0f, 0x38]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[0x66, 0x0f, 0x38, 0xf8, 0x84]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[0xf3, 0x0f, 0x38, 0xf8, 0x02]),
            Err(DecodeError::Unsupported)
        );
    }

    #[test]
    fn prefixes_address_size_and_segments() {
        // movdir64b eax, fs:[esi] => 64 67 66 0f 38 f8 06
        let d = decode(&[0x64, 0x67, 0x66, 0x0f, 0x38, 0xf8, 0x06]).unwrap();
        assert_eq!(d.len, 7);
        let DirectStore::Movdir64b { addr32, src, .. } = d.op else {
            panic!()
        };
        assert!(addr32 && src.addr32);
        assert_eq!(src.segment, Some(Segment::Fs));
        assert!(!src.uses_stack_segment());
        // The last segment override wins; [rbp+0] defaults to SS unless overridden.
        let d = decode(&[0x65, 0x3e, 0x66, 0x0f, 0x38, 0xf8, 0x45, 0x00]).unwrap();
        let DirectStore::Movdir64b { src, .. } = d.op else {
            panic!()
        };
        assert_eq!(src.segment, Some(Segment::Ds));
        assert!(!src.uses_stack_segment());
        let d = decode(&[0x66, 0x0f, 0x38, 0xf8, 0x45, 0x00]).unwrap();
        let DirectStore::Movdir64b { src, .. } = d.op else {
            panic!()
        };
        assert!(src.uses_stack_segment());
        // movdiri [rsp], ecx => 0f 38 f9 0c 24: SS by default.
        let d = decode(&[0x0f, 0x38, 0xf9, 0x0c, 0x24]).unwrap();
        let DirectStore::Movdiri { dst, .. } = d.op else {
            panic!()
        };
        assert!(dst.uses_stack_segment());
    }

    #[test]
    fn a_rex_before_a_legacy_prefix_is_ignored_and_the_last_rex_counts() {
        // 4c 66 0f 38 f8 02: REX.WR then 66: the REX is ignored, the destination is RAX.
        let d = decode(&[0x4c, 0x66, 0x0f, 0x38, 0xf8, 0x02]).unwrap();
        assert!(matches!(d.op, DirectStore::Movdir64b { dst_reg: 0, .. }));
        // 66 41 44 0f 38 f8 02: two REX bytes, the last (REX.R) counts: destination R8, base RDX.
        let d = decode(&[0x66, 0x41, 0x44, 0x0f, 0x38, 0xf8, 0x02]).unwrap();
        let DirectStore::Movdir64b { dst_reg, src, .. } = d.op else {
            panic!()
        };
        assert_eq!((dst_reg, src.base), (8, Some(2)));
    }

    #[test]
    fn lock_rep_66_movdiri_register_and_vex_are_unsupported() {
        for bytes in [
            &[0xf0, 0x66, 0x0f, 0x38, 0xf8, 0x02][..], // LOCK
            &[0xf2, 0x0f, 0x38, 0xf8, 0x02],           // ENQCMD
            &[0x66, 0x0f, 0x38, 0xf9, 0x02],           // 66 MOVDIRI
            &[0x0f, 0x38, 0xf9, 0xc2],                 // MOVDIRI to a register
            &[0xc4, 0xe2, 0x79, 0xf8, 0x02],           // VEX
        ] {
            assert_eq!(decode(bytes), Err(DecodeError::Unsupported), "{bytes:02x?}");
        }
    }

    #[test]
    fn more_than_15_bytes_is_too_long() {
        let mut b = [0x3e_u8; 20];
        b[14..19].copy_from_slice(&[0x66, 0x0f, 0x38, 0xf8, 0x02]);
        assert_eq!(decode(&b), Err(DecodeError::TooLong));
        assert_eq!(decode(&b[..10]), Err(DecodeError::Truncated));
        // Exactly 15 bytes is fine.
        let mut b = [0x3e_u8; 15];
        b[10..].copy_from_slice(&[0x66, 0x0f, 0x38, 0xf8, 0x02]);
        assert_eq!(decode(&b).map(|d| d.len), Ok(15));
    }

    #[test]
    fn never_panics_on_any_prefix_of_noise() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20000 {
            let mut buf = [0u8; 15];
            for b in &mut buf {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            buf[0] = [0x66, 0x48, 0x0f, 0x67, 0x65][(x % 5) as usize];
            for n in 0..=15 {
                let _ = decode(&buf[..n]);
            }
        }
    }
}
