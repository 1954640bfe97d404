//! `dsavmm`: boots a guest on KVM with a virtual Intel DSA. This file is the binary's edge:
//! argument parsing, logging, and turning every error into one line on stderr and an exit code.

mod boot;
mod cli;
mod config;
mod event_loop;
mod host;
mod insn;
mod pagewalk;
mod selftest;
mod vcpu;
mod vm;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, MachineArgs, Movdir64b};
use config::{KernelImage, VmSpec};

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn spec_for_selftest(m: &MachineArgs) -> VmSpec {
    VmSpec {
        kernel: KernelImage::Embedded(selftest::SELFTEST_ELF),
        initramfs: None,
        cmdline: selftest::expectations(m.memory, m.vcpus.min(255) as u8),
        memory_mib: m.memory,
        vcpus: m.vcpus.min(255) as u8,
        serial: m.serial.clone(),
        dsa: if m.dsa.is_empty() {
            vec![devices::dsa::DsaConfig::default()]
        } else {
            m.dsa.clone()
        },
    }
}

/// Boots `spec` and waits for the guest to end; returns the exit code.
fn boot_and_wait(spec: &VmSpec, m: &MachineArgs) -> anyhow::Result<i32> {
    if m.vcpus > 255 || m.vcpus == 0 {
        return Err(config::ConfigError::Vcpus(m.vcpus, u64::from(config::MAX_VCPUS)).into());
    }
    let force = match m.movdir64b {
        Movdir64b::On => true,
        Movdir64b::Off => false,
        Movdir64b::Auto => {
            let host = host::cpu_executes_movdir64b();
            if !host {
                eprintln!(
                    "dsavmm: warning: the host CPU does not execute MOVDIR64B, so the guest CPUID \
                     does not show it and the Linux idxd driver will refuse to load \
                     (--movdir64b on forces it; portal stores are emulated)"
                );
            }
            host
        }
    };
    if force && !host::hardware_virtualization() {
        eprintln!(
            "dsavmm: warning: /dev/kvm is not hardware-backed (no vmx/svm): MOVDIR64B may be \
             stripped from the guest CPUID, and then the Linux idxd driver will refuse to load"
        );
    }
    let mut vm = vm::Vm::build(spec, force)?;
    let mut events = event_loop::EventLoop::new(vm.exit.clone(), vm.serial.clone())
        .context("cannot create the event loop")?;
    vm.start()?;
    events.run();
    let reason = vm.stop();
    let resident = vm.guest_resident_bytes() >> 10;
    let peak = host::peak_rss_kib().unwrap_or(0);
    tracing::info!(
        "VM ended: {reason:?}; VMM peak RSS {peak} KiB, guest RAM resident {resident} KiB, overhead {} KiB",
        peak.saturating_sub(resident)
    );
    Ok(reason.exit_code())
}

fn real_main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    init_logging(&cli.log_level)?;
    match cli.command {
        None => {
            let m = MachineArgs {
                memory: 64,
                vcpus: 1,
                serial: config::SerialMode::Stdout,
                movdir64b: Movdir64b::Auto,
                dsa: Vec::new(),
            };
            boot_and_wait(&spec_for_selftest(&m), &m)
        }
        Some(Command::Selftest(m)) => boot_and_wait(&spec_for_selftest(&m), &m),
        Some(Command::Run(r)) => {
            let spec = VmSpec {
                kernel: KernelImage::Path(r.kernel),
                initramfs: r.initramfs,
                cmdline: r.cmdline,
                memory_mib: r.machine.memory,
                vcpus: r.machine.vcpus.min(255) as u8,
                serial: r.machine.serial.clone(),
                dsa: r.machine.dsa.clone(),
            };
            boot_and_wait(&spec, &r.machine)
        }
        Some(Command::SelftestImage { output }) => {
            std::fs::write(&output, selftest::SELFTEST_ELF)
                .with_context(|| format!("cannot write {}", output.display()))?;
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("dsavmm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
