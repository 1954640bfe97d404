//! The DSA cases: find every DSA on PCI bus 0 (ECAM and 0xCF8/0xCFC), bring
//! each one up the way Linux 6.12 idxd + accel-config do ([`crate::dsa`]),
//! then run every operation the device advertises with the data checked in
//! the guest against independent reference code (bitwise CRC-32C, bitwise
//! T10-DIF CRC16, delta records per docs/dsa-device-model.md §6.3), completions polled
//! and by interrupt, a batch, drains and aborts, error descriptors, several
//! vCPUs at once, a disable/reset/re-enable cycle and MEMMOVE throughput.
//!
//! Cases are named `dsa<N>_<area>` (N = device index). Operations whose
//! OPCAP bit is clear report `skipped opcode not advertised` (after checking
//! that the device really rejects them with status 0x10). In hostile mode the
//! cases of [`crate::hostile`] run on each device first.

pub mod soak;

use core::sync::atomic::{AtomicU64, Ordering};

use crate::acpi::AcpiInfo;
use crate::cpu::rdtsc;
use crate::dsa::*;
use crate::fmt::Line;
use crate::pci::PciCfg;
use crate::tests::{info, Outcome, Runner};
use crate::time::tsc_hz;

// Opcodes (docs/dsa-device-model.md §6.3).
pub(crate) const OP_NOP: u8 = 0x00;
pub(crate) const OP_BATCH: u8 = 0x01;
pub(crate) const OP_DRAIN: u8 = 0x02;
pub(crate) const OP_MEMMOVE: u8 = 0x03;
pub(crate) const OP_FILL: u8 = 0x04;
pub(crate) const OP_COMPARE: u8 = 0x05;
pub(crate) const OP_COMPVAL: u8 = 0x06;
pub(crate) const OP_CR_DELTA: u8 = 0x07;
pub(crate) const OP_AP_DELTA: u8 = 0x08;
pub(crate) const OP_DUALCAST: u8 = 0x09;
pub(crate) const OP_CRCGEN: u8 = 0x10;
pub(crate) const OP_COPY_CRC: u8 = 0x11;
pub(crate) const OP_DIF_CHECK: u8 = 0x12;
pub(crate) const OP_DIF_INS: u8 = 0x13;
pub(crate) const OP_DIF_STRP: u8 = 0x14;
pub(crate) const OP_DIF_UPDT: u8 = 0x15;
pub(crate) const OP_CFLUSH: u8 = 0x20;
/// An opcode no DSA defines.
pub(crate) const OP_UNDEFINED: u8 = 0x0b;

/// Polled flags: CRAV | RCR (as the dmaengine path without interrupt).
pub(crate) const POLL: u32 = F_CRAV | F_RCR;

/// An address outside guest RAM and every MMIO window (256 GiB).
pub(crate) const BAD_ADDR: u64 = 0x40_0000_0000;

// Layout of the DMA area (offsets from `selftest_dma`).
const CRS: u64 = 0x0000; // 128 completion records
const LIST: u64 = 0x1000; // batch descriptor list
const DELTA: u64 = 0x2000; // delta record
pub(crate) const EVL: u64 = 0x3000; // event log (4 KiB per device: 0x3000 + 0x1000 * n, n < 4 -> up to 0x7000)
const A: u64 = 0x8000;
const B: u64 = 0x9000;
const C: u64 = 0xa000;
const D: u64 = 0xb000;
const SRC: u64 = 0x1_0000; // 64 KiB
const DST: u64 = 0x2_0000; // 64 KiB
const PER_CPU: u64 = 0x4_0000; // 4 KiB per CPU index: CR at +0, src +0x400, dst +0x800
const PER_CPU_BYTES: u32 = 1024;

fn dma() -> u64 {
    core::ptr::addr_of!(crate::entry::selftest_dma) as u64
}

pub(crate) fn at(off: u64) -> u64 {
    dma() + off
}

fn cr(i: u64) -> u64 {
    at(CRS + 32 * (i % 128))
}

// ---- memory helpers (string instructions: one emulated instruction each) ----

fn wr8(a: u64, v: u8) {
    // SAFETY: `a` is inside the identity-mapped DMA area.
    unsafe { core::ptr::write_volatile(a as *mut u8, v) }
}

fn rd8(a: u64) -> u8 {
    // SAFETY: as in `wr8`.
    unsafe { core::ptr::read_volatile(a as *const u8) }
}

/// Fills `len` bytes (multiple of 8) at `a` with the qword `v`.
pub(crate) fn fill_q(a: u64, len: u64, v: u64) {
    // SAFETY: [a, a + len) is inside the DMA area; DF is clear.
    unsafe {
        core::arch::asm!("rep stosq", inout("rcx") len / 8 => _, inout("rdi") a => _,
            in("rax") v, options(nostack, preserves_flags));
    }
}

/// Copies `len` bytes from `src` to `dst` (non-overlapping).
pub(crate) fn copy(dst: u64, src: u64, len: u64) {
    // SAFETY: both ranges are inside the DMA area and do not overlap.
    unsafe { crate::mem::memcpy(dst as *mut u8, src as *const u8, len as usize) };
}

/// Offset of the first difference between [a, a+len) and [b, b+len).
pub(crate) fn diff(a: u64, b: u64, len: u64) -> Option<u64> {
    if len == 0 {
        return None;
    }
    let rem: u64;
    let ne: u8;
    // SAFETY: both ranges are readable memory in the DMA area; DF is clear.
    unsafe {
        core::arch::asm!("repe cmpsb", "setne {ne}", inout("rcx") len => rem,
            inout("rsi") a => _, inout("rdi") b => _, ne = out(reg_byte) ne,
            options(nostack, readonly));
    }
    (ne != 0).then(|| len - rem - 1)
}

/// Writes a pseudo-random pattern (qword granular; `len` multiple of 8).
pub(crate) fn pattern(a: u64, len: u64, seed: u64) {
    let mut x = seed | 1;
    let mut i = 0;
    while i < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        wr64(a + i, x);
        i += 8;
    }
}

// ---- reference algorithms (independent of the device) ----

/// CRC-32C (Castagnoli, reflected 0x82F63B78), bitwise, continued from `seed`
/// (0 for a fresh CRC): docs/dsa-device-model.md §6.3.
fn crc32c(seed: u32, a: u64, len: u64) -> u32 {
    let mut c = !seed;
    for i in 0..len {
        c ^= u32::from(rd8(a + i));
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// T10-DIF CRC16 (polynomial 0x8BB7, MSB first, seed 0), bitwise.
fn crc16_t10(a: u64, len: u64) -> u16 {
    let mut c: u16 = 0;
    for i in 0..len {
        c ^= u16::from(rd8(a + i)) << 8;
        for _ in 0..8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x8BB7
            } else {
                c << 1
            };
        }
    }
    c
}

/// Writes "123456789" at `a` (the CRC check string).
fn check_string(a: u64) {
    for (i, b) in b"123456789".iter().enumerate() {
        wr8(a + i as u64, *b);
    }
}

// ---- result helpers ----

fn fail_l(l: Line) -> Outcome {
    Outcome::Fail(l)
}

fn skip(text: &str) -> Outcome {
    Outcome::Skip(err(text))
}

/// Fails unless the record has status `want`.
pub(crate) fn expect(what: &str, c: &Cr, want: u8) -> Res<()> {
    if c.status == want {
        return Ok(());
    }
    let mut l = Line::new();
    l.s(what)
        .s(": status ")
        .hex(u64::from(c.status))
        .s(" (want ")
        .hex(u64::from(want))
        .s(") result ")
        .hex(u64::from(c.result))
        .s(" bytes ")
        .dec(u64::from(c.bytes));
    Err(l)
}

fn data_fail(what: &str, off: u64) -> Line {
    let mut l = Line::new();
    l.s(what).s(": data differs at byte ").dec(off);
    l
}

/// Checks [a, len) equals [b, len).
pub(crate) fn same(what: &str, a: u64, b: u64, len: u64) -> Res<()> {
    match diff(a, b, len) {
        None => Ok(()),
        Some(o) => Err(data_fail(what, o)),
    }
}

pub(crate) fn to_outcome(r: Res<()>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(l) => Outcome::Fail(l),
    }
}

// ---- AP work (several vCPUs) ----

/// BAR2 of the device the APs use.
static AP_BAR2: AtomicU64 = AtomicU64::new(0);
/// Number of enabled WQs.
static AP_WQS: AtomicU64 = AtomicU64::new(1);
/// Copies each CPU makes.
const AP_ROUNDS: u64 = 4;
/// Per CPU index: copies verified | failure code << 32.
static AP_RESULT: [AtomicU64; crate::entry::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::entry::MAX_CPUS];

/// Copies `AP_ROUNDS` times 1 KiB through WQ `index % wqs` with polled
/// completions, each checked; called on each AP (and the BSP with index 0).
pub fn ap_work(index: usize) {
    let bar2 = AP_BAR2.load(Ordering::Acquire);
    let wqs = AP_WQS.load(Ordering::Acquire).max(1);
    let Some(res) = AP_RESULT.get(index) else {
        return;
    };
    if bar2 == 0 {
        res.store(9 << 32, Ordering::Release);
        return;
    }
    let base = at(PER_CPU + 0x1000 * index as u64);
    let (crp, src, dst) = (base, base + 0x400, base + 0x800);
    let wq = index as u64 % wqs;
    let mut ok = 0u64;
    let mut code = 0u64;
    for k in 0..AP_ROUNDS {
        let v = ((index as u64) << 56) | (k << 48) | 0x00a5_5a5a_c3c3_3c3c;
        fill_q(src, u64::from(PER_CPU_BYTES), v);
        wr64(src + 8 * (k + 1), !v);
        fill_q(dst, u64::from(PER_CPU_BYTES), 0);
        clear_cr(crp);
        let d = Desc::new(OP_MEMMOVE, POLL, crp)
            .src(src)
            .dst(dst)
            .size(PER_CPU_BYTES);
        // Each CPU its own portal slots (section 1.4: any 64-byte offset).
        let slot = ((index as u64 * AP_ROUNDS + k) % 64) * 64;
        movdir64b(bar2 + wq * 0x4000 + 0x1000 + slot, &d);
        match poll_cr(crp, 1000) {
            None => {
                code = 1;
                break;
            }
            Some(c) if c.status != 1 => {
                code = 0x100 | u64::from(c.status);
                break;
            }
            Some(_) => {}
        }
        if diff(src, dst, u64::from(PER_CPU_BYTES)).is_some() {
            code = 2;
            break;
        }
        ok += 1;
    }
    res.store(ok | (code << 32), Ordering::Release);
}

// ---- per-device state ----

/// Throughput of one MEMMOVE size.
#[derive(Clone, Copy, Default)]
struct Rate {
    size: u64,
    count: u64,
    ticks: u64,
}

/// Per-device summary.
#[derive(Clone, Copy, Default)]
struct Summary {
    present: bool,
    wqs: u32,
    engines: u32,
    groups: u32,
    descriptors: u64,
    interrupts: u64,
    rates: [Rate; 3],
    mmio_ticks: u64,
    exit_ticks: u64,
    irq_lat: [u64; 3],
    irq_lat_if0: [u64; 3],
    ap_descriptors: u64,
}

/// Case areas run on each device, in order.
const AREAS: [&str; 23] = [
    "probe",
    "enable",
    "nop",
    "drain",
    "memmove",
    "fill",
    "compare",
    "compare_pattern",
    "delta",
    "dualcast",
    "crc",
    "copy_crc",
    "dif",
    "cache_flush",
    "batch",
    "interrupt",
    "interrupt_masked",
    "drain_abort",
    "errors",
    "smp",
    "reset_cycle",
    "throughput",
    "disable",
];

fn case_name(dev: usize, area: &str) -> Line {
    let mut l = Line::new();
    l.s("dsa").dec(dev as u64).s("_").s(area);
    l
}

pub(crate) fn report(r: &mut Runner, dev: usize, area: &str, o: Outcome) {
    let n = case_name(dev, area);
    // Runner::report takes &str: the name is ASCII built from ASCII parts.
    let name = core::str::from_utf8(n.as_bytes()).unwrap_or("dsa");
    r.report(name, o);
}

/// What the enumeration of PCI bus 0 found.
struct Bus0 {
    /// Configuration access (ECAM from the MCFG when it covers bus 0).
    cfg: PciCfg,
    /// (device, function) of each DSA; the first `n` are valid.
    found: [(u8, u8); 8],
    /// DSA functions found.
    n: usize,
    /// Functions present on bus 0.
    functions: u64,
    /// First disagreement between ECAM and 0xCF8/0xCFC, or a bad DSA class code.
    mismatch: Option<Line>,
}

/// Enumerates bus 0 through ECAM, cross-checked against 0xCF8/0xCFC.
fn enumerate(acpi: &AcpiInfo) -> Bus0 {
    let ecam = acpi
        .mcfg
        .as_ref()
        .filter(|m| m.segment == 0 && m.bus_start == 0)
        .map(|m| m.base);
    let cfg = PciCfg { ecam };
    let mut found: [(u8, u8); 8] = [(0, 0); 8];
    let mut n = 0;
    let mut mismatch: Option<Line> = None;
    let mut functions = 0;
    for dev in 0..32u8 {
        let nfunc = if cfg.r32(dev, 0, 0x0c) & (0x80 << 16) != 0 {
            8
        } else {
            1
        };
        for func in 0..nfunc {
            let id = cfg.r32(dev, func, 0);
            let io = cfg.io_r32(dev, func, 0);
            if id != io && mismatch.is_none() {
                let mut l = Line::new();
                l.s("00:")
                    .hex_digits(u64::from(dev), 2)
                    .s(".")
                    .dec(u64::from(func))
                    .s(" ECAM id ")
                    .hex(u64::from(id))
                    .s(" != 0xCF8 id ")
                    .hex(u64::from(io));
                mismatch = Some(l);
            }
            if id as u16 == 0xffff {
                if func == 0 {
                    break;
                }
                continue;
            }
            functions += 1;
            if id == u32::from(VENDOR) | (u32::from(DEVICE) << 16) {
                let class = cfg.r32(dev, func, 0x08) >> 8;
                if let Some(s) = found.get_mut(n) {
                    *s = (dev, func);
                    n += 1;
                }
                if class != 0x08_8000 && mismatch.is_none() {
                    mismatch = Some(err_hex("DSA class code", u64::from(class)));
                }
            }
        }
    }
    Bus0 {
        cfg,
        found,
        n,
        functions,
        mismatch,
    }
}

/// Runs every DSA case (after the hostile ones of [`crate::hostile`] when `hostile` is given);
/// returns the number of DSA devices found.
pub fn run_all(
    r: &mut Runner,
    acpi: &AcpiInfo,
    hostile: Option<&crate::hostile::Options>,
) -> usize {
    let Bus0 {
        cfg,
        found,
        n,
        functions,
        mismatch,
    } = enumerate(acpi);
    let ecam = cfg.ecam;
    info(|l| {
        l.s("pci bus0 functions=")
            .dec(functions)
            .s(" dsa=")
            .dec(n as u64)
            .s(" ecam=");
        match ecam {
            Some(b) => l.hex(b),
            None => l.s("none"),
        };
    });
    let pci_outcome = if let Some(m) = mismatch {
        Outcome::Fail(m)
    } else if ecam.is_none() {
        skip("no MCFG ECAM for bus 0 (0xCF8 only)")
    } else if n == 0 {
        skip("no DSA device")
    } else {
        Outcome::Ok
    };
    r.report("dsa_pci", pci_outcome);
    // Only next to a DSA (so under dsavmm): a VMM that does not handle MOVDIR64B
    // emulation failures (QEMU on this machine's KVM) stops the guest on it.
    r.report(
        "movdir64b_ram",
        if n > 0 {
            case_movdir64b_ram()
        } else {
            skip("no DSA device")
        },
    );
    if n == 0 {
        let hostile_areas = crate::hostile::AREAS.iter().filter(|_| hostile.is_some());
        for area in hostile_areas.chain(AREAS.iter()) {
            report(r, 0, area, skip("no DSA device"));
        }
        return 0;
    }
    crate::apic::enable(crate::entry::SPURIOUS_VECTOR);
    let bsp = crate::apic::id();
    // Interrupts on while the devices run (see `wait_irq`); only the counting
    // stubs and the spurious vector can fire (the LAPIC timer is stopped).
    crate::cpu::sti();
    let mut sums = [Summary::default(); MAX_DEVICES];
    for (i, &(dev, func)) in found.iter().take(n).enumerate() {
        if i >= MAX_DEVICES {
            for area in AREAS.iter() {
                report(
                    r,
                    i,
                    area,
                    skip("more DSA devices than this guest drives (4)"),
                );
            }
            continue;
        }
        let loc = DeviceAt::new(cfg, i, (dev, func), bsp);
        if let Some(h) = hostile {
            crate::hostile::run_device(r, h, loc);
        }
        let s = run_device(r, loc);
        if let Some(slot) = sums.get_mut(i) {
            *slot = s;
        }
    }
    crate::cpu::cli();
    summary_table(&sums);
    n
}

/// MOVDIR64B to RAM: the CPU (or the VMM's emulation) copies the 64 bytes,
/// or the CPU raises #UD and `entry.rs` skips the instruction.
fn case_movdir64b_ram() -> Outcome {
    let mut src = Desc { q: [0; 8] };
    for (k, q) in src.q.iter_mut().enumerate() {
        *q = 0x6d6f_7664_6972_0000 | k as u64;
    }
    let dst = at(C);
    fill_q(dst, 64, 0);
    let ud = movdir64b_faults();
    movdir64b(dst, &src);
    if movdir64b_faults() != ud {
        return skip("MOVDIR64B raised #UD (this CPU does not execute it; the handler skipped it)");
    }
    for (k, q) in src.q.iter().enumerate() {
        if rd64(dst + 8 * k as u64) != *q {
            return Outcome::Fail(err_hex("MOVDIR64B to RAM: qword differs:", k as u64));
        }
    }
    Outcome::Ok
}

/// Prints the summary table (info lines).
fn summary_table(sums: &[Summary]) {
    let hz = tsc_hz().max(1);
    info(|l| {
        l.s("dsa summary: dev wqs engines groups descriptors(bsp+aps) interrupts mmio_read_ns port_exit_ns");
    });
    for (i, s) in sums.iter().enumerate().filter(|(_, s)| s.present) {
        info(|l| {
            l.s("dsa summary: dsa")
                .dec(i as u64)
                .s(" ")
                .dec(u64::from(s.wqs))
                .s(" ")
                .dec(u64::from(s.engines))
                .s(" ")
                .dec(u64::from(s.groups))
                .s(" ")
                .dec(s.descriptors + s.ap_descriptors)
                .s("(")
                .dec(s.descriptors)
                .s("+")
                .dec(s.ap_descriptors)
                .s(") ")
                .dec(s.interrupts)
                .s(" ")
                .dec(s.mmio_ticks.saturating_mul(1_000_000_000) / hz)
                .s(" ")
                .dec(s.exit_ticks.saturating_mul(1_000_000_000) / hz);
        });
        if s.irq_lat[2] > 0 {
            let us = |t: u64| t.saturating_mul(1_000_000) / hz;
            info(|l| {
                l.s("dsa summary: dsa")
                    .dec(i as u64)
                    .s(" completion interrupt latency (submit to handler, n=")
                    .dec(LAT_SAMPLES as u64)
                    .s("): median=")
                    .dec(us(s.irq_lat[0]))
                    .s("us p99=")
                    .dec(us(s.irq_lat[1]))
                    .s("us max=")
                    .dec(us(s.irq_lat[2]))
                    .s("us; submitted with IF=0 (n=")
                    .dec(LAT_SAMPLES as u64 / 4)
                    .s("): median=")
                    .dec(us(s.irq_lat_if0[0]))
                    .s("us p99=")
                    .dec(us(s.irq_lat_if0[1]))
                    .s("us");
            });
        }
        for rate in s.rates.iter().filter(|r| r.count > 0) {
            let ns = rate.ticks.saturating_mul(1_000_000_000) / hz / rate.count;
            let bytes = rate.size * rate.count;
            // bytes / (ticks / hz) in MB/s (10^6 bytes).
            let mbs = bytes.saturating_mul(hz) / rate.ticks.max(1) / 1_000_000;
            let kbs = bytes.saturating_mul(hz) / rate.ticks.max(1) / 1_000;
            info(|l| {
                l.s("dsa summary: dsa")
                    .dec(i as u64)
                    .s(" memmove size=")
                    .dec(rate.size)
                    .s(" n=")
                    .dec(rate.count)
                    .s(" ns_per_desc=")
                    .dec(ns)
                    .s(" throughput=");
                if mbs >= 10 {
                    l.dec(mbs).s("MB/s");
                } else {
                    l.dec(kbs).s("kB/s");
                }
                l.s(" (guest TSC)");
            });
        }
    }
}

/// Where a DSA function was found and where its BARs go.
#[derive(Clone, Copy)]
pub(crate) struct DeviceAt {
    /// Configuration access.
    pub cfg: PciCfg,
    /// Index among the DSAs found.
    pub index: usize,
    /// Device number on bus 0.
    pub dev: u8,
    /// Function number.
    pub func: u8,
    /// BAR0 address to place (BAR2 at + 0x80000).
    pub base: u64,
    /// APIC ID of the CPU the MSI-X messages target.
    pub bsp: u32,
}

impl DeviceAt {
    /// DSA number `index`, found at 00:`dev`.`func`: its BARs go to 0xd800_0000 + `index` MiB.
    pub(crate) fn new(cfg: PciCfg, index: usize, (dev, func): (u8, u8), bsp: u32) -> Self {
        DeviceAt {
            cfg,
            index,
            dev,
            func,
            base: 0xd800_0000 + 0x10_0000 * index as u64,
            bsp,
        }
    }

    /// The PCI setup, MSI-X and probe of [`Dsa`].
    pub(crate) fn probe(&self) -> Res<Dsa> {
        let mut d = Dsa::setup_pci(self.cfg, self.index, self.dev, self.func, self.base)?;
        d.msix_enable(self.bsp)?;
        d.probe()?;
        Ok(d)
    }
}

/// Brings up the device at `loc` and runs its cases.
fn run_device(r: &mut Runner, loc: DeviceAt) -> Summary {
    let i = loc.index;
    let mut sum = Summary::default();
    let probed = loc.probe().inspect(|d| {
        let v = d.r32(VERSION);
        info(|l| {
            l.s("dsa")
                .dec(i as u64)
                .s(" version=")
                .hex(u64::from(v))
                .s(" gencap=")
                .hex(d.gencap)
                .s(" wqcap=")
                .hex(d.wqcap)
                .s(" grpcap=")
                .hex(d.grpcap)
                .s(" engcap=")
                .hex(d.engcap)
                .s(" opcap0=")
                .hex(d.opcap[0])
                .s(" cmdcap=")
                .hex(u64::from(d.cmdcap))
                .s(" msix=")
                .dec(u64::from(d.msix_entries));
        });
    });
    let mut d = match probed {
        Ok(d) => {
            report(r, i, "probe", Outcome::Ok);
            d
        }
        Err(e) => {
            report(r, i, "probe", Outcome::Fail(e));
            for area in AREAS.iter().skip(1) {
                report(r, i, area, skip("device not probed"));
            }
            return sum;
        }
    };
    sum.present = true;
    sum.wqs = d.num_wqs;
    sum.engines = d.num_engines;
    sum.groups = d.groups_used;
    let irq_before: u64 = (0..=d.num_wqs as u16)
        .map(|e| crate::idt::irq_count(d.vector(e)))
        .sum();
    let evl = at(EVL + 0x1000 * i as u64);
    let enabled = bring_up(&mut d, evl);
    let ok = enabled.is_ok();
    report(r, i, "enable", to_outcome(enabled));
    if !ok {
        for area in AREAS.iter().skip(2) {
            report(r, i, area, skip("device not enabled"));
        }
        return sum;
    }
    // Can this CPU execute MOVDIR64B at all? (Stock QEMU TCG under a nested KVM
    // raises #UD, which `entry.rs` skips and counts.)
    let ud = movdir64b_faults();
    clear_cr(cr(0));
    d.submit(0, &Desc::new(OP_NOP, POLL, cr(0)));
    if movdir64b_faults() != ud {
        for area in AREAS.iter().skip(2).filter(|a| **a != "disable") {
            report(
                r,
                i,
                area,
                skip("MOVDIR64B raises #UD on this CPU: data path not exercised"),
            );
        }
        let o = case_disable(&mut d);
        report(r, i, "disable", o);
        return sum;
    }
    type Case = fn(&mut Dsa) -> Outcome;
    let cases: [(&str, Case); 13] = [
        ("nop", case_nop),
        ("drain", case_drain),
        ("memmove", case_memmove),
        ("fill", case_fill),
        ("compare", case_compare),
        ("compare_pattern", case_compval),
        ("delta", case_delta),
        ("dualcast", case_dualcast),
        ("crc", case_crc),
        ("copy_crc", case_copy_crc),
        ("dif", case_dif),
        ("cache_flush", case_cflush),
        ("batch", case_batch),
    ];
    for (name, f) in cases {
        let o = f(&mut d);
        report(r, i, name, o);
    }
    let o = case_interrupt(&mut d);
    report(r, i, "interrupt", o);
    let o = case_interrupt_masked(&mut d);
    report(r, i, "interrupt_masked", o);
    let o = case_drain_abort(&mut d);
    report(r, i, "drain_abort", o);
    let o = case_errors(&mut d);
    report(r, i, "errors", o);
    let (o, ap_desc) = case_smp(&mut d);
    sum.ap_descriptors = ap_desc;
    report(r, i, "smp", o);
    let o = case_reset_cycle(&mut d, evl);
    report(r, i, "reset_cycle", o);
    let o = case_throughput(&mut d, &mut sum);
    report(r, i, "throughput", o);
    let o = case_disable(&mut d);
    report(r, i, "disable", o);
    sum.descriptors = d.descriptors;
    let irq_after: u64 = (0..=d.num_wqs as u16)
        .map(|e| crate::idt::irq_count(d.vector(e)))
        .sum();
    sum.interrupts = irq_after - irq_before;
    sum
}

/// Configures one group per engine/WQ set, enables the device and every WQ.
pub(crate) fn bring_up(d: &mut Dsa, evl: u64) -> Res<()> {
    d.enable_device(evl)?;
    // Section 12.2: WQCFG of wq0 as accel-config leaves it (size, dedicated, priority 1,
    // 2 MiB, batch 32).
    let w0: [u32; 4] = [
        d.wqcfg_dword(0, 0),
        d.wqcfg_dword(0, 1),
        d.wqcfg_dword(0, 2),
        d.wqcfg_dword(0, 3),
    ];
    if w0 != [d.wq_size(), 0, 0x11, 0xb5] {
        let mut l = Line::new();
        l.s("WQCFG wq0 = ");
        for w in w0 {
            l.hex(u64::from(w)).s(" ");
        }
        return Err(l);
    }
    for w in 0..d.num_wqs {
        d.enable_wq(w)?;
    }
    info(|l| {
        l.s("dsa")
            .dec(d.index as u64)
            .s(" enabled: wqs=")
            .dec(u64::from(d.num_wqs))
            .s(" size=")
            .dec(u64::from(d.wq_size()))
            .s(" groups_used=")
            .dec(u64::from(d.groups_used))
            .s(" engines=")
            .dec(u64::from(d.num_engines));
    });
    Ok(())
}

/// The WQ operation `k` runs on (rotates over the WQs).
pub(crate) fn wq_for(d: &Dsa, k: u32) -> u32 {
    k % d.num_wqs.max(1)
}

/// For an opcode OPCAP does not advertise: checks that the device rejects
/// it with 0x10 and reports the case as skipped.
fn not_advertised(d: &mut Dsa, op: u8) -> Outcome {
    let desc = Desc::new(op, POLL, cr(0)).src(at(A)).dst(at(B)).size(64);
    match d.run(0, &desc) {
        Ok(c) if c.status == 0x10 => skip("opcode not advertised"),
        Ok(c) => {
            let mut l = Line::new();
            l.s("opcode ")
                .hex(u64::from(op))
                .s(" not in OPCAP but completed with status ")
                .hex(u64::from(c.status));
            fail_l(l)
        }
        Err(e) => fail_l(e),
    }
}

fn case_nop(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_NOP) {
        return not_advertised(d, OP_NOP);
    }
    to_outcome((|| {
        for w in 0..d.num_wqs {
            let c = d.run(w, &Desc::new(OP_NOP, POLL, cr(u64::from(w))))?;
            expect("nop", &c, 1)?;
        }
        // Every portal page accepts descriptors (section 1.4).
        for page in 0..4 {
            let c = d.run_page(0, page, &Desc::new(OP_NOP, POLL, cr(10)))?;
            expect("nop through another portal page", &c, 1)?;
        }
        Ok(())
    })())
}

fn case_drain(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_DRAIN) {
        return not_advertised(d, OP_DRAIN);
    }
    to_outcome((|| {
        // A copy, then a drain descriptor on the same WQ: the copy is done when it completes.
        pattern(at(A), 512, 11);
        let w = wq_for(d, 1);
        d.submit(
            w,
            &Desc::new(OP_MEMMOVE, F_CRAV, cr(1))
                .src(at(A))
                .dst(at(B))
                .size(512),
        );
        let c = d.run(w, &Desc::new(OP_DRAIN, POLL, cr(2)))?;
        expect("drain", &c, 1)?;
        same("memmove before drain", at(A), at(B), 512)
    })())
}

fn case_memmove(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_MEMMOVE) {
        return not_advertised(d, OP_MEMMOVE);
    }
    to_outcome((|| {
        pattern(at(A), 4096, 0x1234);
        // (src offset, dst offset, size)
        for (k, (so, doff, n)) in [(0u64, 0u64, 64u32), (3, 5, 1000), (0, 0, 4096)]
            .into_iter()
            .enumerate()
        {
            fill_q(at(B), 4096, 0xeeee_eeee_eeee_eeee);
            let w = wq_for(d, k as u32);
            let c = d.run(
                w,
                &Desc::new(OP_MEMMOVE, POLL, cr(k as u64))
                    .src(at(A) + so)
                    .dst(at(B) + doff)
                    .size(n),
            )?;
            expect("memmove", &c, 1)?;
            same("memmove", at(A) + so, at(B) + doff, u64::from(n))?;
            let end = doff + u64::from(n);
            if end < 4096 && rd8(at(B) + end) != 0xee {
                return Err(data_fail("memmove wrote past the end", end));
            }
            if doff > 0 && rd8(at(B) + doff - 1) != 0xee {
                return Err(data_fail("memmove wrote before the start", doff - 1));
            }
        }
        // Overlapping copy (GENCAP.overlap_copy, section 2.3): A[0..256] -> A[8..264].
        if d.gencap & 2 != 0 {
            copy(at(C), at(A), 256);
            let c = d.run(
                0,
                &Desc::new(OP_MEMMOVE, POLL, cr(5))
                    .src(at(A))
                    .dst(at(A) + 8)
                    .size(256),
            )?;
            expect("overlapping memmove", &c, 1)?;
            same("overlapping memmove", at(C), at(A) + 8, 256)?;
        }
        Ok(())
    })())
}

fn case_fill(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_FILL) {
        return not_advertised(d, OP_FILL);
    }
    to_outcome((|| {
        let pat: u64 = 0x0123_4567_89ab_cdef;
        fill_q(at(B), 2048, 0xeeee_eeee_eeee_eeee);
        let c = d.run(
            wq_for(d, 2),
            &Desc::new(OP_FILL, POLL, cr(3))
                .src(pat)
                .dst(at(B) + 1)
                .size(1001),
        )?;
        expect("fill", &c, 1)?;
        for i in 0..1001u64 {
            if rd8(at(B) + 1 + i) != (pat >> (8 * (i % 8))) as u8 {
                return Err(data_fail("fill", i));
            }
        }
        if rd8(at(B)) != 0xee || rd8(at(B) + 1002) != 0xee {
            return Err(err("fill wrote outside its range"));
        }
        Ok(())
    })())
}

fn case_compare(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_COMPARE) {
        return not_advertised(d, OP_COMPARE);
    }
    to_outcome((|| {
        pattern(at(A), 2048, 77);
        copy(at(B), at(A), 2048);
        let desc = |flags: u32, i: u64| {
            Desc::new(OP_COMPARE, flags, cr(i))
                .src(at(A))
                .dst(at(B))
                .size(2048)
        };
        let w = wq_for(d, 3);
        let c = d.run(w, &desc(POLL, 4))?;
        expect("compare equal", &c, 1)?;
        if c.result != 0 {
            return Err(err_hex("compare equal: result", u64::from(c.result)));
        }
        wr8(at(B) + 777, rd8(at(A) + 777) ^ 0x40);
        let c = d.run(w, &desc(POLL, 5))?;
        expect("compare different", &c, 1)?;
        if c.result != 1 || c.bytes != 777 {
            let mut l = Line::new();
            l.s("compare different: result ")
                .dec(u64::from(c.result))
                .s(" first difference ")
                .dec(u64::from(c.bytes))
                .s(" (want 1, 777)");
            return Err(l);
        }
        // Check-result flag, expecting "equal" (0x28 = 0): false predicate 0x02.
        let c = d.run(w, &desc(POLL | F_CHECK_RESULT, 6).set(0x28, 1, 0))?;
        expect("compare with check-result", &c, 2)
    })())
}

fn case_compval(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_COMPVAL) {
        return not_advertised(d, OP_COMPVAL);
    }
    to_outcome((|| {
        let pat: u64 = 0xfeed_face_cafe_beef;
        fill_q(at(A), 512, pat);
        let desc = |i: u64| {
            Desc::new(OP_COMPVAL, POLL, cr(i))
                .src(at(A))
                .dst(pat)
                .size(512)
        };
        let w = wq_for(d, 4);
        let c = d.run(w, &desc(7))?;
        expect("compare pattern equal", &c, 1)?;
        if c.result != 0 {
            return Err(err_hex(
                "compare pattern equal: result",
                u64::from(c.result),
            ));
        }
        // A difference at a qword boundary: byte and word granularity agree.
        wr8(at(A) + 136, 0);
        let c = d.run(w, &desc(8))?;
        expect("compare pattern different", &c, 1)?;
        if c.result != 1 || c.bytes != 136 {
            let mut l = Line::new();
            l.s("compare pattern: result ")
                .dec(u64::from(c.result))
                .s(" at ")
                .dec(u64::from(c.bytes))
                .s(" (want 1, 136)");
            return Err(l);
        }
        Ok(())
    })())
}

fn case_delta(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_CR_DELTA) {
        return not_advertised(d, OP_CR_DELTA);
    }
    if !d.supports(OP_AP_DELTA) {
        return not_advertised(d, OP_AP_DELTA);
    }
    to_outcome((|| {
        const N: u64 = 256;
        const CHANGED: [u64; 3] = [3, 17, 30];
        pattern(at(A), N, 5);
        copy(at(B), at(A), N);
        for (k, &w) in CHANGED.iter().enumerate() {
            wr64(at(B) + 8 * w, 0x1111_0000 + k as u64);
        }
        fill_q(at(DELTA), 128, 0);
        let wq = wq_for(d, 5);
        let c = d.run(
            wq,
            &Desc::new(OP_CR_DELTA, POLL, cr(9))
                .src(at(A))
                .dst(at(B))
                .size(N as u32)
                .set(0x28, 8, at(DELTA))
                .set(0x30, 4, 80),
        )?;
        expect("create delta", &c, 1)?;
        let rec_size = c.q2 as u32;
        if c.result != 1 || rec_size != 30 {
            let mut l = Line::new();
            l.s("create delta: result ")
                .dec(u64::from(c.result))
                .s(" record size ")
                .dec(u64::from(rec_size))
                .s(" (want 1, 30)");
            return Err(l);
        }
        // Expected record (docs/dsa-device-model.md §6.3): u16 offset in qwords, then 8 bytes of source 2.
        for (k, &w) in CHANGED.iter().enumerate() {
            let e = at(DELTA) + 10 * k as u64;
            let off = u16::from(rd8(e)) | (u16::from(rd8(e + 1)) << 8);
            if u64::from(off) != w {
                return Err(err_hex("delta entry offset", u64::from(off)));
            }
            if diff(e + 2, at(B) + 8 * w, 8).is_some() {
                return Err(err_hex("delta entry data differs, entry", k as u64));
            }
        }
        // Apply it to a copy of source 1: the result is source 2.
        copy(at(C), at(A), N);
        let c = d.run(
            wq,
            &Desc::new(OP_AP_DELTA, POLL, cr(10))
                .src(at(DELTA))
                .dst(at(C))
                .size(N as u32)
                .set(0x28, 4, u64::from(rec_size)),
        )?;
        expect("apply delta", &c, 1)?;
        same("apply delta", at(C), at(B), N)?;
        // Equal sources (C is now a copy of B): result 0, empty record.
        let c = d.run(
            wq,
            &Desc::new(OP_CR_DELTA, POLL, cr(11))
                .src(at(B))
                .dst(at(C))
                .size(N as u32)
                .set(0x28, 8, at(DELTA))
                .set(0x30, 4, 80),
        )?;
        expect("create delta of equal sources", &c, 1)?;
        if c.result != 0 || c.q2 as u32 != 0 {
            return Err(err_hex(
                "create delta of equal sources: result",
                u64::from(c.result),
            ));
        }
        Ok(())
    })())
}

fn case_dualcast(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_DUALCAST) {
        return not_advertised(d, OP_DUALCAST);
    }
    to_outcome((|| {
        pattern(at(A), 512, 99);
        fill_q(at(C), 512, 0);
        fill_q(at(D), 512, 0);
        // Destinations share bits 11:0 (docs/dsa-device-model.md §6.3).
        let c = d.run(
            wq_for(d, 6),
            &Desc::new(OP_DUALCAST, POLL, cr(12))
                .src(at(A))
                .dst(at(C))
                .size(512)
                .set(0x28, 8, at(D)),
        )?;
        expect("dualcast", &c, 1)?;
        same("dualcast dst1", at(A), at(C), 512)?;
        same("dualcast dst2", at(A), at(D), 512)?;
        // Mismatched low bits: 0x17.
        let c = d.run(
            wq_for(d, 6),
            &Desc::new(OP_DUALCAST, POLL, cr(13))
                .src(at(A))
                .dst(at(C))
                .size(64)
                .set(0x28, 8, at(D) + 64),
        )?;
        expect("dualcast address mismatch", &c, 0x17)
    })())
}

/// CRC-32C self-check of the reference code: "123456789" -> 0xE3069283.
fn crc_selfcheck() -> Res<()> {
    check_string(at(D));
    let v = crc32c(0, at(D), 9);
    if v != 0xE306_9283 {
        return Err(err_hex("reference CRC-32C of 123456789 =", u64::from(v)));
    }
    Ok(())
}

fn case_crc(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_CRCGEN) {
        return not_advertised(d, OP_CRCGEN);
    }
    to_outcome((|| {
        crc_selfcheck()?;
        let w = wq_for(d, 7);
        // The check string through the device.
        let c = d.run(w, &Desc::new(OP_CRCGEN, POLL, cr(14)).src(at(D)).size(9))?;
        expect("crc of 123456789", &c, 1)?;
        if c.q2 as u32 != 0xE306_9283 {
            return Err(err_hex("crc of 123456789 =", c.q2 & 0xffff_ffff));
        }
        pattern(at(A), 256, 31);
        let want = crc32c(0, at(A), 256);
        let c = d.run(w, &Desc::new(OP_CRCGEN, POLL, cr(15)).src(at(A)).size(256))?;
        expect("crc", &c, 1)?;
        if c.q2 as u32 != want {
            let mut l = Line::new();
            l.s("crc ")
                .hex(c.q2 & 0xffff_ffff)
                .s(" want ")
                .hex(u64::from(want));
            return Err(l);
        }
        // Continued: seed = CRC of the first 100 bytes (docs/dsa-device-model.md §6.3).
        let part = crc32c(0, at(A), 100);
        let c = d.run(
            w,
            &Desc::new(OP_CRCGEN, POLL, cr(16))
                .src(at(A) + 100)
                .size(156)
                .set(0x28, 4, u64::from(part)),
        )?;
        expect("crc continued", &c, 1)?;
        if c.q2 as u32 != want {
            return Err(err_hex("continued crc", c.q2 & 0xffff_ffff));
        }
        Ok(())
    })())
}

fn case_copy_crc(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_COPY_CRC) {
        return not_advertised(d, OP_COPY_CRC);
    }
    to_outcome((|| {
        crc_selfcheck()?;
        pattern(at(A), 256, 41);
        fill_q(at(C), 256, 0);
        let want = crc32c(0, at(A), 256);
        let c = d.run(
            wq_for(d, 8),
            &Desc::new(OP_COPY_CRC, POLL, cr(17))
                .src(at(A))
                .dst(at(C))
                .size(256),
        )?;
        expect("copy crc", &c, 1)?;
        if c.q2 as u32 != want {
            let mut l = Line::new();
            l.s("copy crc ")
                .hex(c.q2 & 0xffff_ffff)
                .s(" want ")
                .hex(u64::from(want));
            return Err(l);
        }
        same("copy crc data", at(A), at(C), 256)
    })())
}

/// Writes the big-endian DIF tuple (guard, app tag, ref tag) at `a`.
fn tuple(a: u64, guard: u16, app: u16, rf: u32) {
    for (i, b) in guard
        .to_be_bytes()
        .iter()
        .chain(app.to_be_bytes().iter())
        .chain(rf.to_be_bytes().iter())
        .enumerate()
    {
        wr8(a + i as u64, *b);
    }
}

fn case_dif(d: &mut Dsa) -> Outcome {
    let ops = [OP_DIF_CHECK, OP_DIF_INS, OP_DIF_STRP, OP_DIF_UPDT];
    if let Some(&op) = ops.iter().find(|&&op| !d.supports(op)) {
        return not_advertised(d, op);
    }
    to_outcome((|| {
        // Reference self-check: CRC16 T10-DIF of "123456789" is 0xD0DB.
        check_string(at(D));
        let v = crc16_t10(at(D), 9);
        if v != 0xD0DB {
            return Err(err_hex(
                "reference CRC16 T10-DIF of 123456789 =",
                u64::from(v),
            ));
        }
        // One 512-byte block (DIF flags 0: 512-byte blocks, no inversion).
        const BS: u64 = 512;
        const REF: u32 = 0x1000_0001;
        const APP: u16 = 0xab12;
        pattern(at(A), BS, 61);
        let guard = crc16_t10(at(A), BS);
        // Expected protected block at D.
        copy(at(D), at(A), BS);
        tuple(at(D) + BS, guard, APP, REF);
        let w = wq_for(d, 9);
        // INSERT: A (512) -> C (520); destination tags at 0x38/0x3C/0x3E.
        fill_q(at(C), 1024, 0);
        let c = d.run(
            w,
            &Desc::new(OP_DIF_INS, POLL, cr(18))
                .src(at(A))
                .dst(at(C))
                .size(BS as u32)
                .set(0x38, 4, u64::from(REF))
                .set(0x3c, 2, 0)
                .set(0x3e, 2, u64::from(APP)),
        )?;
        expect("dif insert", &c, 1)?;
        same("dif insert", at(D), at(C), BS + 8)?;
        // CHECK: source tags at 0x30/0x34/0x36.
        let check = |src: u64, i: u64| {
            Desc::new(OP_DIF_CHECK, POLL, cr(i))
                .src(src)
                .size(BS as u32 + 8)
                .set(0x30, 4, u64::from(REF))
                .set(0x34, 2, 0)
                .set(0x36, 2, u64::from(APP))
        };
        let c = d.run(w, &check(at(C), 19))?;
        expect("dif check", &c, 1)?;
        // A corrupted guard: DIF error 0x09 with the guard bit in the result.
        copy(at(B), at(C), BS + 8);
        wr8(at(B) + BS, rd8(at(B) + BS) ^ 0xff);
        let c = d.run(w, &check(at(B), 20))?;
        expect("dif check of a bad guard", &c, 0x09)?;
        if c.result & 1 == 0 {
            return Err(err_hex(
                "dif check of a bad guard: result",
                u64::from(c.result),
            ));
        }
        // STRIP: C (520) -> B (512).
        fill_q(at(B), 1024, 0);
        let c = d.run(
            w,
            &Desc::new(OP_DIF_STRP, POLL, cr(21))
                .src(at(C))
                .dst(at(B))
                .size(BS as u32 + 8)
                .set(0x30, 4, u64::from(REF))
                .set(0x34, 2, 0)
                .set(0x36, 2, u64::from(APP)),
        )?;
        expect("dif strip", &c, 1)?;
        same("dif strip", at(A), at(B), BS)?;
        // UPDATE: C (520) -> B (520) with new tags.
        const REF2: u32 = 0x2000_0002;
        const APP2: u16 = 0x3c4d;
        fill_q(at(B), 1024, 0);
        let c = d.run(
            w,
            &Desc::new(OP_DIF_UPDT, POLL, cr(22))
                .src(at(C))
                .dst(at(B))
                .size(BS as u32 + 8)
                .set(0x30, 4, u64::from(REF))
                .set(0x34, 2, 0)
                .set(0x36, 2, u64::from(APP))
                .set(0x38, 4, u64::from(REF2))
                .set(0x3c, 2, 0)
                .set(0x3e, 2, u64::from(APP2)),
        )?;
        expect("dif update", &c, 1)?;
        tuple(at(D) + BS, guard, APP2, REF2);
        same("dif update", at(D), at(B), BS + 8)
    })())
}

fn case_cflush(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_CFLUSH) {
        return not_advertised(d, OP_CFLUSH);
    }
    to_outcome((|| {
        pattern(at(A), 4096, 3);
        copy(at(B), at(A), 4096);
        let c = d.run(
            wq_for(d, 10),
            &Desc::new(OP_CFLUSH, POLL, cr(23)).dst(at(A)).size(4096),
        )?;
        expect("cache flush", &c, 1)?;
        same("cache flush left the data", at(A), at(B), 4096)
    })())
}

/// Writes batch member `i`.
fn member(i: u64, desc: &Desc) {
    for (k, q) in desc.q.iter().enumerate() {
        wr64(at(LIST) + 64 * i + 8 * k as u64, *q);
    }
}

fn case_batch(d: &mut Dsa) -> Outcome {
    if !d.supports(OP_BATCH) {
        return not_advertised(d, OP_BATCH);
    }
    to_outcome((|| {
        pattern(at(A), 1024, 17);
        fill_q(at(C), 1024, 0);
        let mut count = 0u64;
        let mut add = |desc: Desc| {
            member(count, &desc);
            clear_cr(desc.q[1]);
            count += 1;
        };
        add(Desc::new(OP_NOP, POLL, cr(30)));
        add(Desc::new(OP_MEMMOVE, POLL, cr(31))
            .src(at(A))
            .dst(at(C))
            .size(512));
        let fill = d.supports(OP_FILL);
        if fill {
            add(Desc::new(OP_FILL, POLL, cr(32))
                .src(0x5a5a_5a5a_5a5a_5a5a)
                .dst(at(C) + 512)
                .size(512));
        }
        add(Desc::new(OP_MEMMOVE, POLL, cr(33))
            .src(at(A) + 512)
            .dst(at(B))
            .size(256));
        let w = wq_for(d, 11);
        let c = d.run(
            w,
            &Desc::new(OP_BATCH, POLL, cr(29))
                .src(at(LIST))
                .size(count as u32),
        )?;
        expect("batch", &c, 1)?;
        if u64::from(c.bytes) != count {
            let mut l = Line::new();
            l.s("batch: ")
                .dec(u64::from(c.bytes))
                .s(" descriptors completed, want ")
                .dec(count);
            return Err(l);
        }
        for i in 0..count {
            let m = read_cr(cr(30 + i + u64::from(!fill && i >= 2)));
            expect("batch member", &m, 1)?;
        }
        same("batch memmove", at(A), at(C), 512)?;
        same("batch memmove 2", at(A) + 512, at(B), 256)?;
        if fill {
            for i in 0..512 {
                if rd8(at(C) + 512 + i) != 0x5a {
                    return Err(data_fail("batch fill", i));
                }
            }
        }
        // A member with an undefined opcode: that member 0x10, the batch 0x05.
        member(0, &Desc::new(OP_NOP, POLL, cr(30)));
        member(1, &Desc::new(OP_UNDEFINED, POLL, cr(31)));
        clear_cr(cr(30));
        clear_cr(cr(31));
        let c = d.run(w, &Desc::new(OP_BATCH, POLL, cr(29)).src(at(LIST)).size(2))?;
        expect("batch with a bad member", &c, 0x05)?;
        expect("bad batch member", &read_cr(cr(31)), 0x10)?;
        // A batch of one: count out of range 0x14; a misaligned list: 0x18.
        let c = d.run(w, &Desc::new(OP_BATCH, POLL, cr(29)).src(at(LIST)).size(1))?;
        expect("batch of one", &c, 0x14)?;
        let c = d.run(
            w,
            &Desc::new(OP_BATCH, POLL, cr(29)).src(at(LIST) + 8).size(2),
        )?;
        expect("misaligned batch list", &c, 0x18)
    })())
}

/// Completions by interrupt on every WQ (vector wq + 1, trap 7), the record
/// visible when the handler has run, MSI-X masking with the PBA.
fn case_interrupt(d: &mut Dsa) -> Outcome {
    to_outcome((|| {
        let v0 = crate::idt::irq_count(d.vector(0));
        pattern(at(A), 4096, 23);
        for w in 0..d.num_wqs {
            let e = w as u16 + 1;
            let vec = d.vector(e);
            let before = crate::idt::irq_count(vec);
            let crp = cr(40 + u64::from(w));
            clear_cr(crp);
            fill_q(at(B), 4096, 0);
            let op = if d.supports(OP_MEMMOVE) {
                OP_MEMMOVE
            } else {
                OP_NOP
            };
            d.submit(
                w,
                &Desc::new(op, POLL | F_RCI, crp)
                    .src(at(A))
                    .dst(at(B))
                    .size(4096)
                    .handle(e),
            );
            if !wait_irq(vec, before, 500) {
                return Err(err_hex("no completion interrupt for WQ", u64::from(w)));
            }
            // No polling: the record must already be there (trap 7).
            let c = read_cr(crp);
            expect("interrupt completion record", &c, 1)?;
            if op == OP_MEMMOVE {
                same("memmove by interrupt", at(A), at(B), 4096)?;
            }
        }
        if crate::idt::irq_count(d.vector(0)) != v0 {
            return Err(err("descriptor completion fired the misc vector 0"));
        }
        Ok(())
    })())
}

/// A completion on a masked MSI-X entry: no interrupt, the PBA bit set; unmask delivers it
/// and clears the bit. The entry is unmasked again whatever happens, so that a failure here
/// does not fail the cases after it.
fn case_interrupt_masked(d: &mut Dsa) -> Outcome {
    let vec = d.vector(1);
    d.unmask(1, false);
    let before = crate::idt::irq_count(vec);
    let checked = (|| {
        let crp = cr(50);
        clear_cr(crp);
        d.submit(0, &Desc::new(OP_NOP, POLL | F_RCI, crp).handle(1));
        let c = poll_cr(crp, 500).ok_or_else(|| err("masked: no completion record"))?;
        expect("masked completion", &c, 1)?;
        if wait_irq(vec, before, 20) {
            return Err(err("interrupt delivered while the MSI-X entry was masked"));
        }
        if !d.pending(1) {
            return Err(err("PBA bit not set for the masked entry"));
        }
        Ok(())
    })();
    d.unmask(1, true);
    to_outcome(checked.and_then(|()| {
        if !wait_irq(vec, before, 500) {
            return Err(err("pending interrupt not delivered on unmask"));
        }
        if d.pending(1) {
            return Err(err("PBA bit still set after delivery"));
        }
        Ok(())
    }))
}

/// DRAIN_WQ, DRAIN_ALL, ABORT_WQ, ABORT_ALL (section 4.2/4.4).
fn case_drain_abort(d: &mut Dsa) -> Outcome {
    to_outcome((|| {
        // Several descriptors with interrupts, then DRAIN_WQ: all records are there after it.
        let w = 0;
        let vec = d.vector(1);
        let before = crate::idt::irq_count(vec);
        pattern(at(A), 2048, 47);
        fill_q(at(B), 2048, 0);
        for k in 0..4u64 {
            clear_cr(cr(60 + k));
            d.submit(
                w,
                &Desc::new(OP_MEMMOVE, POLL | F_RCI, cr(60 + k))
                    .src(at(A) + 512 * k)
                    .dst(at(B) + 512 * k)
                    .size(512)
                    .handle(1),
            );
        }
        d.cmd_ok(CMD_DRAIN_WQ, wq_set(1 << w), &[0])?;
        for k in 0..4u64 {
            expect("record after DRAIN_WQ", &read_cr(cr(60 + k)), 1)?;
        }
        same("copies drained", at(A), at(B), 2048)?;
        if !wait_irq(vec, before, 500) {
            return Err(err("no completion interrupt for the drained descriptors"));
        }
        let all = (1u32 << d.num_wqs) - 1;
        d.cmd_ok(CMD_DRAIN_WQ, wq_set(all), &[0])?;
        d.cmd_ok(CMD_DRAIN_ALL, 0, &[0])?;
        // ABORT_WQ / ABORT_ALL: nothing in flight; the WQs stay enabled and usable.
        d.cmd_ok(CMD_ABORT_WQ, wq_set(all), &[0])?;
        d.cmd_ok(CMD_ABORT_ALL, 0, &[0])?;
        for q in 0..d.num_wqs {
            if d.wqcfg_dword(q, 6) >> 30 != 1 {
                return Err(err_hex("WQ disabled by an abort:", u64::from(q)));
            }
        }
        let c = d.run(
            w,
            &Desc::new(OP_MEMMOVE, POLL, cr(64))
                .src(at(A))
                .dst(at(C))
                .size(1024),
        )?;
        expect("memmove after abort", &c, 1)?;
        same("memmove after abort", at(A), at(C), 1024)?;
        // A WQ index beyond num_wqs: 0x02 (section 4.4).
        if d.num_wqs < 16 {
            let s = d.cmd(CMD_DRAIN_WQ, 1 << d.num_wqs)?;
            if s & 0xff != 0x02 {
                return Err(err_hex("DRAIN_WQ of a missing WQ: CMDSTS", u64::from(s)));
            }
        }
        Ok(())
    })())
}

/// Error descriptors: bad address (page fault), bad sizes, unsupported
/// opcodes, a misaligned completion record and CRAV = 0 (SWERR).
fn case_errors(d: &mut Dsa) -> Outcome {
    to_outcome((|| {
        let w = wq_for(d, 1);
        // Bad source: page fault 0x03 with the fault address (or 0x20/0x22, docs/dsa-device-model.md §10.2 and §13).
        let c = d.run(
            w,
            &Desc::new(OP_MEMMOVE, POLL, cr(70))
                .src(BAD_ADDR)
                .dst(at(C))
                .size(64),
        )?;
        let code = c.status & 0x7f;
        if !matches!(code, 0x03 | 0x20 | 0x22) || (code == 0x03 && c.status & 0x80 != 0) {
            return Err(err_hex(
                "memmove from a bad address: status",
                u64::from(c.status),
            ));
        }
        if code == 0x03 && c.fault != BAD_ADDR {
            return Err(err_hex("page fault: fault address", c.fault));
        }
        let read_status = c.status;
        // Bad destination: a write fault (bit 7) when reported as a page fault.
        let c = d.run(
            w,
            &Desc::new(OP_MEMMOVE, POLL, cr(71))
                .src(at(A))
                .dst(BAD_ADDR + 64)
                .size(64),
        )?;
        let code = c.status & 0x7f;
        if !matches!(code, 0x03 | 0x20 | 0x22) || (code == 0x03 && c.status & 0x80 == 0) {
            return Err(err_hex(
                "memmove to a bad address: status",
                u64::from(c.status),
            ));
        }
        // Sizes: 0 and max + 1 -> 0x13.
        for (i, n) in [(72u64, 0u64), (73, d.max_xfer() + 1)] {
            let c = d.run(
                w,
                &Desc::new(OP_MEMMOVE, POLL, cr(i))
                    .src(at(A))
                    .dst(at(B))
                    .size(n as u32),
            )?;
            expect("memmove with a bad size", &c, 0x13)?;
        }
        // Unsupported opcodes -> 0x10.
        for (i, op) in [(74u64, OP_UNDEFINED), (75, 0x3f)] {
            let c = d.run(w, &Desc::new(op, POLL, cr(i)))?;
            expect("undefined opcode", &c, 0x10)?;
        }
        // Completion interrupts from an IMS portal page (no IMS here) or with a handle beyond
        // the MSI-X table: 0x19 "invalid interrupt handle" (section 5).
        let c = d.run_page(
            w,
            2,
            &Desc::new(OP_NOP, POLL | F_RCI, cr(77)).handle(w as u16 + 1),
        )?;
        expect("RCI through an IMS portal page", &c, 0x19)?;
        let c = d.run(
            w,
            &Desc::new(OP_NOP, POLL | F_RCI, cr(78)).handle(d.msix_entries),
        )?;
        expect("interrupt handle beyond the MSI-X table", &c, 0x19)?;
        // A misaligned completion record: SWERR 0x1B (section 10.1).
        let v0 = crate::idt::irq_count(d.vector(0));
        d.submit(w, &Desc::new(OP_NOP, POLL, cr(76) + 8));
        let q0 = d.take_swerr(v0)?;
        if (q0 >> 8) & 0xff != 0x1b {
            return Err(err_hex("misaligned record: SWERR", q0));
        }
        // CRAV = 0 and an error: SWERR with the status as the error code.
        let v0 = crate::idt::irq_count(d.vector(0));
        d.submit(
            w,
            &Desc::new(OP_MEMMOVE, 0, 0).src(at(A)).dst(at(B)).size(0),
        );
        let q0 = d.take_swerr(v0)?;
        if (q0 >> 8) & 0xff != 0x13 || (q0 >> 32) & 0xff != u64::from(OP_MEMMOVE) {
            return Err(err_hex("error without a record: SWERR", q0));
        }
        if (q0 >> 3) & 1 == 1 && (q0 >> 16) & 0xff != u64::from(w) {
            return Err(err_hex("SWERR wq index", q0));
        }
        info(|l| {
            l.s("dsa")
                .dec(d.index as u64)
                .s(" errors: bad address status ")
                .hex(u64::from(read_status))
                .s(", bad size 0x13, undefined opcode 0x10, swerr 0x1b/0x13");
        });
        Ok(())
    })())
}

/// Every online CPU copies through the device at the same time.
fn case_smp(d: &mut Dsa) -> (Outcome, u64) {
    let mut aps = 0usize;
    crate::smp::for_each_online_index(|i| {
        if i != 0 {
            aps += 1;
        }
    });
    if aps == 0 || !d.supports(OP_MEMMOVE) {
        let why = if aps == 0 {
            "1 vCPU"
        } else {
            "MEMMOVE not advertised"
        };
        return (skip(why), 0);
    }
    AP_BAR2.store(d.bar2, Ordering::Release);
    AP_WQS.store(u64::from(d.num_wqs), Ordering::Release);
    for r in AP_RESULT.iter() {
        r.store(0, Ordering::Relaxed);
    }
    let t0 = rdtsc();
    let done = crate::smp::run_on_aps(2000, || ap_work(0));
    let t1 = rdtsc();
    let mut bad: Option<Line> = None;
    let mut total = 0u64;
    let mut check = |i: usize| {
        let v = AP_RESULT.get(i).map_or(0, |r| r.load(Ordering::Acquire));
        total += v & 0xffff_ffff;
        if (v & 0xffff_ffff != AP_ROUNDS || v >> 32 != 0) && bad.is_none() {
            let mut l = Line::new();
            l.s("CPU index ")
                .dec(i as u64)
                .s(": ")
                .dec(v & 0xffff_ffff)
                .s(" copies ok, failure code ")
                .hex(v >> 32);
            bad = Some(l);
        }
    };
    check(0);
    crate::smp::for_each_online_index(|i| {
        if i != 0 {
            check(i);
        }
    });
    info(|l| {
        l.s("dsa")
            .dec(d.index as u64)
            .s(" smp: cpus=")
            .dec(aps as u64 + 1)
            .s(" aps_done=")
            .dec(done as u64)
            .s(" copies=")
            .dec(total)
            .s(" in ")
            .dec(crate::time::us_between(t0, t1))
            .s("us");
    });
    d.descriptors += AP_ROUNDS; // the BSP's share
    let ap_desc = total.saturating_sub(AP_ROUNDS);
    if done != aps {
        let mut l = Line::new();
        l.dec(done as u64)
            .s(" of ")
            .dec(aps as u64)
            .s(" APs finished");
        return (fail_l(l), ap_desc);
    }
    match bad {
        Some(l) => (fail_l(l), ap_desc),
        None => (Outcome::Ok, ap_desc),
    }
}

/// disable-wq, a descriptor to a disabled WQ (SWERR), disable-device,
/// RESET_DEVICE (registers back to reset values), priority 0 rejected, then
/// configure, enable and copy again.
fn case_reset_cycle(d: &mut Dsa, evl: u64) -> Outcome {
    to_outcome((|| {
        let all = (1u32 << d.num_wqs) - 1;
        // disable-wq (section 4.8): DRAIN_WQ, mask the vector, MSIX_PERM = 0, RESET_WQ.
        d.cmd_ok(CMD_DRAIN_WQ, wq_set(1), &[0])?;
        d.unmask(1, false);
        if d.msix_perm != 0 {
            d.w32(d.msix_perm + 8, 0);
        }
        d.cmd_ok(CMD_RESET_WQ, wq_set(1), &[0])?;
        if d.wqcfg_dword(0, 6) >> 30 != 0 {
            return Err(err("WQ 0 still enabled after RESET_WQ"));
        }
        if d.num_wqs > 1 {
            d.cmd_ok(CMD_DISABLE_WQ, wq_set(all & !1), &[0])?;
        }
        // DISABLE_WQ of a disabled WQ: 0x32.
        let s = d.cmd(CMD_DISABLE_WQ, wq_set(1))?;
        if s & 0xff != 0x32 {
            return Err(err_hex("DISABLE_WQ of a disabled WQ: CMDSTS", u64::from(s)));
        }
        // A descriptor to the disabled WQ: dropped, reported in SWERR with the WQ index.
        let v0 = crate::idt::irq_count(d.vector(0));
        clear_cr(cr(80));
        d.submit(0, &Desc::new(OP_NOP, POLL, cr(80)));
        let q0 = d.take_swerr(v0)?;
        if q0 & (1 << 3) == 0 || (q0 >> 16) & 0xff != 0 || (q0 >> 32) & 0xff != 0 {
            return Err(err_hex("descriptor to a disabled WQ: SWERR", q0));
        }
        if rd64(cr(80)) as u8 != 0 {
            return Err(err("descriptor to a disabled WQ wrote a completion record"));
        }
        // disable-device: DISABLE_DEVICE, RESET_DEVICE, GENCTRL |= 3.
        d.cmd_ok(CMD_DISABLE_DEVICE, 0, &[0])?;
        if d.r32(GENSTS) & 3 != 0 {
            return Err(err("GENSTS not disabled after DISABLE_DEVICE"));
        }
        let s = d.cmd(CMD_DISABLE_DEVICE, 0)?;
        if s & 0xff != 0x31 {
            return Err(err_hex(
                "DISABLE_DEVICE when disabled: CMDSTS",
                u64::from(s),
            ));
        }
        d.cmd_ok(CMD_RESET_DEVICE, 0, &[0])?;
        // Section 2.19: GENCTRL, GENCFG, WQCFG and GRPCFG cleared.
        if d.r32(GENCTRL) != 0 || d.r32(GENCFG) != 0 {
            return Err(err("GENCTRL/GENCFG not cleared by RESET_DEVICE"));
        }
        if d.wqcfg_dword(0, 0) != 0 || d.wqcfg_dword(0, 2) != 0 {
            return Err(err("WQCFG not cleared by RESET_DEVICE"));
        }
        if d.r64(d.grpcfg) != 0 || d.r64(d.grpcfg + 0x20) != 0 {
            return Err(err("GRPCFG not cleared by RESET_DEVICE"));
        }
        d.w32(GENCTRL, d.r32(GENCTRL) | 0x3);
        // evl_free (trap 1): GENCFG without evl_en, GENCTRL bit 2 off, EVLCFG zero.
        d.w32(GENCFG, d.r32(GENCFG) & !0x2000);
        d.w32(GENCTRL, d.r32(GENCTRL) & !0x4);
        d.w64(EVLCFG, 0);
        d.w64(EVLCFG + 8, 0);
        // Re-enable. First WQ 0 with priority 0: ENABLE_WQ 0x23 (trap 12).
        d.enable_device(evl)?;
        let prio_reg = d.wqcfg + 8;
        d.w32(prio_reg, d.r32(prio_reg) & !0xf0);
        let s = d.cmd(CMD_ENABLE_WQ, 0)?;
        if s & 0xff != 0x23 {
            return Err(err_hex("ENABLE_WQ with priority 0: CMDSTS", u64::from(s)));
        }
        for w in 0..d.num_wqs {
            d.enable_wq(w)?;
        }
        pattern(at(A), 4096, 101);
        fill_q(at(B), 4096, 0);
        let op = if d.supports(OP_MEMMOVE) {
            OP_MEMMOVE
        } else {
            OP_NOP
        };
        let c = d.run(
            0,
            &Desc::new(op, POLL, cr(81)).src(at(A)).dst(at(B)).size(4096),
        )?;
        expect("copy after re-enable", &c, 1)?;
        if op == OP_MEMMOVE {
            same("copy after re-enable", at(A), at(B), 4096)?;
        }
        Ok(())
    })())
}

/// MEMMOVE throughput at 64 B, 4 KiB and 64 KiB (polled, WQ 0), and the cost
/// of one BAR0 register read.
fn case_throughput(d: &mut Dsa, sum: &mut Summary) -> Outcome {
    if !d.supports(OP_MEMMOVE) {
        return not_advertised(d, OP_MEMMOVE);
    }
    to_outcome((|| {
        // Source: a 4 KiB pattern repeated to 64 KiB.
        pattern(at(SRC), 4096, 7);
        for k in 1..16 {
            copy(at(SRC) + 4096 * k, at(SRC), 4096);
        }
        wr64(at(SRC) + 0xfff8, 0x0bad_cafe);
        let t0 = rdtsc();
        for _ in 0..32 {
            let _ = d.r32(GENSTS);
        }
        sum.mmio_ticks = (rdtsc() - t0) / 32;
        // The bare exit round trip: port writes to 0x80 (POST code, no device behind it).
        let t0 = rdtsc();
        for _ in 0..32 {
            crate::cpu::outb(0x80, 0);
        }
        sum.exit_ticks = (rdtsc() - t0) / 32;
        sum.irq_lat = irq_latency(d, true)?;
        sum.irq_lat_if0 = irq_latency(d, false)?;
        for (slot, (size, count)) in [(64u64, 32u64), (4096, 16), (65536, 4)]
            .into_iter()
            .enumerate()
        {
            fill_q(at(DST), size, 0);
            let crp = cr(90);
            // One descriptor, one portal slot; per copy only the status qword is cleared.
            let desc = Desc::new(OP_MEMMOVE, POLL, crp)
                .src(at(SRC))
                .dst(at(DST))
                .size(size as u32);
            let portal = d.next_portal(0);
            let t0 = rdtsc();
            for _ in 0..count {
                wr64(crp, 0);
                movdir64b(portal, &desc);
                let mut spins = 0u32;
                while rd64(crp) as u8 == 0 {
                    spins += 1;
                    if spins > 1_000_000 {
                        return Err(err("throughput: no completion record"));
                    }
                    core::hint::spin_loop();
                }
                if rd64(crp) as u8 != 1 {
                    return Err(err_hex("throughput memmove: status", rd64(crp) & 0xff));
                }
            }
            let ticks = rdtsc() - t0;
            d.descriptors += count;
            same("throughput memmove", at(SRC), at(DST), size)?;
            if let Some(r) = sum.rates.get_mut(slot) {
                *r = Rate { size, count, ticks };
            }
        }
        Ok(())
    })())
}

/// Interrupt latency samples.
const LAT_SAMPLES: usize = 64;

/// NOPs with RCI on WQ 0: TSC before the MOVDIR64B to the TSC the handler
/// stored; returns (median, p99, max) in TSC ticks. With `if_on` the
/// descriptor is submitted with interrupts enabled (as a Linux driver does),
/// else with IF = 0 and interrupts enabled right after.
fn irq_latency(d: &mut Dsa, if_on: bool) -> Res<[u64; 3]> {
    let mut buf = [0u64; LAT_SAMPLES];
    // IF = 0 costs about 1 ms per sample here: fewer samples.
    let n = if if_on { LAT_SAMPLES } else { LAT_SAMPLES / 4 };
    let lat = buf.get_mut(..n).unwrap_or(&mut []);
    let vec = d.vector(1);
    let crp = cr(91);
    for l in lat.iter_mut() {
        clear_cr(crp);
        let before = crate::idt::irq_count(vec);
        let desc = Desc::new(OP_NOP, POLL | F_RCI, crp).handle(1);
        if if_on {
            crate::cpu::sti();
        } else {
            crate::cpu::cli();
        }
        let t0 = rdtsc();
        d.submit(0, &desc);
        if !wait_irq(vec, before, 500) {
            return Err(err("latency: no completion interrupt"));
        }
        *l = crate::idt::irq_tsc(vec).saturating_sub(t0);
    }
    lat.sort_unstable();
    let pick = |q: usize| {
        lat.get((n * q / 100).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    crate::cpu::sti();
    Ok([pick(50), pick(99), lat.last().copied().unwrap_or(0)])
}

/// Final teardown as `accel-config disable-wq` / `disable-device` do.
fn case_disable(d: &mut Dsa) -> Outcome {
    to_outcome((|| {
        let all = (1u32 << d.num_wqs) - 1;
        d.cmd_ok(CMD_DRAIN_WQ, wq_set(all), &[0])?;
        for w in 0..d.num_wqs {
            d.unmask(w as u16 + 1, false);
        }
        d.cmd_ok(CMD_RESET_WQ, wq_set(all), &[0])?;
        d.cmd_ok(CMD_DISABLE_DEVICE, 0, &[0])?;
        d.cmd_ok(CMD_RESET_DEVICE, 0, &[0])?;
        d.w32(GENCTRL, d.r32(GENCTRL) | 0x3);
        if d.r32(GENSTS) & 3 != 0 {
            return Err(err("device not disabled"));
        }
        // Nothing left pending on any vector.
        for e in 0..=d.num_wqs as u16 {
            if d.pending(e) {
                return Err(err_hex("MSI-X PBA bit left set for entry", u64::from(e)));
            }
        }
        Ok(())
    })())
}
