//! Command-line interface (clap): `dsavmm` (built-in self-test), `dsavmm run ...`,
//! `dsavmm selftest [--hostile]`, `dsavmm selftest-image`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{DsaSpec, SerialMode};
use crate::seccomp::SeccompMode;

/// dsavmm: a KVM virtual machine monitor with a virtual Intel DSA.
#[derive(Parser, Debug)]
#[command(name = "dsavmm", version, about)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (or a tracing filter).
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,

    /// Serve the REST API on this UNIX socket. Alone, dsavmm waits for configuration; with
    /// `run`, it boots at once and serves the API for control and inspection. With an API the
    /// process stays up after the guest halts, until a `Shutdown` action or SIGTERM.
    #[arg(long, global = true, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// System-call filtering of every dsavmm thread (resources/seccomp/x86_64.json): enforce stops
    /// the process on a forbidden call (exit status 159) with a message naming it, log lets it run
    /// and has the kernel log it (audit type 1326), off installs no filter.
    #[arg(long, global = true, value_enum, default_value_t = SeccompMode::Enforce)]
    pub seccomp: SeccompMode,

    /// Configure the VM from a JSON file holding the API's documents (machine-config,
    /// boot-source, dsa, logger) and boot it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// What to do; with none (and no --api-sock/--config-file), boot the built-in self-test guest.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a guest kernel.
    Run(RunArgs),
    /// Boot the built-in self-test guest (the default).
    Selftest(SelftestArgs),
    /// Talk to a running dsavmm over its API socket (`dsavmm remote --api-sock PATH <verb>`).
    Remote {
        /// The request.
        #[command(subcommand)]
        verb: api::RemoteCommand,
    },
    /// Serve a virtual DSA to vfio-user clients (`dsavmm --dsa backend=vfio-user,socket=PATH`,
    /// QEMU's `-device vfio-user-pci`): one device of this geometry per client.
    DsaServer(DsaServerArgs),
    /// Write the built-in self-test guest ELF to a file (to boot it with `run` or another VMM).
    SelftestImage {
        /// Output path.
        #[arg(long)]
        output: PathBuf,
    },
}

/// `dsavmm dsa-server`.
#[derive(Args, Debug)]
pub struct DsaServerArgs {
    /// The UNIX socket to listen on (a stale one is replaced, a live one is an error).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Work queues, 1..=8.
    #[arg(long, default_value_t = 8)]
    pub wqs: u8,
    /// Engines, 1..=4.
    #[arg(long, default_value_t = 4)]
    pub engines: u8,
    /// Groups, 1..=4.
    #[arg(long, default_value_t = 4)]
    pub groups: u8,
    /// Sum of all WQ sizes (WQCAP.total_wq_size), wqs..=128.
    #[arg(long = "wq-size", default_value_t = 128)]
    pub wq_size: u16,
    /// Clients served at once, each with a device of its own.
    #[arg(long, default_value_t = 1)]
    pub max_clients: usize,
    /// BAR2 as offered to clients: mapped (shared pages a client may mmap, besides trapped
    /// stores) or trapped (region writes only).
    #[arg(long, default_value = "mapped")]
    pub portals: devices::vfio_user::client::PortalMode,
}

/// `dsavmm selftest`.
#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// Machine shape.
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Before the normal DSA cases, attack each DSA as a hostile guest would (random and
    /// adversarial register, configuration space, MSI-X and portal writes, bad descriptors and
    /// batches, a flood from every vCPU), then run the normal cases on the same device.
    #[arg(long)]
    pub hostile: bool,
    /// Seed of the hostile guest's random values (default: picked and printed by the guest).
    #[arg(long, requires = "hostile", value_name = "N")]
    pub seed: Option<u64>,
}

/// Machine shape shared by `run` and `selftest`.
#[derive(Args, Debug, Clone)]
pub struct MachineArgs {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u64,
    /// Guest console: stdout, none, or a file path.
    #[arg(long, default_value = "stdout")]
    pub serial: SerialMode,
    /// Attach a virtual DSA: `backend=software[,wqs=N][,engines=N][,groups=N][,wq-size=N]`
    /// (also `max-xfer-shift=21-26`, `max-batch-shift=5-10`; the two sum to at most 31;
    /// `exec=workers|inline`: engine threads, the default, or in the vCPU's exit), or
    /// `backend=vfio-user,socket=PATH[,portal=mapped|trapped]` for one a `dsavmm dsa-server`
    /// serves, or `backend=vfio,device=BDF[,wqs=LIST]` for physical WQs of a DSA bound to
    /// vfio-pci (repeatable: one PCI device each).
    #[arg(long = "dsa", value_name = "SPEC")]
    pub dsa: Vec<DsaSpec>,
    /// MOVDIR64B in the guest CPUID: auto (when the host CPU executes it), on, or off.
    #[arg(long, value_enum, default_value_t = Movdir64b::Auto)]
    pub movdir64b: Movdir64b,
}

/// Policy for advertising MOVDIR64B to the guest.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Movdir64b {
    /// Advertise it when the host CPU executes it (probed at start).
    Auto,
    /// Always advertise it (portal stores are emulated by dsavmm; stores to RAM need the CPU).
    On,
    /// Never advertise it.
    Off,
}

/// `dsavmm run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel: an ELF vmlinux (64-bit entry) or a bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs to load.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = crate::config::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Machine shape.
    #[command(flatten)]
    pub machine: MachineArgs,
}
