//! A short soak (20,000 descriptors, 500 API requests; `tests::soak`), ignored by default:
//! `cargo test -p vmm --release --test soak -- --ignored`. The full one is
//! `cargo bench -p vmm --bench soak`.

mod common;

use tests::soak::{self, SoakOptions};

#[test]
#[ignore = "a benchmark: run with --ignored"]
fn short_soak_keeps_rss_fds_and_threads_flat() {
    if !common::kvm_available("short_soak_keeps_rss_fds_and_threads_flat") {
        return;
    }
    let opts = SoakOptions {
        descriptors: 20_000,
        api_requests: 500,
        ..SoakOptions::new(env!("CARGO_BIN_EXE_dsavmm").into())
    };
    let report = soak::run(&opts).unwrap_or_else(|e| panic!("{e}"));
    let problems = report.problems(opts.descriptors, opts.api_requests, opts.rss_bound_kib);
    assert!(problems.is_empty(), "{}\n{problems:#?}", report.line());
}
