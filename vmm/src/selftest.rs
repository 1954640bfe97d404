//! The built-in self-test guest: a freestanding ELF (resources/guests/selftest) embedded at build
//! time, and the command line that tells it what to expect.

/// The guest ELF.
pub static SELFTEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/selftest.elf"));

/// Command line keys that let the guest check the boot contract exactly.
pub fn expectations(memory_mib: u64, vcpus: u8) -> String {
    format!("console=ttyS0 selftest.mem_mib={memory_mib} selftest.vcpus={vcpus}")
}
