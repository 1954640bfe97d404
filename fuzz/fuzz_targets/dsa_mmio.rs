#![no_main]
//! libFuzzer entry for `fuzz_targets::dsa_mmio::run` (the body is shared with the stable harness).

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::dsa_mmio::run(data));
