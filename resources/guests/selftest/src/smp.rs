//! Application processor bring-up through the xAPIC: the real-mode trampoline
//! (`entry.rs`) is copied to [`AP_TRAMPOLINE`], each AP listed in the MADT gets
//! INIT, SIPI, SIPI, and checks in from Rust (`ap_main`) in long mode.
//! APs then wait for work: they halt with interrupts enabled, and the BSP
//! posts a job generation and wakes them with a fixed IPI ([`WAKE_VECTOR`],
//! a counting stub); each AP runs the posted [`Job`] once per generation
//! ([`crate::dsatest::ap_work`], [`crate::hostile`]'s flood or the soak) and reports
//! back through [`run_on_aps`].

use core::sync::atomic::{AtomicU32, Ordering};

use crate::apic;
use crate::cpu::{halt_forever, pause};
use crate::entry::{ap_tramp_end, ap_tramp_start, AP_TRAMPOLINE, MAX_CPUS};
use crate::fmt::Line;
use crate::time::Deadline;

static CHECKED_IN: AtomicU32 = AtomicU32::new(0);
/// APIC ID + 1 of each AP that checked in, by trampoline index (0 = none).
static AP_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// Vector of the IPI that wakes APs for work (a counting stub).
pub const WAKE_VECTOR: u8 = 0x9f;
/// Job generation posted by the BSP (0: none yet).
static JOB_GEN: AtomicU32 = AtomicU32::new(0);
/// The [`Job`] of the current generation.
static JOB_KIND: AtomicU32 = AtomicU32::new(0);

/// What the APs run for a job generation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// [`crate::dsatest::ap_work`]: checked copies through the device.
    DsaCopies = 0,
    /// [`crate::hostile::ap_flood`]: a descriptor flood of one WQ.
    HostileFlood = 1,
    /// [`crate::dsatest::soak::work`]: the AP's share of the soak.
    Soak = 2,
}
/// Last job generation each AP finished, by trampoline index.
static JOB_DONE: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// Rust entry of an AP: `index` is 1.. in arrival order.
#[no_mangle]
extern "C" fn ap_main(index: u32) -> ! {
    crate::idt::load();
    let id = apic::id();
    let Some(slot) = AP_IDS.get(index as usize) else {
        halt_forever()
    };
    apic::enable(crate::entry::SPURIOUS_VECTOR);
    slot.store(id.wrapping_add(1), Ordering::Release);
    CHECKED_IN.fetch_add(1, Ordering::AcqRel);
    let mut done = 0;
    loop {
        crate::cpu::cli();
        let gen = JOB_GEN.load(Ordering::Acquire);
        if gen != done {
            let kind = JOB_KIND.load(Ordering::Acquire);
            if kind == Job::HostileFlood as u32 {
                crate::hostile::ap_flood(index as usize);
            } else if kind == Job::Soak as u32 {
                crate::dsatest::soak::work(index as usize);
            } else {
                crate::dsatest::ap_work(index as usize);
            }
            done = gen;
            if let Some(d) = JOB_DONE.get(index as usize) {
                d.store(gen, Ordering::Release);
            }
            continue;
        }
        // `sti; hlt` is atomic: a wake IPI sent after the check above ends the HLT.
        crate::cpu::sti_hlt();
    }
}

/// Trampoline indices of the APs that checked in, via `f`.
pub fn for_each_online_index(mut f: impl FnMut(usize)) {
    for (i, s) in AP_IDS.iter().enumerate() {
        if s.load(Ordering::Acquire) != 0 {
            f(i);
        }
    }
}

/// Posts a new job generation of [`Job::DsaCopies`], wakes every online AP,
/// runs `bsp_share` on the BSP meanwhile, then waits up to `timeout_ms` for
/// the APs; returns how many APs finished.
pub fn run_on_aps(timeout_ms: u64, bsp_share: impl FnOnce()) -> usize {
    run_job_on_aps(Job::DsaCopies, timeout_ms, bsp_share)
}

/// [`run_on_aps`] with the APs running `job`.
pub fn run_job_on_aps(job: Job, timeout_ms: u64, bsp_share: impl FnOnce()) -> usize {
    JOB_KIND.store(job as u32, Ordering::Release);
    let gen = JOB_GEN.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    for (i, s) in AP_IDS.iter().enumerate() {
        let v = s.load(Ordering::Acquire);
        if v != 0 && i != 0 {
            apic::send_ipi(v - 1, 0x4000 | u32::from(WAKE_VECTOR));
        }
    }
    bsp_share();
    let deadline = Deadline::after_ms(timeout_ms);
    loop {
        let mut want = 0;
        let mut got = 0;
        for (i, s) in AP_IDS.iter().enumerate() {
            if s.load(Ordering::Acquire) != 0 {
                want += 1;
                if JOB_DONE
                    .get(i)
                    .is_some_and(|d| d.load(Ordering::Acquire) == gen)
                {
                    got += 1;
                }
            }
        }
        if got == want || deadline.passed() {
            return got;
        }
        pause();
    }
}

/// Result of bringing up the APs.
pub struct SmpResult {
    /// CPUs running (BSP included).
    pub online: usize,
    /// First problem, if any.
    pub error: Option<Line>,
}

/// Copies the trampoline and starts every CPU in `apic_ids` except `bsp_id`;
/// waits up to `timeout_ms` for all of them to check in.
pub fn start_aps(apic_ids: &[u32], bsp_id: u32, timeout_ms: u64) -> SmpResult {
    let mut res = SmpResult {
        online: 1,
        error: None,
    };
    let (start, end) = (
        core::ptr::addr_of!(ap_tramp_start) as usize,
        core::ptr::addr_of!(ap_tramp_end) as usize,
    );
    let len = end.saturating_sub(start);
    if len == 0 || len > 4096 {
        let mut l = Line::new();
        l.s("trampoline size ").dec(len as u64).s(" bad");
        res.error = Some(l);
        return res;
    }
    // SAFETY: the trampoline page 0x6000..0x7000 is free low RAM reserved for
    // the guest by the boot contract (the boot information was copied before);
    // the source is this image's text.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, AP_TRAMPOLINE as *mut u8, len) };

    let aps = apic_ids.iter().copied().filter(|&id| id != bsp_id);
    let want = aps.clone().count();
    if want == 0 {
        return res;
    }
    if want >= MAX_CPUS {
        let mut l = Line::new();
        l.s("MADT lists ")
            .dec(want as u64 + 1)
            .s(" CPUs; this guest supports ")
            .dec(MAX_CPUS as u64);
        res.error = Some(l);
        return res;
    }
    let vector = (AP_TRAMPOLINE >> 12) as u32;
    for id in aps.clone() {
        if !apic::send_ipi(id, apic::IPI_INIT) {
            let mut l = Line::new();
            l.s("INIT IPI to APIC ")
                .dec(u64::from(id))
                .s(" not delivered");
            res.error = Some(l);
            return res;
        }
    }
    for _ in 0..2 {
        for id in aps.clone() {
            if !apic::send_ipi(id, apic::IPI_SIPI | vector) {
                let mut l = Line::new();
                l.s("SIPI to APIC ").dec(u64::from(id)).s(" not delivered");
                res.error = Some(l);
                return res;
            }
        }
    }
    let deadline = Deadline::after_ms(timeout_ms);
    while (CHECKED_IN.load(Ordering::Acquire) as usize) < want && !deadline.passed() {
        pause();
    }
    let got = CHECKED_IN.load(Ordering::Acquire) as usize;
    res.online = 1 + got;
    // Every AP from the MADT must have checked in, each exactly once.
    for id in aps {
        let n = AP_IDS
            .iter()
            .filter(|s| s.load(Ordering::Acquire) == id.wrapping_add(1))
            .count();
        if n != 1 && res.error.is_none() {
            let mut l = Line::new();
            l.s("APIC ")
                .dec(u64::from(id))
                .s(" checked in ")
                .dec(n as u64)
                .s(" times");
            res.error = Some(l);
        }
    }
    if got != want && res.error.is_none() {
        let mut l = Line::new();
        l.dec(got as u64)
            .s(" of ")
            .dec(want as u64)
            .s(" APs checked in");
        res.error = Some(l);
    }
    res
}

/// APIC IDs of the APs that checked in (in arrival order), via `f`.
pub fn for_each_online(mut f: impl FnMut(u32)) {
    for s in AP_IDS.iter() {
        let v = s.load(Ordering::Acquire);
        if v != 0 {
            f(v - 1);
        }
    }
}
