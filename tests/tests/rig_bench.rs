//! Benchmark (ignored by default): in one L1 boot, boot the same L2 Linux (vmlinux, 1 vCPU) alternately
//! with dsavmm and with the reference VMM (QEMU 7.2 `-M microvm -accel kvm` on L1's KVM) and print the
//! medians of "VMM start to L2 /init marker" and "VMM start to VMM exit", plus QEMU start to L1 ready.
//!
//! `DSAVMM_RIG_BENCH_ROUNDS=N` (default 3) sets the rounds;
//! `cargo test -p tests --test rig_bench -- --ignored --nocapture`. The `bench: rig_bench: ...` line
//! sums up the run; the README's Performance table quotes it verbatim.

use std::time::Duration;

use tests::{
    dsavmm_binary, Layer, LinuxGuest, Mode, NestedVm, RigOutput, Run, L2_CMDLINE, L2_MARKER,
};

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn times(out: &RigOutput, runs: impl Iterator<Item = usize>) -> (Vec<Duration>, Vec<Duration>) {
    let (mut to_init, mut total) = (Vec::new(), Vec::new());
    for i in runs {
        if let Some(d) = out
            .lines_of(i, Layer::L2)
            .find(|l| l.text.contains(L2_MARKER))
            .and_then(|l| out.since_start(i, l))
        {
            to_init.push(d);
        }
        if let Some((e, s)) = out.runs.get(i).and_then(|r| r.ended.zip(r.started)) {
            total.push(e.saturating_sub(s));
        }
    }
    (to_init, total)
}

#[test]
#[ignore = "benchmark: several minutes of nested emulation"]
fn dsavmm_vs_qemu_in_l1() -> Result<(), tests::RigError> {
    let rounds: usize = std::env::var("DSAVMM_RIG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let guest = LinuxGuest::get()?;
    let vm = NestedVm::new()
        .dsavmm(dsavmm_binary()?)
        .with_qemu(true)
        .mode(Mode::Nested)
        .l2_kernel(&guest.vmlinux)
        .l2_initramfs(&guest.boot_initramfs)
        .expect_exit(None)
        .timeout(Duration::from_secs(60 + 120 * rounds as u64));
    let mut runs = Vec::new();
    for _ in 0..rounds {
        runs.push(Run::dsavmm([
            "run",
            "--kernel",
            NestedVm::L2_KERNEL,
            "--initramfs",
            NestedVm::L2_INITRAMFS,
            "--cmdline",
            L2_CMDLINE,
            "--memory",
            "512",
            "--vcpus",
            "1",
        ]));
        runs.push(Run::qemu_reference(
            NestedVm::L2_KERNEL,
            NestedVm::L2_INITRAMFS,
            L2_CMDLINE,
            1,
            512,
        ));
    }
    let out = vm.run_all(&runs)?;
    let (d_init, d_total) = times(&out, (0..runs.len()).step_by(2));
    let (q_init, q_total) = times(&out, (1..runs.len()).step_by(2));
    eprintln!(
        "QEMU (TCG) start to L1 /init {:?}, to L1 /dev/kvm ready {:?}",
        out.l1_init, out.l1_ready
    );
    eprintln!("{rounds} rounds, medians  | start to L2 /init | start to exit");
    eprintln!(
        "dsavmm                  | {:?} ({} ok) | {:?}",
        median(d_init.clone()),
        d_init.len(),
        median(d_total.clone())
    );
    eprintln!(
        "QEMU -accel kvm in L1   | {:?} ({} ok) | {:?}",
        median(q_init.clone()),
        q_init.len(),
        median(q_total.clone())
    );
    eprintln!("transcript: {:?}", out.log);
    let secs =
        |d: Option<Duration>| d.map_or("?".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    let (d_med, q_med) = (median(d_init.clone()), median(q_init.clone()));
    let ratio = d_med.zip(q_med).map_or("?".to_string(), |(d, q)| {
        format!("{:.1}x", q.as_secs_f64() / d.as_secs_f64())
    });
    println!(
        "bench: rig_bench: {rounds} rounds alternating in one L1 boot, medians: QEMU (TCG) start to L1 \
         /init {}, to /dev/kvm ready {}; VMM start to L2 /init dsavmm {} ({} ok), QEMU -accel kvm {} \
         ({} ok) ({ratio}); to exit {} vs {}",
        secs(out.l1_init),
        secs(out.l1_ready),
        secs(d_med),
        d_init.len(),
        secs(q_med),
        q_init.len(),
        secs(median(d_total)),
        secs(median(q_total)),
    );
    Ok(())
}
