//! `dsavmm`: boots a guest on KVM with a virtual Intel DSA. This file is the binary's edge:
//! argument parsing, logging, and turning every error into one line on stderr and an exit code.

mod boot;
mod cli;
mod config;
mod controller;
mod direct_store;
mod dsa_handle;
mod event_loop;
mod host;
mod insn;
mod logger;
mod pagewalk;
mod seccomp;
mod selftest;
mod vcpu;
mod vm;

use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context};
use clap::Parser;

use cli::{Cli, Command, MachineArgs, Movdir64b};
use controller::Controller;
use logger::LogControl;
use seccomp::{Filter, SeccompMode, ThreadKind};

/// Decides whether the guest sees MOVDIR64B, warning when it will not.
fn movdir64b_policy(p: Movdir64b) -> bool {
    match p {
        Movdir64b::On => {
            if !host::hardware_virtualization() {
                eprintln!(
                    "dsavmm: warning: /dev/kvm is not hardware-backed (no vmx/svm): KVM may strip \
                     MOVDIR64B from the guest CPUID, and then the Linux idxd driver will refuse to load"
                );
            }
            true
        }
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
    }
}

/// Applies the machine shape and DSA devices of the CLI to the controller.
fn apply_machine(c: &mut Controller, m: &MachineArgs) -> anyhow::Result<()> {
    let vcpus = u32::try_from(m.vcpus).unwrap_or(u32::MAX);
    if m.vcpus == 0 || m.vcpus > u64::from(config::MAX_VCPUS) {
        bail!(config::ConfigError::Vcpus(
            m.vcpus,
            u64::from(config::MAX_VCPUS)
        ));
    }
    config::check_memory(m.memory, config::host_memory_mib())?;
    c.handle(api::ApiRequest::PutMachineConfig(
        api::types::MachineConfig {
            vcpus,
            memory_mib: m.memory,
        },
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if m.dsa.len() > api::types::dsa_limits::MAX_DEVICES {
        bail!(
            "--dsa is given {} times: at most {} DSA devices are supported (one PCI slot each \
             on bus 0)",
            m.dsa.len(),
            api::types::dsa_limits::MAX_DEVICES
        );
    }
    for d in &m.dsa {
        c.add_cli_dsa(d).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

fn real_main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    if cli.seccomp != SeccompMode::Off {
        seccomp::install_sigsys_handler()?;
        // A backtrace needs calls no filter allows (getcwd, /proc/self/maps): the message and
        // location alone, so that a panic is reported as one and not as a seccomp stop.
        std::panic::set_hook(Box::new(|info| eprintln!("dsavmm: error: panic: {info}")));
    }
    if let Some(Command::Remote { verb }) = &cli.command {
        Filter::new(ThreadKind::Client, cli.seccomp).install()?;
        let sock = cli
            .api_sock
            .as_deref()
            .context("remote needs --api-sock PATH")?;
        let out = api::run_remote(sock, verb).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !out.is_empty() {
            use std::io::Write;
            // A closed pipe (`remote ... | head`) is not an error of the request.
            match writeln!(std::io::stdout(), "{out}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(e).context("cannot write to stdout")
                }
                _ => {}
            }
        }
        return Ok(0);
    }
    if let Some(Command::SelftestImage { output }) = &cli.command {
        Filter::new(ThreadKind::Main, cli.seccomp).install()?;
        std::fs::write(output, selftest::SELFTEST_ELF)
            .with_context(|| format!("cannot write {}", output.display()))?;
        return Ok(0);
    }

    let log = Arc::new(LogControl::init(&cli.log_level)?);
    if let Some(Command::DsaServer(args)) = &cli.command {
        return dsa_server(args, cli.seccomp);
    }
    event_loop::install_termination_handlers().context("cannot install signal handlers")?;

    let default_machine = MachineArgs {
        memory: 64,
        vcpus: 1,
        serial: config::SerialMode::Stdout,
        movdir64b: Movdir64b::Auto,
        dsa: Vec::new(),
    };
    let api_only = cli.command.is_none() && (cli.api_sock.is_some() || cli.config_file.is_some());
    let machine = match &cli.command {
        Some(Command::Run(r)) => r.machine.clone(),
        Some(Command::Selftest(s)) => s.machine.clone(),
        _ => default_machine,
    };
    let mut controller = Controller::new(
        Some(log),
        machine.serial.clone(),
        movdir64b_policy(machine.movdir64b),
    )
    .context("cannot create the VM exit event")?;
    controller.set_seccomp(cli.seccomp);

    let mut boot_now = false;
    match &cli.command {
        Some(Command::Run(r)) => {
            apply_machine(&mut controller, &r.machine)?;
            controller
                .handle(api::ApiRequest::PutBootSource(api::types::BootSource {
                    kernel_image_path: r.kernel.display().to_string(),
                    initrd_path: r.initramfs.as_ref().map(|p| p.display().to_string()),
                    boot_args: Some(r.cmdline.clone()),
                }))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            boot_now = true;
        }
        Some(Command::Selftest(_)) | None if !api_only => {
            apply_machine(&mut controller, &machine)?;
            if machine.dsa.is_empty() {
                controller
                    .add_cli_dsa(&config::DsaSpec::Software(
                        devices::dsa::DsaConfig::default(),
                    ))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let vcpus = machine.vcpus as u8;
            controller.set_builtin_kernel(
                selftest::SELFTEST_ELF,
                selftest::expectations(machine.memory, vcpus, cli.command.as_ref()),
            );
            boot_now = true;
        }
        _ => {}
    }
    if let Some(path) = &cli.config_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg = api::types::parse_config_file(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        let has_boot = cfg.boot_source.is_some();
        for req in cfg.into_requests() {
            controller
                .handle(req)
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        }
        if has_boot {
            boot_now = true;
        } else if cli.api_sock.is_none() {
            bail!(
                "config file {} has no boot-source and there is no --api-sock to add one",
                path.display()
            );
        }
    }

    let controller = Arc::new(Mutex::new(controller));
    let mut events =
        event_loop::EventLoop::new(controller.clone()).context("cannot create the event loop")?;
    let _api_server = match &cli.api_sock {
        Some(path) => {
            let (tx, rx) = mpsc::channel();
            let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
                .context("cannot create the API eventfd")?;
            let wake = evt.try_clone().context("cannot clone the API eventfd")?;
            let filter = Arc::new(Filter::new(ThreadKind::Api, cli.seccomp));
            let options = api::ApiServerOptions {
                thread_start: Some(api::ThreadStart(Arc::new(move || {
                    filter.install().map_err(|e| e.to_string())
                }))),
                ..Default::default()
            };
            let server = api::start_api_server_with(path, tx, wake, options)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            events.add_api(rx, evt);
            tracing::info!("API listening on {}", path.display());
            Some(server)
        }
        None => None,
    };
    // From here on the main thread reads API requests and guest-driven events.
    Filter::new(ThreadKind::Main, cli.seccomp).install()?;
    if boot_now {
        controller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start()?;
    }
    Ok(events.run())
}

/// Raises the soft limit on open descriptors to the hard one: each client holds its DMA
/// windows' descriptors (at most 1024), its eventfds and sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct on our own stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("cannot raise RLIMIT_NOFILE");
            }
        }
    }
}

/// `dsavmm dsa-server`: serves until killed.
fn dsa_server(a: &cli::DsaServerArgs, seccomp: SeccompMode) -> anyhow::Result<i32> {
    use devices::vfio_user::client::PortalMode;
    use devices::vfio_user::server::{DsaServer, ServerOptions};
    let dsa = devices::dsa::DsaConfig {
        wqs: a.wqs,
        engines: a.engines,
        groups: a.groups,
        total_wq_size: a.wq_size,
        ..Default::default()
    };
    raise_fd_limit();
    let filter = Arc::new(Filter::new(ThreadKind::DsaServer, seccomp));
    let server = DsaServer::bind(ServerOptions {
        socket: a.socket.clone(),
        dsa,
        max_clients: a.max_clients,
        mmap_portals: a.portals == PortalMode::Mapped,
        thread_start: Some(Arc::new(move |_role| {
            filter.install().map_err(|e| e.to_string())
        })),
    })
    .with_context(|| format!("dsa-server on {}", a.socket.display()))?;
    tracing::info!(
        "dsa-server listening on {} ({dsa:?}, at most {} clients)",
        a.socket.display(),
        a.max_clients
    );
    server
        .run(&std::sync::atomic::AtomicBool::new(false))
        .context("dsa-server")?;
    Ok(0)
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
