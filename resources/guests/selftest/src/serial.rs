//! Polled output on the 16550 UART at I/O port 0x3f8.
//!
//! The FIFO is enabled when the UART has one; then each time LSR.THRE (bit 5)
//! reads set the transmit FIFO is empty and up to 16 bytes are written without
//! another LSR read (each port access is a VM exit, ~13 µs here).

use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu::{inb, outb, pause};
use crate::fmt::Line;

const COM1: u16 = 0x3f8;
const THR: u16 = COM1;
const FCR: u16 = COM1 + 2;
const IIR: u16 = COM1 + 2;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 1 << 5;

static FIFO: AtomicBool = AtomicBool::new(false);
static LOCK: AtomicBool = AtomicBool::new(false);

/// Enables the FIFO if the UART has one.
pub fn init() {
    outb(FCR, 0x07);
    // IIR bits 7:6 read 0b11 when the FIFOs are enabled.
    FIFO.store(inb(IIR) & 0xc0 == 0xc0, Ordering::Relaxed);
}

fn wait_thre() {
    for _ in 0..100_000 {
        if inb(LSR) & LSR_THRE != 0 {
            return;
        }
        pause();
    }
}

/// Writes the parts one after the other, under the lock.
pub fn write_parts(parts: &[&[u8]]) {
    while LOCK.swap(true, Ordering::Acquire) {
        pause();
    }
    let burst = if FIFO.load(Ordering::Relaxed) { 16 } else { 1 };
    let mut budget = 0;
    for part in parts {
        for &b in part.iter() {
            if budget == 0 {
                wait_thre();
                budget = burst;
            }
            outb(THR, b);
            budget -= 1;
        }
    }
    LOCK.store(false, Ordering::Release);
}

/// Writes a line followed by a newline.
pub fn line(l: &Line) {
    write_parts(&[l.as_bytes(), b"\n"]);
}
