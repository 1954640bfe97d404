//! Soak benchmark (issue 16): at least 1,000,000 descriptors over every vCPU and WQ while at
//! least 10,000 API requests are answered, with dsavmm's RSS, open fds and threads sampled
//! before the first descriptor and after the last one. The driver is `tests::soak`; this prints
//! its `bench: soak ...` line (quoted in the README) and exits 1 when a count is off, an API
//! request went unanswered, RSS grew by more than `tests::soak::RSS_BOUND_KIB` or fds or
//! threads grew at all.
//!
//! `cargo bench -p vmm --bench soak` (about a minute here); a short sanity run:
//! `DSAVMM_SOAK_DESCRIPTORS=20000 DSAVMM_SOAK_API=500 cargo bench -p vmm --bench soak`.

use std::process::ExitCode;

use tests::soak::{self, SoakOptions};

fn main() -> ExitCode {
    if !tests::kvm_or_skip("bench soak") {
        return ExitCode::SUCCESS;
    }
    let opts = match SoakOptions::from_env(env!("CARGO_BIN_EXE_dsavmm").into()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "soak: {} descriptors, at least {} API requests, {} vCPUs, --dsa {}",
        opts.descriptors,
        opts.api_requests,
        opts.vcpus,
        opts.dsa.join(" --dsa ")
    );
    let report = match soak::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "  API: {} requests sent, {} on short-lived connections, {} bad; guest: {} completion \
         interrupts counted for {} requested",
        report.api.sent,
        report.api.short_lived,
        report.api.bad,
        report.guest.irqs,
        report.guest.rci
    );
    println!("{}", report.line());
    let problems = report.problems(opts.descriptors, opts.api_requests, opts.rss_bound_kib);
    for p in &problems {
        eprintln!("bench soak: FAIL {p}");
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
