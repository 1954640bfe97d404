//! Property test: random configuration, BAR0, portal and command accesses (any size, any
//! offset, any value) through the real buses never panic the device model, and the model stays
//! consistent (state/stats readable, mapped BARs resolve).

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::dsa::{DsaConfig, DsaDevice};
use devices::pci::msix::RecordingSink;
use devices::pci::{attach_pci_root, PciBus, PciWindows, SharedPciDevice};
use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const ECAM: u64 = 0xe000_0000;
const RAM: u64 = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Cfg {
        reg: u64,
        len: usize,
        val: u64,
    },
    CfgIo {
        addr: u32,
        len: usize,
        val: u64,
    },
    Bar0 {
        off: u64,
        len: usize,
        val: u64,
        read: bool,
    },
    Cmd {
        val: u32,
    },
    Portal {
        off: u64,
        desc: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop::sample::select(vec![1usize, 2, 3, 4, 8, 16]);
    prop_oneof![
        (0u64..0x1000, len.clone(), any::<u64>()).prop_map(|(reg, len, val)| Op::Cfg {
            reg,
            len,
            val
        }),
        (any::<u32>(), len.clone(), any::<u64>()).prop_map(|(addr, len, val)| Op::CfgIo {
            addr,
            len,
            val
        }),
        (
            prop_oneof![0u64..0x600, 0x2000u64..0x2100, 0u64..0x10010],
            len,
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(off, len, val, read)| Op::Bar0 {
                off,
                len,
                val,
                read
            }),
        (0u32..15, any::<bool>(), 0u32..0x10_0000).prop_map(|(code, irq, operand)| Op::Cmd {
            val: (u32::from(irq) << 31) | (code << 20) | operand
        }),
        (
            prop_oneof![
                (0u64..8, 0u64..4, 0u64..64).prop_map(|(w, p, s)| w * 0x4000 + p * 0x1000 + s * 64),
                0u64..0x2_0040
            ],
            prop_oneof![
                prop::collection::vec(any::<u8>(), 64),
                prop::collection::vec(any::<u8>(), 0..80),
                // Plausible descriptors: opcode 0..0x20, addresses inside RAM.
                (
                    0u8..0x20,
                    any::<u8>(),
                    0u64..RAM,
                    0u64..RAM,
                    0u64..RAM,
                    0u32..0x2_0000,
                    0u16..12
                )
                    .prop_map(|(op, flags, cr, src, dst, len, h)| {
                        let mut d = vec![0u8; 64];
                        d[4] = flags;
                        d[7] = op;
                        d[8..16].copy_from_slice(&(cr & !31).to_le_bytes());
                        d[16..24].copy_from_slice(&src.to_le_bytes());
                        d[24..32].copy_from_slice(&dst.to_le_bytes());
                        d[32..36].copy_from_slice(&len.to_le_bytes());
                        d[36..38].copy_from_slice(&h.to_le_bytes());
                        d
                    }),
            ]
        )
            .prop_map(|(off, desc)| Op::Portal { off, desc }),
    ]
}

struct Rig {
    mmio: Arc<Bus>,
    pio: Bus,
    pci: Arc<Mutex<PciBus>>,
    dsa: Arc<Mutex<DsaDevice>>,
    bar0: u64,
    bar2: u64,
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
    // 64-bit BARs in the 32-bit window (mmio64_size = 0): BAR0 then BAR2.
    let (bar0, bar2) = (0xc000_0000, 0xc002_0000);
    let r = Rig {
        mmio,
        pio,
        pci,
        dsa,
        bar0,
        bar2,
    };
    let cfg = |reg: u64, v: u32| r.mmio.write(ECAM + (1 << 15) + reg, &v.to_le_bytes());
    cfg(4, 0x6);
    if bring_up {
        let w32 = |off: u64, v: u32| r.mmio.write(r.bar0 + off, &v.to_le_bytes());
        let w64 = |off: u64, v: u64| r.mmio.write(r.bar0 + off, &v.to_le_bytes());
        let mut c = [0u8; 4];
        r.mmio.read(ECAM + (1 << 15) + 0x40, &mut c);
        assert_eq!(c[0], 0x11);
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

fn bytes(val: u64, len: usize) -> Vec<u8> {
    let mut v = val.to_le_bytes().to_vec();
    v.resize(len, 0xa5);
    v
}

fn apply(r: &Rig, op: &Op) {
    match op {
        Op::Cfg { reg, len, val } => {
            let _ = r.mmio.write(ECAM + (1 << 15) + reg, &bytes(*val, *len));
            let mut b = vec![0u8; *len];
            let _ = r.mmio.read(ECAM + (1 << 15) + reg, &mut b);
        }
        Op::CfgIo { addr, len, val } => {
            r.pio.write(0xcf8, &addr.to_le_bytes());
            r.pio.write(0xcfc + (*val % 4), &bytes(*val, *len));
            let mut b = vec![0u8; *len];
            r.pio.read(0xcfc, &mut b);
        }
        Op::Bar0 {
            off,
            len,
            val,
            read,
        } => {
            if *read {
                let mut b = vec![0u8; *len];
                let _ = r.mmio.read(r.bar0 + off, &mut b);
            } else {
                let _ = r.mmio.write(r.bar0 + off, &bytes(*val, *len));
            }
        }
        Op::Cmd { val } => {
            let _ = r.mmio.write(r.bar0 + 0xa0, &val.to_le_bytes());
        }
        Op::Portal { off, desc } => {
            let _ = r.mmio.write(r.bar2 + off, desc);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_mmio_never_panics(bring_up in any::<bool>(), ops in prop::collection::vec(op(), 1..64)) {
        let r = rig(bring_up);
        for o in &ops {
            apply(&r, o);
        }
        let dev = r.dsa.lock().unwrap();
        let state = dev.state();
        let stats = dev.stats();
        drop(dev);
        prop_assert!(state.wqs.len() == 8);
        prop_assert!(stats.descriptors <= ops.len() as u64);
        // Whatever the guest did to the BARs, every registered range resolves to itself.
        for (_, base, size) in r.pci.lock().unwrap().mapped_bars(1) {
            prop_assert_eq!(r.mmio.resolve(base).map(|x| x.0), Some(base));
            prop_assert_eq!(r.mmio.resolve(base + size - 1).map(|x| x.0), Some(base));
        }
    }
}
