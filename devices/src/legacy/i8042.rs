//! The i8042 keyboard controller at 0x60 (data) and 0x64 (status/command), with just enough of a
//! PS/2 keyboard behind it for Linux's i8042 and atkbd drivers to probe it, so that the VMM can
//! inject Ctrl-Alt-Del (the guest's clean reboot request), and with command 0xFE (CPU reset)
//! ending the VM. `vm-superio`'s i8042 only implements the reset line, hence this device.
//!
//! Scancodes use set 2 with translation off in the command byte, as Firecracker's device does.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{ExitReason, ExitSignal};
use crate::bus::BusDevice;

/// Offset of the data port (0x60) in the device's 5-port range.
const DATA: u64 = 0;
/// Offset of the status/command port (0x64).
const COMMAND: u64 = 4;

const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KEYLOCK_OFF: u8 = 0x10;

const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_BUF: u8 = 0xd2;
const CMD_WRITE_AUX_BUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;
/// Largest number of bytes waiting for the guest (a real controller holds one; a short queue
/// lets a whole key sequence wait while the guest drains it).
const BUFFER_MAX: usize = 16;

/// Set-2 scancodes of Ctrl, Alt and Del pressed then released.
const CTRL_ALT_DEL: [u8; 12] = [
    0x14, 0x11, 0xe0, 0x71, // make: Ctrl, Alt, Del
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, 0x00,
];
const CTRL_ALT_DEL_LEN: usize = 11;

/// The i8042 bus device (register it for 5 ports at 0x60).
pub struct I8042 {
    exit: Arc<ExitSignal>,
    irq: Option<EventFd>,
    status: u8,
    control: u8,
    outp: u8,
    /// The command whose parameter byte the next data write carries.
    pending: Option<u8>,
    /// A keyboard command waiting for its parameter (0xED LEDs, 0xF0 set, 0xF3 rate).
    kbd_param: bool,
    buf: VecDeque<u8>,
}

impl I8042 {
    /// A controller whose reset command raises `exit`; `irq` (an irqfd for GSI 1) is signalled
    /// when a byte is waiting and keyboard interrupts are enabled.
    pub fn new(exit: Arc<ExitSignal>, irq: Option<EventFd>) -> Self {
        Self {
            exit,
            irq,
            status: SB_SYSTEM_FLAG | SB_KEYLOCK_OFF,
            control: CB_KBD_INT | CB_POST_OK,
            outp: 0x01,
            pending: None,
            kbd_param: false,
            buf: VecDeque::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        if self.buf.len() + bytes.len() > BUFFER_MAX {
            return false;
        }
        self.buf.extend(bytes);
        self.status |= SB_OUT_FULL;
        true
    }

    fn interrupt(&self) {
        if self.control & CB_KBD_INT != 0 && !self.buf.is_empty() {
            if let Some(irq) = &self.irq {
                if let Err(e) = irq.write(1) {
                    tracing::warn!("i8042 interrupt failed: {e}");
                }
            }
        }
    }

    /// Queues Ctrl-Alt-Del for the guest. Errors when the guest has not drained earlier keys.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), &'static str> {
        if !self.push(&CTRL_ALT_DEL[..CTRL_ALT_DEL_LEN]) {
            return Err("the guest has not read the previous keys");
        }
        self.interrupt();
        Ok(())
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => {
                self.buf.clear();
                self.push(&[self.control]);
            }
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_BUF | CMD_WRITE_AUX_BUF
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_READ_OUTP => {
                self.buf.clear();
                self.push(&[self.outp]);
            }
            CMD_SELF_TEST => {
                self.buf.clear();
                self.push(&[0x55]);
            }
            CMD_TEST_KBD => {
                self.buf.clear();
                self.push(&[0x00]);
            }
            // No mouse: its interface test reports a clock line stuck low.
            CMD_TEST_AUX => {
                self.buf.clear();
                self.push(&[0x01]);
            }
            CMD_DISABLE_AUX | CMD_ENABLE_AUX | CMD_DISABLE_KBD | CMD_ENABLE_KBD => {}
            CMD_RESET_CPU => {
                tracing::info!("guest reset through the i8042");
                self.exit.request(ExitReason::Reset);
            }
            other => tracing::debug!("i8042: ignored command {other:#x}"),
        }
    }

    fn data(&mut self, v: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.control = v,
            Some(CMD_WRITE_OUTP) => self.outp = v,
            Some(CMD_WRITE_KBD_BUF) => {
                self.push(&[v]);
                self.interrupt();
            }
            // No mouse behind the controller: the echo and the aux write go nowhere.
            Some(_) => {}
            None => self.keyboard(v),
        }
    }

    /// A byte sent to the keyboard itself.
    fn keyboard(&mut self, v: u8) {
        self.buf.clear();
        if std::mem::take(&mut self.kbd_param) {
            self.push(&[KBD_ACK]);
        } else {
            match v {
                0xff => {
                    self.push(&[KBD_ACK, KBD_RESET_OK]);
                }
                0xf2 => {
                    self.push(&[KBD_ACK, 0xab, 0x83]); // MF2 keyboard ID
                }
                0xed | 0xf0 | 0xf3 => {
                    self.kbd_param = true;
                    self.push(&[KBD_ACK]);
                }
                0xee => {
                    self.push(&[0xee]); // echo
                }
                _ => {
                    self.push(&[KBD_ACK]);
                }
            }
        }
        self.interrupt();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match offset {
            DATA => {
                let b = self.buf.pop_front().unwrap_or(0);
                if self.buf.is_empty() {
                    self.status &= !SB_OUT_FULL;
                } else {
                    self.interrupt();
                }
                b
            }
            COMMAND => self.status,
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let [v] = data else { return };
        match offset {
            DATA => self.data(*v),
            COMMAND => self.command(*v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        (
            I8042::new(exit.clone(), Some(irq.try_clone().unwrap())),
            exit,
            irq,
        )
    }

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(0x60, off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_vm() {
        let (mut d, exit, _) = dev();
        d.write(0x60, COMMAND, &[0x11]);
        assert_eq!(exit.reason(), None);
        d.write(0x60, COMMAND, &[0xfe, 0]); // wrong size: ignored
        assert_eq!(exit.reason(), None);
        d.write(0x60, COMMAND, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, _, _) = dev();
        // i8042_controller_check: flush, then self test.
        d.write(0x60, COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, COMMAND) & SB_OUT_FULL, SB_OUT_FULL);
        assert_eq!(read(&mut d, DATA), 0x55);
        assert_eq!(read(&mut d, COMMAND) & SB_OUT_FULL, 0);
        // Read and rewrite the command byte.
        d.write(0x60, COMMAND, &[CMD_READ_CTR]);
        let ctr = read(&mut d, DATA);
        assert_eq!(ctr, CB_KBD_INT | CB_POST_OK);
        d.write(0x60, COMMAND, &[CMD_WRITE_CTR]);
        d.write(0x60, DATA, &[ctr]);
        // atkbd: get ID.
        d.write(0x60, DATA, &[0xf2]);
        assert_eq!(
            [read(&mut d, DATA), read(&mut d, DATA), read(&mut d, DATA)],
            [KBD_ACK, 0xab, 0x83]
        );
        // LEDs take a parameter byte, acked twice.
        d.write(0x60, DATA, &[0xed]);
        assert_eq!(read(&mut d, DATA), KBD_ACK);
        d.write(0x60, DATA, &[0x07]);
        assert_eq!(read(&mut d, DATA), KBD_ACK);
    }

    #[test]
    fn ctrl_alt_del_is_queued_with_interrupt() {
        let (mut d, _, irq) = dev();
        d.send_ctrl_alt_del().unwrap();
        assert!(irq.read().unwrap() >= 1);
        let got: Vec<u8> = (0..CTRL_ALT_DEL_LEN).map(|_| read(&mut d, DATA)).collect();
        assert_eq!(got, CTRL_ALT_DEL[..CTRL_ALT_DEL_LEN]);
        assert_eq!(read(&mut d, COMMAND) & SB_OUT_FULL, 0);
        // A guest that never reads cannot make the queue grow without bound.
        d.send_ctrl_alt_del().unwrap();
        assert!(d.send_ctrl_alt_del().is_err());
    }
}
