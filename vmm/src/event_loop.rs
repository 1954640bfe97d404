//! The VMM thread's event loop (`event-manager`): it wakes on the end of the VM, on API
//! requests (channel + eventfd), and on host terminal input for the guest console. A request
//! never waits on a vCPU: the controller answers from its own state.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use api::ApiMessage;
use devices::legacy::serial::SerialConsole;
use devices::legacy::ExitSignal;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

use crate::controller::Controller;

/// Shared subscriber type held by the manager.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Set by SIGTERM/SIGINT.
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERMINATE.store(true, Ordering::Release);
}

/// Makes SIGTERM and SIGINT end the VMM cleanly (socket removed, vCPUs joined).
pub fn install_termination_handlers() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        register_signal_handler(sig, on_terminate)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

/// Wakes the loop when the VM must end (the main loop then halts it).
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            tracing::error!("cannot watch the exit event: {e:?}");
        }
    }
}

/// Moves bytes typed on the host terminal into the console's receive FIFO.
struct StdinInput {
    serial: Arc<Mutex<Option<Arc<Mutex<SerialConsole>>>>>,
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        let slot = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(serial) = slot else {
            // No VM yet: leave the input in the terminal.
            return;
        };
        let mut buf = [0u8; 64];
        let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.input_room().min(buf.len());
        let n = if room == 0 {
            0
        } else {
            stdin.lock().read(&mut buf[..room]).unwrap_or(0)
        };
        if (n == 0 && room > 0) || events.event_set().contains(EventSet::HANG_UP) {
            // EOF or hang-up: stop watching, keep the VM running.
            let _ = ops.remove(Events::new(&stdin, EventSet::IN));
            return;
        }
        if let Err(e) = serial.enqueue_input(&buf[..n]) {
            tracing::debug!("console input dropped: {e}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&std::io::stdin(), EventSet::IN)) {
            tracing::debug!("not reading stdin: {e:?}");
        }
    }
}

/// Answers API requests on the VMM thread.
struct ApiInput {
    rx: Receiver<ApiMessage>,
    evt: EventFd,
    controller: Arc<Mutex<Controller>>,
}

impl MutEventSubscriber for ApiInput {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        while let Ok(msg) = self.rx.try_recv() {
            let mut c = self.controller.lock().unwrap_or_else(|e| e.into_inner());
            msg.respond(|req| c.handle(req));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("cannot watch API requests: {e:?}");
        }
    }
}

/// The loop and its subscribers.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    controller: Arc<Mutex<Controller>>,
    /// Keep running after the VM halts (an API client may still read its state).
    serve_after_halt: bool,
}

impl EventLoop {
    /// A loop over `controller`'s VM, feeding a terminal stdin to its console.
    pub fn new(controller: Arc<Mutex<Controller>>) -> std::io::Result<Self> {
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let (exit, serial) = {
            let c = controller.lock().unwrap_or_else(|e| e.into_inner());
            (c.exit_signal().clone(), c.serial_slot.clone())
        };
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit))));
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(std::io::stdin().as_raw_fd()) } == 1 {
            manager.add_subscriber(Arc::new(Mutex::new(StdinInput { serial })));
        }
        Ok(Self {
            manager,
            controller,
            serve_after_halt: false,
        })
    }

    /// Serves API requests arriving on `rx`, announced by `evt`.
    pub fn add_api(&mut self, rx: Receiver<ApiMessage>, evt: EventFd) {
        self.serve_after_halt = true;
        self.manager.add_subscriber(Arc::new(Mutex::new(ApiInput {
            rx,
            evt,
            controller: self.controller.clone(),
        })));
    }

    /// Runs until the process should end; returns the exit code.
    pub fn run(&mut self) -> i32 {
        loop {
            if let Err(e) = self.manager.run_with_timeout(200) {
                tracing::error!("event loop: {e:?}");
            }
            let mut c = self.controller.lock().unwrap_or_else(|e| e.into_inner());
            c.poll();
            if TERMINATE.load(Ordering::Acquire) {
                tracing::info!("terminated by signal");
                c.shutdown();
            }
            if c.should_quit()
                || (c.state() == api::types::InstanceState::Halted && !self.serve_after_halt)
            {
                return c.exit_code();
            }
        }
    }
}
