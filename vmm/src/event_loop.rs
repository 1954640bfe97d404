//! The VMM thread's event loop (`event-manager`): it waits for the end of the VM and feeds host
//! terminal input to the guest console. Later subscribers (the API) plug in here.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::legacy::serial::SerialConsole;
use devices::legacy::ExitSignal;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

/// Shared subscriber type held by the manager.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the loop when the VM must end.
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
    serial: Arc<Mutex<SerialConsole>>,
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.input_room().min(buf.len());
        let n = if room == 0 {
            0
        } else {
            stdin.lock().read(&mut buf[..room]).unwrap_or(0)
        };
        if n == 0 || events.event_set().contains(EventSet::HANG_UP) {
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

/// The loop and its subscribers.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
}

impl EventLoop {
    /// A loop that ends with `exit` and, when stdin is a terminal, feeds it to `serial`.
    pub fn new(exit: Arc<ExitSignal>, serial: Arc<Mutex<SerialConsole>>) -> std::io::Result<Self> {
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(std::io::stdin().as_raw_fd()) } == 1 {
            manager.add_subscriber(Arc::new(Mutex::new(StdinInput { serial })));
        }
        Ok(Self { manager, exit })
    }

    /// Adds another subscriber (e.g. the API).
    pub fn add(&mut self, s: Subscriber) {
        self.manager.add_subscriber(s);
    }

    /// Runs until the VM must end.
    pub fn run(&mut self) {
        while !self.exit.is_set() {
            if let Err(e) = self.manager.run_with_timeout(500) {
                tracing::error!("event loop: {e:?}");
                break;
            }
        }
    }
}
