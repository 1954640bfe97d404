//! The COM1 console under a flood from several vCPUs (issue 16, "a hang seen in the rig").
//!
//! The device is driven through the PIO bus exactly as vCPU threads drive it, and the guest side
//! is a model of what Linux's 8250 driver does (drivers/tty/serial/8250/8250_port.c, 6.12):
//!
//! * tty writers (one per vCPU) put a whole line into the port's transmit FIFO under the port
//!   lock, then `start_tx`: set IER.THRI only if the driver's shadow IER lacks it, and otherwise
//!   rely on a THRE interrupt still to come. A writer whose FIFO is full sleeps until the
//!   interrupt handler wakes it, as `n_tty_write` does; nothing else ever drains the FIFO.
//! * the interrupt handler waits for an edge on the irqfd (the eventfd the device triggers),
//!   then reads IIR **outside** the port lock, as `serial8250_default_handle_irq` does, and while
//!   IIR reports an interrupt, takes the lock and transmits up to 16 bytes when LSR.THRE and the
//!   shadow IER.THRI are set (`serial8250_tx_chars`), stopping the transmitter (clearing THRI)
//!   when the FIFO is empty (`__stop_tx`).
//! * a printk console writer masks IER, polls LSR.THRE and writes THR directly, then restores
//!   IER (`serial8250_console_write`).
//!
//! If a THRE interrupt were ever lost (an IIR bit left set so that re-enabling THRI raises no
//! edge, an edge swallowed by the eventfd), the transmit FIFO would stop draining and the
//! writers would sleep forever: the test fails with the device's and the driver's state instead
//! of hanging. Every byte of every line must arrive, in order per writer.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use devices::bus::Bus;
use devices::legacy::serial::SerialConsole;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const COM1: u64 = 0x3f8;
const THR: u64 = COM1;
const IER: u64 = COM1 + 1;
const IIR: u64 = COM1 + 2;
const LSR: u64 = COM1 + 5;
const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IIR_NO_INT: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
/// The tty layer's transmit FIFO (a page) and the 16550A's transmit load size.
const XMIT_SIZE: usize = 4096;
const TX_LOADSZ: usize = 16;
/// `WAKEUP_CHARS`: writers are woken when the FIFO holds fewer bytes than this.
const WAKEUP_CHARS: usize = 256;

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

/// The driver's per-port state, guarded by the "port lock".
struct Port {
    xmit: VecDeque<u8>,
    /// The driver's shadow of IER (`up->ier`).
    ier: u8,
}

struct Guest {
    bus: Bus,
    port: Mutex<Port>,
    /// Writers waiting for room (`uart_write_wakeup`).
    room: Condvar,
    /// `tty->atomic_write_lock`: one `write(2)` at a time reaches the FIFO, whole.
    atomic_write: Mutex<()>,
    /// Every vCPU thread yields now and then, so the interleavings vary.
    accesses: AtomicU64,
}

impl Guest {
    fn inb(&self, port: u64) -> u8 {
        self.jitter();
        let mut b = [0u8];
        assert!(self.bus.read(port, &mut b));
        b[0]
    }

    fn outb(&self, port: u64, v: u8) {
        self.jitter();
        assert!(self.bus.write(port, &[v]));
    }

    fn jitter(&self) {
        let n = self.accesses.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(7) {
            thread::yield_now();
        }
    }

    /// `uart_write` + `serial8250_start_tx` for one whole line (the tty layer writes one
    /// `write(2)` at a time). Returns false if the writer starved (no room for `patience`).
    fn tty_write(&self, line: &[u8], patience: Duration) -> bool {
        let _whole = self.atomic_write.lock().unwrap();
        let mut rest = line;
        let mut port = self.port.lock().unwrap();
        while !rest.is_empty() {
            let room = XMIT_SIZE - port.xmit.len();
            if room == 0 {
                let (p, timeout) = self.room.wait_timeout(port, patience).unwrap();
                port = p;
                if timeout.timed_out() && port.xmit.len() == XMIT_SIZE {
                    return false;
                }
                continue;
            }
            let n = room.min(rest.len());
            port.xmit.extend(&rest[..n]);
            rest = &rest[n..];
            // serial8250_set_THRI: only when the shadow lacks it.
            if port.ier & IER_THRI == 0 {
                port.ier |= IER_THRI;
                self.outb(IER, port.ier);
            }
        }
        true
    }

    /// `serial8250_console_write`: IER masked, THR polled, IER restored.
    fn console_write(&self, line: &[u8]) {
        let port = self.port.lock().unwrap();
        let ier = self.inb(IER);
        self.outb(IER, 0);
        for &b in line {
            while self.inb(LSR) & LSR_THRE == 0 {}
            self.outb(THR, b);
        }
        while self.inb(LSR) & LSR_THRE == 0 {}
        self.outb(IER, ier);
        drop(port);
    }

    /// One run of `serial8250_interrupt` for this port: loop until IIR says no interrupt.
    fn handle_irq(&self) {
        for _ in 0..512 {
            // serial8250_default_handle_irq reads IIR before taking the port lock.
            let iir = self.inb(IIR);
            if iir & IIR_NO_INT != 0 {
                return;
            }
            let mut port = self.port.lock().unwrap();
            let lsr = self.inb(LSR);
            if lsr & LSR_THRE != 0 && port.ier & IER_THRI != 0 {
                // serial8250_tx_chars
                if port.xmit.is_empty() {
                    port.ier &= !IER_THRI;
                    self.outb(IER, port.ier);
                } else {
                    for _ in 0..TX_LOADSZ {
                        let Some(c) = port.xmit.pop_front() else {
                            break;
                        };
                        self.outb(THR, c);
                    }
                    if port.xmit.len() < WAKEUP_CHARS {
                        self.room.notify_all();
                    }
                }
            }
        }
    }
}

/// Flood the console: `writers` tty writers of `lines` lines each, a printk console writer
/// beside them, one interrupt handler. Returns the console output.
fn flood(writers: usize, lines: usize, console_lines: usize) -> (Vec<u8>, String) {
    flood_on(writers, lines, console_lines, None)
}

/// [`flood`] on a line that loses every `lose_every`-th edge before the guest's handler sees
/// it, with the VMM's periodic [`SerialConsole::resample_now`] (every 10 ms) running beside it.
fn flood_on(
    writers: usize,
    lines: usize,
    console_lines: usize,
    lose_every: Option<u64>,
) -> (Vec<u8>, String) {
    let sink = Sink::default();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq_guest = irq.try_clone().unwrap();
    let bus = Bus::new();
    let serial = Arc::new(Mutex::new(SerialConsole::new(irq, Box::new(sink.clone()))));
    bus.insert(serial.clone(), COM1, 8).unwrap();
    let guest = Arc::new(Guest {
        bus,
        port: Mutex::new(Port {
            xmit: VecDeque::new(),
            ier: 0,
        }),
        room: Condvar::new(),
        atomic_write: Mutex::new(()),
        accesses: AtomicU64::new(0),
    });
    // serial8250_do_startup: RX interrupts on, THRI only once there is something to send.
    {
        let mut port = guest.port.lock().unwrap();
        port.ier = IER_RDI;
        guest.outb(IER, port.ier);
        let _ = guest.inb(IIR);
    }
    let done = Arc::new(AtomicBool::new(false));
    let resampler = lose_every.map(|_| {
        let serial = serial.clone();
        let done = done.clone();
        thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(10));
                serial.lock().unwrap().resample_now();
            }
        })
    });

    // The interrupt handler: one edge, one run (the eventfd counts edges like the irqfd).
    let isr = {
        let guest = guest.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut edges = 0u64;
            let fd = irq_guest;
            let mut lost = 0u64;
            while !done.load(Ordering::Acquire) {
                match fd.read() {
                    Ok(_) if lose_every.is_some_and(|k| (edges + lost + 1).is_multiple_of(k)) => {
                        lost += 1;
                    }
                    Ok(_) => {
                        edges += 1;
                        guest.handle_irq();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // No interrupt pending: the guest idles (HLT) until one comes.
                        thread::sleep(Duration::from_micros(50));
                    }
                    Err(e) => panic!("irqfd read: {e}"),
                }
            }
            edges
        })
    };

    let patience = Duration::from_secs(5);
    let tty: Vec<_> = (0..writers)
        .map(|w| {
            let guest = guest.clone();
            thread::spawn(move || {
                for n in 0..lines {
                    let line = format!("cpu{w} line {n:05} the quick brown fox\n");
                    if !guest.tty_write(line.as_bytes(), patience) {
                        return Err(format!("writer {w} starved at line {n}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let console = {
        let guest = guest.clone();
        thread::spawn(move || {
            for n in 0..console_lines {
                // Upper case and <> only, so the printk lines can be told apart from the tty's.
                let digits: String = format!("{n:04}")
                    .bytes()
                    .map(|d| char::from(b'A' + (d - b'0')))
                    .collect();
                guest.console_write(format!("<KMSG{digits}>").as_bytes());
                thread::sleep(Duration::from_micros(200));
            }
        })
    };

    let mut failures = Vec::new();
    for t in tty {
        if let Err(e) = t.join().unwrap() {
            failures.push(e);
        }
    }
    console.join().unwrap();
    // Everything written must drain by interrupts alone.
    let deadline = Instant::now() + patience;
    while !guest.port.lock().unwrap().xmit.is_empty() {
        if Instant::now() > deadline {
            failures.push("the transmit FIFO stopped draining".into());
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    done.store(true, Ordering::Release);
    let edges = isr.join().unwrap();
    if let Some(r) = resampler {
        r.join().unwrap();
    }
    let reraised = serial.lock().unwrap().reraised_interrupts;
    let state = {
        let port = guest.port.lock().unwrap();
        let ier = guest.inb(IER);
        format!(
            "edges={edges} reraised={reraised} pending_bytes={} shadow_ier={:#x} device_ier={ier:#x}",
            port.xmit.len(),
            port.ier
        )
    };
    assert!(failures.is_empty(), "{failures:?}: {state}");
    let out = sink.0.lock().unwrap().clone();
    (out, state)
}

fn check(out: &[u8], writers: usize, lines: usize, console_lines: usize) {
    let tty: Vec<u8> = out
        .iter()
        .copied()
        .filter(|c| !(c.is_ascii_uppercase() || *c == b'<' || *c == b'>'))
        .collect();
    let kmsg: Vec<u8> = out
        .iter()
        .copied()
        .filter(|c| c.is_ascii_uppercase() || *c == b'<' || *c == b'>')
        .collect();
    let text = String::from_utf8(tty).unwrap();
    let mut next = vec![0usize; writers];
    for l in text.lines() {
        let mut f = l.split(' ');
        let w: usize = f.next().unwrap()[3..].parse().unwrap();
        assert_eq!(f.next(), Some("line"), "{l:?}");
        let n: usize = f.next().unwrap().parse().unwrap();
        assert_eq!(
            n, next[w],
            "writer {w}: line {n} out of order or a line lost"
        );
        next[w] += 1;
    }
    assert_eq!(next, vec![lines; writers], "lines per writer");
    let expected: String = (0..console_lines)
        .map(|n| {
            let d: String = format!("{n:04}")
                .bytes()
                .map(|d| char::from(b'A' + (d - b'0')))
                .collect();
            format!("<KMSG{d}>")
        })
        .collect();
    assert_eq!(String::from_utf8(kmsg).unwrap(), expected);
}

#[test]
fn console_flood_from_several_vcpus_loses_no_line() {
    let (writers, lines, console_lines) = (4, 3000, 300);
    let (out, state) = flood(writers, lines, console_lines);
    check(&out, writers, lines, console_lines);
    eprintln!("{} bytes through the console; {state}", out.len());
}

#[test]
fn repeated_bursts_with_idle_gaps_never_stall() {
    // An output burst, the transmitter stops (THRI off), a pause, the next burst must start
    // it again: the pattern of `accel-config list` followed by the next marker line.
    for round in 0..40 {
        let (out, _) = flood(2, 60, 3);
        check(&out, 2, 60, 3);
        assert!(!out.is_empty(), "round {round}");
    }
}

#[test]
fn lost_edges_are_recovered_by_the_resample() {
    // Every third edge never reaches the handler. Without the resample this stalls for good
    // within a few rounds (the writers starve with IER.THRI set and THRE pending in IIR).
    for round in 0..10 {
        let (out, state) = flood_on(2, 60, 3, Some(3));
        check(&out, 2, 60, 3);
        if round == 9 {
            eprintln!("{state}");
        }
    }
    let (out, state) = flood_on(4, 500, 50, Some(3));
    check(&out, 4, 500, 50);
    eprintln!("{state}");
}

/// The interrupt line as the driver sees it: enabling THRI with the transmitter empty raises
/// THRE at once, reading IIR takes it away, and re-enabling raises it again (a 16550's output is
/// a level derived from pending and enabled conditions; on an edge-triggered line each new
/// assertion must be an edge).
#[test]
fn thre_reasserts_on_every_enable() {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let probe = irq.try_clone().unwrap();
    let bus = Bus::new();
    let serial = Arc::new(Mutex::new(SerialConsole::new(irq, Box::new(io::sink()))));
    bus.insert(serial, COM1, 8).unwrap();
    let inb = |p: u64| {
        let mut b = [0u8];
        bus.read(p, &mut b);
        b[0]
    };
    let edges = || probe.read().unwrap_or(0);
    for _ in 0..3 {
        bus.write(IER, &[IER_THRI]);
        assert_eq!(edges(), 1, "enabling THRI with THR empty is an edge");
        assert_eq!(inb(IIR) & 0x0f, 0x02, "IIR says THRE");
        assert_eq!(inb(IIR) & 0x0f, IIR_NO_INT, "reading IIR cleared it");
        // The Linux THRE test (serial8250_do_startup) expects the same once more.
        bus.write(IER, &[0]);
        assert_eq!(edges(), 0);
    }
    // Every byte written with THRI on gives THRE back (an edge each time IIR was read).
    bus.write(IER, &[IER_THRI]);
    for b in b"abc" {
        assert_eq!(inb(IIR) & 0x0f, 0x02);
        let _ = edges();
        bus.write(THR, &[*b]);
        assert_eq!(edges(), 1);
    }
}
