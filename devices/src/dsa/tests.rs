//! Unit tests of the vDSA front end: every register rule and every device-side trap of
//! docs/dsa-device-model.md §0.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::regs::*;
use super::*;
use crate::pci::msix::{MsiMessage, RecordingSink};

const RAM: u64 = 1 << 20;
const CR: u64 = 0x8000;
const SRC: u64 = 0x10000;
const DST: u64 = 0x20000;

struct H {
    dev: DsaDevice,
    sink: Arc<RecordingSink>,
    mem: Arc<GuestMemoryMmap<()>>,
}

fn mem() -> Arc<GuestMemoryMmap<()>> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap())
}

impl H {
    fn new(cfg: DsaConfig) -> Self {
        let sink = Arc::new(RecordingSink::default());
        let mem = mem();
        let dev = DsaDevice::new(cfg, mem.clone(), sink.clone()).unwrap();
        Self { dev, sink, mem }
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn r64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b);
        u64::from_le_bytes(b)
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }
    fn cmd(&mut self, v: u32) -> u32 {
        self.w32(CMD, v);
        self.r32(CMDSTS)
    }
    /// pci_enable_device + pci_set_master + MSI-X enabled with every vector programmed and
    /// unmasked (what request_irq does per vector).
    fn pci_up(&mut self) {
        self.dev.config_write(1, 0, &[0x06, 0x00]);
        let cap = self.dev.msix_cap;
        self.dev.config_write(cap / 4, 2, &0x8000u16.to_le_bytes());
        for v in 0..u64::from(self.dev.msix.num_vectors()) {
            self.w32(MSIX_TABLE_OFFSET + 16 * v, 0xfee0_0000);
            self.w32(MSIX_TABLE_OFFSET + 16 * v + 8, 0x20 + v as u32);
            self.w32(MSIX_TABLE_OFFSET + 16 * v + 12, 0);
        }
        self.sink.clear();
    }
    fn configure_wq0(&mut self) {
        for (d, v) in [0x10u32, 0, 0xa1, 0xb5, 0, 0, 0, 0].iter().enumerate() {
            self.w32(WQCFG_OFFSET + 4 * d as u64, *v);
        }
        for g in 0..u64::from(self.dev.cfg.groups) {
            let base = GRPCFG_OFFSET + 64 * g;
            self.w64(base, u64::from(g == 0));
            for q in 1..4 {
                self.w64(base + 8 * q, 0);
            }
            self.w64(base + 0x20, u64::from(g == 0));
            self.w64(base + 0x28, 0x0400_0009);
        }
    }
    fn up(&mut self) {
        self.pci_up();
        self.configure_wq0();
        assert_eq!(self.cmd(0x8010_0000), 0);
        assert_eq!(self.cmd(0x8060_0000), 0);
        // The driver acknowledges each command interrupt.
        assert_eq!(self.r32(INTCAUSE), INTCAUSE_CMD);
        self.w32(INTCAUSE, INTCAUSE_CMD);
        self.sink.clear();
    }
    fn memmove_desc(&self, flags: u32, handle: u16, len: u32) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[4..8].copy_from_slice(&(flags | (3 << 24)).to_le_bytes());
        d[8..16].copy_from_slice(&CR.to_le_bytes());
        d[16..24].copy_from_slice(&SRC.to_le_bytes());
        d[24..32].copy_from_slice(&DST.to_le_bytes());
        d[32..36].copy_from_slice(&len.to_le_bytes());
        d[36..38].copy_from_slice(&handle.to_le_bytes());
        d
    }
    fn submit(&mut self, wq: u64, page: u64, d: &[u8; 64]) {
        self.dev.bar_write(2, wq * 0x4000 + page * 0x1000, d);
    }
    fn cr_status(&self) -> u8 {
        self.mem.read_obj::<u8>(GuestAddress(CR)).unwrap()
    }
}

fn h() -> H {
    H::new(DsaConfig::default())
}

#[test]
fn config_validation() {
    assert_eq!(DsaConfig::default().validate(), Ok(()));
    let d = DsaConfig::default();
    assert_eq!(
        DsaConfig { wqs: 0, ..d }.validate(),
        Err(DsaConfigError::Wqs(0))
    );
    assert_eq!(
        DsaConfig { wqs: 9, ..d }.validate(),
        Err(DsaConfigError::Wqs(9))
    );
    assert_eq!(
        DsaConfig { engines: 5, ..d }.validate(),
        Err(DsaConfigError::Engines(5))
    );
    assert_eq!(
        DsaConfig { groups: 0, ..d }.validate(),
        Err(DsaConfigError::Groups(0))
    );
    assert_eq!(
        DsaConfig {
            total_wq_size: 129,
            ..d
        }
        .validate(),
        Err(DsaConfigError::TotalWqSize(129))
    );
    assert_eq!(
        DsaConfig {
            total_wq_size: 7,
            ..d
        }
        .validate(),
        Err(DsaConfigError::TotalWqSize(7))
    );
    assert_eq!(
        DsaConfig {
            max_xfer_shift: 20,
            ..d
        }
        .validate(),
        Err(DsaConfigError::MaxXferShift(20))
    );
    // Above the range, with a batch small enough that the sum rule holds.
    assert_eq!(
        DsaConfig {
            max_xfer_shift: 27,
            max_batch_shift: 5,
            ..d
        }
        .validate(),
        Err(DsaConfigError::MaxXferShift(27))
    );
    assert_eq!(
        DsaConfig {
            max_batch_shift: 4,
            ..d
        }
        .validate(),
        Err(DsaConfigError::MaxBatchShift(4))
    );
    // One descriptor's work: 2^(xfer + batch) bytes at most 2^31 (§15).
    assert_eq!(
        DsaConfig {
            max_xfer_shift: 22,
            max_batch_shift: 10,
            ..d
        }
        .validate(),
        Err(DsaConfigError::WorkPerDescriptor(22, 10))
    );
    assert_eq!(
        DsaConfig {
            max_xfer_shift: 26,
            max_batch_shift: 5,
            ..d
        }
        .validate(),
        Ok(())
    );
    assert!(DsaDevice::new(
        DsaConfig { wqs: 0, ..d },
        mem(),
        Arc::new(RecordingSink::default())
    )
    .is_err());
    assert_eq!(DsaConfig { wqs: 3, ..d }.portal_bar_size(), 0x10000);
    assert_eq!(DsaConfig { wqs: 3, ..d }.msix_vectors(), 4);
    assert_eq!("".parse::<DsaConfig>(), Ok(d));
    assert_eq!(
        "backend=software,wqs=2,engines=1,groups=1,wq_size=32,max_xfer_shift=22,max_batch_shift=5"
            .parse(),
        Ok(DsaConfig {
            wqs: 2,
            engines: 1,
            groups: 1,
            total_wq_size: 32,
            max_xfer_shift: 22,
            max_batch_shift: 5,
            exec: Execution::Workers,
        })
    );
    assert_eq!(
        "exec=inline".parse::<DsaConfig>().map(|c| c.exec),
        Ok(Execution::Inline)
    );
    assert_eq!(
        "exec=threads".parse::<DsaConfig>(),
        Err(DsaConfigError::Parse("exec=threads".into()))
    );
    assert_eq!("wqs=9".parse::<DsaConfig>(), Err(DsaConfigError::Wqs(9)));
    assert!(matches!(
        "backend=vfio".parse::<DsaConfig>(),
        Err(DsaConfigError::Parse(_))
    ));
    assert!(matches!(
        "wqs".parse::<DsaConfig>(),
        Err(DsaConfigError::Parse(_))
    ));
    assert!(matches!(
        "wqs=300".parse::<DsaConfig>(),
        Err(DsaConfigError::Parse(_))
    ));
    assert_eq!(DsaConfig { wqs: 8, ..d }.portal_bar_size(), 0x20000);
}

#[test]
fn pci_identity_and_bars() {
    let mut h = h();
    assert_eq!(h.dev.config_read(0), 0x0b25_8086);
    assert_eq!(h.dev.config_read(2), 0x0880_0000);
    assert_eq!(h.dev.config_read(11), 0x0000_8086);
    let bars = h.dev.config().bars();
    assert_eq!(bars.len(), 2);
    assert_eq!(
        (bars[0].index, bars[0].size, bars[0].kind),
        (0, 0x10000, BarKind::Mem64)
    );
    assert_eq!((bars[1].index, bars[1].size), (2, 0x20000));
    assert_eq!(h.dev.config_read(15) >> 8 & 0xff, 0, "interrupt pin 0");
}

#[test]
fn trap6_msix_table_is_wqs_plus_one() {
    for wqs in 1..=8u8 {
        let mut h = H::new(DsaConfig {
            wqs,
            total_wq_size: 64,
            ..DsaConfig::default()
        });
        let cap = h.dev.msix_cap;
        let dw = h.dev.config_read(cap / 4);
        assert_eq!(dw & 0xff, 0x11);
        assert_eq!((dw >> 16) & 0x7ff, u32::from(wqs), "table size - 1");
        assert_eq!(h.dev.config_read(cap / 4 + 1), MSIX_TABLE_OFFSET as u32); // BIR 0
        assert_eq!(h.dev.config_read(cap / 4 + 2), MSIX_PBA_OFFSET as u32);
    }
}

#[test]
fn capability_registers() {
    let mut h = h();
    assert_eq!(h.r32(VERSION), 0x100);
    // Section 9.1 values (OPCAP depends on the engine).
    assert_eq!(h.r64(GENCAP), 0x8155_2016);
    assert_eq!(h.r64(WQCAP), 0x001a_0000_0008_0080);
    assert_eq!(h.r64(GRPCAP), 0x4004);
    assert_eq!(h.r64(ENGCAP), 4);
    assert_eq!(h.r32(CMDCAP), 0x1ffe);
    assert_eq!(h.r64(OFFSETS), 0x0000_0003_0005_0004);
    assert_eq!(h.r64(OFFSETS + 8), 0x10);
    let opcap = h.r64(OPCAP);
    assert_ne!(
        opcap & 0x8,
        0,
        "MEMMOVE (bit 3) needed for DMA_MEMCPY (2.7)"
    );
    assert_ne!(opcap & 0x1, 0, "NOOP needed for DMA_INTERRUPT (8)");
    for op in engine::SUPPORTED_OPCODES {
        assert_ne!(h.r64(OPCAP + u64::from(op / 64) * 8) & (1 << (op % 64)), 0);
    }
    // 32-bit halves of a 64-bit register.
    assert_eq!(h.r32(GENCAP), 0x8155_2016);
    assert_eq!(h.r32(GENCAP + 4), 0);
    assert_eq!(h.r32(WQCAP + 4), 0x001a_0000);
    // Read-only: writes ignored.
    h.w64(GENCAP, 0);
    h.w32(VERSION, 0);
    h.w32(GENSTS, 1);
    h.w32(CMDSTS, 0xffff_ffff);
    assert_eq!(h.r64(GENCAP), 0x8155_2016);
    assert_eq!(h.r32(VERSION), 0x100);
    assert_eq!(h.r32(GENSTS), 0);
    assert_eq!(h.r32(CMDSTS), 0);
    // Geometry parameters.
    let mut g = H::new(DsaConfig {
        wqs: 2,
        engines: 1,
        groups: 1,
        total_wq_size: 32,
        max_xfer_shift: 26,
        max_batch_shift: 5,
        exec: Execution::Inline,
    });
    assert_eq!(g.r64(WQCAP) & 0xff_ffff, 0x02_0020);
    assert_eq!(g.r64(GRPCAP) & 0xff, 1);
    assert_eq!(g.r64(ENGCAP), 1);
    assert_eq!((g.r64(GENCAP) >> 16) & 0x1f, 26);
    assert_eq!((g.r64(GENCAP) >> 21) & 0xf, 5);
}

#[test]
fn trap1_event_log_and_gencfg_garbage() {
    let mut h = h();
    // evl_support = 1 (bits 14:13).
    assert_eq!((h.r64(GENCAP) >> 13) & 3, 1);
    // EVLCFG / EVLSTATUS stored (2.15).
    h.w64(EVLCFG, 0x1234_5000);
    h.w64(EVLCFG + 8, 64);
    assert_eq!(h.r64(EVLCFG), 0x1234_5000);
    assert_eq!(h.r64(EVLCFG + 8), 64);
    h.w32(EVLSTATUS, 0x0005);
    assert_eq!(h.r64(EVLSTATUS), 5);
    h.dev.regs.evlstatus |= 1 << 62;
    h.w32(EVLSTATUS + 4, 0x4000_0000);
    assert_eq!(h.r64(EVLSTATUS), 5);
    // GENCFG garbage (stack value with bit 13 clear): stored masked, never acted on.
    h.w32(GENCFG, 0xdead_dfff);
    assert_eq!(h.r32(GENCFG), 0xdead_dfff & 0x10ff);
    h.w64(EVLCFG, 0);
    h.w64(EVLCFG + 8, 0);
    // The next enable still works with the garbage in rdbuf_limit / user_int_en.
    h.pci_up();
    h.configure_wq0();
    assert_eq!(h.cmd(0x8010_0000), 0);
    // GENCFG is locked while enabled (2.9 [R]).
    h.w32(GENCFG, 0x2000);
    assert_eq!(h.r32(GENCFG), 0xdead_dfff & 0x10ff);
    // RESET_DEVICE clears it; the evl_free write after the reset is accepted.
    assert_eq!(h.cmd(0x8020_0000), 0);
    assert_eq!(h.cmd(0x8050_0000), 0);
    assert_eq!(h.r32(GENCFG), 0);
    h.w32(GENCFG, 0xffff_dfff);
    assert_eq!(h.r32(GENCFG), 0x10ff);
}

#[test]
fn trap4_commands_complete_with_interrupt_on_vector0() {
    let mut h = h();
    h.pci_up();
    h.configure_wq0();
    for (cmd, want) in [
        (0x8010_0000u32, 0u32),
        (0x8060_0000, 0),
        (0x8080_0001, 0),
        (0x8070_0001, 0),
        (0x80a0_0001, 0),
        (0x8020_0000, 0),
        (0x8050_0000, 0),
    ] {
        h.sink.clear();
        assert_eq!(h.cmd(cmd), want, "cmd {cmd:#x}");
        assert_eq!(h.r32(INTCAUSE), INTCAUSE_CMD, "cmd {cmd:#x}");
        assert_eq!(h.sink.triggered(), vec![0], "cmd {cmd:#x}");
        // Driver: read INTCAUSE, write it back (W1C).
        h.w32(INTCAUSE, INTCAUSE_CMD);
        assert_eq!(h.r32(INTCAUSE), 0);
    }
    // Failing commands complete too (status + interrupt), never hang.
    h.sink.clear();
    assert_eq!(h.cmd(0x8020_0000), 0x31);
    assert_eq!(h.sink.triggered(), vec![0]);
}

#[test]
fn trap4_5_probe_reset_is_polled_and_silent() {
    let mut h = h();
    h.pci_up();
    assert_eq!(h.cmd(0x0050_0000), 0);
    assert_eq!(h.r32(CMDSTS) & (1 << 31), 0, "active clear");
    assert_eq!(h.r32(INTCAUSE), 0, "trap 5");
    assert!(h.sink.triggered().is_empty());
    // Any command without bit 31: no INTCAUSE.CMD, no vector.
    h.configure_wq0();
    assert_eq!(h.cmd(0x0010_0000), 0);
    assert_eq!(h.r32(INTCAUSE), 0);
    assert!(h.sink.triggered().is_empty());
}

#[test]
fn misc_vector_masked_goes_pending() {
    let mut h = h();
    h.pci_up();
    h.w32(MSIX_TABLE_OFFSET + 12, 1);
    h.w32(CMD, 0x8050_0000);
    assert!(h.sink.triggered().is_empty());
    assert_eq!(h.r64(MSIX_PBA_OFFSET) & 1, 1);
    h.w32(MSIX_TABLE_OFFSET + 12, 0);
    assert_eq!(h.sink.triggered(), vec![0]);
    assert_eq!(h.r64(MSIX_PBA_OFFSET) & 1, 0);
}

#[test]
fn command_errors() {
    let mut h = h();
    // Bus master off → 0x12.
    h.dev.config_write(1, 0, &[0x02]);
    h.configure_wq0();
    assert_eq!(h.cmd(0x0010_0000), 0x12);
    h.pci_up();
    assert_eq!(h.cmd(0x0000_0000), 0x01);
    assert_eq!(h.cmd(0x00f0_0000), 0x01);
    assert_eq!(
        h.cmd(0x00d0_0001),
        0x01,
        "REQUEST_INT_HANDLE not advertised"
    );
    assert_eq!(
        h.cmd(0x00e0_0001),
        0x01,
        "RELEASE_INT_HANDLE not advertised"
    );
    assert_eq!(h.cmd(0x0210_0000), 0x04, "reserved bits 30:25");
    assert_eq!(h.cmd(0x0020_0000), 0x31);
    assert_eq!(h.cmd(0x0060_0000), 0x20, "ENABLE_WQ before ENABLE_DEVICE");
    assert_eq!(h.cmd(0x0070_0001), 0x32);
    assert_eq!(h.cmd(0x0070_0100), 0x02);
    assert_eq!(h.cmd(0x0010_0000), 0);
    assert_eq!(h.cmd(0x0010_0000), 0x10);
    assert_eq!(h.cmd(0x0060_0008), 0x02);
    assert_eq!(h.cmd(0x0060_0001), 0x22, "wq1 size 0");
    assert_eq!(h.cmd(0x0060_0000), 0);
    assert_eq!(h.cmd(0x0060_0000), 0x21);
    assert_eq!(h.dev.stats().commands, 16);
    assert_eq!(h.dev.stats().command_errors, 14);
}

#[test]
fn trap14_exact_cmdsts_values() {
    let mut h = h();
    h.pci_up();
    h.configure_wq0();
    // Whole-dword comparisons: result field and active bit must be zero.
    assert_eq!(h.cmd(0x8010_0000), 0x0000_0000);
    assert_eq!(h.cmd(0x8060_0000), 0x0000_0000);
    assert_eq!(h.cmd(0x8060_0000), 0x0000_0021);
    assert_eq!(h.cmd(0x8010_0000), 0x0000_0010);
}

fn set_wq0_dword2(h: &mut H, v: u32) {
    h.w32(WQCFG_OFFSET + 8, v);
}

#[test]
fn enable_wq_checks_traps_11_12() {
    let mut h = h();
    h.pci_up();
    h.configure_wq0();
    assert_eq!(h.cmd(0x8010_0000), 0);
    set_wq0_dword2(&mut h, 0x01);
    assert_eq!(h.cmd(0x8060_0000), 0x23, "priority 0 (trap 12)");
    set_wq0_dword2(&mut h, 0xa0);
    assert_eq!(h.cmd(0x8060_0000), 0x24, "shared mode");
    set_wq0_dword2(&mut h, 0xa3);
    assert_eq!(h.cmd(0x8060_0000), 0x25, "block on fault");
    set_wq0_dword2(&mut h, 0x100a1 | (1 << 28));
    assert_eq!(h.cmd(0x8060_0000), 0x26, "pasid_en");
    set_wq0_dword2(&mut h, 0xa1);
    h.w32(WQCFG_OFFSET + 12, 21 | (11 << 5));
    assert_eq!(h.cmd(0x8060_0000), 0x27, "batch 2048 > 1024");
    h.w32(WQCFG_OFFSET + 12, 22 | (5 << 5));
    assert_eq!(h.cmd(0x8060_0000), 0x28, "xfer 4 MiB > 2 MiB");
    // Trap 11: the driver defaults (2 MiB, 32) pass.
    h.w32(WQCFG_OFFSET + 12, 0xb5);
    assert_eq!(h.cmd(0x8060_0000), 0);
    let s = h.dev.state();
    assert_eq!(s.wqs[0].state, "enabled");
    assert_eq!(s.wqs[0].max_transfer_size, 1 << 21);
    assert_eq!(s.wqs[0].max_batch_size, 32);
    assert_eq!((h.r64(GENCAP) >> 16) & 0x1f, 21);
    assert!((h.r64(GENCAP) >> 21) & 0xf >= 5);
}

#[test]
fn enable_device_config_checks() {
    let mut h = h();
    h.pci_up();
    // Nothing configured: allowed (empty groups), as hardware.
    assert_eq!(h.cmd(0x8010_0000), 0);
    assert_eq!(h.cmd(0x8050_0000), 0);
    // Sum of sizes > total.
    h.configure_wq0();
    h.w32(WQCFG_OFFSET + 32, 120);
    assert_eq!(h.cmd(0x8010_0000), 0x14);
    h.w32(WQCFG_OFFSET + 32, 16);
    assert_eq!(h.cmd(0x8010_0000), 0x16, "wq1 sized but in no group");
    h.w32(WQCFG_OFFSET + 32, 0);
    h.w64(GRPCFG_OFFSET + 0x20, 0);
    assert_eq!(h.cmd(0x8010_0000), 0x15);
    h.w64(GRPCFG_OFFSET + 0x20, 1);
    h.w64(GRPCFG_OFFSET + 64 + 0x20, 1);
    h.w64(GRPCFG_OFFSET + 64, 2);
    assert_eq!(h.cmd(0x8010_0000), 0x17);
    h.w64(GRPCFG_OFFSET + 64 + 0x28, 0x0400_4009);
    h.w64(GRPCFG_OFFSET + 64 + 0x20, 2);
    h.w64(GRPCFG_OFFSET + 0x28, 0x0400_4009);
    assert_eq!(h.cmd(0x8010_0000), 0x18);
}

#[test]
fn trap9_grpcfg_locked_wqcfg_of_disabled_wq_open() {
    let mut h = h();
    h.up();
    // The enable-wq sequence rewrites all GRPCFG entries while enabled: silently ignored.
    for g in 0..4u64 {
        let base = GRPCFG_OFFSET + 64 * g;
        h.w64(base, 0xff);
        h.w64(base + 0x20, 0xf);
        h.w64(base + 0x28, 0);
    }
    assert_eq!(h.r64(GRPCFG_OFFSET), 1);
    assert_eq!(h.r64(GRPCFG_OFFSET + 0x20), 1);
    assert_eq!(h.r64(GRPCFG_OFFSET + 0x28), 0x0400_0009);
    assert_eq!(h.r64(GRPCFG_OFFSET + 64), 0);
    assert_eq!(h.r32(INTCAUSE), 0, "no error raised");
    // WQCFG of the enabled wq0 is locked; of disabled wq1 writable (but its size is frozen).
    h.w32(WQCFG_OFFSET + 8, 0);
    assert_eq!(h.r32(WQCFG_OFFSET + 8), 0xa1);
    h.w32(WQCFG_OFFSET + 32 + 8, 0x51);
    assert_eq!(h.r32(WQCFG_OFFSET + 32 + 8), 0x51);
    h.w32(WQCFG_OFFSET + 32, 8);
    assert_eq!(h.r32(WQCFG_OFFSET + 32), 0);
}

#[test]
fn trap10_wqcfg_or_shadow_and_resets() {
    let mut h = h();
    h.up();
    // wq_state visible in dword 6 bits 31:30; writes of the RO dword ignored.
    assert_eq!(h.r32(WQCFG_OFFSET + 24), 0x4000_0000);
    // Teardown: DRAIN_WQ, RESET_WQ (section 4.8).
    assert_eq!(h.cmd(0x8080_0001), 0);
    assert_eq!(h.cmd(0x80a0_0001), 0);
    let wq: Vec<u32> = (0..8).map(|d| h.r32(WQCFG_OFFSET + 4 * d)).collect();
    // Size kept (frozen while enabled), everything else cleared, state disabled.
    assert_eq!(wq, vec![0x10, 0, 0, 0, 0, 0, 0, 0]);
    // Driver re-enable: reads (ORs) and rewrites; mode set again → accepted.
    for (d, v) in [0x10u32, 0, 0xa1, 0xb5, 0, 0, 0, 0].iter().enumerate() {
        let cur = h.r32(WQCFG_OFFSET + 4 * d as u64);
        h.w32(WQCFG_OFFSET + 4 * d as u64, cur | v);
    }
    assert_eq!(h.cmd(0x8060_0000), 0);
    // RESET_DEVICE clears all writable WQCFG fields including size, and GRPCFG.
    assert_eq!(h.cmd(0x8020_0000), 0);
    assert_eq!(h.cmd(0x8050_0000), 0);
    for d in 0..8 {
        assert_eq!(h.r32(WQCFG_OFFSET + 4 * d), 0, "dword {d}");
    }
    assert_eq!(h.r64(GRPCFG_OFFSET + 0x28), 0);
    // Shared mode left over from an OR-ed shadow would make ENABLE_WQ fail: after a reset the
    // driver's new dedicated config is what sticks.
    h.configure_wq0();
    assert_eq!(h.r32(WQCFG_OFFSET + 8), 0xa1);
}

#[test]
fn reset_device_values() {
    let mut h = h();
    h.up();
    h.w32(GENCTRL, 7);
    h.w32(MSIX_PERM_OFFSET + 8, 0xffff_ffff);
    h.w64(EVLCFG, 0x5000);
    h.dev.regs.record_swerr(0x100, 0, 0);
    assert_eq!(h.cmd(0x0050_0000), 0);
    assert_eq!(h.r32(GENSTS), 0);
    assert_eq!(
        h.r32(GENCTRL),
        0,
        "driver sets bits 0/1 again after reset (2.10)"
    );
    assert_eq!(h.r32(MSIX_PERM_OFFSET + 8), 0);
    assert_eq!(h.r64(EVLCFG), 0);
    assert_eq!(h.r64(SWERR), 0);
    assert_eq!(h.r32(INTCAUSE), 0);
    assert_eq!(h.dev.state().wqs[0].state, "disabled");
    // PCI config space and MSI-X table untouched.
    assert!(h.dev.config().bus_master_enabled());
    assert!(h.dev.msix.enabled());
    assert_eq!(h.r32(MSIX_TABLE_OFFSET + 8), 0x20);
}

#[test]
fn genctrl_intcause_swerr_rules() {
    let mut h = h();
    h.w32(GENCTRL, 0xffff_ffff);
    assert_eq!(h.r32(GENCTRL), 7);
    h.dev.regs.intcause = 0x8000_003f;
    h.w32(INTCAUSE, 0x2);
    assert_eq!(h.r32(INTCAUSE), 0x8000_003d, "RW1C");
    h.w32(INTCAUSE, 0xffff_ffff);
    assert_eq!(h.r32(INTCAUSE), 0);
    // SWERR: valid, overflow, W1C of bits 1:0 via qword 0.
    assert!(h.dev.regs.record_swerr(0x1a << 8, 7, 0xdead));
    assert!(!h.dev.regs.record_swerr(0x1b << 8, 0, 0));
    assert_eq!(h.r64(SWERR) & 0xff03, 0x1a03);
    assert_eq!(h.r64(SWERR + 8), 7);
    assert_eq!(h.r64(SWERR + 16), 0xdead);
    let ack = h.r64(SWERR) & 3;
    h.w64(SWERR, ack);
    assert_eq!(h.r64(SWERR) & 3, 0);
    h.w64(SWERR + 16, 0);
    assert_eq!(h.r64(SWERR + 16), 0xdead, "qwords 1-3 read-only");
}

#[test]
fn msix_perm_perfmon_holes_and_bad_sizes() {
    let mut h = h();
    h.w32(MSIX_PERM_OFFSET + 8, 0xffff_ffff);
    assert_eq!(h.r32(MSIX_PERM_OFFSET + 8), 0xffff_f00c);
    assert_eq!(h.r32(MSIX_PERM_OFFSET + 12), 0);
    // Beyond 9 entries: hole.
    h.w32(MSIX_PERM_OFFSET + 8 * 9, 0xffff_ffff);
    assert_eq!(h.r32(MSIX_PERM_OFFSET + 8 * 9), 0);
    // PERFMON window: zeros, writes ignored (2.18).
    for off in [0x0u64, 0x10, 0x20, 0x30] {
        h.w32(PERFMON_OFFSET + off, 0xffff_ffff);
        assert_eq!(h.r64(PERFMON_OFFSET + off), 0);
    }
    // Odd sizes / alignment: ignored and counted, never a panic.
    h.dev.bar_write(0, GENCTRL, &[1]);
    h.dev.bar_write(0, GENCTRL + 2, &[1, 1, 1, 1]);
    h.dev.bar_write(0, GENCTRL, &[1; 16]);
    h.dev.bar_write(0, u64::MAX - 3, &[1; 4]);
    assert_eq!(h.r32(GENCTRL), 0);
    let mut b = [0u8; 16];
    h.dev.bar_read(0, 0, &mut b);
    assert_eq!(b, [0xff; 16]);
    let mut b = [0u8; 2];
    h.dev.bar_read(0, VERSION, &mut b);
    assert_eq!(b, [0x00, 0x01]);
    let mut b = [0u8; 1];
    h.dev.bar_read(0, u64::MAX, &mut b);
    assert_eq!(h.dev.stats().bad_register_accesses, 6);
    // Unimplemented groups/WQs and reserved GRPCFG qwords read 0.
    assert_eq!(h.r64(GRPCFG_OFFSET + 0x30), 0);
    assert_eq!(h.r64(0x600), 0);
}

#[test]
fn trap7_completion_record_before_interrupt() {
    struct CheckingSink {
        mem: Arc<GuestMemoryMmap<()>>,
        seen: Mutex<Vec<(u16, u8)>>,
    }
    impl crate::pci::msix::MsiInterruptSink for CheckingSink {
        fn update_route(&self, _v: u16, _m: MsiMessage) {}
        fn trigger(&self, v: u16) {
            let st = self.mem.read_obj::<u8>(GuestAddress(CR)).unwrap();
            self.seen.lock().unwrap().push((v, st));
        }
    }
    let m = mem();
    let sink = Arc::new(CheckingSink {
        mem: m.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let dev = DsaDevice::new(DsaConfig::default(), m.clone(), sink.clone()).unwrap();
    let mut h = H {
        dev,
        sink: Arc::new(RecordingSink::default()),
        mem: m,
    };
    h.up();
    // Enable wq3 as well, interrupt handle = wq + 1.
    for (d, v) in [0x10u32, 0, 0xa1, 0xb5].iter().enumerate() {
        h.w32(WQCFG_OFFSET + 3 * 32 + 4 * d as u64, *v);
    }
    sink.seen.lock().unwrap().clear();
    h.mem
        .write_slice(&[0xabu8; 100], GuestAddress(SRC))
        .unwrap();
    let d = h.memmove_desc(0x1c, 1, 100);
    h.submit(0, 1, &d);
    assert_eq!(
        *sink.seen.lock().unwrap(),
        vec![(1, 1)],
        "vector 1 fired after status 1 was visible"
    );
    let mut out = [0u8; 100];
    h.mem.read_slice(&mut out, GuestAddress(DST)).unwrap();
    assert_eq!(out, [0xab; 100]);
}

#[test]
fn portal_submission_and_stats() {
    let mut h = h();
    h.up();
    h.mem.write_slice(&[7u8; 4096], GuestAddress(SRC)).unwrap();
    // dmaengine memcpy: CRAV | RCR | RCI, opcode 3, int_handle = wq + 1 (section 8).
    let d = h.memmove_desc(0x1c, 1, 4096);
    for slot in 0..64u64 {
        h.mem.write_obj(0u8, GuestAddress(CR)).unwrap();
        h.dev.bar_write(2, 0x1000 + slot * 64, &d);
        assert_eq!(h.cr_status(), 1);
    }
    assert_eq!(h.sink.triggered(), vec![1; 64]);
    // Unlimited page works the same for a dedicated WQ.
    h.submit(0, 0, &d);
    // NOOP (DMA_INTERRUPT prep).
    let mut nop = [0u8; 64];
    nop[4..8].copy_from_slice(&0x1cu32.to_le_bytes());
    nop[8..16].copy_from_slice(&CR.to_le_bytes());
    nop[36..38].copy_from_slice(&1u16.to_le_bytes());
    h.submit(0, 1, &nop);
    let s = h.dev.stats();
    assert_eq!(s.descriptors, 66);
    assert_eq!(s.bytes, 65 * 4096);
    assert_eq!(s.by_opcode.get("memmove"), Some(&65));
    assert_eq!(s.by_opcode.get("noop"), Some(&1));
    assert_eq!(s.completion_status.get("0x01"), Some(&66));
    assert_eq!(s.completion_interrupts, 66);
    assert_eq!(s.records_written, 66);
    // Portal reads return all ones.
    let mut b = [0u8; 8];
    h.dev.bar_read(2, 0x1000, &mut b);
    assert_eq!(b, [0xff; 8]);
}

#[test]
fn portal_rejects() {
    let mut h = h();
    h.up();
    h.w32(GENCTRL, 3);
    let d = h.memmove_desc(0x1c, 1, 64);
    // Wrong sizes and misaligned writes: dropped, counted.
    h.dev.bar_write(2, 0x1000, &[0u8; 8]);
    h.dev.bar_write(2, 0x1000, &[0u8; 32]);
    h.dev.bar_write(2, 0x1008, &d);
    assert_eq!(h.dev.stats().bad_portal_writes, 3);
    assert!(h.sink.triggered().is_empty());
    // Disabled WQ 2: dropped, SWERR with wq_idx valid, INTCAUSE.SWERR + vector 0.
    h.submit(2, 1, &d);
    let e = h.r64(SWERR);
    assert_eq!(e & 0xf, 0b1101, "valid, desc valid, wq_idx valid");
    assert_eq!((e >> 16) & 0xff, 2);
    assert_eq!((e >> 32) & 0xff, 3);
    assert_eq!(h.r32(INTCAUSE), INTCAUSE_SWERR);
    assert_eq!(h.sink.triggered(), vec![0]);
    assert_eq!(h.dev.stats().dropped_portal_writes, 1);
    // A second error while valid sets overflow.
    h.submit(7, 0, &d);
    assert_eq!(h.r64(SWERR) & 3, 3);
    // Outside BAR2's WQs (wq 8 in a 128 KiB BAR would not exist; use a far offset).
    h.dev.bar_write(2, 0x4000 * 40, &d);
    assert_eq!(h.dev.stats().dropped_portal_writes, 3);
    // Invalid interrupt handle: status 0x19 in the record, no interrupt to a bad vector.
    h.sink.clear();
    h.w32(INTCAUSE, 0xffff_ffff);
    let bad = h.memmove_desc(0x1c, 9, 64);
    h.submit(0, 1, &bad);
    assert_eq!(h.cr_status(), 0x19);
    assert!(h.sink.triggered().is_empty());
    // IMS page with RCI: no IMS → 0x19.
    h.mem.write_obj(0u8, GuestAddress(CR)).unwrap();
    h.submit(0, 2, &d);
    assert_eq!(h.cr_status(), 0x19);
    // IMS page without RCI executes.
    let quiet = h.memmove_desc(0x0c, 0, 64);
    h.submit(0, 3, &quiet);
    assert_eq!(h.cr_status(), 1);
    // Bus mastering off: dropped.
    h.dev.config_write(1, 0, &[0x02]);
    h.mem.write_obj(0u8, GuestAddress(CR)).unwrap();
    h.submit(0, 1, &d);
    assert_eq!(h.cr_status(), 0);
    assert_eq!(h.dev.stats().dropped_portal_writes, 4);
}

/// A batch member asking for an interrupt on a vector beyond the MSI-X table completes with
/// 0x19 (as a descriptor of its own does at the portal) and raises nothing; the batch reports
/// a failed member.
#[test]
fn batch_member_with_a_bad_interrupt_handle() {
    let mut h = h();
    h.up();
    const LIST: u64 = 0x4000;
    const MEMBER_CR: u64 = 0x8040;
    let mut bad = h.memmove_desc(0x1c, 9, 64);
    bad[8..16].copy_from_slice(&MEMBER_CR.to_le_bytes());
    let mut good = h.memmove_desc(0x1c, 1, 64);
    good[8..16].copy_from_slice(&(MEMBER_CR + 32).to_le_bytes());
    h.mem.write_slice(&bad, GuestAddress(LIST)).unwrap();
    h.mem.write_slice(&good, GuestAddress(LIST + 64)).unwrap();
    let mut batch = [0u8; 64];
    batch[4..8].copy_from_slice(&(0x0cu32 | (1 << 24)).to_le_bytes());
    batch[8..16].copy_from_slice(&CR.to_le_bytes());
    batch[16..24].copy_from_slice(&LIST.to_le_bytes());
    batch[32..36].copy_from_slice(&2u32.to_le_bytes());
    h.submit(0, 1, &batch);
    let status = |a: u64| h.mem.read_obj::<u8>(GuestAddress(a)).unwrap();
    assert_eq!(status(MEMBER_CR), 0x19, "member with handle 9 of 9 vectors");
    assert_eq!(status(MEMBER_CR + 32), 1);
    assert_eq!(h.cr_status(), 0x05, "batch: a member failed");
    assert_eq!(h.sink.triggered(), vec![1], "only the good member's vector");
}

/// SWERR of a batch member says so: qword 0 bit 4 (batch) and qword 1 the member's index, bit 5
/// for the failed record write; an error without a record carries its invalid flags in qword 1.
#[test]
fn swerr_names_the_batch_member_and_the_invalid_flags() {
    let mut h = h();
    h.up();
    h.w32(GENCTRL, 1);
    const LIST: u64 = 0x4000;
    let nop = |cr: u64| {
        let mut d = [0u8; 64];
        d[4..8].copy_from_slice(&0x0cu32.to_le_bytes());
        d[8..16].copy_from_slice(&cr.to_le_bytes());
        d
    };
    h.mem
        .write_slice(&nop(CR + 32), GuestAddress(LIST))
        .unwrap();
    h.mem
        .write_slice(&nop(RAM + 0x1000), GuestAddress(LIST + 64))
        .unwrap();
    let mut batch = [0u8; 64];
    batch[4..8].copy_from_slice(&(0x0cu32 | (1 << 24)).to_le_bytes());
    batch[8..16].copy_from_slice(&CR.to_le_bytes());
    batch[16..24].copy_from_slice(&LIST.to_le_bytes());
    batch[32..36].copy_from_slice(&2u32.to_le_bytes());
    h.submit(0, 1, &batch);
    assert_eq!(h.cr_status(), 0x05);
    let q0 = h.r64(SWERR);
    assert_eq!((q0 >> 8) & 0xff, 0x1a, "record outside RAM");
    assert_eq!((q0 >> 4) & 3, 0b11, "batch, fault on a write");
    assert_eq!(h.r64(SWERR + 8), 1, "member 1");
    assert_eq!(h.r64(SWERR + 16), RAM + 0x1000);
    h.w64(SWERR, 3);
    // Invalid flags (bit 6 is reserved) without CRAV: SWERR 0x11 with the flags in qword 1.
    let mut bad = [0u8; 64];
    bad[4..8].copy_from_slice(&0x40u32.to_le_bytes());
    h.submit(0, 1, &bad);
    assert_eq!((h.r64(SWERR) >> 8) & 0xff, 0x11);
    assert_eq!((h.r64(SWERR) >> 4) & 1, 0, "not a batch member");
    assert_eq!(h.r64(SWERR + 8) >> 32, 0x40);
}

#[test]
fn error_completion_and_swerr_without_crav() {
    let mut h = h();
    h.up();
    h.w32(GENCTRL, 1);
    // Transfer size 0 → 0x13 with a record (CRAV), interrupt still sent.
    let d = h.memmove_desc(0x1c, 1, 0);
    h.submit(0, 1, &d);
    assert_eq!(h.cr_status(), 0x13);
    assert_eq!(h.sink.triggered(), vec![1]);
    // Without CRAV the error goes to SWERR.
    h.sink.clear();
    let d = h.memmove_desc(0x10, 1, 0);
    h.submit(0, 1, &d);
    assert_eq!((h.r64(SWERR) >> 8) & 0xff, 0x13);
    assert_eq!(h.sink.triggered(), vec![0, 1]);
    // Source outside guest RAM → error status, never a panic.
    let mut d = h.memmove_desc(0x1c, 1, 64);
    d[16..24].copy_from_slice(&(RAM - 8).to_le_bytes());
    h.submit(0, 1, &d);
    assert_ne!(h.cr_status(), 1);
}

#[test]
fn wq_full_drops() {
    use super::backend::{DsaBackend, Submitted};
    use super::engine::{EngineLimits, Outcome};
    /// A backend that queues everything until drained.
    #[derive(Default)]
    struct Queueing {
        q: Vec<(usize, u8)>,
    }
    impl DsaBackend for Queueing {
        fn name(&self) -> &'static str {
            "queueing"
        }
        fn opcodes(&self) -> Vec<u8> {
            vec![0, 3]
        }
        fn submit(&mut self, wq: usize, d: &[u8; 64], _l: &EngineLimits) -> Submitted {
            self.q.push((wq, d[7]));
            Submitted::Queued
        }
        fn reject(&mut self, _wq: usize, d: &[u8; 64], status: u8) -> Outcome {
            Outcome {
                opcode: d[7],
                status,
                bytes: 0,
                record_written: false,
                interrupt: None,
                swerr: None,
                member_interrupts: Vec::new(),
            }
        }
        fn occupancy(&self, wq: usize) -> u16 {
            self.q.iter().filter(|x| x.0 == wq).count() as u16
        }
        fn drain(&mut self, wqs: &[usize]) -> Vec<(usize, Outcome)> {
            let (done, keep) = self.q.drain(..).partition(|x| wqs.contains(&x.0));
            self.q = keep;
            done.into_iter()
                .map(|(wq, op)| {
                    (
                        wq,
                        Outcome {
                            opcode: op,
                            status: 1,
                            bytes: 0,
                            record_written: true,
                            interrupt: Some(wq as u16 + 1),
                            swerr: None,
                            member_interrupts: Vec::new(),
                        },
                    )
                })
                .collect()
        }
        fn abort(&mut self, wqs: &[usize]) {
            self.q.retain(|x| !wqs.contains(&x.0));
        }
        fn reset(&mut self) {
            self.q.clear();
        }
    }
    let sink = Arc::new(RecordingSink::default());
    let dev = DsaDevice::with_backend(
        DsaConfig::default(),
        Box::<Queueing>::default(),
        sink.clone(),
    )
    .unwrap();
    let mut h = H {
        dev,
        sink,
        mem: mem(),
    };
    h.up();
    let d = h.memmove_desc(0x1c, 1, 64);
    for _ in 0..20 {
        h.submit(0, 1, &d);
    }
    let s = h.dev.stats();
    assert_eq!((s.wq_full_drops, s.dropped_portal_writes), (4, 4));
    assert_eq!(h.dev.state().wqs[0].occupancy, 16);
    assert_eq!(
        h.r32(WQCFG_OFFSET + 24) & 0xffff,
        16,
        "occupancy in WQCFG dword 6"
    );
    assert_eq!(h.r64(SWERR), 0, "dedicated WQ full is silent");
    // DRAIN_WQ completes them all (interrupts before the command's own).
    assert_eq!(h.cmd(0x8080_0001), 0);
    let t = h.sink.triggered();
    assert_eq!(t.len(), 17);
    assert_eq!(t[16], 0);
    assert!(t[..16].iter().all(|v| *v == 1));
    assert_eq!(h.dev.state().wqs[0].occupancy, 0);
    // ABORT_WQ drops without completion.
    h.submit(0, 1, &d);
    h.sink.clear();
    assert_eq!(h.cmd(0x8090_0001), 0);
    assert_eq!(h.sink.triggered(), vec![0]);
    assert_eq!(h.dev.state().wqs[0].occupancy, 0);
    assert_eq!(h.dev.state().backend, "queueing");
}

#[test]
fn state_snapshot_and_serialize() {
    let mut h = h();
    h.up();
    let s = h.dev.state();
    assert!(s.enabled);
    assert_eq!(s.state, "enabled");
    assert!(s.msix_enabled);
    assert_eq!(s.engines, 4);
    assert_eq!(s.groups[0].wqs, vec![0]);
    assert_eq!(s.groups[0].engines, vec![0]);
    assert_eq!(s.wqs[0].mode, "dedicated");
    assert_eq!(
        (s.wqs[0].size, s.wqs[0].priority, s.wqs[0].group),
        (16, 10, Some(0))
    );
    assert_eq!(s.wqs[1].state, "disabled");
    assert_eq!(s.backend, "software");
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"mode\":\"dedicated\""));
    let stats = serde_json::to_value(h.dev.stats()).unwrap();
    assert_eq!(stats["commands"], 2);
    // DISABLE_DEVICE keeps the configuration, disables the WQs.
    assert_eq!(h.cmd(0x8020_0000), 0);
    let s = h.dev.state();
    assert!(!s.enabled);
    assert_eq!(s.wqs[0].state, "disabled");
    assert_eq!(s.wqs[0].size, 16);
    assert_eq!(h.r64(GRPCFG_OFFSET), 1);
}
