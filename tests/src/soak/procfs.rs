//! What the soak samples of the dsavmm process: resident memory, open file descriptors and
//! threads, from `/proc/PID/status` and `/proc/PID/fd`.

use std::io;

/// One sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// `VmRSS` in KiB (guest RAM the guest touched is part of it).
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: u64,
    /// `Threads`.
    pub threads: u64,
}

/// The number after `key` (e.g. `VmRSS:`) in a `/proc/PID/status` text.
pub fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples process `pid`.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| {
        status_field(&status, key).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status has no {key}"),
            )
        })
    };
    let (rss_kib, threads) = (field("VmRSS:")?, field("Threads:")?);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Sample {
        rss_kib,
        fds,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let s = "Name:\tdsavmm\nVmPeak:\t  400000 kB\nVmRSS:\t   70212 kB\nThreads:\t5\n";
        assert_eq!(status_field(s, "VmRSS:"), Some(70212));
        assert_eq!(status_field(s, "Threads:"), Some(5));
        assert_eq!(status_field(s, "VmSwap:"), None);
        assert_eq!(status_field("VmRSS:\tlots kB\n", "VmRSS:"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.fds >= 3 && s.threads >= 1, "{s:?}");
    }
}
