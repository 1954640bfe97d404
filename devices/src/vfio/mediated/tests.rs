//! Mediation against the register model: the "physical" device is a vDSA (what dsa-server
//! serves), the guest drives a second vDSA front end whose backend is [`MediatedBackend`].

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::dsa::regs::{self, CMD, CMDSTS, GRPCFG_OFFSET, WQCFG_OFFSET};
use crate::dsa::{DsaConfig, DsaDevice};
use crate::pci::msix::RecordingSink;
use crate::pci::PciDevice;

/// A vDSA model as the physical device; every BAR0 write it gets is recorded.
struct ModelPort {
    dev: Mutex<DsaDevice>,
    writes: Mutex<Vec<u64>>,
}

impl ModelPort {
    fn new(cfg: DsaConfig) -> Arc<Self> {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let mut dev = DsaDevice::new(cfg, mem, Arc::new(RecordingSink::default())).unwrap();
        dev.config_write(1, 0, &[0x06, 0x00]); // bus master, as PhysicalDsa::open does
        Arc::new(Self {
            dev: Mutex::new(dev),
            writes: Mutex::default(),
        })
    }
    fn w32(&self, off: u64, v: u32) {
        self.writes.lock().unwrap().push(off);
        self.dev.lock().unwrap().bar_write(0, off, &v.to_le_bytes());
    }
    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.lock().unwrap().bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn r64(&self, off: u64) -> u64 {
        u64::from(self.r32(off)) | (u64::from(self.r32(off + 4)) << 32)
    }
    fn wq_enabled(&self, wq: usize) -> bool {
        self.r32(WQCFG_OFFSET + 32 * wq as u64 + 24) & (1 << 30) != 0
    }
    fn wq_size(&self, wq: usize) -> u32 {
        self.r32(WQCFG_OFFSET + 32 * wq as u64)
    }
}

impl PhysicalPort for ModelPort {
    fn caps(&self) -> PhysicalCaps {
        PhysicalCaps::decode(
            self.r64(regs::GENCAP),
            self.r64(regs::WQCAP),
            self.r64(regs::GRPCAP),
            self.r64(regs::ENGCAP),
            self.r64(regs::OFFSETS),
        )
    }
    fn command(&self, code: u32, operand: u32) -> u8 {
        self.w32(CMD, (code << 20) | operand);
        self.r32(CMDSTS) as u8
    }
    fn write_wqcfg(&self, wq: usize, d: usize, v: u32) {
        self.w32(WQCFG_OFFSET + 32 * wq as u64 + 4 * d as u64, v);
    }
    fn write_grpcfg(&self, g: usize, q: usize, v: u64) {
        let off = GRPCFG_OFFSET + 64 * g as u64 + 8 * q as u64;
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
    fn post(&self, _wq: usize, _desc: &[u8; 64]) -> bool {
        true
    }
    fn opcap(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.r64(regs::OPCAP + 8 * i))
    }
    fn r32(&self, off: u64) -> u32 {
        ModelPort::r32(self, off)
    }
    fn w32(&self, off: u64, v: u32) {
        ModelPort::w32(self, off, v)
    }
}

/// The guest's front end over `wqs` of `phys`.
struct Guest {
    dev: DsaDevice,
    counters: Arc<MediationCounters>,
}

impl Guest {
    fn new(phys: &Arc<ModelPort>, wqs: Vec<usize>) -> Self {
        let counters = Arc::new(MediationCounters::default());
        let cfg = DsaConfig {
            wqs: wqs.len() as u8,
            engines: 2,
            groups: 2,
            total_wq_size: 64,
            ..DsaConfig::default()
        };
        let backend = MediatedBackend::new(phys.clone(), wqs, counters.clone());
        let mut dev =
            DsaDevice::with_backend(cfg, Box::new(backend), Arc::new(RecordingSink::default()))
                .unwrap();
        dev.config_write(1, 0, &[0x06, 0x00]);
        Self { dev, counters }
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }
    fn cmd(&mut self, code: u32, operand: u32) -> u8 {
        self.w32(CMD, (1 << 31) | (code << 20) | operand);
        let mut b = [0u8; 4];
        self.dev.bar_read(0, CMDSTS, &mut b);
        b[0]
    }
    /// Guest WQ `wq`: dedicated, `size` entries, priority `prio`, 2 MiB / batch 32; in
    /// group 0 with engine 0 (and WQ `wq` in the group's bitmap).
    fn configure(&mut self, wqs: &[(usize, u32, u32)]) {
        let mut bits = 0u64;
        for &(wq, size, prio) in wqs {
            let base = WQCFG_OFFSET + 32 * wq as u64;
            self.w32(base, size);
            self.w32(base + 8, 1 | (prio << 4));
            self.w32(base + 12, 21 | (5 << 5));
            bits |= 1 << wq;
        }
        self.w64(GRPCFG_OFFSET, bits);
        self.w64(GRPCFG_OFFSET + 0x20, 1);
    }
}

#[test]
fn the_guest_configures_only_the_physical_wqs_it_was_given() {
    let phys = ModelPort::new(DsaConfig::default());
    let mut g = Guest::new(&phys, vec![2, 5]);
    g.configure(&[(0, 16, 3), (1, 8, 0xf)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0);
    assert_eq!(g.cmd(code::ENABLE_WQ, 1), 0);
    assert!(phys.wq_enabled(2) && phys.wq_enabled(5));
    assert_eq!((phys.wq_size(2), phys.wq_size(5)), (16, 8));
    for other in [0, 1, 3, 4, 6, 7] {
        assert!(!phys.wq_enabled(other), "physical WQ {other}");
        assert_eq!(phys.wq_size(other), 0, "physical WQ {other}");
    }
    // Group 0 of the physical device holds physical WQs 2 and 5, engine 0.
    assert_eq!(phys.r64(GRPCFG_OFFSET), (1 << 2) | (1 << 5));
    assert_eq!(phys.r64(GRPCFG_OFFSET + 0x20), 1);
    // Priority carried over; max transfer/batch as asked.
    assert_eq!(phys.r32(WQCFG_OFFSET + 32 * 2 + 8) & 0xf1, 0x31);
    // Disabling guest WQ 1 disables physical WQ 5 only.
    assert_eq!(g.cmd(code::DISABLE_WQ, 1 << 1), 0);
    assert!(phys.wq_enabled(2) && !phys.wq_enabled(5));
    assert_eq!(g.counters.physical_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn a_wq_the_guest_was_not_given_is_refused_without_touching_the_device() {
    let phys = ModelPort::new(DsaConfig::default());
    let mut g = Guest::new(&phys, vec![3]);
    g.configure(&[(0, 16, 1)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    let before = phys.writes.lock().unwrap().len();
    // Guest WQ 1..8 do not exist for it (physical WQs 0..8 other than 3 are not its).
    for wq in 1..8 {
        assert_eq!(g.cmd(code::ENABLE_WQ, wq), 0x02, "ENABLE_WQ {wq}");
    }
    assert_eq!(g.cmd(code::DISABLE_WQ, 0xfe), 0x02);
    assert_eq!(g.cmd(code::RESET_WQ, 1 << 4), 0x02);
    // WQCFG writes beyond its one WQ go nowhere.
    g.w32(WQCFG_OFFSET + 32 * 4, 99);
    assert_eq!(phys.writes.lock().unwrap().len(), before);
    for wq in 0..8 {
        assert!(!phys.wq_enabled(wq));
    }
}

#[test]
fn guest_values_are_checked_by_the_front_end_and_clamped_to_the_device() {
    let phys = ModelPort::new(DsaConfig {
        max_xfer_shift: 21,
        max_batch_shift: 5,
        ..DsaConfig::default()
    });
    let mut g = Guest::new(&phys, vec![0]);
    g.configure(&[(0, 16, 0)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    let before = phys.writes.lock().unwrap().len();
    // Priority 0: the front end refuses (0x23) before the device is touched.
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0x23);
    assert_eq!(phys.writes.lock().unwrap().len(), before);
    // Shared mode, block on fault, PASID: refused by the front end as well.
    g.w32(WQCFG_OFFSET + 8, 0x10);
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0x24);
    g.w32(WQCFG_OFFSET + 8, 0x13);
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0x25);
    // A guest batch size of 32 on a device whose max is 32: accepted.
    g.w32(WQCFG_OFFSET + 8, 0x11);
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0);
    assert!(phys.wq_enabled(0));
    assert_eq!((phys.r32(WQCFG_OFFSET + 12) >> 5) & 0xf, 5);
}

#[test]
fn physical_errors_become_the_guests() {
    let phys = ModelPort::new(DsaConfig::default());
    // The physical device loses bus mastering: its ENABLE_DEVICE fails with 0x12.
    phys.dev.lock().unwrap().config_write(1, 0, &[0x02, 0x00]);
    let mut g = Guest::new(&phys, vec![0, 1]);
    g.configure(&[(0, 16, 1)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0x12);
    assert_eq!(g.counters.physical_errors.load(Ordering::Relaxed), 1);
    // The guest's device stays disabled: its ENABLE_WQ says so.
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0x20);
}

#[test]
fn wq_sets_translate_per_block() {
    assert_eq!(wq_set_operands([0, 3]), vec![0b1001]);
    assert_eq!(wq_set_operands([17, 1]), vec![0b10, (1 << 16) | 0b10]);
    assert!(wq_set_operands([]).is_empty());
}

#[test]
fn a_physical_wq_left_enabled_is_reconfigured_with_the_clamped_values() {
    let phys = ModelPort::new(DsaConfig::default());
    // An earlier owner left physical WQ 1 enabled with priority 15 and its own size.
    let mut earlier = Guest::new(&phys, vec![1]);
    earlier.configure(&[(0, 32, 15)]);
    assert_eq!(earlier.cmd(code::ENABLE_DEVICE, 0), 0);
    assert_eq!(earlier.cmd(code::ENABLE_WQ, 0), 0);
    std::mem::forget(earlier);
    let mut g = Guest::new(&phys, vec![1]);
    g.configure(&[(0, 32, 2)]);
    // ENABLE_DEVICE on the enabled physical device: its error (0x10) is the guest's.
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0x10);
    // Once the device is disabled and enabled again, the WQ comes up with this guest's values.
    assert_eq!(g.cmd(code::RESET_DEVICE, 0), 0);
    g.configure(&[(0, 32, 2)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    phys.write_wqcfg(1, 2, 1 | (15 << 4));
    assert_eq!(
        phys.command(code::ENABLE_WQ, 1),
        0,
        "left enabled behind the guest"
    );
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0);
    assert!(phys.wq_enabled(1));
    assert_eq!(
        (phys.r32(WQCFG_OFFSET + 32 + 8) >> 4) & 0xf,
        2,
        "the guest's priority runs"
    );
    assert_eq!(g.counters.physical_errors.load(Ordering::Relaxed), 2);
}

#[test]
fn teardown_errors_of_the_physical_device_reach_the_guest_and_the_guest_still_stops() {
    let phys = ModelPort::new(DsaConfig::default());
    let mut g = Guest::new(&phys, vec![0]);
    g.configure(&[(0, 16, 1)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0);
    // Someone disabled the physical WQ and device behind the guest's back.
    assert_eq!(phys.command(code::DISABLE_DEVICE, 0), 0);
    // DISABLE_WQ: the guest's WQ was enabled, the physical one is not (0x32).
    assert_eq!(g.cmd(code::DISABLE_WQ, 1), 0x32);
    // DISABLE_DEVICE: physical 0x31 (not enabled); the guest's device is disabled anyway.
    assert_eq!(g.cmd(code::DISABLE_DEVICE, 0), 0x31);
    assert_eq!(g.counters.physical_errors.load(Ordering::Relaxed), 2);
    assert_eq!(
        g.cmd(code::DISABLE_DEVICE, 0),
        0x31,
        "the front end's own check"
    );
    assert_eq!(g.counters.physical_errors.load(Ordering::Relaxed), 2);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0, "and it can start again");
}

#[test]
fn only_the_guests_traffic_classes_reach_grpflgcfg() {
    let phys = ModelPort::new(DsaConfig::default());
    let mut g = Guest::new(&phys, vec![0]);
    g.configure(&[(0, 16, 1)]);
    // TC A = 1, TC B = 1 (as the 6.12 driver writes on DSA 1.0/2.0), plus the read-buffer
    // limit bit, a reservation of 4 and an allowance of 8, which the guest may not have.
    g.w64(
        GRPCFG_OFFSET + 0x28,
        1 | (1 << 3) | (1 << 7) | (4 << 8) | (8 << 20),
    );
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    assert_eq!(phys.r64(GRPCFG_OFFSET + 0x28), 1 | (1 << 3));
}

#[test]
fn drain_and_abort_all_name_only_enabled_wqs() {
    let phys = ModelPort::new(DsaConfig::default());
    let mut g = Guest::new(&phys, vec![0, 1]);
    g.configure(&[(0, 16, 1), (1, 16, 1)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    assert_eq!(g.cmd(code::ENABLE_WQ, 0), 0);
    // Guest WQ 1 stays disabled: a physical DRAIN/ABORT_WQ naming it would fail with 0x32.
    assert_eq!(g.cmd(code::DRAIN_ALL, 0), 0);
    assert_eq!(g.cmd(code::ABORT_ALL, 0), 0);
    assert_eq!(g.counters.physical_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn a_physical_software_error_is_taken_cleared_and_translated_for_the_guest() {
    let phys = ModelPort::new(DsaConfig::default());
    let mut g = Guest::new(&phys, vec![2, 5]);
    g.configure(&[(0, 16, 3), (1, 8, 3)]);
    assert_eq!(g.cmd(code::ENABLE_DEVICE, 0), 0);
    assert_eq!(g.cmd(code::ENABLE_WQ, 1), 0);
    // ENABLE_DEVICE asked the physical device to signal software errors.
    assert_eq!(
        phys.r32(regs::GENCTRL) & regs::GENCTRL_SOFTERR_INT_EN,
        regs::GENCTRL_SOFTERR_INT_EN
    );
    assert_eq!(phys.take_swerr(), None, "nothing pending yet");
    // An unsupported opcode without a completion record, on physical WQ 5 (guest WQ 1).
    let mut desc = [0u8; 64];
    desc[7] = 0x7f;
    phys.dev
        .lock()
        .unwrap()
        .bar_write(2, 5 * super::super::physical::PORTAL_STRIDE, &desc);
    let q = phys
        .take_swerr()
        .expect("the model logged a software error");
    assert_eq!((q[0] >> 16) & 0xff, 5, "physical WQ index");
    assert_eq!(phys.r32(regs::INTCAUSE), 0, "INTCAUSE cleared");
    assert_eq!(phys.r32(regs::SWERR) & 1, 0, "SWERR valid cleared");
    assert_eq!(phys.take_swerr(), None);
    match crate::vfio::swerr::translate(q, &[2, 5]) {
        crate::vfio::swerr::Forward::Guest(q0, _, _) => {
            assert_eq!((q0 >> 16) & 0xff, 1, "guest WQ index");
            assert_eq!((q0 >> 32) & 0xff, 0x7f, "opcode");
        }
        other => panic!("not forwarded: {other:?}"),
    }
    assert_eq!(
        crate::vfio::swerr::translate(q, &[2]),
        crate::vfio::swerr::Forward::Foreign(5)
    );
}
