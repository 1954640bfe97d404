//! Host-side driver-sequence test: the exact MMIO / configuration sequences of Linux 6.12 idxd
//! and accel-config 3.5.3 (docs/dsa-device-model.md §4.5-§4.8, §8 and §12.2), performed
//! against the vDSA wired up the way the VMM wires it (PCI bus, type-1 ports, ECAM, MMIO bus,
//! guest memory), without KVM. Every register value the driver checks is checked here.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::dsa::{DsaConfig, DsaDevice};
use devices::pci::msix::RecordingSink;
use devices::pci::{attach_pci_root, PciWindows, SharedPciDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const ECAM: u64 = 0xe000_0000;
const RAM: usize = 8 << 20;

// Guest "DMA" allocations.
const EVL_BUF: u64 = 0x10_0000;
const CR_ARRAY: u64 = 0x20_0000;
const BUF_SRC: u64 = 0x30_0000;
const BUF_DST: u64 = 0x50_0000;

struct Guest {
    mmio: Arc<Bus>,
    pio: Bus,
    sink: Arc<RecordingSink>,
    mem: Arc<GuestMemoryMmap<()>>,
    dsa: Arc<Mutex<DsaDevice>>,
    dev: u8,
    bar0: u64,
    bar2: u64,
    msix_cap: u64,
    portal_cursor: u64,
}

impl Guest {
    /// What the VMM does: buses, PCI root, ports, ECAM, the DSA.
    fn boot(cfg: DsaConfig) -> Self {
        let mmio = Arc::new(Bus::new());
        let pio = Bus::new();
        let windows = PciWindows {
            mmio32_start: 0xc000_0000,
            mmio32_size: 0x2000_0000,
            mmio64_start: 0x100_0000_0000,
            mmio64_size: 0x10_0000_0000,
        };
        let pci = attach_pci_root(&pio, &mmio, windows, ECAM, 1 << 20).unwrap();
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap());
        let sink = Arc::new(RecordingSink::default());
        let dsa = Arc::new(Mutex::new(
            DsaDevice::new(cfg, mem.clone(), sink.clone()).unwrap(),
        ));
        let shared: SharedPciDevice = dsa.clone();
        let bdf = pci.lock().unwrap().add_device(shared).unwrap();
        assert_eq!(bdf.to_string(), "0000:00:01.0");
        Guest {
            mmio,
            pio,
            sink,
            mem,
            dsa,
            dev: bdf.device,
            bar0: 0,
            bar2: 0,
            msix_cap: 0,
            portal_cursor: 0,
        }
    }

    // ---- configuration space (ECAM, as Linux uses with MCFG) ----
    fn cfg_addr(&self, reg: u64) -> u64 {
        ECAM + (u64::from(self.dev) << 15) + reg
    }
    fn cfg_r32(&self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(self.mmio.read(self.cfg_addr(reg), &mut b));
        u32::from_le_bytes(b)
    }
    fn cfg_r16(&self, reg: u64) -> u16 {
        let mut b = [0u8; 2];
        assert!(self.mmio.read(self.cfg_addr(reg), &mut b));
        u16::from_le_bytes(b)
    }
    fn cfg_w32(&self, reg: u64, v: u32) {
        assert!(self.mmio.write(self.cfg_addr(reg), &v.to_le_bytes()));
    }
    fn cfg_w16(&self, reg: u64, v: u16) {
        assert!(self.mmio.write(self.cfg_addr(reg), &v.to_le_bytes()));
    }

    // ---- BAR0 ----
    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(
            self.mmio.read(self.bar0 + off, &mut b),
            "BAR0+{off:#x} unmapped"
        );
        u32::from_le_bytes(b)
    }
    fn r64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        assert!(
            self.mmio.read(self.bar0 + off, &mut b),
            "BAR0+{off:#x} unmapped"
        );
        u64::from_le_bytes(b)
    }
    fn w32(&self, off: u64, v: u32) {
        assert!(self.mmio.write(self.bar0 + off, &v.to_le_bytes()));
    }
    fn w64(&self, off: u64, v: u64) {
        assert!(self.mmio.write(self.bar0 + off, &v.to_le_bytes()));
    }

    /// `idxd_cmd_exec` with an interrupt: GENSTS check, CMD, then the misc handler
    /// (`idxd_misc_thread`: read INTCAUSE, write it back, complete()), then CMDSTS.
    fn cmd_irq(&self, cmd: u32) -> u32 {
        assert_ne!(self.r32(0x90) & 3, 3, "halted");
        self.sink.clear();
        self.w32(0xa0, cmd);
        assert_eq!(
            self.sink.triggered(),
            vec![0],
            "CMD {cmd:#x}: exactly one vector-0 interrupt (trap 4)"
        );
        let cause = self.r32(0x98);
        assert_eq!(
            cause, 0x2,
            "CMD {cmd:#x}: INTCAUSE = command completion only"
        );
        self.w32(0x98, cause);
        assert_eq!(self.r32(0x98), 0);
        let sts = self.r32(0xa8);
        assert_eq!(sts & (1 << 31), 0, "not active");
        sts
    }

    // ---- Linux PCI core ----
    fn enumerate(&mut self) {
        // Vendor/device, header type, class.
        assert_eq!(self.cfg_r32(0x00), 0x0b25_8086);
        assert_eq!(self.cfg_r32(0x08) >> 8, 0x08_8000);
        assert_eq!((self.cfg_r32(0x0c) >> 16) & 0x7f, 0, "type 0 header");
        assert_eq!(self.cfg_r32(0x2c), 0x0000_8086);
        // Host bridge at 00:00.0.
        let mut b = [0u8; 4];
        self.mmio.read(ECAM, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0d57_8086);
        // And the same through the legacy ports.
        self.pio.write(
            0xcf8,
            &(0x8000_0000u32 | u32::from(self.dev) << 11).to_le_bytes(),
        );
        self.pio.read(0xcfc, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0b25_8086);

        // BAR sizing (__pci_read_base): decode off, all ones, read, restore.
        let cmd = self.cfg_r16(0x04);
        self.cfg_w16(0x04, cmd & !0x3);
        let mut bars = Vec::new();
        for (reg, want_size) in [(0x10u64, 0x1_0000u64), (0x18, 0x2_0000)] {
            let lo = self.cfg_r32(reg);
            let hi = self.cfg_r32(reg + 4);
            assert_eq!(lo & 0xf, 0xc, "64-bit prefetchable memory BAR");
            self.cfg_w32(reg, 0xffff_ffff);
            self.cfg_w32(reg + 4, 0xffff_ffff);
            let size_lo = self.cfg_r32(reg) & !0xf;
            let size_hi = self.cfg_r32(reg + 4);
            let mask = u64::from(size_lo) | (u64::from(size_hi) << 32);
            assert_eq!(!mask + 1, want_size);
            self.cfg_w32(reg, lo);
            self.cfg_w32(reg + 4, hi);
            let addr = u64::from(lo & !0xf) | (u64::from(hi) << 32);
            assert_eq!(addr % want_size, 0, "naturally aligned");
            assert!(addr >= 0x100_0000_0000, "placed in the 64-bit window");
            bars.push(addr);
        }
        self.cfg_w16(0x04, cmd);
        self.bar0 = bars[0];
        self.bar2 = bars[1];

        // Capability list: MSI-X with num_wqs + 1 entries in BAR0 (trap 6, section 1.5).
        assert_ne!(self.cfg_r16(0x06) & 0x10, 0);
        let mut p = u64::from(self.cfg_r32(0x34) & 0xfc);
        let mut found = None;
        while p != 0 {
            let hdr = self.cfg_r32(p);
            if hdr & 0xff == 0x11 {
                found = Some(p);
            }
            p = u64::from((hdr >> 8) & 0xfc);
        }
        self.msix_cap = found.expect("MSI-X capability");
        let ctrl = self.cfg_r16(self.msix_cap + 2);
        assert_eq!(ctrl & 0x7ff, 8, "table size 9");
        assert_eq!(self.cfg_r32(self.msix_cap + 4), 0x2000);
        assert_eq!(self.cfg_r32(self.msix_cap + 8), 0x3000);
    }

    /// pci_alloc_irq_vectors(MSI-X, 9, 9): enable with function mask, program all entries
    /// (masked), clear the function mask.
    fn msix_enable(&self) {
        let c = self.msix_cap + 2;
        self.cfg_w16(c, self.cfg_r16(c) | 0xc000);
        for v in 0..9u64 {
            let e = 0x2000 + 16 * v;
            assert_eq!(self.r32(e + 12) & 1, 1, "entries masked at reset");
            self.w32(e, 0xfee0_0000);
            self.w32(e + 4, 0);
            self.w32(e + 8, 0x4021 + v as u32);
        }
        self.cfg_w16(c, self.cfg_r16(c) & !0x4000);
    }

    /// request_irq on vector v unmasks its entry.
    fn request_irq(&self, v: u64) {
        let e = 0x2000 + 16 * v + 12;
        self.w32(e, self.r32(e) & !1);
    }

    /// free_irq masks it.
    fn free_irq(&self, v: u64) {
        let e = 0x2000 + 16 * v + 12;
        self.w32(e, self.r32(e) | 1);
    }

    /// idxd_probe (section 4.5).
    fn probe(&mut self) {
        // 1. pci_enable_device + pci_set_master.
        self.cfg_w16(0x04, self.cfg_r16(0x04) | 0x2);
        self.cfg_w16(0x04, self.cfg_r16(0x04) | 0x4);
        // 2-3.
        assert_eq!(self.r32(0x00), 0x100, "VERSION");
        assert_ne!(self.r32(0x90) & 3, 3, "not halted");
        // 4. Probe reset: polled, no interrupt (traps 4/5).
        self.w32(0xa0, 0x0050_0000);
        let mut spins = 0;
        while self.r32(0xa8) & (1 << 31) != 0 {
            spins += 1;
            assert!(spins < 10, "CMDSTS.active never clears");
        }
        assert_eq!(
            self.r32(0x98),
            0,
            "no INTCAUSE for a polled command (trap 5)"
        );
        assert!(self.sink.triggered().is_empty());
        // 6. Capabilities as idxd_read_caps reads them.
        let gencap = self.r64(0x10);
        assert_ne!(gencap & (1 << 4), 0, "cmd_cap");
        let cmdcap = self.r32(0xb0);
        assert_eq!(cmdcap & (1 << 13), 0, "no interrupt handles");
        let grpcap = self.r64(0x30);
        let engcap = self.r64(0x38);
        let wqcap = self.r64(0x20);
        let opcap: Vec<u64> = (0..4).map(|i| self.r64(0x40 + 8 * i)).collect();
        assert_eq!(grpcap & 0xff, 4, "max_groups");
        assert_eq!((grpcap >> 8) & 0xff, 64, "max_rdbufs");
        assert_eq!(engcap & 0xff, 4, "max_engines");
        assert_eq!(wqcap & 0xffff, 128, "max_wq_size");
        assert_eq!((wqcap >> 16) & 0xff, 8, "max_wqs");
        assert_eq!(32u64 << ((wqcap >> 24) & 0xf), 32, "wqcfg_size");
        assert_eq!((wqcap >> 54) & 1, 0, "no op_config (needs 64-byte WQCFG)");
        assert_eq!(
            1u64 << ((gencap >> 16) & 0x1f),
            2 << 20,
            "max_xfer_bytes ≥ 2 MiB (trap 11)"
        );
        assert_eq!(
            1u64 << ((gencap >> 21) & 0xf),
            1024,
            "max_batch_size ≥ 32 (trap 11)"
        );
        assert_ne!((gencap >> 13) & 3, 0, "evl_support (trap 1)");
        assert_ne!(gencap & (1 << 31), 0, "config_en (trap 13)");
        assert_ne!(opcap[0] & (1 << 3), 0, "MEMMOVE → DMA_MEMCPY");
        // 7. Table offsets.
        let t0 = self.r64(0x60);
        let t1 = self.r64(0x68);
        assert_eq!((t0 & 0xffff) * 0x100, 0x400, "GRPCFG");
        assert_eq!(((t0 >> 16) & 0xffff) * 0x100, 0x500, "WQCFG");
        assert_eq!(((t0 >> 32) & 0xffff) * 0x100, 0x300, "MSIX_PERM");
        assert_eq!((t1 & 0xffff) * 0x100, 0x1000, "PERFMON");
        // 9. MSI-X, vector 0 ("idxd-misc").
        self.msix_enable();
        self.request_irq(0);
        // 10. Unmask error interrupts.
        let g = self.r32(0x88);
        self.w32(0x88, g | 0x3);
        assert_eq!(self.r32(0x88), 0x3);
        // 11. PERFMON init: no counters → gives up silently.
        for (off, v) in [(0x10u64, 1u32), (0x30, 0), (0x20, 0), (0x10, 2)] {
            self.w32(0x1000 + off, v);
        }
        assert_eq!(self.r64(0x1000) & 0x3f, 0);
        assert!(
            self.sink.triggered().is_empty(),
            "nothing fired during probe"
        );
    }

    /// idxd_wq_config_write for wq `n` with the driver's shadow `want` (OR-ed with the
    /// current contents first, trap 10).
    fn wqcfg_write(&self, n: u64, want: [u32; 8]) {
        let base = 0x500 + 32 * n;
        let mut shadow = want;
        for (d, s) in shadow.iter_mut().enumerate() {
            *s |= self.r32(base + 4 * d as u64);
        }
        // The driver sets these fields explicitly (size, thresh, mode, priority, shifts).
        shadow[0] = want[0];
        shadow[3] = want[3];
        shadow[2] = (shadow[2] & !0xf0) | (want[2] & 0xf0);
        for (d, s) in shadow.iter().enumerate() {
            self.w32(base + 4 * d as u64, *s);
        }
    }

    /// idxd_groups_config_write: every group, 4 + 1 + 1 qword writes.
    fn grpcfg_write_all(&self, wq_groups: &[(u64, u64)], eng_groups: &[(u64, u64)]) {
        for g in 0..4u64 {
            let base = 0x400 + 64 * g;
            let wqs: u64 = wq_groups
                .iter()
                .filter(|x| x.1 == g)
                .map(|x| 1 << x.0)
                .sum();
            let engs: u64 = eng_groups
                .iter()
                .filter(|x| x.1 == g)
                .map(|x| 1 << x.0)
                .sum();
            self.w64(base, wqs);
            for q in 1..4 {
                self.w64(base + 8 * q, 0);
            }
            self.w64(base + 0x20, engs);
            self.w64(base + 0x28, 0x0400_0009);
        }
    }

    /// accel-config config-engine/config-wq (12.2) + enable-device (4.6).
    fn enable_device(&self) {
        // wq0: size 16, dedicated, priority 10, max xfer 2 MiB, max batch 32.
        self.wqcfg_write(0, [0x10, 0, 0x01 | (10 << 4), 21 | (5 << 5), 0, 0, 0, 0]);
        self.grpcfg_write_all(&[(0, 0)], &[(0, 0)]);
        // Event log: EVLCFG, GENCTRL.evl_int_en, GENCFG.evl_en.
        self.w64(0xe0, EVL_BUF);
        self.w64(0xe8, 64);
        self.w32(0x88, self.r32(0x88) | 0x4);
        self.w32(0x80, self.r32(0x80) | 0x2000);
        assert_ne!(self.r32(0x90) & 3, 1, "already enabled");
        assert_eq!(
            self.cmd_irq(0x8010_0000),
            0,
            "ENABLE_DEVICE whole-dword status (trap 14)"
        );
        assert_eq!(self.r32(0x90) & 3, 1, "GENSTS enabled");
        // Registers as section 12.2 expects them.
        let wq0: Vec<u32> = (0..8).map(|d| self.r32(0x500 + 4 * d)).collect();
        assert_eq!(wq0, vec![0x10, 0, 0xa1, 0xb5, 0, 0, 0, 0]);
        assert_eq!(self.r64(0x400), 1);
        assert_eq!(self.r64(0x420), 1);
        assert_eq!(self.r64(0x428), 0x0400_0009);
        assert_eq!(self.r64(0xe0), EVL_BUF);
        assert_eq!(self.r64(0xe8), 64);
    }

    /// enable-wq (4.7) of wq0 bound to dmaengine.
    fn enable_wq0(&self) {
        // 3. The configuration write again, GRPCFG while enabled (trap 9).
        self.wqcfg_write(0, [0x10, 0, 0x01 | (10 << 4), 21 | (5 << 5), 0, 0, 0, 0]);
        self.grpcfg_write_all(&[(0, 0)], &[(0, 0)]);
        // 4.
        assert_eq!(self.cmd_irq(0x8060_0000), 0, "ENABLE_WQ whole-dword status");
        assert_eq!(self.r32(0x500 + 24) >> 30, 1, "wq_state enabled");
        // 7. "idxd-portal" on vector 1.
        self.request_irq(1);
    }

    /// dmaengine memcpy (section 8): fill, MOVDIR64B to the limited portal, wait for vector 1,
    /// check the completion record.
    fn memcpy(&mut self, slot: u64, src: u64, dst: u64, len: u32, opcode: u8) {
        let cr = CR_ARRAY + 32 * slot;
        self.mem.write_slice(&[0u8; 32], GuestAddress(cr)).unwrap();
        let mut d = [0u8; 64];
        d[4..8].copy_from_slice(&(0x1cu32 | u32::from(opcode) << 24).to_le_bytes());
        d[8..16].copy_from_slice(&cr.to_le_bytes());
        d[16..24].copy_from_slice(&src.to_le_bytes());
        d[24..32].copy_from_slice(&dst.to_le_bytes());
        d[32..36].copy_from_slice(&len.to_le_bytes());
        d[36..38].copy_from_slice(&1u16.to_le_bytes());
        self.sink.clear();
        let portal = self.bar2 + 0x1000 + self.portal_cursor;
        self.portal_cursor = (self.portal_cursor + 64) % 4096;
        assert!(self.mmio.write(portal, &d));
        assert_eq!(
            self.sink.triggered(),
            vec![1],
            "completion on vector int_handle = 1 (trap 7)"
        );
        let status: u8 = self.mem.read_obj(GuestAddress(cr)).unwrap();
        assert_eq!(status & 0x7f, 1, "success");
    }

    /// disable-wq (4.8).
    fn disable_wq0(&self) {
        self.cmd_irq(0x8080_0001); // DRAIN_WQ (status ignored)
        self.free_irq(1);
        self.w32(0x300 + 8, 0); // MSIX_PERM[wq + 1] = 0
        self.cmd_irq(0x80a0_0001); // RESET_WQ (status ignored)
        assert_eq!(self.r32(0x500 + 24) >> 30, 0, "wq_state disabled");
    }

    /// disable-device (4.8), including evl_free's garbage GENCFG write (trap 1).
    fn disable_device(&self) {
        assert_eq!(self.r32(0x90) & 3, 1);
        let s = self.cmd_irq(0x8020_0000);
        assert!(s == 0 || s & 0x31 != 0, "DISABLE_DEVICE accepted");
        self.cmd_irq(0x8050_0000);
        self.w32(0x88, self.r32(0x88) | 0x3);
        // evl_free: uninitialised GENCFG with bit 13 clear, GENCTRL bit 2 off, EVLCFG zero.
        self.w32(0x80, 0xc0ff_d0ee & !0x2000);
        self.w32(0x88, self.r32(0x88) & !0x4);
        self.w64(0xe0, 0);
        self.w64(0xe8, 0);
        assert_eq!(self.r32(0x90) & 3, 0, "disabled");
        assert_eq!(self.r32(0x88), 0x3);
    }
}

#[test]
fn linux_612_idxd_full_lifecycle() {
    let mut g = Guest::boot(DsaConfig::default());
    g.enumerate();
    g.probe();
    g.enable_device();
    g.enable_wq0();

    // dmatest-like traffic: any byte offset, any length, through the portal cursor (wraps).
    let mut seed = 0x1234_5678u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pattern: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 + 3) as u8).collect();
    g.mem.write_slice(&pattern, GuestAddress(BUF_SRC)).unwrap();
    for i in 0..200u64 {
        let off = rnd() % 4096;
        let len = 1 + (rnd() % 65536) as u32;
        g.memcpy(i % 16, BUF_SRC + off, BUF_DST + off, len, 3);
        let mut out = vec![0u8; len as usize];
        g.mem
            .read_slice(&mut out, GuestAddress(BUF_DST + off))
            .unwrap();
        assert_eq!(
            &out[..],
            &pattern[off as usize..off as usize + len as usize]
        );
    }
    // DMA_INTERRUPT prep: NOOP with the same flags.
    g.memcpy(0, 0, 0, 0, 0);
    // A 2 MiB copy (max transfer).
    g.memcpy(1, BUF_SRC, BUF_DST, 2 << 20, 3);

    let stats = g.dsa.lock().unwrap().stats();
    assert_eq!(stats.descriptors, 202);
    assert_eq!(stats.completion_interrupts, 202);
    assert_eq!(stats.dropped_portal_writes, 0);
    assert_eq!(stats.software_errors, 0);
    let state = g.dsa.lock().unwrap().state();
    assert_eq!(state.wqs[0].state, "enabled");

    g.disable_wq0();
    g.disable_device();

    // accel-config again: the whole cycle works a second time after RESET_DEVICE + garbage.
    g.enable_device();
    g.enable_wq0();
    g.memcpy(2, BUF_SRC, BUF_DST, 4096, 3);
    g.disable_wq0();
    g.disable_device();

    // Guest shutdown (PCI .shutdown): DISABLE_DEVICE only, then mask error interrupts.
    g.enable_device();
    g.enable_wq0();
    let s = g.cmd_irq(0x8020_0000);
    assert_eq!(s, 0);
    g.w32(0x88, g.r32(0x88) & !0x3);
    assert_eq!(g.dsa.lock().unwrap().state().state, "disabled");
    assert_eq!(g.dsa.lock().unwrap().stats().software_errors, 0);
}

#[test]
fn unconfigured_bind_and_errors_dont_hang() {
    let mut g = Guest::boot(DsaConfig::default());
    g.enumerate();
    g.probe();
    // Priority 0 (the driver's default, trap 12) → ENABLE_WQ 0x23, completed with interrupt.
    g.wqcfg_write(0, [0x10, 0, 0x01, 0xb5, 0, 0, 0, 0]);
    g.grpcfg_write_all(&[(0, 0)], &[(0, 0)]);
    assert_eq!(g.cmd_irq(0x8010_0000), 0);
    assert_eq!(g.cmd_irq(0x8060_0000), 0x23);
    // Fix priority while the device is enabled: WQCFG of a disabled WQ still writable (trap 9).
    g.wqcfg_write(0, [0x10, 0, 0x01 | (10 << 4), 0xb5, 0, 0, 0, 0]);
    assert_eq!(g.cmd_irq(0x8060_0000), 0);
    // A descriptor to a disabled WQ: SWERR + vector 0 (GENCTRL.softerr_int_en from probe).
    g.sink.clear();
    let mut d = [0u8; 64];
    d[7] = 3;
    assert!(g.mmio.write(g.bar2 + 0x4000 + 0x1000, &d));
    assert_eq!(g.sink.triggered(), vec![0]);
    assert_eq!(g.r32(0x98), 0x1);
    let e: Vec<u64> = (0..4).map(|i| g.r64(0xc0 + 8 * i)).collect();
    assert_eq!(e[0] & 1, 1);
    g.w32(0x98, 0x1);
    g.w64(0xc0, e[0] & 3);
    assert_eq!(g.r64(0xc0) & 3, 0);
    g.disable_wq0();
    g.disable_device();
}

#[test]
fn small_geometry() {
    let cfg = DsaConfig {
        wqs: 1,
        engines: 1,
        groups: 1,
        total_wq_size: 16,
        max_xfer_shift: 21,
        max_batch_shift: 5,
        ..DsaConfig::default()
    };
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let dev = DsaDevice::new(cfg, mem, Arc::new(RecordingSink::default())).unwrap();
    let state = dev.state();
    assert_eq!(state.wqs.len(), 1);
    assert_eq!(state.groups.len(), 1);
    assert_eq!(devices::pci::PciDevice::config(&dev).bars()[1].size, 0x4000);
}
