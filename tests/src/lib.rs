//! Integration test harness for dsavmm.
//!
//! The centre is the nested KVM test rig ([`NestedVm`]): this project's machines have no VT-x/SVM and
//! their own `/dev/kvm` (PVM) cannot boot a stock Linux, so QEMU 7.2 in software emulation (TCG,
//! `-cpu max`, an AMD CPU with SVM and nested paging) boots Debian's 6.12 kernel as L1, L1 loads
//! `kvm_amd`, and dsavmm runs on L1's `/dev/kvm` to boot the L2 guest under test. On a host with a
//! hardware-backed KVM the same runs execute dsavmm directly ([`Mode::Auto`]).
//!
//! The shell scripts in `resources/rig/` and `resources/guests/linux/` build the artifacts (Debian
//! packages unpacked into `$DSAVMM_CACHE`, default `target/cache`, keyed by version and content hash);
//! this crate owns orchestration, timeouts and parsing.
//!
//! ```no_run
//! use tests::{LinuxGuest, NestedVm, L2_CMDLINE, L2_MARKER};
//! # fn main() -> Result<(), tests::RigError> {
//! let guest = LinuxGuest::get()?;
//! let out = NestedVm::new()
//!     .dsavmm(tests::dsavmm_binary()?)
//!     .l2_kernel(&guest.vmlinux)
//!     .l2_initramfs(&guest.boot_initramfs)
//!     .run(&["run", "--kernel", NestedVm::L2_KERNEL, "--initramfs", NestedVm::L2_INITRAMFS,
//!            "--cmdline", L2_CMDLINE, "--vcpus", "2"])?;
//! let marker = out.expect_line(0, tests::Layer::L2, L2_MARKER)?;
//! assert!(marker.text.contains("nproc=2"));
//! # Ok(()) }
//! ```

pub mod api_run;
pub mod dpdk;
pub mod env;
pub mod guest;
pub mod idxd;
pub mod oops;
pub mod parse;
pub mod qemu;
pub mod rig;
pub mod selftest;
pub mod skip;
pub mod soak;

pub use api_run::{api_counters, api_run, api_script};
pub use dpdk::{CopyBench, DmadevInstance, DmadevRun, DpdkReport};
pub use env::{dsavmm_binary, hw_kvm, target_dir, workspace_root};
pub use guest::{DpdkGuest, GuestKernel, IdxdGuest, LinuxGuest, L2_CMDLINE, L2_MARKER};
pub use idxd::{Dmatest, DmatestBytes, IdxdReport, Step, StepStatus};
pub use parse::{Layer, Line, RunOutcome};
pub use qemu::{patched_qemu, PatchedQemu};
pub use rig::{Mode, NestedVm, RigOutput, Run};
pub use selftest::{host_movdir64b_expected, host_user_mode_lacks_movdir64b, SelftestReport};
pub use skip::{kvm_or_skip, report_note, report_skip};

/// A rig failure: the layer that failed, what happened, and that layer's last output lines.
/// `Debug` prints the same text as `Display` (a test returning `Err` shows a readable message).
#[derive(thiserror::Error)]
#[error("nested rig: {layer} failed: {message}{}", format_tail(.last_lines, .log.as_deref()))]
pub struct RigError {
    /// The layer that failed.
    pub layer: Layer,
    /// One line saying what went wrong.
    pub message: String,
    /// The last output lines of the failed layer (and of the layers around it, tagged).
    pub last_lines: Vec<String>,
    /// The full tagged transcript on disk, when one was written.
    pub log: Option<std::path::PathBuf>,
    /// Everything that was collected, when the rig got as far as running.
    pub output: Option<Box<RigOutput>>,
}

fn format_tail(lines: &[String], log: Option<&std::path::Path>) -> String {
    let mut s = String::new();
    if !lines.is_empty() {
        s.push_str("\n--- last lines ---\n");
        s.push_str(&lines.join("\n"));
    }
    if let Some(log) = log {
        s.push_str(&format!("\n--- full transcript: {} ---", log.display()));
    }
    s
}

impl std::fmt::Debug for RigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl RigError {
    /// A failure of `layer` without collected output.
    pub fn new(layer: Layer, message: impl Into<String>, last_lines: Vec<String>) -> Self {
        RigError {
            layer,
            message: message.into(),
            last_lines,
            log: None,
            output: None,
        }
    }
}
