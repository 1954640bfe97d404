//! The bodies of dsavmm's fuzz targets, each `fn run(data: &[u8])`: it panics (or aborts) on a
//! bug and returns otherwise (`outcome` is the same and says what the input did). Two drivers
//! share them:
//!
//! - `fuzz/fuzz_targets/<target>.rs`: libFuzzer through `cargo +nightly fuzz run <target>`;
//! - `tests/stable.rs`: `cargo test --workspace` on stable replays the seed corpus
//!   (`fuzz/corpus/<target>/`) and a bounded, seeded number of generated inputs ([`harness`]).
//!
//! The MOVDIR64B decoder, the guest page walk and the direct-store emulation are modules of the
//! `dsavmm` binary crate, not a library: they are pure (guest RAM and the MMIO bus in, a store
//! or a fault out), so this crate compiles the same source files (`#[path]`), unchanged.

// The crate has no unit tests of its own (tests/stable.rs drives it). As a unit-test build it is
// empty: otherwise `cargo test <filter>` and `clippy --all-targets` would compile the vmm
// modules' `#[cfg(test)]` tests here a second time, tying this crate to what they use.
#![cfg(not(test))]

pub mod api_request;
pub mod descriptor_engine;
pub mod dsa_mmio;
pub mod harness;
pub mod movdir64b;
pub mod vfio_user_message;

/// `vmm/src/` as a module directory: its files load as they do in the `dsavmm` crate (their
/// `mod tests;` from `vmm/src/<module>/tests.rs`), and `crate::insn` etc. resolve through the
/// re-exports below.
#[path = "../../../vmm/src"]
mod vmm_src {
    pub mod direct_store;
    pub mod insn;
    pub mod pagewalk;
}
pub use vmm_src::{direct_store, insn, pagewalk};

/// A target's `outcome` function.
pub type Outcome = fn(&[u8]) -> String;

/// Every target by name (the cargo-fuzz binary and corpus directory names) and its
/// `outcome` function (`run` without the result).
pub const TARGETS: &[(&str, Outcome)] = &[
    ("descriptor_engine", descriptor_engine::outcome),
    ("dsa_mmio", dsa_mmio::outcome),
    ("movdir64b", movdir64b::outcome),
    ("api_request", api_request::outcome),
    ("vfio_user_message", vfio_user_message::outcome),
];

/// Reads a fuzz input front to back; past the end every read is zero, so any input is valid.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// An input over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `N` bytes, zero-padded.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Up to `n` next bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}
