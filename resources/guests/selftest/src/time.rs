//! Coarse timeouts and durations from the TSC. Its frequency comes from
//! CPUID (leaf 0x15 or the hypervisor leaf 0x40000010) or else is measured
//! against the LAPIC timer, assuming KVM's and QEMU's 1 GHz APIC bus clock;
//! 3 GHz is assumed when neither works.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::rdtsc;

static TSC_HZ: AtomicU64 = AtomicU64::new(3_000_000_000);

/// Where the TSC frequency came from.
static SOURCE: AtomicU64 = AtomicU64::new(0);

/// Finds the TSC frequency (see the module documentation).
pub fn init() {
    if let Some(hz) = crate::cpuid::tsc_hz() {
        TSC_HZ.store(hz, Ordering::Relaxed);
        SOURCE.store(1, Ordering::Relaxed);
        return;
    }
    let (base, enabled, x2apic) = crate::apic::base_msr();
    if base != crate::apic::LAPIC_BASE || !enabled || x2apic {
        return;
    }
    crate::apic::timer_free_run();
    let t0 = rdtsc();
    let c0 = crate::apic::timer_current();
    // ~1 ms at 2-3 GHz.
    while rdtsc().wrapping_sub(t0) < 2_500_000 {
        core::hint::spin_loop();
    }
    let c1 = crate::apic::timer_current();
    let t1 = rdtsc();
    crate::apic::timer_stop();
    let ticks = u64::from(c0.wrapping_sub(c1));
    if ticks == 0 {
        return;
    }
    let hz = (t1 - t0).saturating_mul(1_000_000_000) / ticks;
    if (100_000_000..=10_000_000_000).contains(&hz) {
        TSC_HZ.store(hz, Ordering::Relaxed);
        SOURCE.store(2, Ordering::Relaxed);
    }
}

/// "cpuid", "lapic" (measured) or "assumed".
pub fn source() -> &'static str {
    match SOURCE.load(Ordering::Relaxed) {
        1 => "cpuid",
        2 => "lapic",
        _ => "assumed",
    }
}

/// TSC ticks per second in use.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// A point in time `ms` milliseconds from now.
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Deadline(rdtsc().saturating_add(tsc_hz() / 1000 * ms))
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        rdtsc() >= self.0
    }
}

/// Microseconds between two TSC readings.
pub fn us_between(start: u64, end: u64) -> u64 {
    end.saturating_sub(start).saturating_mul(1_000_000) / tsc_hz().max(1)
}
