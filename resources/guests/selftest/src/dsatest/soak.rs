//! Soak mode (`selftest.soak=N`, a benchmark: `vmm/benches/soak`): after the boot checks and SMP
//! bring-up, every DSA is probed and enabled as in the DSA cases, then every online CPU (the BSP
//! and each AP) submits its share of N small descriptors round-robin over every WQ of every DSA
//! and checks each completion record and its data. The mix repeats every 8 descriptors: MEMMOVE
//! 64 B (two sources, each the bitwise complement of the other), FILL 64 B (two complementary
//! patterns), COMPARE equal, COMPARE with one byte different, and NOP; every 13th descriptor
//! also requests a completion interrupt (MSI-X entry `wq + 1`, delivered to the BSP). One
//! descriptor is in flight per CPU; a CPU stops at its first wrong completion.
//!
//! Prints `selftest: info soak start ...` and idles `selftest.soak_hold_ms` (default 0); right
//! after the last descriptor reports `selftest: soak: ok descriptors=N per_vcpu=a,b,.. rci=R
//! irqs=I seconds=S` or `selftest: soak: FAIL <first failure>`, idles again when it passed (so a
//! host can sample the VMM before the first descriptor and after the last one, the VM still
//! running), then disables every device (`soak_disable`).

use core::sync::atomic::{AtomicU64, Ordering};

use super::{
    at, bring_up, case_disable, enumerate, fill_q, Bus0, DeviceAt, EVL, OP_COMPARE, OP_FILL,
    OP_MEMMOVE, OP_NOP, PER_CPU, POLL,
};
use crate::acpi::AcpiInfo;
use crate::bootinfo::BootInfo;
use crate::cpu::rdtsc;
use crate::dsa::{
    err, movdir64b, movdir64b_faults, poll_cr, rd64, wr64, Desc, Dsa, Res, F_RCI, MAX_DEVICES,
};
use crate::entry::MAX_CPUS;
use crate::fmt::Line;
use crate::smp::{self, Job};
use crate::tests::{info, num_key, Outcome, Runner};
use crate::time::{us_between, Deadline};

/// Most WQs a soak rotates over (8 per device, the driver's limit).
const MAX_SLOTS: usize = MAX_DEVICES * 8;
/// Portal page 1 (limited MSI-X) of every WQ, with its MSI-X entry (`wq + 1`) in bits 0..4.
static SLOTS: [AtomicU64; MAX_SLOTS] = [const { AtomicU64::new(0) }; MAX_SLOTS];
/// Valid entries of [`SLOTS`].
static SLOT_COUNT: AtomicU64 = AtomicU64::new(0);
/// Descriptors each CPU index submits.
static SHARE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Descriptors each CPU index verified.
static DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Descriptors with a completion interrupt request each CPU index submitted.
static RCI: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// First failure of each CPU index, [`Failure::pack`]ed (0: none).
static FAILURE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Descriptors of one repetition of the mix.
const MIX: usize = 8;
/// Every `RCI_EVERY`th descriptor requests a completion interrupt (coprime with [`MIX`]).
const RCI_EVERY: u32 = 13;
/// Byte at which the two COMPARE inputs of the "different" case differ.
const DIFF_AT: u64 = 37;
/// How long a CPU waits for one completion record.
const COMPLETION_MS: u64 = 1000;
/// How long the BSP waits for the APs after its own share.
const AP_WAIT_MS: u64 = 120_000;

// Per-CPU area (4 KiB at `PER_CPU + 0x1000 * index`, as the `smp` case uses it).
const CR: u64 = 0x000;
const COPY_A: u64 = 0x100;
const COPY_B: u64 = 0x140;
const COPY_DST: u64 = 0x180;
const FILL_DST: u64 = 0x1c0;
const FILL_REF0: u64 = 0x200;
const FILL_REF1: u64 = 0x240;
const CMP_X: u64 = 0x280;
const CMP_X2: u64 = 0x2c0;
const CMP_Y: u64 = 0x300;
/// Fill pattern of the first FILL of the mix; the second uses its complement.
const FILL_PATTERN: u64 = 0x5a3c_96f0_0f69_c3a5;

/// What went wrong with one descriptor.
#[derive(Clone, Copy)]
struct Failure {
    /// 1 no completion record, 2 status not success, 3 wrong result, 4 wrong data, 5 #UD.
    kind: u8,
    /// Opcode.
    op: u8,
    /// Completion record qword 0 (status, result, bytes completed).
    q0: u64,
    /// Descriptor number within the CPU's share.
    k: u64,
}

impl Failure {
    fn pack(self) -> u64 {
        u64::from(self.kind)
            | (u64::from(self.op) << 8)
            | ((self.q0 & 0xffff) << 16)
            | ((self.k & 0xffff_ffff) << 32)
    }

    fn unpack(v: u64) -> Failure {
        Failure {
            kind: v as u8,
            op: (v >> 8) as u8,
            q0: (v >> 16) & 0xffff,
            k: v >> 32,
        }
    }

    fn describe(self, cpu: usize, l: &mut Line) {
        l.s("CPU index ")
            .dec(cpu as u64)
            .s(" descriptor ")
            .dec(self.k)
            .s(" opcode ")
            .hex(u64::from(self.op))
            .s(": ")
            .s(match self.kind {
                1 => "no completion record",
                2 => "status not success",
                3 => "wrong result",
                4 => "wrong data",
                _ => "MOVDIR64B raised #UD",
            })
            .s(" (status ")
            .hex(self.q0 & 0xff)
            .s(" result ")
            .hex(self.q0 >> 8)
            .s(")");
    }
}

/// One descriptor of the mix and what its completion must show.
#[derive(Clone, Copy)]
struct Step {
    /// The descriptor (completion record at the CPU's `CR`).
    desc: Desc,
    /// Completion record qword 0 under [`STATUS_RESULT`] (or [`STATUS_RESULT_BYTES`] where
    /// the bytes field is defined): status 1 (success) and the result.
    want: u64,
    /// Which bits of qword 0 are checked.
    mask: u64,
    /// (written, reference): 64-byte ranges that must be equal afterwards.
    data: Option<(u64, u64)>,
}

/// Status and result bytes of completion record qword 0.
const STATUS_RESULT: u64 = 0xffff;
/// Status, result and "bytes completed" (COMPARE: offset of the first difference).
const STATUS_RESULT_BYTES: u64 = 0xffff_ffff_0000_ffff;

/// The steps of one repetition of the mix for the CPU area at `base`.
fn mix(base: u64) -> [Step; MIX] {
    let a = |off: u64| base + off;
    let cr = a(CR);
    let step = |desc: Desc, data: Option<(u64, u64)>| Step {
        desc,
        want: 1,
        mask: STATUS_RESULT,
        data,
    };
    let memmove = |src: u64| {
        let d = Desc::new(OP_MEMMOVE, POLL, cr).src(src).dst(a(COPY_DST));
        step(d.size(64), Some((a(COPY_DST), src)))
    };
    let fill = |p: u64, reference: u64| {
        let d = Desc::new(OP_FILL, POLL, cr).src(p).dst(a(FILL_DST));
        step(d.size(64), Some((a(FILL_DST), reference)))
    };
    let compare = |y: u64| {
        let d = Desc::new(OP_COMPARE, POLL, cr).src(a(CMP_X)).dst(y);
        step(d.size(64), None)
    };
    let nop = step(Desc::new(OP_NOP, POLL, cr), None);
    let different = Step {
        want: 1 | (1 << 8) | (DIFF_AT << 32),
        mask: STATUS_RESULT_BYTES,
        ..compare(a(CMP_Y))
    };
    [
        memmove(a(COPY_A)),
        fill(FILL_PATTERN, a(FILL_REF0)),
        compare(a(CMP_X2)),
        nop,
        memmove(a(COPY_B)),
        different,
        fill(!FILL_PATTERN, a(FILL_REF1)),
        nop,
    ]
}

/// Writes the sources and references of the CPU area at `base`.
fn prepare(base: u64) {
    let a = |off: u64| base + off;
    super::pattern(a(COPY_A), 64, 0x50a4 ^ base);
    for i in 0..8 {
        wr64(a(COPY_B) + 8 * i, !rd64(a(COPY_A) + 8 * i));
    }
    fill_q(a(FILL_REF0), 64, FILL_PATTERN);
    fill_q(a(FILL_REF1), 64, !FILL_PATTERN);
    fill_q(a(COPY_DST), 64, 0);
    fill_q(a(FILL_DST), 64, 0);
    super::pattern(a(CMP_X), 64, 0x7e57 ^ base);
    super::copy(a(CMP_X2), a(CMP_X), 64);
    super::copy(a(CMP_Y), a(CMP_X), 64);
    super::wr8(a(CMP_Y) + DIFF_AT, super::rd8(a(CMP_X) + DIFF_AT) ^ 0x81);
}

/// Submits and checks the share of CPU `index` (the BSP is 0); runs on every online CPU.
pub fn work(index: usize) {
    let (Some(share), Some(done), Some(rci), Some(failure)) = (
        SHARE.get(index),
        DONE.get(index),
        RCI.get(index),
        FAILURE.get(index),
    ) else {
        return;
    };
    let share = share.load(Ordering::Acquire);
    let slots = (SLOT_COUNT.load(Ordering::Acquire) as usize).min(MAX_SLOTS);
    if slots == 0 {
        return;
    }
    let base = at(PER_CPU + 0x1000 * index as u64);
    prepare(base);
    let steps = mix(base);
    let crp = base + CR;
    let ud = movdir64b_faults();
    let (mut ok, mut irq_requests) = (0u64, 0u64);
    let mut bad = None;
    // The loop is lean on purpose: every guest instruction is emulated here (about 1 us).
    let mut slot_index = index % slots;
    let mut until_irq = RCI_EVERY;
    for k in 0..share {
        let slot = SLOTS
            .get(slot_index)
            .map_or(0, |s| s.load(Ordering::Relaxed));
        slot_index = if slot_index + 1 == slots {
            0
        } else {
            slot_index + 1
        };
        let Some(step) = steps.get(k as usize % MIX) else {
            break;
        };
        until_irq -= 1;
        let with_irq;
        let desc = if until_irq == 0 {
            until_irq = RCI_EVERY;
            irq_requests += 1;
            let mut d = step.desc;
            d.q[0] |= u64::from(F_RCI) << 32;
            with_irq = d.handle((slot & 0xf) as u16);
            &with_irq
        } else {
            &step.desc
        };
        // Each CPU its own run of 64-byte portal slots (any offset is a portal, section 1.4).
        let portal = (slot & !0xfff) + ((k.wrapping_add(16 * index as u64) & 63) << 6);
        wr64(crp, 0);
        movdir64b(portal, desc);
        // The software device completes within the MOVDIR64B: poll only when it has not.
        let mut q0 = rd64(crp);
        if q0 as u8 == 0 && poll_cr(crp, COMPLETION_MS).is_some() {
            q0 = rd64(crp);
        }
        let kind = if q0 & step.mask != step.want {
            match q0 as u8 {
                0 if raised_ud(ud) => 5,
                0 => 1,
                1 => 3,
                _ => 2,
            }
        } else if step.data.is_some_and(|(w, r)| !same64(w, r)) {
            4
        } else {
            ok += 1;
            continue;
        };
        let op = (desc.q[0] >> 56) as u8;
        bad = Some(Failure { kind, op, q0, k });
        break;
    }
    done.store(ok, Ordering::Release);
    rci.store(irq_requests, Ordering::Release);
    failure.store(bad.map_or(0, Failure::pack), Ordering::Release);
}

/// Whether the 64 bytes at `a` and `b` are equal: one `repe cmpsq` (each iteration costs about
/// an emulated instruction here, so qwords are 8 times cheaper than `diff`'s bytes).
fn same64(a: u64, b: u64) -> bool {
    let ne: u8;
    // SAFETY: both ranges are readable memory in the DMA area; DF is clear.
    unsafe {
        core::arch::asm!("repe cmpsq", "setne {ne}", inout("rcx") 8u64 => _,
            inout("rsi") a => _, inout("rdi") b => _, ne = out(reg_byte) ne,
            options(nostack, readonly));
    }
    ne == 0
}

/// Whether a MOVDIR64B raised #UD since the count was `before`.
fn raised_ud(before: u64) -> bool {
    movdir64b_faults() != before
}

/// Spins for `ms` milliseconds.
fn hold(ms: u64) {
    let deadline = Deadline::after_ms(ms);
    while !deadline.passed() {
        crate::cpu::pause();
    }
}

/// Completion interrupts counted so far on the WQ vectors (entries 1..=wqs) of `d`, and on
/// its misc vector (entry 0: software errors).
fn irqs(d: &Dsa) -> (u64, u64) {
    let wq = (1..=d.num_wqs as u16)
        .map(|e| crate::idt::irq_count(d.vector(e)))
        .sum();
    (wq, crate::idt::irq_count(d.vector(0)))
}

/// Seconds with three decimals.
fn seconds(l: &mut Line, us: u64) {
    let ms = us / 1000;
    l.dec(ms / 1000).s(".");
    let frac = ms % 1000;
    if frac < 100 {
        l.s("0");
    }
    if frac < 10 {
        l.s("0");
    }
    l.dec(frac);
}

/// The soak: brings up every DSA, runs the shares of every CPU and reports `soak` (its line
/// comes right after the last descriptor), idles `selftest.soak_hold_ms` when it passed, then
/// disables the devices and reports `soak_disable`.
pub fn run(r: &mut Runner, boot: &BootInfo, acpi: &AcpiInfo) {
    match (
        num_key(boot, "selftest.soak"),
        num_key(boot, "selftest.soak_hold_ms"),
    ) {
        (Err(e), _) | (_, Err(e)) => r.report("soak", Outcome::Fail(e)),
        (Ok(None | Some(0)), _) => r.report(
            "soak",
            Outcome::Fail(err("selftest.soak wants a descriptor count")),
        ),
        (Ok(Some(n)), Ok(hold_ms)) => soak(r, acpi, n, hold_ms.unwrap_or(0)),
    }
}

/// The enabled devices.
type Devices = [Option<Dsa>; MAX_DEVICES];

/// Probes and enables every DSA (up to [`MAX_DEVICES`]) and fills [`SLOTS`] with their WQs.
fn bring_up_all(acpi: &AcpiInfo) -> Res<Devices> {
    let Bus0 {
        cfg,
        found,
        n: devs,
        ..
    } = enumerate(acpi);
    if devs == 0 {
        return Err(err("no DSA device"));
    }
    let bsp = crate::apic::id();
    let mut dsa: Devices = [const { None }; MAX_DEVICES];
    let mut slots = 0usize;
    for (i, (&pci, slot)) in found.iter().take(devs).zip(dsa.iter_mut()).enumerate() {
        let mut d = DeviceAt::new(cfg, i, pci, bsp).probe()?;
        bring_up(&mut d, at(EVL + 0x1000 * i as u64))?;
        for op in [OP_MEMMOVE, OP_FILL, OP_COMPARE, OP_NOP] {
            if !d.supports(op) {
                return Err(err("an opcode of the mix is not advertised"));
            }
        }
        for wq in 0..d.num_wqs {
            if let Some(s) = SLOTS.get(slots) {
                s.store(
                    d.bar2 + u64::from(wq) * 0x4000 + 0x1000 + u64::from(wq) + 1,
                    Ordering::Release,
                );
                slots += 1;
            }
        }
        *slot = Some(d);
    }
    SLOT_COUNT.store(slots as u64, Ordering::Release);
    Ok(dsa)
}

/// Runs `n` descriptors over the devices and reports `soak` and `soak_disable`.
fn soak(r: &mut Runner, acpi: &AcpiInfo, n: u64, hold_ms: u64) {
    crate::apic::enable(crate::entry::SPURIOUS_VECTOR);
    crate::cpu::sti();
    let mut dsa = match bring_up_all(acpi) {
        Ok(d) => d,
        Err(e) => {
            crate::cpu::cli();
            return r.report("soak", Outcome::Fail(e));
        }
    };
    let slots = SLOT_COUNT.load(Ordering::Acquire);
    let mut cpus = 1u64;
    smp::for_each_online_index(|i| cpus += u64::from(i != 0));
    let mut rank = 0u64;
    let mut assign = |i: usize| {
        if let Some(s) = SHARE.get(i) {
            s.store(n / cpus + u64::from(rank < n % cpus), Ordering::Release);
        }
        rank += 1;
    };
    assign(0);
    smp::for_each_online_index(|i| {
        if i != 0 {
            assign(i);
        }
    });
    let count = |f: fn(&Dsa) -> (u64, u64)| {
        dsa.iter()
            .flatten()
            .map(f)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    info(|l| {
        l.s("soak start descriptors=")
            .dec(n)
            .s(" cpus=")
            .dec(cpus)
            .s(" devices=")
            .dec(dsa.iter().flatten().count() as u64)
            .s(" wqs=")
            .dec(slots)
            .s(" hold_ms=")
            .dec(hold_ms);
    });
    hold(hold_ms);
    let irq0 = count(irqs);
    let t0 = rdtsc();
    let finished = smp::run_job_on_aps(Job::Soak, AP_WAIT_MS, || work(0));
    let t1 = rdtsc();
    // Let the last completion interrupts arrive before they are counted.
    hold(10);
    let irq1 = count(irqs);
    let outcome = verdict(
        n,
        cpus,
        finished,
        (irq1.0 - irq0.0, irq1.1 - irq0.1),
        us_between(t0, t1),
    );
    let passed = !matches!(outcome, Outcome::Fail(_));
    r.report("soak", outcome);
    if passed {
        hold(hold_ms);
    }
    let mut disabled = Outcome::Ok;
    for d in dsa.iter_mut().flatten() {
        if let Outcome::Fail(e) = case_disable(d) {
            disabled = Outcome::Fail(e);
        }
    }
    r.report("soak_disable", disabled);
    crate::cpu::cli();
}

/// Sums up the CPUs' results: `irqs` is (completion interrupts, misc interrupts) counted.
fn verdict(n: u64, cpus: u64, finished: usize, irqs: (u64, u64), us: u64) -> Outcome {
    let mut per_cpu = Line::new();
    let (mut total, mut rci) = (0u64, 0u64);
    let mut first: Option<Line> = None;
    let mut take = |i: usize| {
        let load = |a: &[AtomicU64; MAX_CPUS]| a.get(i).map_or(0, |v| v.load(Ordering::Acquire));
        let done = load(&DONE);
        total += done;
        rci += load(&RCI);
        if !per_cpu.as_bytes().is_empty() {
            per_cpu.s(",");
        }
        per_cpu.dec(done);
        let f = load(&FAILURE);
        if f != 0 && first.is_none() {
            let mut l = Line::new();
            Failure::unpack(f).describe(i, &mut l);
            first = Some(l);
        }
    };
    take(0);
    smp::for_each_online_index(|i| {
        if i != 0 {
            take(i);
        }
    });
    if let Some(l) = first {
        return Outcome::Fail(l);
    }
    let mut l = Line::new();
    if finished as u64 + 1 != cpus {
        l.dec(finished as u64)
            .s(" of ")
            .dec(cpus - 1)
            .s(" APs finished their share");
        return Outcome::Fail(l);
    }
    if total != n {
        l.dec(total).s(" of ").dec(n).s(" descriptors verified");
        return Outcome::Fail(l);
    }
    // Interrupts of one vector may merge while one is pending, never multiply.
    if irqs.1 != 0 || irqs.0 > rci || (rci > 0 && irqs.0 == 0) {
        l.dec(irqs.0)
            .s(" completion interrupts for ")
            .dec(rci)
            .s(" requests, ")
            .dec(irqs.1)
            .s(" misc (software error) interrupts");
        return Outcome::Fail(l);
    }
    l.s("descriptors=")
        .dec(n)
        .s(" per_vcpu=")
        .raw(per_cpu.as_bytes())
        .s(" rci=")
        .dec(rci)
        .s(" irqs=")
        .dec(irqs.0)
        .s(" seconds=");
    seconds(&mut l, us);
    Outcome::OkWith(l)
}
