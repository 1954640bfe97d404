//! A small idxd-like driver for the Intel DSA (PCI 8086:0b25), doing through
//! PCI configuration space, BAR0 MMIO and MOVDIR64B what Linux 6.12 `idxd`
//! and accel-config 3.5.3 do (docs/dsa-device-model.md §4.5-§4.8, §8, §12.2):
//! enumeration and BAR (re)placement, MSI-X, probe reset, capabilities,
//! group/engine/WQ configuration, enable and teardown commands, and
//! descriptor submission through the WQ portals with polled or interrupt
//! completion.
//!
//! Section numbers (§N) in comments refer to docs/dsa-device-model.md.

use crate::cpu::{cli, pause, sti};
use crate::fmt::Line;
use crate::pci::{PciCfg, CMD_MASTER, CMD_MEM};
use crate::time::Deadline;

/// PCI IDs matched (section 1.1).
pub const VENDOR: u16 = 0x8086;
/// DSA_SPR0.
pub const DEVICE: u16 = 0x0b25;
/// Most devices this driver drives (vectors 0x50 + 16 * index + entry).
pub const MAX_DEVICES: usize = 4;
/// Most MSI-X entries used per device.
pub const MAX_VECTORS: usize = 16;

// BAR0 registers (section 2.1).
pub const VERSION: u64 = 0x00;
pub const GENCAP: u64 = 0x10;
pub const WQCAP: u64 = 0x20;
pub const GRPCAP: u64 = 0x30;
pub const ENGCAP: u64 = 0x38;
pub const OPCAP: u64 = 0x40;
pub const TABLE_OFFSETS: u64 = 0x60;
pub const GENCFG: u64 = 0x80;
pub const GENCTRL: u64 = 0x88;
pub const GENSTS: u64 = 0x90;
pub const INTCAUSE: u64 = 0x98;
pub const CMD: u64 = 0xa0;
pub const CMDSTS: u64 = 0xa8;
pub const CMDCAP: u64 = 0xb0;
pub const SWERR: u64 = 0xc0;
pub const EVLCFG: u64 = 0xe0;

// Command codes (section 4.2).
pub const CMD_ENABLE_DEVICE: u32 = 1;
pub const CMD_DISABLE_DEVICE: u32 = 2;
pub const CMD_DRAIN_ALL: u32 = 3;
pub const CMD_ABORT_ALL: u32 = 4;
pub const CMD_RESET_DEVICE: u32 = 5;
pub const CMD_ENABLE_WQ: u32 = 6;
pub const CMD_DISABLE_WQ: u32 = 7;
pub const CMD_DRAIN_WQ: u32 = 8;
pub const CMD_ABORT_WQ: u32 = 9;
pub const CMD_RESET_WQ: u32 = 10;

// Descriptor flags (section 6.2).
pub const F_CRAV: u32 = 1 << 2;
pub const F_RCR: u32 = 1 << 3;
pub const F_RCI: u32 = 1 << 4;
pub const F_CHECK_RESULT: u32 = 1 << 7;

/// Writes of a command and its outcome (CMDSTS) for error messages.
pub fn cmd_word(code: u32, operand: u32, irq: bool) -> u32 {
    (u32::from(irq) << 31) | ((code & 0x1f) << 20) | (operand & 0xf_ffff)
}

/// WQ-set operand of DISABLE/DRAIN/ABORT/RESET_WQ: bit n%16 of block n/16 (section 4.2).
pub fn wq_set(wqs: u32) -> u32 {
    wqs & 0xffff
}

/// A 64-byte descriptor (section 6.1), built on the stack and sent with MOVDIR64B.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Desc {
    /// The descriptor as little-endian qwords.
    pub q: [u64; 8],
}

impl Desc {
    /// A descriptor with `opcode`, `flags` and completion record address `cr`.
    pub fn new(opcode: u8, flags: u32, cr: u64) -> Self {
        let mut d = Desc { q: [0; 8] };
        d.q[0] = u64::from((flags & 0xff_ffff) | (u32::from(opcode) << 24)) << 32;
        d.q[1] = cr;
        d
    }

    /// Sets `len` (1..8) little-endian bytes of `v` at byte offset `off`.
    pub fn set(mut self, off: usize, len: usize, v: u64) -> Self {
        for i in 0..len {
            let o = off + i;
            let (w, b) = (o / 8, (o % 8) * 8);
            if let Some(q) = self.q.get_mut(w) {
                *q = (*q & !(0xffu64 << b)) | (((v >> (8 * i)) & 0xff) << b);
            }
        }
        self
    }

    /// Source / field 0x10.
    pub fn src(self, a: u64) -> Self {
        self.set(0x10, 8, a)
    }

    /// Destination / field 0x18.
    pub fn dst(self, a: u64) -> Self {
        self.set(0x18, 8, a)
    }

    /// Transfer size / count, field 0x20.
    pub fn size(self, n: u32) -> Self {
        self.set(0x20, 4, u64::from(n))
    }

    /// Completion interrupt handle, field 0x24.
    pub fn handle(self, h: u16) -> Self {
        self.set(0x24, 2, u64::from(h))
    }
}

/// A completion record (section 7) as read back.
#[derive(Clone, Copy, Default)]
pub struct Cr {
    /// Status byte.
    pub status: u8,
    /// Result byte.
    pub result: u8,
    /// Bytes completed.
    pub bytes: u32,
    /// Fault address.
    pub fault: u64,
    /// Bytes 0x10..0x18 (CRC, delta record size, DIF tags).
    pub q2: u64,
}

/// Reads a completion record at `addr`.
pub fn read_cr(addr: u64) -> Cr {
    let q = |i: u64| rd64(addr + 8 * i);
    let q0 = q(0);
    Cr {
        status: q0 as u8,
        result: (q0 >> 8) as u8,
        bytes: (q0 >> 32) as u32,
        fault: q(1),
        q2: q(2),
    }
}

/// Clears a completion record (status 0 = pending).
pub fn clear_cr(addr: u64) {
    for i in 0..4 {
        wr64(addr + 8 * i, 0);
    }
}

/// Volatile 64-bit read of identity-mapped memory (RAM or MMIO).
pub fn rd64(a: u64) -> u64 {
    // SAFETY: callers pass addresses in the identity-mapped DMA area or in a
    // BAR this driver placed in the uncached 32-bit window; 8-byte aligned.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

/// Volatile 64-bit write (see `rd64`).
pub fn wr64(a: u64, v: u64) {
    // SAFETY: as in `rd64`.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

/// Volatile 32-bit read (see `rd64`).
pub fn rd32(a: u64) -> u32 {
    // SAFETY: as in `rd64`; 4-byte aligned.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

/// Volatile 32-bit write (see `rd64`).
pub fn wr32(a: u64, v: u32) {
    // SAFETY: as in `rd64`.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

/// Polls the status byte of the completion record at `cr` for up to `ms`.
pub fn poll_cr(cr: u64, ms: u64) -> Option<Cr> {
    let deadline = Deadline::after_ms(ms);
    loop {
        if rd64(cr) as u8 != 0 {
            return Some(read_cr(cr));
        }
        if deadline.passed() {
            return None;
        }
        pause();
    }
}

/// Waits (interrupts enabled) until vector `vector` has fired more than
/// `before` times, for up to `ms`; returns whether it did. The interrupt
/// flag is restored afterwards.
///
/// On this machine's KVM an interrupt that becomes pending while IF = 0 is
/// only injected at the vCPU's next exit after `sti` (about 1 ms later, see
/// the latency line of the summary), so the DSA cases run with IF = 1.
pub fn wait_irq(vector: u8, before: u64, ms: u64) -> bool {
    let deadline = Deadline::after_ms(ms);
    let was_on = crate::cpu::interrupts_enabled();
    sti();
    let ok = loop {
        if crate::idt::irq_count(vector) > before {
            break true;
        }
        if deadline.passed() {
            break false;
        }
        pause();
    };
    if !was_on {
        cli();
    }
    ok
}

/// MOVDIR64B of the 64 bytes at `src` to the portal address `dst`: the
/// kernel's encoding `66 0F 38 F8 02` (movdir64b rax, [rdx], section 11), in
/// `entry.rs`. Not gated on CPUID: dsavmm emulates it for portal pages even
/// when the guest CPUID does not show it. Where the CPU raises #UD instead
/// (stock QEMU TCG under a nested KVM), the handler skips it and
/// [`movdir64b_faults`] counts it.
pub fn movdir64b(dst: u64, src: &Desc) {
    // SAFETY: `dst` is a 64-byte aligned portal address in a BAR this driver
    // mapped; `src` is a live 64-byte descriptor. The routine only reads
    // `src`, writes the portal and clobbers RAX/RDX (caller-saved).
    unsafe { crate::entry::selftest_movdir64b(dst, (src as *const Desc).cast::<u8>()) };
}

/// How many MOVDIR64Bs raised #UD so far.
pub fn movdir64b_faults() -> u64 {
    // SAFETY: only a shared reference to the atomic counter is taken.
    let c = unsafe { &crate::entry::selftest_movdir64b_ud };
    c.load(core::sync::atomic::Ordering::Acquire)
}

/// One DSA function as found and configured by this driver.
pub struct Dsa {
    /// Index among the DSA devices found (0..).
    pub index: usize,
    /// Configuration access.
    pub cfg: PciCfg,
    /// PCI device number on bus 0.
    pub dev: u8,
    /// Function number.
    pub func: u8,
    /// BAR0 (registers) address.
    pub bar0: u64,
    /// BAR2 (portals) address.
    pub bar2: u64,
    /// BAR2 size.
    pub bar2_size: u64,
    /// MSI-X capability offset.
    pub msix_cap: u16,
    /// MSI-X table address.
    pub msix_table: u64,
    /// MSI-X PBA address.
    pub msix_pba: u64,
    /// MSI-X table entries.
    pub msix_entries: u16,
    /// Capability registers (section 4.5 step 6).
    pub gencap: u64,
    /// WQCAP.
    pub wqcap: u64,
    /// GRPCAP.
    pub grpcap: u64,
    /// ENGCAP.
    pub engcap: u64,
    /// OPCAP[0..4].
    pub opcap: [u64; 4],
    /// CMDCAP (0 when GENCAP.cmd_cap is clear).
    pub cmdcap: u32,
    /// GRPCFG table offset in BAR0.
    pub grpcfg: u64,
    /// WQCFG table offset in BAR0.
    pub wqcfg: u64,
    /// WQCFG entry size.
    pub wqcfg_size: u64,
    /// MSIX_PERM table offset.
    pub msix_perm: u64,
    /// Number of WQs.
    pub num_wqs: u32,
    /// Number of engines.
    pub num_engines: u32,
    /// Number of groups.
    pub num_groups: u32,
    /// Groups used by the configuration (min of groups, engines, WQs).
    pub groups_used: u32,
    /// Portal cursor of each WQ (section 1.4: +64 per submission, mod 4 KiB).
    pub cursor: [u64; 8],
    /// APIC ID the MSI-X messages target.
    pub apic: u32,
    /// Descriptors submitted.
    pub descriptors: u64,
}

/// Result type of driver steps: a reason on failure.
pub type Res<T> = Result<T, Line>;

/// Builds a failure reason.
pub fn err(text: &str) -> Line {
    let mut l = Line::new();
    l.s(text);
    l
}

/// Builds a failure reason "<text> <hex>".
pub fn err_hex(text: &str, v: u64) -> Line {
    let mut l = Line::new();
    l.s(text).s(" ").hex(v);
    l
}

impl Dsa {
    /// Register access.
    pub fn r32(&self, off: u64) -> u32 {
        rd32(self.bar0 + off)
    }
    /// Register access.
    pub fn r64(&self, off: u64) -> u64 {
        rd64(self.bar0 + off)
    }
    /// Register access.
    pub fn w32(&self, off: u64, v: u32) {
        wr32(self.bar0 + off, v)
    }
    /// Register access.
    pub fn w64(&self, off: u64, v: u64) {
        wr64(self.bar0 + off, v)
    }

    /// Interrupt vector of MSI-X entry `entry`.
    pub fn vector(&self, entry: u16) -> u8 {
        0x50 + (self.index * MAX_VECTORS) as u8 + (entry as u8 & 0xf)
    }

    /// Whether OPCAP advertises `opcode` (section 2.7).
    pub fn supports(&self, opcode: u8) -> bool {
        self.opcap
            .get(usize::from(opcode / 64))
            .is_some_and(|q| q & (1 << (opcode % 64)) != 0)
    }

    /// GENCAP max transfer size in bytes.
    pub fn max_xfer(&self) -> u64 {
        1 << ((self.gencap >> 16) & 0x1f)
    }

    /// Pre-enable PCI setup (the PCI core, section 1.2-1.5): sizes both BARs
    /// with decode off, places them in the 32-bit window at `base` (BAR0)
    /// and `base + 0x80000` (BAR2), finds MSI-X, enables decode and bus
    /// mastering. Returns the device or a reason.
    pub fn setup_pci(cfg: PciCfg, index: usize, dev: u8, func: u8, base: u64) -> Res<Dsa> {
        let cmd = cfg.r16(dev, func, 0x04);
        cfg.w16(dev, func, 0x04, cmd & !(CMD_MEM | CMD_MASTER));
        let b0 = cfg.size_bar(dev, func, 0);
        let b2 = cfg.size_bar(dev, func, 2);
        let (Some((a0, s0, is64_0, _)), Some((a2, s2, is64_2, _))) = (b0, b2) else {
            return Err(err("BAR0/BAR2 missing or I/O"));
        };
        if !is64_0 || !is64_2 {
            return Err(err("BAR0/BAR2 not 64-bit memory BARs (section 1.3)"));
        }
        let ok = 0x4000..=0x8_0000;
        if !ok.contains(&s0) || !ok.contains(&s2) {
            let mut l = Line::new();
            l.s("BAR sizes ").hex(s0).s("/").hex(s2).s(" out of range");
            return Err(l);
        }
        if a0 % s0 != 0 || a2 % s2 != 0 {
            return Err(err("firmware BAR placement not naturally aligned"));
        }
        crate::tests::info(|l| {
            l.s("dsa")
                .dec(index as u64)
                .s(" pci 00:")
                .hex_digits(u64::from(dev), 2)
                .s(".")
                .dec(u64::from(func))
                .s(" bar0=")
                .hex(a0)
                .s("+")
                .hex(s0)
                .s(" bar2=")
                .hex(a2)
                .s("+")
                .hex(s2)
                .s(" -> ")
                .hex(base)
                .s(",")
                .hex(base + 0x8_0000);
        });
        // Relocate into the 32-bit window (identity mapped, uncached).
        cfg.set_bar(dev, func, 0, base, true);
        cfg.set_bar(dev, func, 2, base + 0x8_0000, true);
        let (c0, c2) = (cfg.size_bar(dev, func, 0), cfg.size_bar(dev, func, 2));
        if c0.map(|b| b.0) != Some(base) || c2.map(|b| b.0) != Some(base + 0x8_0000) {
            return Err(err("BAR relocation did not stick"));
        }
        let Some(cap) = cfg.find_cap(dev, func, 0x11) else {
            return Err(err("no MSI-X capability (section 1.5)"));
        };
        let ctrl = cfg.r16(dev, func, cap + 2);
        let entries = (ctrl & 0x7ff) + 1;
        let table = cfg.r32(dev, func, cap + 4);
        let pba = cfg.r32(dev, func, cap + 8);
        let bar_addr = |bir: u32| match bir {
            0 => Some(base),
            2 => Some(base + 0x8_0000),
            _ => None,
        };
        let (Some(tb), Some(pb)) = (bar_addr(table & 7), bar_addr(pba & 7)) else {
            return Err(err("MSI-X table/PBA not in BAR0 or BAR2"));
        };
        // pci_enable_device + pci_set_master (section 4.5 step 1).
        cfg.w16(dev, func, 0x04, cmd | CMD_MEM);
        cfg.w16(dev, func, 0x04, cfg.r16(dev, func, 0x04) | CMD_MASTER);
        if cfg.r16(dev, func, 0x04) & (CMD_MEM | CMD_MASTER) != CMD_MEM | CMD_MASTER {
            return Err(err("command register did not take MEM|MASTER"));
        }
        Ok(Dsa {
            index,
            cfg,
            dev,
            func,
            bar0: base,
            bar2: base + 0x8_0000,
            bar2_size: s2,
            msix_cap: cap,
            msix_table: tb + u64::from(table & !7),
            msix_pba: pb + u64::from(pba & !7),
            msix_entries: entries,
            gencap: 0,
            wqcap: 0,
            grpcap: 0,
            engcap: 0,
            opcap: [0; 4],
            cmdcap: 0,
            grpcfg: 0,
            wqcfg: 0,
            wqcfg_size: 32,
            msix_perm: 0,
            num_wqs: 0,
            num_engines: 0,
            num_groups: 0,
            groups_used: 0,
            cursor: [0; 8],
            apic: 0,
            descriptors: 0,
        })
    }

    /// pci_alloc_irq_vectors(MSI-X): enable with the function mask set,
    /// program every entry (masked) with address 0xfee00000 | apic << 12 and
    /// data = vector, clear the function mask; then unmask entry 0
    /// ("idxd-misc").
    pub fn msix_enable(&mut self, apic: u32) -> Res<()> {
        self.apic = apic;
        let c = self.msix_cap + 2;
        let (d, f) = (self.dev, self.func);
        self.cfg
            .w16(d, f, c, self.cfg.r16(d, f, c) | 0x8000 | 0x4000);
        for e in 0..self.msix_entries.min(MAX_VECTORS as u16) {
            if rd32(self.msix_table + 16 * u64::from(e) + 12) & 1 != 1 {
                return Err(err_hex("MSI-X entry not masked at reset:", u64::from(e)));
            }
        }
        self.msix_program();
        self.cfg.w16(d, f, c, self.cfg.r16(d, f, c) & !0x4000);
        if self.cfg.r16(d, f, c) & 0xc000 != 0x8000 {
            return Err(err("MSI-X enable/function mask did not stick"));
        }
        self.unmask(0, true);
        Ok(())
    }

    /// Writes every MSI-X entry's message: address 0xfee00000 | apic << 12, data = its vector
    /// (the mask bits are left as they are).
    pub fn msix_program(&self) {
        for e in 0..self.msix_entries.min(MAX_VECTORS as u16) {
            let a = self.msix_table + 16 * u64::from(e);
            wr32(a, 0xfee0_0000 | ((self.apic & 0xff) << 12));
            wr32(a + 4, 0);
            wr32(a + 8, u32::from(self.vector(e)));
        }
    }

    /// Masks or unmasks MSI-X entry `e` (request_irq / free_irq).
    pub fn unmask(&self, e: u16, on: bool) {
        let a = self.msix_table + 16 * u64::from(e) + 12;
        let v = rd32(a);
        wr32(a, if on { v & !1 } else { v | 1 });
    }

    /// Whether the PBA bit of entry `e` is set.
    pub fn pending(&self, e: u16) -> bool {
        rd64(self.msix_pba + 8 * u64::from(e / 64)) & (1 << (e % 64)) != 0
    }

    /// Probe (section 4.5): VERSION, GENSTS, polled probe reset, capabilities,
    /// table offsets, GENCTRL |= 3.
    pub fn probe(&mut self) -> Res<u32> {
        let version = self.r32(VERSION);
        if version != 0x100 && version != 0x200 {
            return Err(err_hex("VERSION", u64::from(version)));
        }
        if self.r32(GENSTS) & 3 == 3 {
            return Err(err("device halted at probe"));
        }
        // Probe reset: polled, CMD bit 31 clear (traps 4/5).
        let sts = self.cmd_polled(CMD_RESET_DEVICE, 0)?;
        if sts & 0xff != 0 {
            return Err(err_hex("probe reset CMDSTS", u64::from(sts)));
        }
        if self.r32(INTCAUSE) != 0 {
            return Err(err("INTCAUSE set by a polled command (trap 5)"));
        }
        self.gencap = self.r64(GENCAP);
        if self.gencap & (1 << 4) != 0 {
            self.cmdcap = self.r32(CMDCAP);
        }
        self.grpcap = self.r64(GRPCAP);
        self.engcap = self.r64(ENGCAP);
        self.wqcap = self.r64(WQCAP);
        let bar0 = self.bar0;
        for (i, o) in self.opcap.iter_mut().enumerate() {
            *o = rd64(bar0 + OPCAP + 8 * i as u64);
        }
        let t0 = self.r64(TABLE_OFFSETS);
        let _t1 = self.r64(TABLE_OFFSETS + 8);
        self.grpcfg = (t0 & 0xffff) * 0x100;
        self.wqcfg = ((t0 >> 16) & 0xffff) * 0x100;
        self.msix_perm = ((t0 >> 32) & 0xffff) * 0x100;
        self.wqcfg_size = 32 << ((self.wqcap >> 24) & 0xf);
        self.num_wqs = ((self.wqcap >> 16) & 0xff) as u32;
        self.num_groups = (self.grpcap & 0xff) as u32;
        self.num_engines = (self.engcap & 0xff) as u32;
        if self.num_wqs == 0 || self.num_wqs > 8 {
            return Err(err_hex(
                "WQCAP.num_wqs unsupported here:",
                u64::from(self.num_wqs),
            ));
        }
        if self.num_groups == 0 || self.num_engines == 0 || self.num_groups > 4 {
            return Err(err("GRPCAP/ENGCAP: no groups or engines"));
        }
        if self.gencap & (1 << 31) == 0 {
            return Err(err("GENCAP.config_en = 0 (trap 13)"));
        }
        if (self.gencap >> 13) & 3 == 0 {
            return Err(err("GENCAP.evl_support = 0 (trap 1)"));
        }
        if (self.gencap >> 16) & 0x1f < 21 || (self.gencap >> 21) & 0xf < 5 {
            return Err(err(
                "GENCAP max transfer < 2 MiB or max batch < 32 (trap 11)",
            ));
        }
        if u32::from(self.msix_entries) < self.num_wqs + 1 {
            return Err(err("MSI-X table smaller than num_wqs + 1 (trap 6)"));
        }
        if self.bar2_size < 0x4000 * u64::from(self.num_wqs) {
            return Err(err("BAR2 smaller than num_wqs * 16 KiB (section 1.3)"));
        }
        if self.grpcfg == 0 || self.wqcfg == 0 {
            return Err(err("GRPCFG/WQCFG offset 0"));
        }
        self.groups_used = self.num_groups.min(self.num_engines).min(self.num_wqs);
        // Unmask error interrupts (step 10).
        let g = self.r32(GENCTRL);
        self.w32(GENCTRL, g | 0x3);
        if self.r32(GENCTRL) & 3 != 3 {
            return Err(err("GENCTRL did not take softerr/halt int enables"));
        }
        Ok(version)
    }

    /// A command written without CMD bit 31 (the probe reset, trap 5): polls CMDSTS.active for
    /// up to 500 ms and returns CMDSTS. Raises no interrupt, so it also works with MSI-X masked.
    pub fn cmd_polled(&self, code: u32, operand: u32) -> Res<u32> {
        self.w32(CMD, cmd_word(code, operand, false));
        let deadline = Deadline::after_ms(500);
        while self.r32(CMDSTS) & (1 << 31) != 0 {
            if deadline.passed() {
                return Err(err_hex(
                    "polled command: CMDSTS.active never clears, CMD",
                    u64::from(code),
                ));
            }
            pause();
        }
        Ok(self.r32(CMDSTS))
    }

    /// `idxd_cmd_exec` with an interrupt: CMD with bit 31, then wait for
    /// vector 0, read INTCAUSE (must be exactly the command bit, section
    /// 2.12), W1C it, read CMDSTS (section 4.4).
    pub fn cmd(&self, code: u32, operand: u32) -> Res<u32> {
        if self.r32(GENSTS) & 3 == 3 {
            return Err(err("device halted"));
        }
        let v0 = self.vector(0);
        let before = crate::idt::irq_count(v0);
        self.w32(CMD, cmd_word(code, operand, true));
        if !wait_irq(v0, before, 500) {
            let mut l = Line::new();
            l.s("CMD ")
                .hex(u64::from(cmd_word(code, operand, true)))
                .s(": no completion interrupt (trap 4)");
            return Err(l);
        }
        let cause = self.r32(INTCAUSE);
        self.w32(INTCAUSE, cause);
        if cause != 0x2 {
            let mut l = Line::new();
            l.s("CMD ")
                .hex(u64::from(code))
                .s(": INTCAUSE ")
                .hex(u64::from(cause))
                .s(" (want 0x2)");
            return Err(l);
        }
        let sts = self.r32(CMDSTS);
        if sts & (1 << 31) != 0 {
            return Err(err("CMDSTS still active after the interrupt"));
        }
        Ok(sts)
    }

    /// Runs a command that must succeed with CMDSTS in `ok`.
    pub fn cmd_ok(&self, code: u32, operand: u32, ok: &[u32]) -> Res<()> {
        let s = self.cmd(code, operand)?;
        if ok.contains(&s) {
            Ok(())
        } else {
            let mut l = Line::new();
            l.s("CMD ")
                .dec(u64::from(code))
                .s(" operand ")
                .hex(u64::from(operand))
                .s(": CMDSTS ")
                .hex(u64::from(s));
            Err(l)
        }
    }

    /// WQCFG dword address.
    pub fn wq_reg(&self, wq: u32, dword: u64) -> u64 {
        self.wqcfg + u64::from(wq) * self.wqcfg_size + 4 * dword
    }

    /// Size of each WQ: the total divided among the WQs, at most 32.
    pub fn wq_size(&self) -> u32 {
        ((self.wqcap & 0xffff) as u32 / self.num_wqs).clamp(1, 32)
    }

    /// `idxd_wq_config_write` (section 3.2): read all dwords and OR them into
    /// the shadow (trap 10), set size, threshold, mode = dedicated, priority
    /// (1..15, trap 12), max transfer 2 MiB and max batch 32 (trap 11), and
    /// write every dword back.
    pub fn wqcfg_write(&self, wq: u32) {
        let mut shadow = [0u32; 8];
        for (d, s) in shadow.iter_mut().enumerate() {
            *s = self.r32(self.wq_reg(wq, d as u64));
        }
        let prio = 1 + (wq % 15);
        let xfer = 21u32.min(((self.gencap >> 16) & 0x1f) as u32);
        let batch = 5u32.min(((self.gencap >> 21) & 0xf) as u32);
        shadow[0] = self.wq_size();
        shadow[1] = 0;
        shadow[2] = (shadow[2] & !0xf0) | 0x1 | (prio << 4);
        shadow[3] = xfer | (batch << 5);
        for (d, s) in shadow.iter().enumerate() {
            self.w32(self.wq_reg(wq, d as u64), *s);
        }
    }

    /// Group of WQ `wq` / engine `e` in this configuration.
    pub fn group_of(&self, n: u32) -> u32 {
        n % self.groups_used.max(1)
    }

    /// `idxd_groups_config_write`: every group, WQ bitmap, engine bitmap,
    /// flags (TC A = B = 1, read buffers allowed = total, section 3.1).
    pub fn grpcfg_write_all(&self) {
        let rdbufs = (self.grpcap >> 8) & 0xff;
        for g in 0..self.num_groups {
            let base = self.grpcfg + 64 * u64::from(g);
            let mut wqs = 0u64;
            let mut engs = 0u64;
            if g < self.groups_used {
                for w in 0..self.num_wqs {
                    if self.group_of(w) == g {
                        wqs |= 1 << w;
                    }
                }
                for e in 0..self.num_engines.min(64) {
                    if self.group_of(e) == g {
                        engs |= 1 << e;
                    }
                }
            }
            self.w64(base, wqs);
            for q in 1..4 {
                self.w64(base + 8 * q, 0);
            }
            self.w64(base + 0x20, engs);
            self.w64(base + 0x28, 0x9 | (rdbufs << 20));
        }
    }

    /// accel-config config + enable-device (sections 4.6, 12.2), with the
    /// event log at `evl` (4 KiB, trap 1).
    pub fn enable_device(&self, evl: u64) -> Res<()> {
        for w in 0..self.num_wqs {
            self.wqcfg_write(w);
        }
        self.grpcfg_write_all();
        self.w64(EVLCFG, evl);
        self.w64(EVLCFG + 8, 64);
        self.w32(GENCTRL, self.r32(GENCTRL) | 0x4);
        self.w32(GENCFG, self.r32(GENCFG) | 0x2000);
        if self.r32(GENSTS) & 3 == 1 {
            return Err(err("device already enabled"));
        }
        self.cmd_ok(CMD_ENABLE_DEVICE, 0, &[0, 0x10])?;
        if self.r32(GENSTS) & 3 != 1 {
            return Err(err_hex(
                "GENSTS after ENABLE_DEVICE",
                u64::from(self.r32(GENSTS)),
            ));
        }
        Ok(())
    }

    /// enable-wq (section 4.7): the configuration write again (GRPCFG while
    /// enabled, trap 9), ENABLE_WQ, check WQCFG state, unmask vector wq + 1.
    pub fn enable_wq(&mut self, wq: u32) -> Res<()> {
        self.wqcfg_write(wq);
        self.grpcfg_write_all();
        self.cmd_ok(CMD_ENABLE_WQ, wq, &[0, 0x21])?;
        let d6 = self.r32(self.wq_reg(wq, 6));
        if d6 >> 30 != 1 {
            let mut l = Line::new();
            l.s("WQ ")
                .dec(u64::from(wq))
                .s(" WQCFG dword 6 ")
                .hex(u64::from(d6));
            l.s(" not enabled");
            return Err(l);
        }
        self.unmask(wq as u16 + 1, true);
        if let Some(c) = self.cursor.get_mut(wq as usize) {
            *c = 0;
        }
        Ok(())
    }

    /// WQ `wq`'s WQCFG dword `d`.
    pub fn wqcfg_dword(&self, wq: u32, d: u64) -> u32 {
        self.r32(self.wq_reg(wq, d))
    }

    /// The next limited-MSI-X portal slot of WQ `wq` (section 1.4, 8).
    pub fn next_portal(&mut self, wq: u32) -> u64 {
        let c = self.cursor.get(wq as usize).copied().unwrap_or(0);
        if let Some(s) = self.cursor.get_mut(wq as usize) {
            *s = (c + 64) % 4096;
        }
        self.bar2 + u64::from(wq) * 0x4000 + 0x1000 + c
    }

    /// Submits `d` on WQ `wq` (MOVDIR64B to its portal).
    pub fn submit(&mut self, wq: u32, d: &Desc) {
        let p = self.next_portal(wq);
        self.descriptors += 1;
        movdir64b(p, d);
    }

    /// Submits `d` through page `page` (0 unlimited MSI-X, 1 limited MSI-X,
    /// 2/3 IMS) of WQ `wq` at slot 0 and polls its record (section 1.4).
    pub fn run_page(&mut self, wq: u32, page: u64, d: &Desc) -> Res<Cr> {
        let cr = d.q[1];
        clear_cr(cr);
        self.descriptors += 1;
        movdir64b(self.bar2 + u64::from(wq) * 0x4000 + 0x1000 * (page & 3), d);
        poll_cr(cr, 500).ok_or_else(|| err_hex("no completion record via portal page", page))
    }

    /// Submits `d` (whose completion record is at `cr`, cleared here) on WQ
    /// `wq` and polls the record.
    pub fn run(&mut self, wq: u32, d: &Desc) -> Res<Cr> {
        let cr = d.q[1];
        clear_cr(cr);
        self.submit(wq, d);
        poll_cr(cr, 500).ok_or_else(|| {
            let mut l = Line::new();
            l.s("opcode ")
                .hex(d.q[0] >> 56)
                .s(" on WQ ")
                .dec(u64::from(wq))
                .s(": no completion record");
            l
        })
    }

    /// Reads and acknowledges a software error (section 10.1): waits for
    /// vector 0 beyond `before`, checks INTCAUSE bit 0, returns SWERR qword 0
    /// and clears it (W1C bits 1:0).
    pub fn take_swerr(&self, before: u64) -> Res<u64> {
        if !wait_irq(self.vector(0), before, 500) {
            return Err(err("no vector-0 interrupt for a software error"));
        }
        let cause = self.r32(INTCAUSE);
        self.w32(INTCAUSE, cause);
        if cause & 1 == 0 {
            return Err(err_hex("INTCAUSE without the SWERR bit:", u64::from(cause)));
        }
        let q0 = self.r64(SWERR);
        self.w64(SWERR, q0 & 3);
        if self.r64(SWERR) & 3 != 0 {
            return Err(err("SWERR valid bit not cleared by W1C"));
        }
        Ok(q0)
    }
}
