//! The built-in self-test guest's report (`resources/guests/selftest/src/tests.rs` prints it): one
//! line per case, `selftest: <name>: ok` (or `ok <detail>`, e.g. `ok ops=N`), `selftest: <name>:
//! FAIL <reason>` or `selftest: <name>: skipped <reason>`, `selftest: info <text>` lines, and the
//! summary `selftest: N passed, F failed, K skipped`. The DSA cases (`dsatest.rs`) are
//! `dsa<N>_<area>` per device, plus `movdir64b_ram`; in hostile mode (`hostile.rs`) the
//! [`HOSTILE_AREAS`] run first on each device.
//!
//! `0 failed` alone proves little: on a CPU that raises #UD on MOVDIR64B the guest skips every DSA
//! data case and still fails none. [`SelftestReport::check_data_path`] is what the tests apply
//! wherever MOVDIR64B is expected to work.

/// A case's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseStatus {
    /// `ok`.
    Ok,
    /// `FAIL <reason>`.
    Fail(String),
    /// `skipped <reason>`.
    Skipped(String),
}

/// One case line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The case name (`e820`, `movdir64b_ram`, `dsa0_memmove`, ...).
    pub name: String,
    /// Its result.
    pub status: CaseStatus,
    /// What an `ok` line printed after `ok` (`ops=12040 us=900627`), else empty.
    pub detail: String,
}

impl Case {
    /// The number after `<key>=` in [`Case::detail`].
    pub fn detail_value(&self, key: &str) -> Option<u64> {
        self.detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }
}

/// The cases hostile mode (`dsavmm selftest --hostile`) runs on each DSA before the normal ones;
/// each prints `ok ops=N us=T`.
pub const HOSTILE_AREAS: [&str; 7] = [
    "hostile_bar0",
    "hostile_msix",
    "hostile_config",
    "hostile_portal",
    "hostile_descriptors",
    "hostile_batches",
    "hostile_flood",
];

/// The summary line's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Cases passed.
    pub passed: u64,
    /// Cases failed.
    pub failed: u64,
    /// Cases skipped.
    pub skipped: u64,
}

/// The DSA areas a probed, enabled device runs only when descriptors can be submitted (MOVDIR64B
/// executes or is emulated): every one must be printed for every device and be `ok`.
pub const DATA_AREAS: [&str; 20] = [
    "nop",
    "drain",
    "memmove",
    "fill",
    "compare",
    "compare_pattern",
    "delta",
    "dualcast",
    "crc",
    "copy_crc",
    "dif",
    "cache_flush",
    "batch",
    "interrupt",
    "interrupt_masked",
    "drain_abort",
    "errors",
    "smp",
    "reset_cycle",
    "throughput",
];

/// The DSA areas that do not need a descriptor submission.
const CONTROL_AREAS: [&str; 3] = ["probe", "enable", "disable"];

/// Data cases that may be skipped for a reason unrelated to MOVDIR64B: (area, reason prefix).
const ALLOWED_DATA_SKIPS: [(&str, &str); 1] = [("smp", "1 vCPU")];

/// Everything the self-test guest printed, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelftestReport {
    /// The case lines, in order.
    pub cases: Vec<Case>,
    /// The summary line, when printed.
    pub summary: Option<Summary>,
}

fn parse_summary(s: &str) -> Option<Summary> {
    let mut w = s.split_whitespace();
    let passed = w.next()?.parse().ok()?;
    (w.next()? == "passed,").then_some(())?;
    let failed = w.next()?.parse().ok()?;
    (w.next()? == "failed,").then_some(())?;
    let skipped = w.next()?.parse().ok()?;
    (w.next()? == "skipped").then_some(Summary {
        passed,
        failed,
        skipped,
    })
}

/// `dsa<N>_<area>` split into (N, area).
fn dsa_case(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("dsa")?;
    let (n, area) = rest.split_once('_')?;
    Some((n.parse().ok()?, area))
}

impl SelftestReport {
    /// Parse console lines (a line may carry other output before `selftest: `).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> SelftestReport {
        let mut r = SelftestReport::default();
        for raw in lines {
            let Some(pos) = raw.find("selftest: ") else {
                continue;
            };
            let l = raw[pos + "selftest: ".len()..].trim_end();
            if l.starts_with("info ") {
                continue;
            }
            if let Some(s) = parse_summary(l) {
                r.summary = Some(s);
                continue;
            }
            let Some((name, result)) = l.split_once(": ") else {
                continue;
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            let mut detail = String::new();
            let status = if result == "ok" {
                CaseStatus::Ok
            } else if let Some(d) = result.strip_prefix("ok ") {
                detail = d.trim().to_string();
                CaseStatus::Ok
            } else if let Some(why) = result.strip_prefix("FAIL") {
                CaseStatus::Fail(why.trim().to_string())
            } else if let Some(why) = result.strip_prefix("skipped") {
                CaseStatus::Skipped(why.trim().to_string())
            } else {
                continue;
            };
            r.cases.push(Case {
                name: name.to_string(),
                status,
                detail,
            });
        }
        r
    }

    /// The case called `name`.
    pub fn case(&self, name: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.name == name)
    }

    /// The DSA data cases: `movdir64b_ram` and every `dsa<N>_<area>` but probe, enable, disable
    /// and the hostile ones (see [`SelftestReport::check_hostile`]).
    pub fn data_cases(&self) -> impl Iterator<Item = &Case> {
        self.cases.iter().filter(|c| {
            c.name == "movdir64b_ram"
                || dsa_case(&c.name).is_some_and(|(_, a)| {
                    !CONTROL_AREAS.contains(&a) && !HOSTILE_AREAS.contains(&a)
                })
        })
    }

    /// The check of a hostile run: every [`HOSTILE_AREAS`] case of each of `devices` DSAs
    /// printed, `ok`, with `ops` > 0. `Ok` carries `(case, ops)` in order.
    pub fn check_hostile(&self, devices: usize) -> Result<Vec<(String, u64)>, String> {
        let mut problems = Vec::new();
        let mut ops = Vec::new();
        for n in 0..devices {
            for area in HOSTILE_AREAS {
                let name = format!("dsa{n}_{area}");
                match self.case(&name) {
                    None => problems.push(format!("{name}: not printed")),
                    Some(c) => match (&c.status, c.detail_value("ops")) {
                        (CaseStatus::Ok, Some(k)) if k > 0 => ops.push((name, k)),
                        (CaseStatus::Ok, _) => {
                            problems.push(format!("{name}: ok without ops > 0 ({:?})", c.detail))
                        }
                        (CaseStatus::Fail(why), _) => problems.push(format!("{name}: FAIL {why}")),
                        (CaseStatus::Skipped(why), _) => {
                            problems.push(format!("{name}: skipped {why}"))
                        }
                    },
                }
            }
        }
        if problems.is_empty() {
            Ok(ops)
        } else {
            Err(problems.join("; "))
        }
    }

    /// The data cases that were skipped, as `name: reason`.
    pub fn skipped_data_cases(&self) -> Vec<String> {
        self.data_cases()
            .filter_map(|c| match &c.status {
                CaseStatus::Skipped(why) => Some(format!("{}: {why}", c.name)),
                _ => None,
            })
            .collect()
    }

    /// The check for a place where MOVDIR64B is expected to work (executed by the CPU, or emulated
    /// by dsavmm on an exit): exactly `devices` DSAs probed, each with every [`DATA_AREAS`] case
    /// printed, `movdir64b_ram` printed, and every data case `ok` (`dsa<N>_smp` may be skipped with
    /// `1 vCPU`). `Ok` carries the number of data cases that passed.
    pub fn check_data_path(&self, devices: usize) -> Result<usize, String> {
        let mut problems = Vec::new();
        let probed: Vec<usize> = self
            .cases
            .iter()
            .filter(|c| c.status == CaseStatus::Ok)
            .filter_map(|c| {
                dsa_case(&c.name)
                    .filter(|(_, a)| *a == "probe")
                    .map(|(n, _)| n)
            })
            .collect();
        if probed.len() != devices {
            problems.push(format!(
                "{} DSA(s) probed ok ({probed:?}), expected {devices}",
                probed.len()
            ));
        }
        let mut want = vec!["movdir64b_ram".to_string()];
        for n in 0..devices {
            want.extend(DATA_AREAS.iter().map(|a| format!("dsa{n}_{a}")));
        }
        for name in want {
            if self.case(&name).is_none() {
                problems.push(format!("{name}: not printed"));
            }
        }
        let mut ok = 0;
        for c in self.data_cases() {
            match &c.status {
                CaseStatus::Ok => ok += 1,
                CaseStatus::Fail(why) => problems.push(format!("{}: FAIL {why}", c.name)),
                CaseStatus::Skipped(why) => {
                    let allowed = dsa_case(&c.name).is_some_and(|(_, area)| {
                        ALLOWED_DATA_SKIPS
                            .iter()
                            .any(|(a, prefix)| *a == area && why.starts_with(prefix))
                    });
                    if !allowed {
                        problems.push(format!("{}: skipped {why}", c.name));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(ok)
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The supervisor-mode cases of the instruction-emulation suite (`faults.rs`): their instructions
/// reach dsavmm as emulation failures wherever the guest runs under dsavmm with MOVDIR64B working
/// (this PVM KVM emulates all of ring 0; in the rig, stores to MMIO and the POPCNT on MMIO do), so
/// each must be `ok` there: dsavmm delivered the CPU's #GP/#PF/#UD or completed the store.
pub const KERNEL_FAULT_CASES: [&str; 9] = [
    "movdir64b_gp_misaligned",
    "movdir64b_pf_source",
    "movdir64b_pf_absent",
    "movdir64b_pf_write_protect",
    "movdiri_split",
    "movdiri_pf_write_protect",
    "movdir64b_mmio_unclaimed",
    "movdir64b_single_step",
    "ud_unemulated",
];

/// The user-mode (CPL 3) cases of the same suite.
pub const USER_FAULT_CASES: [&str; 8] = [
    "user_movdir64b",
    "user_movdiri",
    "user_movdiri_split",
    "user_movdir64b_pf_supervisor",
    "user_movdir64b_pf_readonly",
    "user_movdir64b_pf_source",
    "user_movdiri_pf_readonly",
    "user_movdir64b_mmio_unclaimed",
];

/// The skip a user-mode case prints where guest user mode runs natively on a host CPU without the
/// instruction (this project's PVM KVM on its AMD hosts): the CPU raises #UD, KVM answers it itself
/// and dsavmm never sees the instruction.
pub const USER_NATIVE_UD_SKIP: &str = "raises #UD at CPL 3 but executes at CPL 0";

impl SelftestReport {
    /// The check of the instruction-emulation cases where the guest runs under dsavmm with
    /// MOVDIR64B working: every [`KERNEL_FAULT_CASES`] and [`USER_FAULT_CASES`] case printed and
    /// `ok`, except that with `user_native_ud` a user-mode case may be skipped with exactly
    /// [`USER_NATIVE_UD_SKIP`]. `Ok` carries the number of cases that passed.
    pub fn check_fault_cases(&self, user_native_ud: bool) -> Result<usize, String> {
        let mut problems = Vec::new();
        let mut ok = 0;
        for name in KERNEL_FAULT_CASES.iter().chain(&USER_FAULT_CASES) {
            match self.case(name).map(|c| &c.status) {
                None => problems.push(format!("{name}: not printed")),
                Some(CaseStatus::Ok) => ok += 1,
                Some(CaseStatus::Fail(why)) => problems.push(format!("{name}: FAIL {why}")),
                Some(CaseStatus::Skipped(why)) => {
                    let allowed = user_native_ud
                        && USER_FAULT_CASES.contains(name)
                        && why.contains(USER_NATIVE_UD_SKIP);
                    if !allowed {
                        problems.push(format!("{name}: skipped {why}"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(ok)
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Whether this host's own `/dev/kvm` runs guest user mode natively on a CPU without MOVDIR64B,
/// so that the self-test's CPL 3 MOVDIR64B/MOVDIRI cases see the host CPU's #UD and skip: a
/// software KVM (no `vmx`/`svm`, this project's PVM) on a CPU without `movdir64b`.
pub fn host_user_mode_lacks_movdir64b() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    user_mode_lacks_movdir64b_from(&cpuinfo)
}

fn user_mode_lacks_movdir64b_from(cpuinfo: &str) -> bool {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    !flags.contains(&"vmx") && !flags.contains(&"svm") && !flags.contains(&"movdir64b")
}

/// Whether a guest's MOVDIR64B is expected to work on this host's own `/dev/kvm`: `Ok(why)` or
/// `Err(why not)`.
///
/// - No `vmx`/`svm` among the CPU flags: a software KVM such as this project's PVM, where every guest
///   instruction goes through KVM's emulator; MOVDIR64B fails emulation and exits to dsavmm, which
///   emulates it (`shared/notes/kvm-here.md`). Expected.
/// - A hardware KVM on a CPU with `movdir64b`: the CPU executes it, a store to a portal exits as
///   an emulation failure. Expected.
/// - A hardware KVM on a CPU without it: the guest's MOVDIR64B may raise #UD (not verified on such a
///   host), so the self-test guest's data cases may be skipped; the tests report it.
pub fn host_movdir64b_expected() -> Result<&'static str, &'static str> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    movdir64b_expected_from(&cpuinfo)
}

fn movdir64b_expected_from(cpuinfo: &str) -> Result<&'static str, &'static str> {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let has = |f: &str| flags.contains(&f);
    if !has("vmx") && !has("svm") {
        Ok("software KVM without vmx/svm (this project's PVM): MOVDIR64B exits to dsavmm, which emulates it")
    } else if has("movdir64b") {
        Ok("hardware KVM on a CPU that executes MOVDIR64B")
    } else {
        Err("hardware KVM on a CPU without MOVDIR64B: the guest's MOVDIR64B may raise #UD")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default run on this machine's PVM KVM (1 vCPU, one DSA), abridged from a real transcript.
    fn good_run() -> Vec<String> {
        let mut l: Vec<String> = [
            "selftest: e820: ok",
            "selftest: initrd: skipped no initrd",
            "selftest: info pci bus0 functions=2 dsa=1 ecam=0xe0000000",
            "selftest: dsa_pci: ok",
            "selftest: movdir64b_ram: ok",
            "selftest: dsa0_probe: ok",
            "selftest: dsa0_enable: ok",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for a in DATA_AREAS {
            if a == "smp" {
                l.push("selftest: dsa0_smp: skipped 1 vCPU".into());
            } else {
                l.push(format!("selftest: dsa0_{a}: ok"));
            }
        }
        l.push("selftest: dsa0_disable: ok".into());
        l.push("selftest: 24 passed, 0 failed, 2 skipped".into());
        l
    }

    fn parse(lines: &[String]) -> SelftestReport {
        SelftestReport::parse(lines.iter().map(String::as_str))
    }

    #[test]
    fn parses_cases_and_summary() {
        let r = parse(&good_run());
        assert_eq!(
            r.summary,
            Some(Summary {
                passed: 24,
                failed: 0,
                skipped: 2
            })
        );
        assert_eq!(
            r.case("initrd").map(|c| &c.status),
            Some(&CaseStatus::Skipped("no initrd".into()))
        );
        assert!(r
            .case("info pci bus0 functions=2 dsa=1 ecam=0xe0000000")
            .is_none());
        assert_eq!(r.data_cases().count(), 1 + DATA_AREAS.len());
        assert_eq!(r.check_data_path(1), Ok(DATA_AREAS.len()));
        assert_eq!(r.skipped_data_cases(), vec!["dsa0_smp: 1 vCPU".to_string()]);
    }

    fn fault_lines(user: &str) -> Vec<String> {
        let mut l: Vec<String> = KERNEL_FAULT_CASES
            .iter()
            .map(|c| format!("selftest: {c}: ok"))
            .collect();
        l.extend(
            USER_FAULT_CASES
                .iter()
                .map(|c| format!("selftest: {c}: {user}")),
        );
        l
    }

    #[test]
    fn fault_cases_all_ok_pass_either_way() {
        let r = parse(&fault_lines("ok"));
        assert_eq!(r.check_fault_cases(false), Ok(17));
        assert_eq!(r.check_fault_cases(true), Ok(17));
    }

    #[test]
    fn user_fault_skips_only_for_the_native_ud_reason_and_only_where_allowed() {
        let native = "skipped MOVDIR64B raises #UD at CPL 3 but executes at CPL 0 (KVM runs guest \
                      user mode on a host CPU without it and injects #UD itself)";
        let r = parse(&fault_lines(native));
        assert_eq!(r.check_fault_cases(true), Ok(9));
        assert!(r.check_fault_cases(false).is_err());
        let r = parse(&fault_lines("skipped MOVDIR64B raises #UD on this CPU"));
        assert!(r.check_fault_cases(true).is_err());
        // A kernel case may never skip, and a missing case is a failure.
        let mut l = fault_lines("ok");
        l[0] = format!("selftest: {}: skipped whatever", KERNEL_FAULT_CASES[0]);
        l.pop();
        let e = parse(&l).check_fault_cases(true).unwrap_err();
        assert!(
            e.contains("skipped whatever") && e.contains("not printed"),
            "{e}"
        );
        let mut l = fault_lines("ok");
        l[3] = format!("selftest: {}: FAIL want #PF", KERNEL_FAULT_CASES[3]);
        assert!(parse(&l).check_fault_cases(false).is_err());
    }

    #[test]
    fn user_mode_native_ud_only_on_software_kvm_without_movdir64b() {
        assert!(user_mode_lacks_movdir64b_from("flags\t: fpu smap smep"));
        assert!(!user_mode_lacks_movdir64b_from("flags\t: fpu movdir64b"));
        assert!(!user_mode_lacks_movdir64b_from("flags\t: fpu svm"));
    }

    /// What the guest prints on a CPU that raises #UD on MOVDIR64B: 0 failed, data path skipped.
    #[test]
    fn all_data_skipped_with_zero_failed_is_rejected() {
        let mut l: Vec<String> = vec![
            "selftest: movdir64b_ram: skipped MOVDIR64B raised #UD (this CPU does not execute it; the handler skipped it)".into(),
            "selftest: dsa0_probe: ok".into(),
            "selftest: dsa0_enable: ok".into(),
        ];
        for a in DATA_AREAS {
            l.push(format!(
                "selftest: dsa0_{a}: skipped MOVDIR64B raises #UD on this CPU: data path not exercised"
            ));
        }
        l.push("selftest: dsa0_disable: ok".into());
        l.push("selftest: 3 passed, 0 failed, 20 skipped".into());
        let r = parse(&l);
        assert_eq!(r.summary.map(|s| s.failed), Some(0));
        let err = r.check_data_path(1).unwrap_err();
        assert!(
            err.contains("movdir64b_ram: skipped MOVDIR64B raised #UD"),
            "{err}"
        );
        assert!(
            err.contains("dsa0_memmove: skipped MOVDIR64B raises #UD"),
            "{err}"
        );
        assert_eq!(r.skipped_data_cases().len(), 1 + DATA_AREAS.len());
    }

    #[test]
    fn missing_devices_cases_and_failures_are_rejected() {
        let r = parse(&good_run());
        let err = r.check_data_path(2).unwrap_err();
        assert!(
            err.contains("1 DSA(s) probed ok ([0]), expected 2"),
            "{err}"
        );
        assert!(err.contains("dsa1_memmove: not printed"), "{err}");

        let mut l = good_run();
        l.retain(|s| !s.contains("dsa0_throughput"));
        for s in l.iter_mut().filter(|s| s.contains("dsa0_fill")) {
            *s = "selftest: dsa0_fill: FAIL byte 0x10 differs".into();
        }
        for s in l.iter_mut().filter(|s| s.contains("dsa0_crc:")) {
            *s = "selftest: dsa0_crc: skipped opcode not advertised".into();
        }
        let err = parse(&l).check_data_path(1).unwrap_err();
        assert!(err.contains("dsa0_throughput: not printed"), "{err}");
        assert!(err.contains("dsa0_fill: FAIL byte 0x10 differs"), "{err}");
        assert!(
            err.contains("dsa0_crc: skipped opcode not advertised"),
            "{err}"
        );

        // smp may be skipped only for the single-vCPU reason.
        let mut l = good_run();
        for s in l.iter_mut().filter(|s| s.contains("dsa0_smp")) {
            *s = "selftest: dsa0_smp: skipped MOVDIR64B raises #UD on this CPU: data path not exercised".into();
        }
        assert!(parse(&l).check_data_path(1).is_err());
    }

    #[test]
    fn hostile_cases_need_ok_with_ops() {
        let mut l = good_run();
        for a in HOSTILE_AREAS {
            l.insert(5, format!("selftest: dsa0_{a}: ok ops=12 us=34"));
        }
        let r = parse(&l);
        let ops = r.check_hostile(1).unwrap();
        assert_eq!(ops.len(), HOSTILE_AREAS.len());
        assert!(ops.iter().all(|(_, n)| *n == 12));
        assert_eq!(
            r.case("dsa0_hostile_bar0").unwrap().detail_value("us"),
            Some(34)
        );
        // Hostile cases are not data cases: the normal data-path check is unchanged.
        assert_eq!(r.check_data_path(1), Ok(DATA_AREAS.len()));
        let mut bad = l.clone();
        bad[5] = "selftest: dsa0_hostile_flood: ok".into();
        bad[6] = "selftest: dsa0_hostile_batches: FAIL member 0x19".into();
        let e = parse(&bad).check_hostile(1).unwrap_err();
        assert!(e.contains("dsa0_hostile_flood: ok without ops"), "{e}");
        assert!(e.contains("dsa0_hostile_batches: FAIL member 0x19"), "{e}");
        assert!(parse(&l)
            .check_hostile(2)
            .unwrap_err()
            .contains("dsa1_hostile_bar0: not printed"));
    }

    #[test]
    fn movdir64b_expectation_by_host() {
        let pvm = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2 hypervisor\n";
        assert!(movdir64b_expected_from(pvm).is_ok());
        assert!(movdir64b_expected_from("flags : fpu svm movdir64b\n").is_ok());
        assert!(movdir64b_expected_from("flags : fpu vmx\n").is_err());
    }
}
