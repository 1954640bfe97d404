//! A fixed-size line builder (no `core::fmt`: it is large and slow when every
//! instruction is emulated).

use core::mem::MaybeUninit;

/// Capacity of a [`Line`] in bytes; longer text is truncated.
pub const LINE_CAP: usize = 320;

/// A line of ASCII text being built. The buffer is not zeroed on creation
/// (clearing it costs a memory write per byte in this KVM's emulator).
pub struct Line {
    buf: [MaybeUninit<u8>; LINE_CAP],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [MaybeUninit::uninit(); LINE_CAP],
            len: 0,
        }
    }

    /// Appends one byte (dropped when full).
    pub fn byte(&mut self, b: u8) -> &mut Self {
        if let Some(slot) = self.buf.get_mut(self.len) {
            slot.write(b);
            self.len += 1;
        }
        self
    }

    /// Appends a string.
    pub fn s(&mut self, text: &str) -> &mut Self {
        self.raw(text.as_bytes())
    }

    /// Appends bytes as they are.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.byte(b);
        }
        self
    }

    /// Appends bytes, replacing non-printable ones with `?` and escaping `"`
    /// and `\`.
    pub fn printable(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            match b {
                b'"' | b'\\' => {
                    self.byte(b'\\').byte(b);
                }
                0x20..=0x7e => {
                    self.byte(b);
                }
                _ => {
                    self.byte(b'?');
                }
            }
        }
        self
    }

    /// Appends `0x` and the hexadecimal digits of `v` (no leading zeros).
    pub fn hex(&mut self, v: u64) -> &mut Self {
        self.s("0x");
        let digits = if v == 0 {
            1
        } else {
            (64 - v.leading_zeros()).div_ceil(4)
        };
        self.hex_digits(v, digits)
    }

    /// Appends exactly `digits` hexadecimal digits of `v`, without prefix.
    pub fn hex_digits(&mut self, v: u64, digits: u32) -> &mut Self {
        let mut i = digits;
        while i > 0 {
            i -= 1;
            let nibble = ((v >> (i * 4)) & 0xf) as u8;
            self.byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
        self
    }

    /// Appends the decimal digits of `v`.
    pub fn dec(&mut self, v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut n = 0;
        let mut x = v;
        loop {
            if let Some(slot) = tmp.get_mut(n) {
                *slot = b'0' + (x % 10) as u8;
            }
            n += 1;
            x /= 10;
            if x == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            let d = tmp.get(n).copied().unwrap_or(b'?');
            self.byte(d);
        }
        self
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        let init = self.buf.get(..self.len).unwrap_or(&[]);
        // SAFETY: the first `len` bytes were written by `byte`; MaybeUninit<u8>
        // has the layout of u8.
        unsafe { core::slice::from_raw_parts(init.as_ptr().cast::<u8>(), init.len()) }
    }
}
