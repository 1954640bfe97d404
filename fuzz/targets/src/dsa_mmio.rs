//! The DSA register file through the real buses: PCI configuration space (ECAM and the
//! 0xCF8/0xCFC ports), BAR0 (registers, WQCFG, MSI-X table and PBA), the command register and
//! the BAR2 portals, as a sequence of accesses of any size and value. The byte-driven twin of
//! `devices/tests/mmio_fuzz.rs`, with the same rig and the same checks.
//!
//! Input: byte 0 bit 0 = bring the device up first (MSI-X, groups, WQ 0 and the device
//! enabled), then up to [`MAX_OPS`] operations of one kind byte and its operands each.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::dsa::{DsaConfig, DsaDevice};
use devices::pci::msix::RecordingSink;
use devices::pci::{attach_pci_root, PciBus, PciWindows, SharedPciDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::Input;

const ECAM: u64 = 0xe000_0000;
/// Device 1's configuration space in the ECAM window.
const CFG: u64 = ECAM + (1 << 15);
const RAM: u64 = 1 << 20;
/// 64-bit BARs in the 32-bit window: BAR0 then BAR2.
const BAR0: u64 = 0xc000_0000;
const BAR2: u64 = 0xc002_0000;
/// Accesses per input.
pub const MAX_OPS: usize = 64;
const LENS: [usize; 8] = [1, 2, 4, 8, 3, 16, 64, 0];

struct Rig {
    mmio: Arc<Bus>,
    pio: Bus,
    pci: Arc<Mutex<PciBus>>,
    dsa: Arc<Mutex<DsaDevice>>,
}

fn rig(bring_up: bool) -> Rig {
    let mmio = Arc::new(Bus::new());
    let pio = Bus::new();
    let windows = PciWindows {
        mmio32_start: 0xc000_0000,
        mmio32_size: 0x2000_0000,
        mmio64_start: 0,
        mmio64_size: 0,
    };
    let pci = attach_pci_root(&pio, &mmio, windows, ECAM, 1 << 20).unwrap();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    let dsa = Arc::new(Mutex::new(
        DsaDevice::new(
            DsaConfig::default(),
            mem,
            Arc::new(RecordingSink::default()),
        )
        .unwrap(),
    ));
    let shared: SharedPciDevice = dsa.clone();
    pci.lock().unwrap().add_device(shared).unwrap();
    let r = Rig {
        mmio,
        pio,
        pci,
        dsa,
    };
    let cfg = |reg: u64, v: u32| r.mmio.write(CFG + reg, &v.to_le_bytes());
    cfg(4, 0x6);
    if bring_up {
        let w32 = |off: u64, v: u32| r.mmio.write(BAR0 + off, &v.to_le_bytes());
        let w64 = |off: u64, v: u64| r.mmio.write(BAR0 + off, &v.to_le_bytes());
        let mut c = [0u8; 4];
        r.mmio.read(CFG + 0x40, &mut c);
        assert_eq!(c[0], 0x11, "MSI-X capability at 0x40");
        cfg(0x40, u32::from_le_bytes(c) | 0x8000_0000);
        for v in 0..9u64 {
            w32(0x2000 + 16 * v, 0xfee0_0000);
            w32(0x2000 + 16 * v + 8, 0x30 + v as u32);
            w32(0x2000 + 16 * v + 12, 0);
        }
        w32(0x88, 3);
        for (d, v) in [0x10u32, 0, 0xa1, 0xb5].iter().enumerate() {
            w32(0x500 + 4 * d as u64, *v);
        }
        w64(0x400, 1);
        w64(0x420, 1);
        w64(0x428, 0x0400_0009);
        w32(0xa0, 0x8010_0000);
        w32(0xa0, 0x8060_0000);
        assert_eq!(r.dsa.lock().unwrap().state().wqs[0].state, "enabled");
    }
    r
}

fn value(input: &mut Input, len: usize) -> Vec<u8> {
    input
        .take(len)
        .iter()
        .copied()
        .chain(std::iter::repeat(0xa5))
        .take(len)
        .collect()
}

/// Runs one input.
pub fn run(data: &[u8]) {
    outcome(data);
}

/// Runs one input; what it did, in a few words (the stable harness counts these).
pub fn outcome(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let r = rig(input.u8() & 1 != 0);
    let mut ops = 0u64;
    while !input.is_empty() && ops < MAX_OPS as u64 {
        ops += 1;
        let kind = input.u8();
        let len = LENS[usize::from(kind >> 5)];
        let mut buf = vec![0u8; len];
        match kind & 0x7 {
            // Configuration space through ECAM (past the 4 KiB of device 1 too).
            0 => {
                let reg = u64::from(input.u16() & 0x1fff);
                r.mmio.write(CFG + reg, &value(&mut input, len));
                r.mmio.read(CFG + reg, &mut buf);
            }
            // Configuration mechanism #1: address port, then any data port offset.
            1 => {
                let addr = input.u32();
                let port = u64::from(input.u8() % 8);
                r.pio.write(0xcf8, &addr.to_le_bytes());
                r.pio.write(0xcfc + port, &value(&mut input, len));
                r.pio.read(0xcfc + port, &mut buf);
            }
            // BAR0 write / read anywhere in its 64 KiB (and just past it).
            2 | 3 => {
                let off = u64::from(input.u32() % 0x1_0010);
                if kind & 1 == 0 {
                    r.mmio.write(BAR0 + off, &value(&mut input, len));
                } else {
                    r.mmio.read(BAR0 + off, &mut buf);
                }
            }
            // BAR0 registers where the interesting ones are: 0..0x600 and the MSI-X table.
            4 => {
                let off = u64::from(input.u16() % 0x600);
                let off = if input.u8() & 1 != 0 {
                    0x2000 + off % 0x100
                } else {
                    off
                };
                r.mmio.write(BAR0 + off, &value(&mut input, len));
                r.mmio.read(BAR0 + off, &mut buf);
            }
            // The command register.
            5 => {
                let val = input.u32();
                r.mmio.write(BAR0 + 0xa0, &val.to_le_bytes());
            }
            // A portal write: WQ, portal page, slot; a 64-byte descriptor or `len` bytes.
            _ => {
                let sel = input.u16();
                let off = u64::from(sel & 7) * 0x4000
                    + u64::from((sel >> 3) & 3) * 0x1000
                    + u64::from((sel >> 5) & 63) * 64
                    + if sel & 0x8000 != 0 {
                        u64::from(input.u8())
                    } else {
                        0
                    };
                let n = if kind & 0x8 != 0 { 64 } else { len };
                r.mmio.write(BAR2 + off, &value(&mut input, n));
            }
        }
    }
    let dev = r.dsa.lock().unwrap();
    let state = dev.state();
    let stats = dev.stats();
    drop(dev);
    assert_eq!(state.wqs.len(), 8);
    assert!(
        stats.descriptors <= ops,
        "{} descriptors from {ops} accesses",
        stats.descriptors
    );
    // Whatever the guest did to the BARs, every registered range resolves to itself.
    for (_, base, size) in r.pci.lock().unwrap().mapped_bars(1) {
        assert_eq!(r.mmio.resolve(base).map(|x| x.0), Some(base));
        assert_eq!(r.mmio.resolve(base + size - 1).map(|x| x.0), Some(base));
    }
    let statuses: Vec<&str> = stats.completion_status.keys().map(String::as_str).collect();
    format!(
        "{} {} descriptors {statuses:?}",
        state.wqs[0].state,
        match stats.descriptors {
            0 => "no",
            1 => "1",
            _ => "2+",
        }
    )
}
