//! Hostile mode (`selftest.hostile=1`, `dsavmm selftest --hostile`): before the normal DSA cases
//! of each device, a guest that behaves as badly as it can. It writes random and adversarial
//! values to every BAR0 register, the MSI-X table and PBA, configuration space and the portals
//! (plain stores of every size, MOVDIRI, MOVDIR64B), submits descriptors with addresses outside
//! RAM and in MMIO, sizes 0 and 2^32-1, overlapping buffers, completion records outside RAM,
//! batches that point at themselves, at garbage or at other batches, and floods one WQ from every
//! vCPU. Each case checks what docs/dsa-device-model.md defines (error completions, SWERR codes,
//! read-only registers, reset values) and prints `ok ops=N` with the operations it performed.
//! Between cases the device is put back: configuration space restored, MSI-X reprogrammed, a
//! polled RESET_DEVICE, bring-up again. After the last case the device is left as at power-on, and
//! the normal cases of [`crate::dsatest`] run on it and must pass.
//!
//! Random values come from a PRNG seeded by `selftest.seed=N` (printed; the TSC without it), so a
//! failing run can be replayed. The guest protects only itself: every address that the device may
//! write (completion records, destinations, delta records, the second dualcast destination) is
//! either inside a 4 MiB sandbox at the very top of a RAM range (so anything the device writes past
//! it is not RAM), or not RAM at all; batch lists in RAM are the guest's own sanitised lists.
//! Random MSI-X messages are only written while their entries (or the function) are masked, and
//! the ones that may fire are fixed-mode messages to this guest's own counting vectors.

mod batches;
mod config;
mod descriptors;
mod flood;
mod portal;
mod regs;

pub use flood::ap_flood;

use crate::bootinfo::BootInfo;
use crate::dsa::*;
use crate::dsatest::{at, bring_up, report, DeviceAt, EVL};
use crate::e820::RamRanges;
use crate::fmt::Line;
use crate::tests::{info, Outcome, Runner};

/// The hostile cases, in the order they run (names `dsa<N>_<area>`).
pub const AREAS: [&str; 7] = [
    "hostile_bar0",
    "hostile_msix",
    "hostile_config",
    "hostile_portal",
    "hostile_descriptors",
    "hostile_batches",
    "hostile_flood",
];

/// Bytes of the sandbox the device may write.
const SANDBOX_LEN: u64 = 4 << 20;
/// Value of the canary page below the sandbox.
const CANARY: u64 = 0xca4a_12ca_4a12_ca4a;

// Areas of the DMA buffer (offsets from `selftest_dma`) that only this module writes.
/// 1024 sanitised batch members (64 KiB): every list in RAM that the device may read.
pub(crate) const LIST: u64 = 0x8_0000;
/// Batch descriptors pointed at by other batches (64 of them).
pub(crate) const BATCHES: u64 = 0x9_0000;
/// Completion records whose status a case checks (256 of them).
pub(crate) const RECORDS: u64 = 0x9_1000;
/// Flood records: 64 per CPU index, 2 KiB each.
pub(crate) const FLOOD: u64 = 0xa_0000;
/// Members in [`LIST`] (at least any WQ's max batch: GENCAP max_batch_shift <= 10).
pub(crate) const LIST_MEMBERS: u64 = 1024;

pub(crate) use crate::dsatest::BAD_ADDR;
/// The local APIC page (MMIO handled by KVM).
const LAPIC: u64 = 0xfee0_0000;
/// The IOAPIC page (MMIO handled by KVM).
const IOAPIC: u64 = 0xfec0_0000;

/// What hostile mode needs from the boot information.
pub struct Options {
    /// PRNG seed (`selftest.seed`).
    pub seed: u64,
    /// `[start, end)` the device may write: the top of a RAM range below 4 GiB; `end` is not RAM.
    pub sandbox: (u64, u64),
}

impl Options {
    /// Hostile mode when `selftest.hostile=1`: picks the sandbox (the top [`SANDBOX_LEN`] of the
    /// largest RAM range below 4 GiB, clear of this image and the initrd) and the seed.
    pub fn from_boot(boot: &BootInfo, kernel: (u64, u64)) -> Result<Option<Options>, Line> {
        if crate::tests::num_key(boot, "selftest.hostile")?.unwrap_or(0) == 0 {
            return Ok(None);
        }
        let seed = crate::tests::num_key(boot, "selftest.seed")?
            .unwrap_or_else(|| crate::cpu::rdtsc() & 0xffff_ffff);
        let ram = RamRanges::from_map(boot.regions());
        let Some(&(_, end)) = ram
            .ranges()
            .iter()
            .filter(|r| r.1 <= crate::phys::IDENTITY_END)
            .max_by_key(|r| r.1 - r.0)
        else {
            return Err(err("hostile: no RAM range below 4 GiB"));
        };
        let start = end.saturating_sub(SANDBOX_LEN);
        let clear = |(s, e): (u64, u64)| e <= start - 4096 || s >= end;
        let initrd = boot
            .initrd
            .map_or((0, 0), |(a, n)| (a, a.saturating_add(n)));
        if !ram.contains(start - 4096, end) || !clear(kernel) || !clear(initrd) {
            return Err(err_hex("hostile: no room for the sandbox below", end));
        }
        info(|l| {
            l.s("hostile seed=")
                .dec(seed)
                .s(" sandbox=")
                .hex(start)
                .s("-")
                .hex(end);
        });
        Ok(Some(Options {
            seed,
            sandbox: (start, end),
        }))
    }
}

/// A small PRNG (SplitMix64): reproducible from the printed seed.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True with probability `n`/256.
    pub fn chance(&mut self, n: u64) -> bool {
        self.next() & 0xff < n
    }

    /// One of `xs` (`fallback` when empty).
    pub fn pick<T: Copy>(&mut self, xs: &[T], fallback: T) -> T {
        let i = self.below(xs.len() as u64) as usize;
        xs.get(i).copied().unwrap_or(fallback)
    }

    /// A random value, often an adversarial one: 0, all ones, one bit, the sign bits, small.
    pub fn wild(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << self.below(64),
            3 => !(1 << self.below(64)),
            4 => 0x8000_0000_8000_0000 | self.below(2),
            5 => self.below(256),
            _ => self.next(),
        }
    }
}

/// The hostile state of one device.
pub struct Hostile<'a> {
    /// The device, probed and brought up.
    pub d: &'a mut Dsa,
    /// Random numbers.
    pub rng: Rng,
    /// The sandbox `[start, end)`.
    pub sandbox: (u64, u64),
    /// This device's event log.
    pub evl: u64,
    /// Configuration space dwords 0..64 as the normal bring-up left them.
    pub saved_cfg: [u32; 64],
}

impl Hostile<'_> {
    /// An address the device may write: in the sandbox (any alignment, up to its end), or not
    /// RAM (outside RAM, registers, portals, ECAM, LAPIC, wrapping, beyond 52 bits).
    pub fn write_addr(&mut self) -> u64 {
        let (s, e) = self.sandbox;
        let a = match self.rng.below(16) {
            0..=6 => s + self.rng.below(SANDBOX_LEN),
            7 => e - 1 - self.rng.below(256),
            8 => BAD_ADDR + self.rng.below(1 << 30),
            9 => self.d.bar0 + self.rng.below(0x1_0000),
            10 => self.d.bar2 + self.rng.below(self.d.bar2_size),
            11 => self
                .rng
                .pick(&[LAPIC, IOAPIC, self.ecam(), 0xffff_f000], BAD_ADDR),
            12 => u64::MAX - self.rng.below(4096),
            13 => (1 << 52) + self.rng.below(1 << 20),
            14 => 0x8000_0000_0000_0000 | self.rng.next(),
            _ => e + self.rng.below(1 << 20),
        };
        // Mostly aligned, so that completion records get past the alignment check.
        match self.rng.below(4) {
            0 => a,
            1 => a & !7,
            _ => a & !31,
        }
    }

    /// An address the device may read: a [`Self::write_addr`], or anywhere in this image.
    pub fn read_addr(&mut self) -> u64 {
        if self.rng.chance(48) {
            let k = core::ptr::addr_of!(crate::entry::__kernel_start) as u64;
            return k + self.rng.below(1 << 20);
        }
        self.write_addr()
    }

    /// A transfer size, often an edge: 0, 1, blocks, the WQ's max and max + 1, 2^32 - 1.
    pub fn size(&mut self) -> u32 {
        let max = self.d.max_xfer().min(u64::from(u32::MAX)) as u32;
        let edges = [
            0,
            1,
            7,
            8,
            64,
            512,
            520,
            4096,
            4104,
            max - 1,
            max,
            max.saturating_add(1),
            u32::MAX,
        ];
        match self.rng.below(3) {
            0 => self.rng.pick(&edges, 0),
            1 => self.rng.below(0x1_0000) as u32,
            _ => self.rng.next() as u32,
        }
    }

    /// The ECAM base of bus 0.
    pub fn ecam(&self) -> u64 {
        self.d.cfg.ecam.unwrap_or(BAD_ADDR)
    }

    /// Makes 64 random bytes safe for this guest to hand to the device: every field the device
    /// may write through becomes a [`Self::write_addr`], a batch list is [`LIST`] (sanitised
    /// members), [`LIST`] + 8 (misaligned) or not RAM. Everything else stays random.
    pub fn sanitise(&mut self, mut q: [u64; 8]) -> Desc {
        q[1] = self.write_addr();
        q[2] = self.read_addr();
        q[3] = self.write_addr();
        q[5] = self.write_addr();
        if self.rng.chance(128) {
            // A plausible size rather than garbage in the size word.
            q[4] = (q[4] & !0xffff_ffff) | u64::from(self.size());
        }
        let opcode = (q[0] >> 56) as u8;
        if opcode == crate::dsatest::OP_BATCH {
            q[2] = match self.rng.below(4) {
                0 | 1 => at(LIST),
                2 => at(LIST) + 8,
                _ => BAD_ADDR,
            };
        }
        Desc { q }
    }

    /// A random descriptor after [`Self::sanitise`], with a random opcode that is often one the
    /// device implements.
    pub fn random_desc(&mut self) -> Desc {
        let mut q = [0u64; 8];
        for v in q.iter_mut() {
            *v = self.rng.wild();
        }
        if self.rng.chance(192) {
            let op = self.rng.pick(&OPCODES, 0);
            q[0] = (q[0] & !(0xff << 56)) | (u64::from(op) << 56);
        }
        self.sanitise(q)
    }

    /// Acknowledges everything the device may have raised: INTCAUSE and SWERR (W1C).
    pub fn clear_errors(&self) {
        self.d.w64(SWERR, 3);
        self.d.w32(INTCAUSE, self.d.r32(INTCAUSE));
    }

    /// Completion record `i` of [`RECORDS`], cleared.
    pub fn record(&self, i: u64) -> u64 {
        let a = at(RECORDS) + 32 * (i % 256);
        clear_cr(a);
        a
    }

    /// Submits `desc` on `wq` and returns the software error it must cause (SWERR qwords 0 and
    /// 2), waiting for the vector-0 interrupt.
    pub fn swerr_of(&mut self, wq: u32, desc: &Desc) -> Res<(u64, u64)> {
        self.clear_errors();
        let v0 = crate::idt::irq_count(self.d.vector(0));
        self.d.submit(wq, desc);
        let q0 = self.d.take_swerr(v0)?;
        Ok((q0, self.d.r64(SWERR + 16)))
    }

    /// Writes the canary page below the sandbox.
    fn paint_canary(&self) {
        crate::dsatest::fill_q(self.sandbox.0 - 4096, 4096, CANARY);
    }

    /// Fails when the device wrote below the sandbox.
    pub fn check_canary(&self) -> Res<()> {
        let base = self.sandbox.0 - 4096;
        for off in (0..4096).step_by(8) {
            if rd64(base + off) != CANARY {
                return Err(err_hex(
                    "the device wrote below the sandbox, at",
                    base + off,
                ));
            }
        }
        Ok(())
    }

    /// Writes [`LIST_MEMBERS`] sanitised random members to [`LIST`].
    pub fn fill_list(&mut self) {
        for i in 0..LIST_MEMBERS {
            let m = self.random_desc();
            write_desc(at(LIST) + 64 * i, &m);
        }
    }
}

/// Opcodes the random descriptors prefer (DSA 1.0, docs/dsa-device-model.md §6.3).
const OPCODES: [u8; 18] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
    0x20, 0x0a,
];

/// Stores `desc` at `a` (64 bytes of guest memory).
pub fn write_desc(a: u64, desc: &Desc) {
    for (k, q) in desc.q.iter().enumerate() {
        wr64(a + 8 * k as u64, *q);
    }
}

/// A completion status the device may write (docs/dsa-device-model.md §7): codes 0x01-0x22 that
/// exist, bit 7 only with the page-fault codes.
pub fn valid_status(s: u8) -> bool {
    let code = s & 0x7f;
    let known = matches!(code, 0x01..=0x09 | 0x10..=0x22);
    known && (s & 0x80 == 0 || matches!(code, 0x03 | 0x04))
}

/// Fails with `what: want <want> got <got>` unless they are equal.
pub fn check_eq(what: &str, got: u64, want: u64) -> Res<()> {
    if got == want {
        return Ok(());
    }
    let mut l = Line::new();
    l.s(what).s(": got ").hex(got).s(" want ").hex(want);
    Err(l)
}

type Case = fn(&mut Hostile) -> Res<u64>;

/// Runs the hostile cases on the device at `loc`, then leaves it as at power-on for the normal
/// cases.
pub fn run_device(r: &mut Runner, o: &Options, loc: DeviceAt) {
    let (cfg, i, dev, func) = (loc.cfg, loc.index, loc.dev, loc.func);
    let evl = at(EVL + 0x1000 * i as u64);
    let set_up = loc.probe().and_then(|mut d| {
        bring_up(&mut d, evl)?;
        Ok(d)
    });
    let mut d = match set_up {
        Ok(d) => d,
        Err(e) => {
            for area in AREAS {
                let mut l = Line::new();
                l.s("bring-up before the hostile cases: ").raw(e.as_bytes());
                report(r, i, area, Outcome::Fail(l));
            }
            return;
        }
    };
    // Where the CPU raises #UD on MOVDIR64B (stock QEMU TCG under a nested KVM) the portals
    // cannot be reached: as the normal data cases, skip.
    let ud = movdir64b_faults();
    d.submit(
        0,
        &Desc::new(crate::dsatest::OP_NOP, crate::dsatest::POLL, at(RECORDS)),
    );
    if movdir64b_faults() != ud {
        for area in AREAS {
            let why = err("MOVDIR64B raises #UD on this CPU: the portals cannot be attacked");
            report(r, i, area, Outcome::Skip(why));
        }
        return;
    }
    let mut saved_cfg = [0u32; 64];
    for (k, v) in saved_cfg.iter_mut().enumerate() {
        *v = cfg.r32(dev, func, 4 * k as u16);
    }
    let mut h = Hostile {
        d: &mut d,
        rng: Rng::new(o.seed ^ (i as u64).wrapping_mul(0x1000_0000_01b3)),
        sandbox: o.sandbox,
        evl,
        saved_cfg,
    };
    h.paint_canary();
    let cases: [Case; 7] = [
        regs::case_bar0,
        regs::case_msix,
        config::case_config,
        portal::case_portal,
        descriptors::case_descriptors,
        batches::case_batches,
        flood::case_flood,
    ];
    let mut usable = true;
    for (area, case) in AREAS.iter().zip(cases) {
        let t0 = crate::cpu::rdtsc();
        let res = if usable {
            case(&mut h).and_then(|ops| {
                h.check_canary()?;
                Ok(ops)
            })
        } else {
            Err(err("device not restored after the previous case"))
        };
        let us = crate::time::us_between(t0, crate::cpu::rdtsc());
        // Put the device back for the next case even when this one failed.
        let restored = recover(&mut h, true);
        let outcome = match (res, &restored) {
            (Ok(ops), Ok(())) => {
                let mut l = Line::new();
                l.s("ops=").dec(ops).s(" us=").dec(us);
                Outcome::OkWith(l)
            }
            (Err(e), _) => Outcome::Fail(e),
            (Ok(_), Err(e)) => {
                let mut l = Line::new();
                l.s("restoring the device: ").raw(e.as_bytes());
                Outcome::Fail(l)
            }
        };
        usable = restored.is_ok();
        report(r, i, area, outcome);
    }
    if let Err(e) = recover(&mut h, false) {
        let mut l = Line::new();
        l.s("dsa")
            .dec(i as u64)
            .s(" not back at power-on state after the hostile cases: ")
            .raw(e.as_bytes());
        info(|x| {
            x.raw(l.as_bytes());
        });
    }
}

/// Puts the device back: configuration space as saved (decode off while the BARs are
/// rewritten), MSI-X entries reprogrammed and pending bits delivered, a polled RESET_DEVICE
/// (checked against the reset values of docs/dsa-device-model.md §2.19) and, with `enable`,
/// the normal bring-up; without it every MSI-X entry is left masked, as at power-on, for the
/// normal cases' own probe.
pub fn recover(h: &mut Hostile, enable: bool) -> Res<()> {
    // The table may hold anything: mask the function before anything can be delivered.
    regs::function_mask(h.d, true);
    config::restore(h)?;
    regs::msix_restore(h.d)?;
    config::check_saved(h)?;
    let sts = h.d.cmd_polled(CMD_RESET_DEVICE, 0)?;
    check_eq("RESET_DEVICE CMDSTS", u64::from(sts), 0)?;
    regs::check_reset_values(h.d)?;
    if enable {
        h.d.w32(GENCTRL, 0x3);
        bring_up(h.d, h.evl)?;
    } else {
        for e in 0..h.d.msix_entries {
            h.d.unmask(e, false);
        }
    }
    Ok(())
}
