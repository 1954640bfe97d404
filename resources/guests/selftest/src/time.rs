//! Coarse timeouts from the TSC (frequency from CPUID, else assumed 3 GHz;
//! only used to bound waits).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::rdtsc;

static TSC_HZ: AtomicU64 = AtomicU64::new(3_000_000_000);

/// Reads the TSC frequency from CPUID when it is reported.
pub fn init() {
    if let Some(hz) = crate::cpuid::tsc_hz() {
        TSC_HZ.store(hz, Ordering::Relaxed);
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
