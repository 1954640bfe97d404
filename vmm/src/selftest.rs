//! The built-in self-test guest: a freestanding ELF (resources/guests/selftest) embedded at build
//! time, and the command line that tells it what to expect.

/// The guest ELF.
pub static SELFTEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/selftest.elf"));

use crate::cli::Command;

/// Command line keys that let the guest check the boot contract exactly, and select its hostile
/// mode (`selftest.hostile=1`, `selftest.seed=N`) for `dsavmm selftest --hostile [--seed N]`.
pub fn expectations(memory_mib: u64, vcpus: u8, command: Option<&Command>) -> String {
    let mut s = format!("console=ttyS0 selftest.mem_mib={memory_mib} selftest.vcpus={vcpus}");
    if let Some(Command::Selftest(a)) = command {
        if a.hostile {
            s.push_str(" selftest.hostile=1");
        }
        if let Some(seed) = a.seed {
            s.push_str(&format!(" selftest.seed={seed}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn cmdline(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).expect("parses");
        expectations(64, 2, cli.command.as_ref())
    }

    #[test]
    fn hostile_keys_only_with_the_flag() {
        let base = "console=ttyS0 selftest.mem_mib=64 selftest.vcpus=2";
        assert_eq!(cmdline(&["dsavmm"]), base);
        assert_eq!(cmdline(&["dsavmm", "selftest"]), base);
        assert_eq!(
            cmdline(&["dsavmm", "selftest", "--hostile"]),
            format!("{base} selftest.hostile=1")
        );
        assert_eq!(
            cmdline(&["dsavmm", "selftest", "--hostile", "--seed", "42"]),
            format!("{base} selftest.hostile=1 selftest.seed=42")
        );
        assert!(Cli::try_parse_from(["dsavmm", "selftest", "--seed", "1"]).is_err());
    }
}
