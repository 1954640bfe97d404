//! Tests that cannot run here say so loudly, and fail where the environment promises they can run.
//!
//! A test that needs `/dev/kvm` calls [`kvm_or_skip`] first: where `/dev/kvm` opens it runs; where it
//! does not, it prints `SKIPPED: <test>: /dev/kvm not available (<why>)` on the process's real stderr
//! (past libtest's output capture, so the line shows in a plain `cargo test` too) and returns, unless
//! `DSAVMM_REQUIRE_KVM=1` (set by `.ci/run`), where the missing KVM is a failure.

use std::io::Write;

/// The environment variable that turns a missing `/dev/kvm` from a skip into a failure.
pub const REQUIRE_KVM: &str = "DSAVMM_REQUIRE_KVM";

/// Prints `SKIPPED: <test>: <why>` on stderr, bypassing libtest's capture of `eprintln!` (which
/// would hide the line of a passing test).
pub fn report_skip(test: &str, why: &str) {
    let line = format!("SKIPPED: {test}: {why}\n");
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

/// Prints a `NOTE: <test>: <text>` line the same way (for a reduced run that still passes).
pub fn report_note(test: &str, text: &str) {
    let line = format!("NOTE: {test}: {text}\n");
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

/// Whether `DSAVMM_REQUIRE_KVM=1`.
pub fn kvm_required() -> bool {
    std::env::var(REQUIRE_KVM).as_deref() == Ok("1")
}

/// Whether `/dev/kvm` opens read-write; `Err` says why not.
pub fn dev_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm not available ({e})"))
}

/// `true` when test `test` can use `/dev/kvm`. Otherwise prints the skip line and returns `false`,
/// or panics when `DSAVMM_REQUIRE_KVM=1`.
pub fn kvm_or_skip(test: &str) -> bool {
    gate(test, dev_kvm(), kvm_required())
}

/// The decision of [`kvm_or_skip`] for a given availability and requirement.
fn gate(test: &str, available: Result<(), String>, required: bool) -> bool {
    match available {
        Ok(()) => true,
        Err(why) if required => {
            panic!("{test}: {why}, and {REQUIRE_KVM}=1 says this machine must have it")
        }
        Err(why) => {
            report_skip(test, &why);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_runs() {
        assert!(gate("t", Ok(()), false));
        assert!(gate("t", Ok(()), true));
    }

    #[test]
    fn missing_skips_when_not_required() {
        assert!(!gate(
            "t",
            Err("/dev/kvm not available (gone)".into()),
            false
        ));
    }

    #[test]
    #[should_panic(expected = "t: /dev/kvm not available (gone), and DSAVMM_REQUIRE_KVM=1")]
    fn missing_fails_when_required() {
        gate("t", Err("/dev/kvm not available (gone)".into()), true);
    }
}
