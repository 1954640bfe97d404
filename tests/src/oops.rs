//! The one L2 kernel crash the rig may retry: a glitch of QEMU's TCG emulation of SVM, not of dsavmm.
//!
//! The recorded case (commit 53935ca: one Debian L2 of ten in a CI run, never again on rerun): a
//! **double fault** right after the `cmpxchg16b` of SLUB's allocation fast path, with the register
//! dump in **`kmem_cache_alloc_node`** and **RFLAGS holding a pointer-like value** (`EFLAGS:
//! c11e12c2`). RFLAGS bits 22-63 are reserved and always 0 on a real CPU; a value with any of them
//! set cannot have been pushed by a correct CPU, whatever the guest or dsavmm did, so it points at
//! the emulator. A crash that lacks any of the three (another oops, a double fault with sane RFLAGS,
//! one elsewhere) may be dsavmm's and is never retried. The `Code:` bytes of the recorded oops were
//! not kept, so the instruction before RIP is not matched.

/// RFLAGS bits an x86-64 CPU defines (0-21); anything above is reserved and reads as 0.
const RFLAGS_DEFINED: u64 = (1 << 22) - 1;

/// Console markers that start a kernel crash report.
const CRASH_MARKERS: [&str; 5] = [
    "Oops:",
    "BUG:",
    "PANIC:",
    "Kernel panic",
    "general protection fault",
];

/// The register-dump lines that belong to the first crash report: this many lines after it.
const DUMP_LINES: usize = 40;

/// `Some(description)` when the first kernel crash report in `lines` (one run's L2 console) is the
/// TCG double fault described in the module documentation; `None` otherwise (no crash, or any
/// other crash).
pub fn tcg_double_fault<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lines: Vec<&str> = lines.into_iter().collect();
    let first = lines
        .iter()
        .position(|l| CRASH_MARKERS.iter().any(|m| l.contains(m)))?;
    if !lines[first].contains("double fault") {
        return None;
    }
    let dump = &lines[first..lines.len().min(first + DUMP_LINES)];
    // The first RIP and EFLAGS of the report are the faulting context's.
    let rip = dump.iter().find_map(|l| {
        let s = l.get(l.find("RIP: ")? + "RIP: ".len()..)?;
        // `0010:kmem_cache_alloc_node_noprof+0x11d/0x340`
        Some(s.split_once(':').map_or(s, |(_, sym)| sym).trim())
    })?;
    if !rip.starts_with("kmem_cache_alloc_node") {
        return None;
    }
    let eflags = dump.iter().find_map(|l| {
        let s = l.get(l.find("EFLAGS: ")? + "EFLAGS: ".len()..)?;
        u64::from_str_radix(s.split_whitespace().next()?, 16).ok()
    })?;
    if eflags & !RFLAGS_DEFINED == 0 {
        return None;
    }
    Some(format!(
        "double fault at {rip} with EFLAGS {eflags:08x} (reserved RFLAGS bits set: emulation)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the recorded CI crash (Linux 6.12's `exc_double_fault` + `__die` + `__show_regs`
    /// output), with the register pattern as recorded.
    const TCG_DOUBLE_FAULT: &str = "\
[    4.812345] traps: PANIC: double fault, error_code: 0x0
[    4.812345] Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI
[    4.812345] CPU: 1 UID: 0 PID: 63 Comm: modprobe Not tainted 6.12.117+deb12-amd64 #1  Debian 6.12.117-1~deb12u1
[    4.812345] RIP: 0010:kmem_cache_alloc_node_noprof+0x11d/0x340
[    4.812345] Code: 48 8b 55 08 4c 8b 45 00 48 8d 4a 01 4c 89 c0 65 48 0f c7 0e <0f> 94 c0 84 c0 74 a9
[    4.812345] RSP: 0018:ffffb3a0c0173d20 EFLAGS: c11e12c2
[    4.812345] RAX: ffff9c11e12c2a00 RBX: 0000000000000cc0 RCX: 0000000000000a5b
[    4.812345] Call Trace:
[    4.812345] Kernel panic - not syncing: Fatal exception in interrupt";

    /// A generic oops, the kind a dsavmm bug causes (the driver reads a bad completion record).
    const GENERIC_OOPS: &str = "\
[   12.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   12.000000] #PF: supervisor read access in kernel mode
[   12.000000] Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI
[   12.000000] RIP: 0010:idxd_dma_complete_txd+0x25/0x80 [idxd]
[   12.000000] RSP: 0018:ffffb3a0c0003e38 EFLAGS: 00010246
[   12.000000] Kernel panic - not syncing: Fatal exception in interrupt";

    #[test]
    fn matches_the_recorded_tcg_double_fault() {
        let m = tcg_double_fault(TCG_DOUBLE_FAULT.lines());
        let m = m.expect("the recorded signature");
        assert!(m.contains("kmem_cache_alloc_node_noprof"), "{m}");
        assert!(m.contains("c11e12c2"), "{m}");
        // Lines before the crash do not matter.
        let with_boot = format!("[    0.0] Linux version 6.12\nselftest: x\n{TCG_DOUBLE_FAULT}");
        assert!(tcg_double_fault(with_boot.lines()).is_some());
    }

    #[test]
    fn rejects_a_generic_oops() {
        assert_eq!(tcg_double_fault(GENERIC_OOPS.lines()), None);
        assert_eq!(tcg_double_fault(["no crash at all"]), None);
    }

    #[test]
    fn rejects_near_misses() {
        // A double fault with architecturally possible RFLAGS (a real stack overflow, say).
        let sane = TCG_DOUBLE_FAULT.replace("EFLAGS: c11e12c2", "EFLAGS: 00010082");
        assert_eq!(tcg_double_fault(sane.lines()), None);
        // The pointer-like RFLAGS but in another function.
        let elsewhere =
            TCG_DOUBLE_FAULT.replace("kmem_cache_alloc_node_noprof", "idxd_submit_desc");
        assert_eq!(tcg_double_fault(elsewhere.lines()), None);
        // Another oops first: that one is the crash, the double fault a consequence.
        let after = format!("{GENERIC_OOPS}\n{TCG_DOUBLE_FAULT}");
        assert_eq!(tcg_double_fault(after.lines()), None);
        // Not a double fault at all.
        let gp = TCG_DOUBLE_FAULT
            .replace(
                "PANIC: double fault, error_code: 0x0",
                "general protection fault",
            )
            .replace("Oops: double fault:", "Oops: general protection fault:");
        assert_eq!(tcg_double_fault(gp.lines()), None);
    }
}
