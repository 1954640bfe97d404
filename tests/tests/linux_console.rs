//! The guest console under a flood (issue 16, "a hang seen in the rig"): Debian's Linux under
//! dsavmm with 2 vCPUs prints numbered lines from a writer pinned to each CPU while a busy loop
//! per CPU loads the guest and a printk writer sends kernel messages through the console driver's
//! other path (the one that masks IER and polls LSR). Every line must arrive, whole and once, and
//! the guest must go on to power off: a lost THRE interrupt would leave the tty's writers asleep
//! and the run would stall until the timeout. See `rig.flood=` in
//! `resources/guests/linux/init-boot.sh`.
//!
//! In the nested rig (no hardware KVM here), one L1 boot, one run.

use std::collections::BTreeSet;
use std::time::Duration;

use tests::{dsavmm_binary, Layer, LinuxGuest, NestedVm, L2_CMDLINE};

/// Lines per CPU; the printk writer sends a tenth as many.
const LINES: usize = 200;
const VCPUS: usize = 2;
const FILLER: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

/// Takes the kernel's `[ t.tttttt] FLOOD-KMSG n=<i>` records out of the console stream (a record
/// can land in the middle of a tty line, between two of the driver's 16-byte transmit bursts) and
/// returns the stream without them and the record numbers seen.
fn split_kmsg(stream: &str) -> (String, Vec<usize>) {
    const TAG: &str = "FLOOD-KMSG n=";
    let mut rest = stream;
    let mut out = String::new();
    let mut seen = Vec::new();
    while let Some(at) = rest.find(TAG) {
        // The record starts at its timestamp when there is one.
        let start = rest[..at]
            .rfind('[')
            .filter(|&b| at - b <= 20 && rest[b..at].trim_end().ends_with(']'))
            .unwrap_or(at);
        out.push_str(&rest[..start]);
        let digits: String = rest[at + TAG.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            seen.push(n);
        }
        let after = at + TAG.len() + digits.len();
        // The record's own line end.
        rest = rest[after..].strip_prefix('\n').unwrap_or(&rest[after..]);
    }
    out.push_str(rest);
    (out, seen)
}

#[test]
fn console_flood_from_every_vcpu_arrives_whole() {
    let guest = LinuxGuest::get().unwrap_or_else(|e| panic!("{e}"));
    let dsavmm = dsavmm_binary().unwrap_or_else(|e| panic!("{e}"));
    let cmdline = format!("{L2_CMDLINE} rig.flood={LINES} printk.devkmsg=on");
    let vcpus = VCPUS.to_string();
    let out = NestedVm::new()
        .dsavmm(&dsavmm)
        .l2_kernel(&guest.vmlinux)
        .l2_initramfs(&guest.boot_initramfs)
        .timeout(Duration::from_secs(900))
        .run(&[
            "run",
            "--kernel",
            NestedVm::L2_KERNEL,
            "--initramfs",
            NestedVm::L2_INITRAMFS,
            "--cmdline",
            &cmdline,
            "--memory",
            "512",
            "--vcpus",
            &vcpus,
            "--serial",
            "stdout",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let tail = || {
        out.last_lines(&[Layer::L2, Layer::Dsavmm], Some(0), 30)
            .join("\n")
    };
    let stream: String = out
        .lines_of(0, Layer::L2)
        .map(|l| format!("{}\n", l.text.replace('\r', "")))
        .collect();
    assert!(
        stream.contains(&format!("FLOOD-DONE cpus={VCPUS} lines={LINES}")),
        "the flood never finished (a stalled console?): transcript {:?}\n{}",
        out.log,
        tail()
    );
    let (tty, kmsg) = split_kmsg(&stream);
    // Line ends are not to be trusted around a record (the harness drops the empty line a
    // record's own line end leaves behind), so the lines are found by their start instead:
    // every `FLOOD c=` must be followed by exactly `<c> n=<n> <filler>`.
    let tty: String = tty.chars().filter(|&c| c != '\n').collect();
    const START: &str = "FLOOD c=";
    let mut seen = BTreeSet::new();
    let mut damaged = Vec::new();
    for (at, _) in tty.match_indices(START) {
        let rest = &tty[at + START.len()..];
        let parsed = rest.split_once(" n=").and_then(|(c, r)| {
            let (n, r) = r.split_once(' ')?;
            let whole = r.starts_with(FILLER);
            Some((c.parse::<usize>().ok()?, n.parse::<usize>().ok()?, whole))
        });
        match parsed {
            Some((c, n, true)) if c < VCPUS && n < LINES => {
                assert!(seen.insert((c, n)), "line c={c} n={n} arrived twice");
            }
            _ => damaged.push(rest.chars().take(80).collect::<String>()),
        }
    }
    assert!(damaged.is_empty(), "damaged lines: {damaged:?}");
    let missing: Vec<_> = (0..VCPUS)
        .flat_map(|c| (0..LINES).map(move |n| (c, n)))
        .filter(|k| !seen.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} lines missing, first {:?}; transcript {:?}",
        missing.len(),
        VCPUS * LINES,
        &missing[..missing.len().min(10)],
        out.log
    );
    let kmsg: BTreeSet<usize> = kmsg.into_iter().collect();
    assert_eq!(
        kmsg,
        (0..LINES / 10).collect::<BTreeSet<_>>(),
        "printk records"
    );
    assert_eq!(out.dsavmm_exit(), Some(0), "{}", tail());
    let took = out
        .runs
        .first()
        .and_then(|r| r.ended.zip(r.started))
        .map(|(e, s)| e - s);
    eprintln!(
        "{} lines from {VCPUS} vCPUs and {} printk records arrived; run took {took:?}",
        seen.len(),
        kmsg.len()
    );
}

#[test]
fn kmsg_records_are_taken_out_of_split_lines() {
    // A record that landed inside a tty line (the harness then split the line at the
    // record's end) and one at a line boundary, without a timestamp.
    let (tty, kmsg) = split_kmsg(
        "FLOOD c=0 n=1 0123[    5.123456] FLOOD-KMSG n=7\n456789\nx\nFLOOD-KMSG n=8\ny\n",
    );
    assert_eq!(kmsg, vec![7, 8]);
    assert_eq!(tty, "FLOOD c=0 n=1 0123456789\nx\ny\n");
}
