//! The 16550 console on COM1: a thin wrapper that lets `vm-superio` do the UART, with output to
//! stdout, a file or nowhere, input from the event loop, and the interrupt on an irqfd.
//!
//! A 16550's interrupt output is a level: high while a condition (THR empty, data received) is
//! both pending and enabled, until the driver reads IIR (or RBR). The guest's IOAPIC pin for
//! COM1 is edge-triggered and an irqfd delivers edges, so `vm-superio` raises one edge when a
//! condition becomes pending and none after it while IIR still shows it. One edge lost on the
//! way (anywhere between this eventfd and the guest's handler: KVM's IOAPIC while the pin is
//! masked, a nested hypervisor, an emulated CPU) then stalls the console for good: Linux's 8250
//! driver sets IER.THRI only when its shadow lacks it and otherwise waits for the THRE interrupt,
//! so its tty writers sleep forever with the transmit FIFO full. [`SerialConsole::resample`],
//! called periodically, re-raises an interrupt that has stayed pending and enabled for a whole
//! period without the guest reading IIR, as a level line would keep asking. A driver that is
//! keeping up reads IIR within microseconds of an edge, so it never sees the extra edge; one that
//! missed an edge gets it again.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// Where the guest's console output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// IIR's offset in the 8-port window.
const IIR_OFFSET: u64 = 2;
/// IER bits of the two conditions vm-superio models, and their IIR bits.
const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;

/// The COM1 bus device (8 ports).
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, SerialOut>,
    /// Accesses of a size other than one byte, ignored.
    pub bad_accesses: u64,
    /// Times [`SerialConsole::resample`] raised an interrupt again (a lost edge recovered).
    pub reraised_interrupts: u64,
    /// IIR reads by the guest, all told.
    iir_reads: u64,
    /// `iir_reads` and whether an interrupt was pending at the previous resample.
    last_sample: (u64, bool),
    last_sample_at: Option<Instant>,
}

/// The shortest time an interrupt must stay asserted and unserviced before
/// [`SerialConsole::resample`] raises it again: far above a guest's interrupt latency, even
/// nested under an emulated CPU, and short enough that a lost edge costs a pause, not a hang.
pub const RESAMPLE_PERIOD: Duration = Duration::from_millis(100);

impl SerialConsole {
    /// A console that raises `irq` (an irqfd for GSI 4) and writes to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(irq), out),
            bad_accesses: 0,
            reraised_interrupts: 0,
            iir_reads: 0,
            last_sample: (0, false),
            last_sample_at: None,
        }
    }

    /// Whether the UART's interrupt output is asserted: a condition pending and enabled.
    pub fn interrupt_asserted(&self) -> bool {
        let st = self.uart.state();
        let (iir, ier) = (st.interrupt_identification, st.interrupt_enable);
        (iir & IIR_THRI != 0 && ier & IER_THRI != 0) || (iir & IIR_RDI != 0 && ier & IER_RDI != 0)
    }

    /// [`SerialConsole::resample_now`] at most once per [`RESAMPLE_PERIOD`]; call it as often
    /// as convenient (the VMM's event loop does, at least every 200 ms).
    pub fn resample(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_sample_at
            .is_some_and(|t| now.duration_since(t) < RESAMPLE_PERIOD)
        {
            return false;
        }
        self.last_sample_at = Some(now);
        self.resample_now()
    }

    /// Raises the interrupt again when it was asserted at the previous call and still is, and
    /// the guest has not read IIR in between, i.e. its handler never ran for the edge (see the
    /// module documentation). Returns whether it did.
    pub fn resample_now(&mut self) -> bool {
        let asserted = self.interrupt_asserted();
        let (reads_then, asserted_then) = self.last_sample;
        self.last_sample = (self.iir_reads, asserted);
        if !(asserted && asserted_then && reads_then == self.iir_reads) {
            return false;
        }
        if let Err(e) = self.uart.interrupt_evt().trigger() {
            tracing::warn!("serial: raising the interrupt again failed: {e}");
            return false;
        }
        self.reraised_interrupts += 1;
        let st = self.uart.state();
        let msg = format!(
            "serial: the guest left an interrupt unserviced (IER {:#04x}, IIR {:#04x}): an edge \
             was lost on the way to its handler; raised it again ({} so far)",
            st.interrupt_enable, st.interrupt_identification, self.reraised_interrupts
        );
        if self.reraised_interrupts <= 3 {
            tracing::warn!("{msg}");
        } else {
            tracing::debug!("{msg}");
        }
        true
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
            [b] => {
                if offset == IIR_OFFSET {
                    self.iir_reads += 1;
                }
                *b = self.uart.read(offset as u8);
            }
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

    fn iir(s: &mut SerialConsole) -> u8 {
        let mut b = [0u8];
        s.read(0x3f8, IIR_OFFSET, &mut b);
        b[0]
    }

    /// An edge the guest never handled (IIR unread for two periods) is raised again; one the
    /// guest handled, or an interrupt that is not enabled, is not.
    #[test]
    fn a_lost_edge_is_raised_again() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let probe = irq.try_clone().unwrap();
        let edges = || probe.read().unwrap_or(0);
        let mut s = SerialConsole::new(irq, Box::new(io::sink()));
        let _ = iir(&mut s);
        assert!(!s.resample_now());
        // THRI enabled with THR empty: one edge, which we pretend was lost.
        s.write(0x3f8, 1, &[IER_THRI]);
        assert_eq!(edges(), 1);
        assert!(s.interrupt_asserted());
        assert!(!s.resample_now(), "asserted for less than a period");
        assert!(s.resample_now(), "asserted and unread for a whole period");
        assert_eq!(edges(), 1, "the edge again");
        assert!(s.resample_now(), "and again while the guest does not come");
        assert_eq!(s.reraised_interrupts, 2);
        let _ = edges();
        // The guest's handler reads IIR: nothing more.
        assert_eq!(iir(&mut s) & 0x0f, IIR_THRI);
        assert!(!s.interrupt_asserted());
        assert!(!s.resample_now());
        assert!(!s.resample_now());
        assert_eq!(edges(), 0);
        // A guest that keeps up (reads IIR between samples) never gets an extra edge.
        for _ in 0..5 {
            s.write(0x3f8, 0, b"x");
            assert!(!s.resample_now());
            let _ = iir(&mut s);
        }
        // Pending but not enabled: not an interrupt.
        s.write(0x3f8, 1, &[0]);
        s.write(0x3f8, 0, b"y");
        assert!(!s.resample_now());
        assert!(!s.resample_now());
        assert_eq!(s.reraised_interrupts, 2);
        // The rate-limited form samples once per period.
        s.write(0x3f8, 1, &[IER_THRI]);
        let _ = s.resample();
        assert!(
            !s.resample(),
            "a second sample within the period is skipped"
        );
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
