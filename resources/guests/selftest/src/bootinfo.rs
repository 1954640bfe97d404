//! Normalised boot information, read from the Linux `struct boot_params`
//! (zero page) or the PVH `struct hvm_start_info`, and copied into this
//! guest's memory first thing (so low memory can be reused afterwards).

use crate::phys;

/// How the guest was entered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BootKind {
    /// Linux 64-bit boot protocol (`boot_params` in RSI).
    Linux64,
    /// PVH (`hvm_start_info` in EBX).
    Pvh,
}

/// One memory map entry (e820 types: 1 RAM, 2 reserved, 3 ACPI, 4 NVS, ...).
#[derive(Clone, Copy, Default)]
pub struct MemRegion {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type.
    pub kind: u32,
}

/// Largest number of memory map entries kept.
pub const MAX_REGIONS: usize = 128;
/// Largest command line kept (including the NUL).
pub const CMDLINE_CAP: usize = 2048;

/// What was found about the command line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CmdlineState {
    /// NUL-terminated within the allowed size.
    Ok,
    /// No command line pointer.
    Missing,
    /// No NUL within the allowed size (`cmdline_size` or [`CMDLINE_CAP`]).
    Unterminated,
}

/// Boot information in one format for both entry paths.
pub struct BootInfo {
    /// Entry path.
    pub kind: BootKind,
    /// Problem with the boot structure itself (bad PVH magic, ...).
    pub error: Option<&'static str>,
    /// Memory map entries (first `mem_count` are valid).
    pub mem: [MemRegion; MAX_REGIONS],
    /// Number of valid entries in `mem`.
    pub mem_count: usize,
    /// Entry count the boot structure claimed.
    pub mem_claimed: u64,
    /// Command line pointer (0 when none).
    pub cmdline_addr: u64,
    /// `hdr.cmdline_size` (Linux boot only).
    pub cmdline_size: Option<u32>,
    /// Command line state.
    pub cmdline_state: CmdlineState,
    /// Command line bytes (first `cmdline_len`, without the NUL).
    pub cmdline: [u8; CMDLINE_CAP],
    /// Length of the command line.
    pub cmdline_len: usize,
    /// Initrd (address, size) when one was given.
    pub initrd: Option<(u64, u64)>,
    /// RSDP address from the boot structure (0 when not given).
    pub rsdp: u64,
}

const PVH_MAGIC: u32 = 0x336e_c578;

impl BootInfo {
    /// Reads the boot structure at `raw` for entry path `kind`.
    pub fn read(kind: BootKind, raw: u64) -> Self {
        let mut info = BootInfo {
            kind,
            error: None,
            mem: [MemRegion::default(); MAX_REGIONS],
            mem_count: 0,
            mem_claimed: 0,
            cmdline_addr: 0,
            cmdline_size: None,
            cmdline_state: CmdlineState::Missing,
            cmdline: [0; CMDLINE_CAP],
            cmdline_len: 0,
            initrd: None,
            rsdp: 0,
        };
        if raw == 0 || raw >= phys::IDENTITY_END {
            info.error = Some("boot structure pointer is null or above 4 GiB");
            return info;
        }
        match kind {
            BootKind::Linux64 => info.read_boot_params(raw),
            BootKind::Pvh => info.read_start_info(raw),
        }
        info
    }

    fn push_region(&mut self, addr: u64, size: u64, kind: u32) {
        if let Some(slot) = self.mem.get_mut(self.mem_count) {
            *slot = MemRegion { addr, size, kind };
            self.mem_count += 1;
        }
    }

    fn read_boot_params(&mut self, bp: u64) {
        let entries = phys::read_u8(bp + 0x1e8);
        self.mem_claimed = u64::from(entries);
        for i in 0..u64::from(entries.min(128)) {
            let e = bp + 0x2d0 + i * 20;
            self.push_region(
                phys::read_u64(e),
                phys::read_u64(e + 8),
                phys::read_u32(e + 16),
            );
        }
        let cmd =
            u64::from(phys::read_u32(bp + 0x228)) | (u64::from(phys::read_u32(bp + 0x0c8)) << 32);
        let size = phys::read_u32(bp + 0x238);
        self.cmdline_size = Some(size);
        self.read_cmdline(cmd, u64::from(size) + 1);
        let rd =
            u64::from(phys::read_u32(bp + 0x218)) | (u64::from(phys::read_u32(bp + 0x0c0)) << 32);
        let rd_size =
            u64::from(phys::read_u32(bp + 0x21c)) | (u64::from(phys::read_u32(bp + 0x0c4)) << 32);
        if rd != 0 && rd_size != 0 {
            self.initrd = Some((rd, rd_size));
        }
        self.rsdp = phys::read_u64(bp + 0x070);
    }

    fn read_start_info(&mut self, si: u64) {
        if phys::read_u32(si) != PVH_MAGIC {
            self.error = Some("hvm_start_info magic is not 0x336ec578");
            return;
        }
        let version = phys::read_u32(si + 4);
        let nr_modules = phys::read_u32(si + 12);
        let modlist = phys::read_u64(si + 16);
        let cmd = phys::read_u64(si + 24);
        self.rsdp = phys::read_u64(si + 32);
        self.read_cmdline(cmd, CMDLINE_CAP as u64);
        if nr_modules > 0 && modlist != 0 {
            let addr = phys::read_u64(modlist);
            let size = phys::read_u64(modlist + 8);
            if addr != 0 && size != 0 {
                self.initrd = Some((addr, size));
            }
        }
        if version >= 1 {
            let map = phys::read_u64(si + 40);
            let entries = phys::read_u32(si + 48);
            self.mem_claimed = u64::from(entries);
            if map != 0 {
                for i in 0..u64::from(entries.min(MAX_REGIONS as u32)) {
                    let e = map + i * 24;
                    self.push_region(
                        phys::read_u64(e),
                        phys::read_u64(e + 8),
                        phys::read_u32(e + 16),
                    );
                }
            }
        } else {
            self.error = Some("hvm_start_info version 0 has no memory map");
        }
    }

    /// Copies the NUL-terminated command line at `addr`, looking for the NUL
    /// within `limit` bytes.
    fn read_cmdline(&mut self, addr: u64, limit: u64) {
        self.cmdline_addr = addr;
        if addr == 0 {
            self.cmdline_state = CmdlineState::Missing;
            return;
        }
        self.cmdline_state = CmdlineState::Unterminated;
        let mut i = 0u64;
        while i < limit {
            let b = phys::read_u8(addr + i);
            if b == 0 {
                self.cmdline_state = CmdlineState::Ok;
                break;
            }
            if let Some(slot) = self.cmdline.get_mut(self.cmdline_len) {
                *slot = b;
                self.cmdline_len += 1;
            }
            i += 1;
        }
        if self.cmdline_len >= CMDLINE_CAP {
            self.cmdline_len = CMDLINE_CAP - 1;
        }
    }

    /// Valid memory map entries.
    pub fn regions(&self) -> &[MemRegion] {
        self.mem.get(..self.mem_count).unwrap_or(&[])
    }

    /// The command line (without NUL).
    pub fn cmdline(&self) -> &[u8] {
        self.cmdline.get(..self.cmdline_len).unwrap_or(&[])
    }

    /// Value of command line key `key` (e.g. `selftest.vcpus`): the text after
    /// `key=` up to the next space.
    pub fn key(&self, key: &str) -> Option<&[u8]> {
        let k = key.as_bytes();
        self.cmdline()
            .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
            .find_map(|tok| tok.strip_prefix(k).and_then(|rest| rest.strip_prefix(b"=")))
    }
}

/// Parses a decimal number (no sign; `None` on any other byte or overflow).
pub fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses up to 16 hexadecimal digits (optional `0x`).
pub fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}
