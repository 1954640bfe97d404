//! The 16550 console on COM1: a thin wrapper that lets `vm-superio` do the UART, with output to
//! stdout, a file or nowhere, input from the event loop, and the interrupt on an irqfd.

use std::io::{self, Write};

use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// Where the guest's console output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// The COM1 bus device (8 ports).
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, SerialOut>,
    /// Accesses of a size other than one byte, ignored.
    pub bad_accesses: u64,
}

impl SerialConsole {
    /// A console that raises `irq` (an irqfd for GSI 4) and writes to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(irq), out),
            bad_accesses: 0,
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.uart
            .enqueue_raw_bytes(bytes)
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }

    /// Free room in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Flushes buffered console output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match data {
            [b] => *b = self.uart.read(offset as u8),
            _ => {
                self.bad_accesses += 1;
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match data {
            [b] => {
                if let Err(e) = self.uart.write(offset as u8, *b) {
                    tracing::warn!("serial write failed: {e:?}");
                }
            }
            _ => self.bad_accesses += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_bad_sizes() {
        let sink = Sink::default();
        let mut s = SerialConsole::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        s.write(0x3f8, 0, b"h");
        s.write(0x3f8, 0, b"ij");
        let mut two = [0u8; 2];
        s.read(0x3f8, 5, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        assert_eq!(s.bad_accesses, 2);
        assert_eq!(&*sink.0.lock().unwrap(), b"h");
    }
}
