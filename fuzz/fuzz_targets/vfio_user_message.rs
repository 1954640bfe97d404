#![no_main]
//! libFuzzer entry for `fuzz_targets::vfio_user_message::run` (the body is shared with the stable harness).

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::vfio_user_message::run(data));
