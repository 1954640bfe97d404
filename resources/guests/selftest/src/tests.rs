//! The self-test cases and the runner that prints one line per case and the
//! summary.

use crate::acpi::AcpiInfo;
use crate::bootinfo::{parse_dec, parse_hex, BootInfo, BootKind, CmdlineState};
use crate::e820::{self, RamRanges};
use crate::entry::{SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::fmt::Line;
use crate::time::{us_between, Deadline};
use crate::{apic, cpu, cpuid, phys, serial, smp};

/// Outcome of one case.
pub enum Outcome {
    /// Passed.
    Ok,
    /// Passed, with a detail printed after `ok` (e.g. `ops=N`).
    OkWith(Line),
    /// Failed, with the reason.
    Fail(Line),
    /// Not applicable here, with the reason.
    Skip(Line),
}

fn reason(text: &str) -> Line {
    let mut l = Line::new();
    l.s(text);
    l
}

fn fail(text: &str) -> Outcome {
    Outcome::Fail(reason(text))
}

/// Counts and prints case results.
pub struct Runner {
    /// TSC at the previous report.
    last: u64,
    /// `name=<us>` of each case so far (several lines; `times_n` is the current one).
    times: [Line; 8],
    times_n: usize,
    /// TSC when the guest's Rust code started.
    start: u64,
    /// Cases passed.
    pub passed: u64,
    /// Cases failed.
    pub failed: u64,
    /// Cases skipped.
    pub skipped: u64,
}

impl Runner {
    /// A runner whose first case starts now; `start` is the TSC at the
    /// guest's first Rust instruction.
    pub fn new(start: u64) -> Self {
        Runner {
            start,
            last: cpu::rdtsc(),
            times: [const { Line::new() }; 8],
            times_n: 0,
            passed: 0,
            failed: 0,
            skipped: 0,
        }
    }

    /// Prints `selftest: <name>: ok|FAIL ..|skipped ..` and counts it.
    pub fn report(&mut self, name: &str, outcome: Outcome) {
        let mut l = Line::new();
        l.s("selftest: ").s(name).s(": ");
        match outcome {
            Outcome::Ok => {
                self.passed += 1;
                l.s("ok");
            }
            Outcome::OkWith(d) => {
                self.passed += 1;
                l.s("ok ").raw(d.as_bytes());
            }
            Outcome::Fail(r) => {
                self.failed += 1;
                l.s("FAIL ").raw(r.as_bytes());
            }
            Outcome::Skip(r) => {
                self.skipped += 1;
                l.s("skipped ").raw(r.as_bytes());
            }
        }
        serial::line(&l);
        let now = cpu::rdtsc();
        // Start another line of per-case times before one would be truncated.
        let full = self
            .times
            .get(self.times_n)
            .is_some_and(|t| t.as_bytes().len() > 240);
        if full && self.times_n + 1 < self.times.len() {
            self.times_n += 1;
        }
        if let Some(t) = self.times.get_mut(self.times_n) {
            t.s(" ").s(name).s("=").dec(us_between(self.last, now));
        }
        self.last = now;
    }

    /// Prints the summary line (after an info line with each case's time).
    pub fn summary(&self) {
        for (i, t) in self.times.iter().enumerate().take(self.times_n + 1) {
            info(|l| {
                l.s("case_us").raw(t.as_bytes());
                if i == self.times_n {
                    l.s(" total=").dec(us_between(self.start, cpu::rdtsc()));
                }
            });
        }
        let mut l = Line::new();
        l.s("selftest: ")
            .dec(self.passed)
            .s(" passed, ")
            .dec(self.failed)
            .s(" failed, ")
            .dec(self.skipped)
            .s(" skipped");
        serial::line(&l);
    }
}

/// Prints `selftest: info <text>`.
pub fn info(f: impl FnOnce(&mut Line)) {
    let mut l = Line::new();
    l.s("selftest: info ");
    f(&mut l);
    serial::line(&l);
}

/// Everything the cases share.
pub struct Ctx<'a> {
    /// Boot information.
    pub boot: &'a BootInfo,
    /// This image's [start, end).
    pub kernel: (u64, u64),
    /// `selftest.mem_mib`.
    pub mem_mib: Option<u64>,
    /// `selftest.vcpus`.
    pub vcpus: Option<u64>,
    /// Whether the (PVH) memory map had to be sorted or had empty entries.
    pub normalized: bool,
}

/// Parses a numeric command line key; a malformed value is an error.
pub(crate) fn num_key(boot: &BootInfo, key: &str) -> Result<Option<u64>, Line> {
    match boot.key(key) {
        None => Ok(None),
        Some(v) => parse_dec(v).map(Some).ok_or_else(|| {
            let mut l = Line::new();
            l.s("bad value for ").s(key).s(": \"").printable(v).s("\"");
            l
        }),
    }
}

/// Runs every case and returns the runner with the counts.
pub fn run_all(boot: &mut BootInfo, kernel: (u64, u64), start: u64) -> Runner {
    let mut r = Runner::new(start);
    // The PVH memory map comes from other VMMs' firmware (QEMU's qboot lists
    // it unsorted, with an empty entry): sort it as Linux would. The Linux
    // boot path (dsavmm's zero page) must be sorted as given.
    let normalized =
        boot.kind == BootKind::Pvh && e820::normalize(&mut boot.mem, &mut boot.mem_count);
    let boot: &BootInfo = boot;
    if let Some(e) = boot.error {
        r.report("bootinfo", fail(e));
    }
    let mut bad_key = None;
    let mem_mib = num_key(boot, "selftest.mem_mib").unwrap_or_else(|e| {
        bad_key = Some(e);
        None
    });
    let vcpus = num_key(boot, "selftest.vcpus").unwrap_or_else(|e| {
        bad_key.get_or_insert(e);
        None
    });
    if let Some(e) = bad_key {
        r.report("cmdline_keys", Outcome::Fail(e));
    }
    let ctx = Ctx {
        boot,
        kernel,
        mem_mib,
        vcpus,
        normalized,
    };

    r.report("e820", case_e820(&ctx));
    r.report("cmdline", case_cmdline(&ctx));
    r.report("initrd", case_initrd(&ctx));
    // MCFG is part of dsavmm's contract (Linux boot path); QEMU microvm
    // (PVH) has none.
    let acpi = AcpiInfo::parse(boot.rsdp, boot.kind == BootKind::Linux64);
    crate::poweroff::configure(&acpi);
    r.report("acpi", case_acpi(&ctx, &acpi));
    r.report("cpuid_movdir64b", case_movdir64b());
    r.report("smp", case_smp(&ctx, &acpi));
    if boot.key("selftest.soak").is_some() {
        crate::dsatest::soak::run(&mut r, boot, &acpi);
        return r;
    }
    r.report("memory", case_memory(&ctx));
    r.report("timer_interrupt", case_timer());
    let hostile = match crate::hostile::Options::from_boot(boot, kernel) {
        Ok(h) => h,
        Err(e) => {
            r.report("hostile_options", Outcome::Fail(e));
            None
        }
    };
    let dsa = crate::dsatest::run_all(&mut r, &acpi, hostile.as_ref());
    crate::faults::run_all(&mut r, dsa);
    r
}

fn case_e820(ctx: &Ctx) -> Outcome {
    let map = ctx.boot.regions();
    let total = RamRanges::from_map(map).total();
    let mut chunks = map.chunks(8).peekable();
    while let Some(part) = chunks.next() {
        let last = chunks.peek().is_none();
        info(|l| {
            l.s("e820");
            for e in part {
                l.s(" ")
                    .hex(e.addr)
                    .s("-")
                    .hex(e.addr.wrapping_add(e.size))
                    .s(":")
                    .dec(u64::from(e.kind));
            }
            if last {
                l.s(" ram=").dec(total >> 20).s("MiB");
                // PVH maps from other VMMs may be unsorted (QEMU's qboot) and
                // were sorted before the checks.
                l.s(if ctx.normalized { " (sorted)" } else { "" });
            }
        });
    }
    let b = ctx.boot;
    let loaded = e820::Loaded {
        kernel: ctx.kernel,
        cmdline: (b.cmdline_state == CmdlineState::Ok)
            .then_some((b.cmdline_addr, b.cmdline_len as u64 + 1)),
        initrd: b.initrd,
    };
    match e820::check(map, b.mem_claimed, &loaded, ctx.mem_mib) {
        Ok(()) => Outcome::Ok,
        Err(l) => Outcome::Fail(l),
    }
}

fn case_cmdline(ctx: &Ctx) -> Outcome {
    let b = ctx.boot;
    info(|l| {
        l.s("cmdline=\"").printable(b.cmdline()).s("\"");
    });
    match b.cmdline_state {
        CmdlineState::Ok => Outcome::Ok,
        CmdlineState::Missing => fail("no command line pointer"),
        CmdlineState::Unterminated => {
            let mut l = Line::new();
            l.s("no NUL within ");
            match b.cmdline_size {
                Some(n) => l.s("cmdline_size ").dec(u64::from(n)),
                None => l.dec(crate::bootinfo::CMDLINE_CAP as u64).s(" bytes"),
            };
            Outcome::Fail(l)
        }
    }
}

/// FNV-1a 64 of a physical range (None where unmapped).
fn fnv1a(addr: u64, len: u64) -> Option<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    phys::for_each_chunk(addr, len, |c| h = fnv1a_update(h, c)).then_some(h)
}

/// Continues an FNV-1a 64 hash over `c` (unrolled by 8: every instruction
/// costs ~1 µs in this KVM).
pub fn fnv1a_update(mut h: u64, c: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let words = c.chunks_exact(8);
    let tail = words.remainder();
    for w in words {
        for &b in w {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }
    for &b in tail {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    h
}

fn case_initrd(ctx: &Ctx) -> Outcome {
    let want = match ctx.boot.key("selftest.initrd_fnv") {
        None => None,
        Some(v) => match parse_hex(v) {
            Some(h) => Some(h),
            None => return fail("bad selftest.initrd_fnv value (want 16 hex digits)"),
        },
    };
    let Some((addr, size)) = ctx.boot.initrd else {
        if want.is_some() {
            return fail("selftest.initrd_fnv given but no initrd");
        }
        return Outcome::Skip(reason("no initrd"));
    };
    info(|l| {
        l.s("initrd at ").hex(addr).s(" size ").dec(size);
    });
    let Some(end) = addr.checked_add(size) else {
        return fail("initrd range wraps");
    };
    let ram = RamRanges::from_map(ctx.boot.regions());
    if !ram.contains(addr, end) {
        return fail("initrd is not inside one e820 RAM range");
    }
    match want {
        Some(h) => {
            let t0 = cpu::rdtsc();
            let Some(got) = fnv1a(addr, size) else {
                return fail("initrd not mapped");
            };
            let t1 = cpu::rdtsc();
            info(|l| {
                l.s("initrd fnv1a64=")
                    .hex_digits(got, 16)
                    .s(" in ")
                    .dec(us_between(t0, t1))
                    .s("us");
            });
            if got != h {
                let mut l = Line::new();
                l.s("FNV-1a 64 ")
                    .hex_digits(got, 16)
                    .s(" != selftest.initrd_fnv ")
                    .hex_digits(h, 16);
                return Outcome::Fail(l);
            }
            Outcome::Ok
        }
        None => {
            // Only readable: touch the first and last byte and one per MiB.
            let mut off = 0;
            while off < size {
                let _ = phys::read_u8(addr + off);
                off += 1 << 20;
            }
            let _ = phys::read_u8(end - 1);
            Outcome::Ok
        }
    }
}

fn case_acpi(ctx: &Ctx, a: &AcpiInfo) -> Outcome {
    info(|l| {
        l.s("acpi rsdp=")
            .hex(a.rsdp)
            .s(" (")
            .s(a.rsdp_source)
            .s(") tables=");
        for t in a
            .tables
            .get(..a.table_count.min(a.tables.len()))
            .unwrap_or(&[])
        {
            l.printable(t).s(",");
        }
        l.s(" cpus=").dec(a.cpu_count as u64);
        if let Some(io) = a.ioapic {
            l.s(" ioapic=").hex(io);
        }
        if a.mcfg.is_none() {
            l.s(" no_mcfg");
        }
        if let Some(m) = a.mcfg {
            l.s(" ecam=")
                .hex(m.base)
                .s(" seg ")
                .dec(u64::from(m.segment))
                .s(" buses ")
                .dec(u64::from(m.bus_start))
                .s("-")
                .dec(u64::from(m.bus_end));
        }
        l.s(if a.hw_reduced { " hw_reduced" } else { "" });
        if let Some(s) = a.s5_slp_typ {
            l.s(" s5=").dec(u64::from(s));
        }
    });
    if let Some(e) = &a.error {
        let mut l = Line::new();
        l.raw(e.as_bytes());
        return Outcome::Fail(l);
    }
    if a.cpu_count == 0 {
        return fail("MADT lists no enabled CPU");
    }
    if let Some(n) = ctx.vcpus {
        if a.cpu_count as u64 != n {
            let mut l = Line::new();
            l.s("MADT lists ")
                .dec(a.cpu_count as u64)
                .s(" enabled CPUs, selftest.vcpus=")
                .dec(n);
            return Outcome::Fail(l);
        }
    }
    Outcome::Ok
}

fn case_movdir64b() -> Outcome {
    match cpuid::movdir64b() {
        Some(true) => Outcome::Ok,
        Some(false) => {
            let mut l = Line::new();
            l.s("CPUID.7.0:ECX[28] (MOVDIR64B) not visible: ");
            let kvm = cpuid::hypervisor().is_some_and(|h| h.starts_with(b"KVMKVMKVM"));
            l.s(if kvm {
                "this KVM strips it"
            } else {
                "this CPU model lacks it"
            });
            if cpuid::movdiri() {
                l.s(" (MOVDIRI is visible)");
            }
            Outcome::Skip(l)
        }
        None => Outcome::Skip(reason("CPUID leaf 7 not available")),
    }
}

fn case_smp(ctx: &Ctx, a: &AcpiInfo) -> Outcome {
    if !a.have_madt {
        return fail("no MADT: cannot find the CPUs");
    }
    let (base, enabled, x2apic) = apic::base_msr();
    if !enabled || x2apic || base != apic::LAPIC_BASE {
        let mut l = Line::new();
        l.s("LAPIC not in xAPIC mode at 0xfee00000 (IA32_APIC_BASE ")
            .hex(base);
        l.s(if enabled { " enabled" } else { " disabled" })
            .s(if x2apic { " x2apic)" } else { ")" });
        return Outcome::Fail(l);
    }
    let bsp = apic::id();
    let ids = a.cpus.get(..a.cpu_count.min(a.cpus.len())).unwrap_or(&[]);
    if !ids.contains(&bsp) {
        let mut l = Line::new();
        l.s("BSP APIC ID ")
            .dec(u64::from(bsp))
            .s(" not in the MADT");
        return Outcome::Fail(l);
    }
    let t0 = cpu::rdtsc();
    let res = smp::start_aps(ids, bsp, 2000);
    let t1 = cpu::rdtsc();
    info(|l| {
        l.s("smp cpus=")
            .dec(res.online as u64)
            .s(" bsp_apic=")
            .dec(u64::from(bsp))
            .s(" aps=");
        smp::for_each_online(|id| {
            l.dec(u64::from(id)).s(",");
        });
        l.s(" in ").dec(us_between(t0, t1)).s("us");
    });
    if let Some(e) = res.error {
        return Outcome::Fail(e);
    }
    if let Some(n) = ctx.vcpus {
        if res.online as u64 != n {
            let mut l = Line::new();
            l.dec(res.online as u64)
                .s(" CPUs online, selftest.vcpus=")
                .dec(n);
            return Outcome::Fail(l);
        }
    }
    Outcome::Ok
}

/// Offsets probed in each tested page.
const PROBES: [u64; 17] = [
    0, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4088,
];
const MAX_PAGES: usize = 32;

/// Reads a probed word. `va` is inside a page `case_memory` mapped.
fn probe_read(va: u64) -> u64 {
    // SAFETY: `va` maps a RAM page (e820 type 1, outside this image) that
    // `case_memory` chose; its original contents are saved before the test
    // writes and restored after; the APs are halted, nothing else uses it.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Writes a probed word (see `probe_read`).
fn probe_write(va: u64, v: u64) {
    // SAFETY: as in `probe_read`.
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

fn pattern(phys: u64, round: u64) -> u64 {
    let p = phys ^ 0xa5a5_5a5a_c3c3_3c3c;
    if round == 0 {
        p
    } else {
        !p.rotate_left(17)
    }
}

fn case_memory(ctx: &Ctx) -> Outcome {
    const PAGE: u64 = 4096;
    let ram = RamRanges::from_map(ctx.boot.regions());
    // (physical page, virtual address) of the pages under test.
    let mut pages = [(0u64, 0u64); MAX_PAGES];
    let mut n = 0;
    let (ks, ke) = ctx.kernel;
    for &(s, e) in ram.ranges() {
        let first = s.div_ceil(PAGE) * PAGE;
        let last = (e / PAGE) * PAGE;
        if last < first + 2 * PAGE {
            continue;
        }
        let mid = (first + (last - first) / 2) / PAGE * PAGE;
        for p in [first, mid, last - PAGE] {
            let in_kernel = p + PAGE > ks && p < ke;
            if p == 0
                || in_kernel
                || p + PAGE > e
                || pages.get(..n).is_some_and(|v| v.iter().any(|x| x.0 == p))
            {
                continue;
            }
            let Some(va) = phys::map(p, PAGE) else {
                continue;
            };
            if let Some(slot) = pages.get_mut(n) {
                *slot = (p, va);
                n += 1;
            }
        }
    }
    let pages = pages.get(..n).unwrap_or(&[]);
    if pages.is_empty() {
        return fail("no RAM page to test");
    }
    let mut saved = [[0u64; PROBES.len()]; MAX_PAGES];
    for (&(_, va), save) in pages.iter().zip(saved.iter_mut()) {
        for (&off, s) in PROBES.iter().zip(save.iter_mut()) {
            *s = probe_read(va + off);
        }
    }
    let mut bad: Option<(u64, u64, u64)> = None;
    let t0 = cpu::rdtsc();
    for round in 0..2 {
        // Write all pages first, then verify all: catches aliasing between
        // the tested addresses as well as dead memory.
        for &(p, va) in pages {
            for &off in &PROBES {
                probe_write(va + off, pattern(p + off, round));
            }
        }
        for &(p, va) in pages {
            for &off in &PROBES {
                let got = probe_read(va + off);
                let want = pattern(p + off, round);
                if got != want && bad.is_none() {
                    bad = Some((p + off, want, got));
                }
            }
        }
    }
    for (&(_, va), save) in pages.iter().zip(saved.iter()) {
        for (&off, &s) in PROBES.iter().zip(save.iter()) {
            probe_write(va + off, s);
        }
    }
    let t1 = cpu::rdtsc();
    let above4g = pages.iter().filter(|p| p.0 >= phys::IDENTITY_END).count();
    info(|l| {
        l.s("memory pages=")
            .dec(pages.len() as u64)
            .s(" above_4g=")
            .dec(above4g as u64);
        l.s(" in ").dec(us_between(t0, t1)).s("us");
    });
    if let Some((addr, want, got)) = bad {
        let mut l = Line::new();
        l.s("at ")
            .hex(addr)
            .s(" wrote ")
            .hex(want)
            .s(" read ")
            .hex(got);
        return Outcome::Fail(l);
    }
    Outcome::Ok
}

fn case_timer() -> Outcome {
    const TICKS: u64 = 3;
    // SAFETY: only the address of the counter is taken.
    let ticks = unsafe { &crate::entry::selftest_timer_ticks };
    let load = || ticks.load(core::sync::atomic::Ordering::Acquire);
    // Mask a legacy PIC (both ICW-less IMRs) and LINT0 so only the LAPIC
    // timer can interrupt.
    cpu::outb(0x21, 0xff);
    cpu::outb(0xa1, 0xff);
    apic::enable(SPURIOUS_VECTOR);
    apic::mask_lint0();
    let start = load();
    let t0 = cpu::rdtsc();
    // 1 ms period at KVM's 1 GHz APIC bus clock (divide by 16).
    apic::timer_periodic(TIMER_VECTOR, 62_500);
    // Wait for the first tick without HLT (bounded), then HLT for the rest.
    cpu::sti();
    let deadline = Deadline::after_ms(1000);
    while load() == start && !deadline.passed() {
        cpu::pause();
    }
    let mut ok = load() != start;
    if ok {
        let deadline = Deadline::after_ms(2000);
        while load() < start + TICKS && !deadline.passed() {
            cpu::sti_hlt();
        }
        ok = load() >= start + TICKS;
    }
    cpu::cli();
    apic::timer_stop();
    let t1 = cpu::rdtsc();
    let got = load() - start;
    info(|l| {
        l.s("timer ticks=")
            .dec(got)
            .s(" in ")
            .dec(us_between(t0, t1))
            .s("us");
    });
    if !ok {
        let mut l = Line::new();
        l.s("LAPIC timer: ")
            .dec(got)
            .s(" of ")
            .dec(TICKS)
            .s(" interrupts");
        return Outcome::Fail(l);
    }
    Outcome::Ok
}
