//! What a soak run measured, the checks applied to it, and its one-line summary
//! (`bench: soak ...`).

use super::http::ApiCounts;
use super::procfs::Sample;

/// The VMM's counters of interest (`GET /metrics`), summed over devices and vCPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `dsavmm_dsa_descriptors_total`.
    pub descriptors: u64,
    /// `dsavmm_dsa_records_written_total`.
    pub records_written: u64,
    /// `dsavmm_dsa_completions_by_status_total{status="0x01"}` (success).
    pub successes: u64,
    /// `dsavmm_dsa_completion_interrupts_total`.
    pub completion_interrupts: u64,
    /// `dsavmm_dsa_dropped_portal_writes_total`.
    pub dropped_portal_writes: u64,
    /// `dsavmm_dsa_software_errors_total`.
    pub software_errors: u64,
    /// `dsavmm_vcpu_direct_stores_total` (MOVDIR64B emulated).
    pub direct_stores: u64,
}

/// Sum of the samples of metric `name` whose line contains `label` (every sample for "").
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

impl Counters {
    /// The counters in a `GET /metrics` answer.
    pub fn parse(metrics: &str) -> Counters {
        let sum = |name: &str| metric_sum(metrics, name, "");
        Counters {
            descriptors: sum("dsavmm_dsa_descriptors_total"),
            records_written: sum("dsavmm_dsa_records_written_total"),
            successes: metric_sum(
                metrics,
                "dsavmm_dsa_completions_by_status_total",
                "status=\"0x01\"",
            ),
            completion_interrupts: sum("dsavmm_dsa_completion_interrupts_total"),
            dropped_portal_writes: sum("dsavmm_dsa_dropped_portal_writes_total"),
            software_errors: sum("dsavmm_dsa_software_errors_total"),
            direct_stores: sum("dsavmm_vcpu_direct_stores_total"),
        }
    }

    /// What was counted since `earlier`.
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            descriptors: self.descriptors.wrapping_sub(earlier.descriptors),
            records_written: self.records_written.wrapping_sub(earlier.records_written),
            successes: self.successes.wrapping_sub(earlier.successes),
            completion_interrupts: self
                .completion_interrupts
                .wrapping_sub(earlier.completion_interrupts),
            dropped_portal_writes: self
                .dropped_portal_writes
                .wrapping_sub(earlier.dropped_portal_writes),
            software_errors: self.software_errors.wrapping_sub(earlier.software_errors),
            direct_stores: self.direct_stores.wrapping_sub(earlier.direct_stores),
        }
    }
}

/// The guest's `selftest: soak: ok ...` figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestSoak {
    /// Descriptors verified.
    pub descriptors: u64,
    /// Each vCPU's share, comma separated.
    pub per_vcpu: String,
    /// Descriptors that requested a completion interrupt.
    pub rci: u64,
    /// Completion interrupts the guest counted (several may merge into one).
    pub irqs: u64,
    /// Seconds from the first descriptor to the last, by the guest's TSC.
    pub seconds: f64,
}

/// The value of `key=` in a line of `key=value` words.
pub fn word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl GuestSoak {
    /// Parses the figures after `selftest: soak: ok`.
    pub fn parse(line: &str) -> Option<GuestSoak> {
        let rest = line.split_once("selftest: soak: ok ")?.1;
        let num = |k: &str| word(rest, k)?.parse().ok();
        Some(GuestSoak {
            descriptors: num("descriptors")?,
            per_vcpu: word(rest, "per_vcpu")?.to_string(),
            rci: num("rci")?,
            irqs: num("irqs")?,
            seconds: word(rest, "seconds")?.parse().ok()?,
        })
    }
}

/// Everything one soak run measured.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// The guest's figures.
    pub guest: GuestSoak,
    /// WQs the guest rotated over (from `info soak start`).
    pub wqs: u64,
    /// The API load.
    pub api: ApiCounts,
    /// The process before the first descriptor.
    pub start: Sample,
    /// The process after the last descriptor (the VM still running).
    pub end: Sample,
    /// The VMM's counters over the soak.
    pub counters: Counters,
    /// dsavmm's exit status after the `Shutdown` action.
    pub exit_code: Option<i32>,
}

impl SoakReport {
    /// RSS growth in KiB (negative when it shrank).
    pub fn rss_delta_kib(&self) -> i64 {
        self.end.rss_kib as i64 - self.start.rss_kib as i64
    }

    /// The summary line.
    pub fn line(&self) -> String {
        let g = &self.guest;
        format!(
            "bench: soak descriptors={} per_vcpu={} wqs={} rci={} api_requests={} api_bad={} \
             api_short_lived={} rss_start_kib={} rss_end_kib={} rss_delta_kib={} fds_start={} \
             fds_end={} threads_start={} threads_end={} seconds={:.1} descriptors_per_s={:.0} \
             api_requests_per_s={:.0}",
            g.descriptors,
            g.per_vcpu,
            self.wqs,
            g.rci,
            self.api.answered,
            self.api.bad,
            self.api.short_lived,
            self.start.rss_kib,
            self.end.rss_kib,
            self.rss_delta_kib(),
            self.start.fds,
            self.end.fds,
            self.start.threads,
            self.end.threads,
            g.seconds,
            g.descriptors as f64 / g.seconds.max(1e-3),
            self.api.answered as f64 / g.seconds.max(1e-3),
        )
    }

    /// Every bound or count the run violates (empty when it passed): `descriptors` and
    /// `api_requests` wanted, `rss_bound_kib` of growth allowed.
    pub fn problems(&self, descriptors: u64, api_requests: u64, rss_bound_kib: u64) -> Vec<String> {
        let mut p = Vec::new();
        let (c, g, a) = (&self.counters, &self.guest, &self.api);
        let mut want = |what: &str, got: u64, want: u64| {
            if got != want {
                p.push(format!("{what}: {got}, want {want}"));
            }
        };
        want(
            "descriptors verified by the guest",
            g.descriptors,
            descriptors,
        );
        want("VMM descriptors counted", c.descriptors, descriptors);
        want(
            "VMM completion records written",
            c.records_written,
            descriptors,
        );
        want("VMM successful completions", c.successes, descriptors);
        want("VMM MOVDIR64B emulated", c.direct_stores, descriptors);
        want("VMM completion interrupts", c.completion_interrupts, g.rci);
        want("VMM portal writes dropped", c.dropped_portal_writes, 0);
        want("VMM software errors", c.software_errors, 0);
        want("API requests unanswered", a.unanswered, 0);
        want("API answers with a wrong status or body", a.unexpected, 0);
        if a.answered < api_requests {
            p.push(format!(
                "{} API requests answered during the soak, want at least {api_requests} \
                 (more descriptors make the soak longer)",
                a.answered
            ));
        }
        if let Some(first) = &a.first_problem {
            p.push(format!("first API problem: {first}"));
        }
        if self.rss_delta_kib() > rss_bound_kib as i64 {
            p.push(format!(
                "RSS grew by {} KiB, bound {rss_bound_kib} KiB",
                self.rss_delta_kib()
            ));
        }
        if self.end.fds > self.start.fds {
            p.push(format!(
                "open fds grew from {} to {}",
                self.start.fds, self.end.fds
            ));
        }
        if self.end.threads > self.start.threads {
            p.push(format!(
                "threads grew from {} to {}",
                self.start.threads, self.end.threads
            ));
        }
        if self.exit_code != Some(0) {
            p.push(format!("dsavmm exit status {:?}, want 0", self.exit_code));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP dsavmm_dsa_descriptors_total d\n\
        # TYPE dsavmm_dsa_descriptors_total counter\n\
        dsavmm_dsa_descriptors_total{device=\"0\"} 600\n\
        dsavmm_dsa_descriptors_total{device=\"1\"} 400\n\
        dsavmm_dsa_descriptors_total_other{device=\"1\"} 7\n\
        dsavmm_dsa_records_written_total{device=\"0\"} 1000\n\
        dsavmm_dsa_completions_by_status_total{device=\"0\",status=\"0x01\"} 990\n\
        dsavmm_dsa_completions_by_status_total{device=\"0\",status=\"0x13\"} 10\n\
        dsavmm_dsa_completion_interrupts_total{device=\"0\"} 77\n\
        dsavmm_vcpu_direct_stores_total{vcpu=\"0\"} 500\n\
        dsavmm_vcpu_direct_stores_total{vcpu=\"1\"} 501\n\
        dsavmm_up 1\n";

    #[test]
    fn counters_from_metrics() {
        let c = Counters::parse(METRICS);
        assert_eq!(
            c,
            Counters {
                descriptors: 1000,
                records_written: 1000,
                successes: 990,
                completion_interrupts: 77,
                dropped_portal_writes: 0,
                software_errors: 0,
                direct_stores: 1001,
            }
        );
        assert_eq!(metric_sum(METRICS, "dsavmm_up", ""), 1);
        let before = Counters {
            descriptors: 100,
            ..c
        };
        assert_eq!(c.since(before).descriptors, 900);
        assert_eq!(c.since(before).records_written, 0);
    }

    #[test]
    fn guest_line() {
        let l = "selftest: soak: ok descriptors=20000 per_vcpu=10000,10000 rci=1538 irqs=1520 \
                 seconds=0.373";
        let g = GuestSoak::parse(l).unwrap();
        assert_eq!(
            (g.descriptors, g.per_vcpu.as_str(), g.rci, g.irqs),
            (20000, "10000,10000", 1538, 1520)
        );
        assert!((g.seconds - 0.373).abs() < 1e-9);
        assert!(GuestSoak::parse("selftest: soak: FAIL CPU index 0 ...").is_none());
        assert_eq!(word("a=1 bb=2 b=3", "b"), Some("3"));
    }

    fn passing() -> SoakReport {
        let n = 1000;
        SoakReport {
            guest: GuestSoak {
                descriptors: n,
                per_vcpu: "500,500".into(),
                rci: 76,
                irqs: 70,
                seconds: 0.5,
            },
            wqs: 8,
            api: ApiCounts {
                sent: 600,
                answered: 600,
                ..ApiCounts::default()
            },
            start: Sample {
                rss_kib: 70000,
                fds: 20,
                threads: 5,
            },
            end: Sample {
                rss_kib: 70100,
                fds: 20,
                threads: 5,
            },
            counters: Counters {
                descriptors: n,
                records_written: n,
                successes: n,
                completion_interrupts: 76,
                direct_stores: n,
                ..Counters::default()
            },
            exit_code: Some(0),
        }
    }

    #[test]
    fn checks() {
        let r = passing();
        assert_eq!(r.problems(1000, 500, 8192), Vec::<String>::new());
        assert!(r
            .line()
            .starts_with("bench: soak descriptors=1000 per_vcpu=500,500 wqs=8"));
        assert!(r.line().contains(" rss_delta_kib=100 "), "{}", r.line());
        assert_eq!(r.problems(1000, 601, 8192).len(), 1);
        assert_eq!(r.problems(1000, 500, 99).len(), 1);
        let mut r = passing();
        r.end.fds += 1;
        r.end.threads += 1;
        r.counters.descriptors -= 1;
        r.api.unanswered = 1;
        r.api.first_problem = Some("GET /metrics: no answer".into());
        r.exit_code = Some(1);
        assert_eq!(
            r.problems(1000, 500, 8192).len(),
            6,
            "{:?}",
            r.problems(1000, 500, 8192)
        );
    }
}
