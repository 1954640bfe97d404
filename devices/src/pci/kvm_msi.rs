//! MSI delivery through KVM: one irqfd (an [`EventFd`] registered with `KVM_IRQFD`) per vector,
//! and a VM-wide GSI routing table shared by every device.
//!
//! `KVM_SET_GSI_ROUTING` replaces the *whole* table, including the in-kernel irqchip's default
//! routes, so [`GsiRouter`] keeps those defaults (GSIs 0..=15 to both the PIC and the IOAPIC,
//! 16..=23 to the IOAPIC only, as KVM's `kvm_setup_default_irq_routing` builds them) in every
//! table it installs. Without them, legacy interrupts (serial, i8042) would stop after the first
//! MSI route is set.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::msix::{MsiInterruptSink, MsiMessage};

/// First GSI handed out for MSI routes (0..=23 are the IOAPIC pins).
pub const FIRST_MSI_GSI: u32 = 24;
/// Number of IOAPIC pins with default routes.
pub const IOAPIC_PINS: u32 = 24;
/// KVM's default GSI limit on x86 (KVM_MAX_IRQ_ROUTES is 4096).
pub const MAX_GSI: u32 = 4096;

/// Errors from KVM interrupt routing.
#[derive(Debug, thiserror::Error)]
pub enum KvmMsiError {
    /// All GSIs are in use.
    #[error("no free GSI for an MSI route")]
    NoGsi,
    /// Creating an eventfd failed.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op}: {err}")]
    Kvm {
        /// Which ioctl.
        op: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// The routing table could not be built.
    #[error("routing table too large")]
    Table,
}

struct RouterState {
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
    free: Vec<u32>,
}

/// The VM-wide GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    irqchip_defaults: bool,
    state: Mutex<RouterState>,
}

impl GsiRouter {
    /// A router for `vm`. With `irqchip_defaults` (the VM has a full in-kernel irqchip from
    /// `KVM_CREATE_IRQCHIP`), every table installed keeps the PIC/IOAPIC default routes.
    pub fn new(vm: Arc<VmFd>, irqchip_defaults: bool) -> Arc<Self> {
        Arc::new(Self {
            vm,
            irqchip_defaults,
            state: Mutex::new(RouterState {
                msi: BTreeMap::new(),
                next_gsi: FIRST_MSI_GSI,
                free: Vec::new(),
            }),
        })
    }

    /// Reserves a GSI for an MSI route (no route until [`Self::set_msi_route`]).
    pub fn allocate_gsi(&self) -> Result<u32, KvmMsiError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = st.free.pop() {
            return Ok(g);
        }
        if st.next_gsi >= MAX_GSI {
            return Err(KvmMsiError::NoGsi);
        }
        st.next_gsi += 1;
        Ok(st.next_gsi - 1)
    }

    /// Releases `gsi` and drops its route.
    pub fn release_gsi(&self, gsi: u32) -> Result<(), KvmMsiError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let had = st.msi.remove(&gsi).is_some();
        st.free.push(gsi);
        if had {
            self.install(&st)?;
        }
        Ok(())
    }

    /// Routes `gsi` to `msg` and installs the whole table.
    pub fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), KvmMsiError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.msi.insert(gsi, msg) == Some(msg) {
            return Ok(());
        }
        self.install(&st)
    }

    /// The table this router installs: irqchip defaults (if enabled) and then the MSI routes.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.build(&st)
    }

    fn build(&self, st: &RouterState) -> Vec<kvm_irq_routing_entry> {
        let mut v = Vec::new();
        if self.irqchip_defaults {
            for gsi in 0..IOAPIC_PINS {
                if gsi < 16 {
                    let (chip, pin) = if gsi < 8 {
                        (KVM_IRQCHIP_PIC_MASTER, gsi)
                    } else {
                        (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
                    };
                    v.push(irqchip_entry(gsi, chip, pin));
                }
                v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            }
        }
        for (&gsi, msg) in &st.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = msg.address as u32;
            e.u.msi.address_hi = (msg.address >> 32) as u32;
            e.u.msi.data = msg.data;
            v.push(e);
        }
        v
    }

    fn install(&self, st: &RouterState) -> Result<(), KvmMsiError> {
        let entries = self.build(st);
        let mut table = KvmIrqRouting::new(entries.len()).map_err(|_| KvmMsiError::Table)?;
        table.as_mut_slice().copy_from_slice(&entries);
        self.vm
            .set_gsi_routing(&table)
            .map_err(|err| KvmMsiError::Kvm {
                op: "KVM_SET_GSI_ROUTING",
                err,
            })
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

struct Vector {
    gsi: u32,
    evt: EventFd,
}

/// An [`MsiInterruptSink`] for one device: vector `i` is an irqfd on its own GSI.
pub struct KvmMsiSink {
    router: Arc<GsiRouter>,
    vectors: Vec<Vector>,
}

impl KvmMsiSink {
    /// Allocates `num_vectors` GSIs and irqfds on `router`'s VM.
    pub fn new(router: Arc<GsiRouter>, num_vectors: u16) -> Result<Self, KvmMsiError> {
        let mut sink = Self {
            router,
            vectors: Vec::new(),
        };
        for _ in 0..num_vectors {
            let gsi = sink.router.allocate_gsi()?;
            let evt = match EventFd::new(EFD_NONBLOCK) {
                Ok(e) => e,
                Err(e) => {
                    let _ = sink.router.release_gsi(gsi);
                    return Err(KvmMsiError::EventFd(e));
                }
            };
            if let Err(err) = sink.router.vm.register_irqfd(&evt, gsi) {
                let _ = sink.router.release_gsi(gsi);
                return Err(KvmMsiError::Kvm {
                    op: "KVM_IRQFD",
                    err,
                });
            }
            sink.vectors.push(Vector { gsi, evt });
        }
        Ok(sink)
    }

    /// The GSI of vector `v`.
    pub fn gsi(&self, v: u16) -> Option<u32> {
        self.vectors.get(usize::from(v)).map(|x| x.gsi)
    }

    /// The irqfd of vector `v` (for tests and for handing to a mediated backend).
    pub fn eventfd(&self, v: u16) -> Option<&EventFd> {
        self.vectors.get(usize::from(v)).map(|x| &x.evt)
    }
}

impl MsiInterruptSink for KvmMsiSink {
    fn update_route(&self, vector: u16, msg: MsiMessage) {
        if let Some(v) = self.vectors.get(usize::from(vector)) {
            if let Err(e) = self.router.set_msi_route(v.gsi, msg) {
                tracing::error!("MSI route for GSI {}: {e}", v.gsi);
            }
        }
    }

    fn trigger(&self, vector: u16) {
        if let Some(v) = self.vectors.get(usize::from(vector)) {
            if let Err(e) = v.evt.write(1) {
                tracing::error!("irqfd write for GSI {}: {e}", v.gsi);
            }
        }
    }
}

impl Drop for KvmMsiSink {
    fn drop(&mut self) {
        for v in &self.vectors {
            let _ = self.router.vm.unregister_irqfd(&v.evt, v.gsi);
            let _ = self.router.release_gsi(v.gsi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    fn open_vm() -> Option<Arc<VmFd>> {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("skipped: /dev/kvm unavailable: {e}");
                return None;
            }
        };
        match kvm.create_vm() {
            Ok(vm) => Some(Arc::new(vm)),
            Err(e) => {
                eprintln!("skipped: KVM_CREATE_VM failed: {e}");
                None
            }
        }
    }

    // Reading a union field needs unsafe; the tests only read what they wrote.
    fn msi_of(e: &kvm_irq_routing_entry) -> (u32, u32) {
        // SAFETY: the entry has type MSI, so `msi` is the initialised member.
        unsafe { (e.u.msi.address_lo, e.u.msi.data) }
    }

    #[test]
    fn default_routes_are_kept() {
        let Some(vm) = open_vm() else { return };
        let r = GsiRouter::new(vm, true);
        let g = r.allocate_gsi().unwrap();
        assert_eq!(g, FIRST_MSI_GSI);
        let e = r.entries();
        // 16 PIC + 24 IOAPIC entries.
        assert_eq!(e.len(), 40);
        assert!(e.iter().all(|x| x.type_ == KVM_IRQ_ROUTING_IRQCHIP));
        // SAFETY: irqchip entries.
        let (chip, pin) = unsafe { (e[2].u.irqchip.irqchip, e[2].u.irqchip.pin) };
        assert_eq!((e[2].gsi, chip, pin), (1, KVM_IRQCHIP_PIC_MASTER, 1));
        // SAFETY: irqchip entries.
        let (chip, pin) = unsafe { (e[39].u.irqchip.irqchip, e[39].u.irqchip.pin) };
        assert_eq!((e[39].gsi, chip, pin), (23, KVM_IRQCHIP_IOAPIC, 23));
    }

    /// Against the real /dev/kvm: the irqchip default routes plus MSI routes are accepted, the
    /// irqfd is consumed by KVM, and the MSI lands in the target LAPIC's IRR.
    #[test]
    fn kvm_irqfd_delivers_msi_to_lapic() {
        let Some(vm) = open_vm() else { return };
        if let Err(e) = vm.create_irq_chip() {
            eprintln!("skipped: KVM_CREATE_IRQCHIP failed: {e}");
            return;
        }
        let vcpu = vm.create_vcpu(0).expect("vcpu");
        // Software-enable the LAPIC (SVR bit 8) so fixed interrupts are accepted.
        let mut lapic = vcpu.get_lapic().expect("get lapic");
        let svr = 0xf0;
        let old = u32::from_le_bytes(
            lapic.regs[svr..svr + 4]
                .iter()
                .map(|b| *b as u8)
                .collect::<Vec<_>>()
                .try_into()
                .unwrap(),
        );
        for (i, b) in (old | 0x1ff).to_le_bytes().iter().enumerate() {
            lapic.regs[svr + i] = *b as _;
        }
        vcpu.set_lapic(&lapic).expect("set lapic");

        let router = GsiRouter::new(vm.clone(), true);
        let sink = KvmMsiSink::new(router.clone(), 3).expect("sink");
        assert_eq!(sink.gsi(0), Some(24));
        assert_eq!(sink.gsi(2), Some(26));
        let vector = 0x45u32;
        sink.update_route(
            1,
            MsiMessage {
                address: 0xfee0_0000,
                data: vector,
            },
        );
        let e = router.entries();
        assert_eq!(e.len(), 41);
        assert_eq!(msi_of(&e[40]), (0xfee0_0000, vector));
        sink.trigger(1);
        // The IRR bit for `vector` at 0x200 + 0x10 * (vector / 32).
        let irr = 0x200 + 0x10 * (vector as usize / 32);
        let bit = 1u32 << (vector % 32);
        let mut seen = false;
        for _ in 0..100 {
            let l = vcpu.get_lapic().expect("get lapic");
            let v = u32::from_le_bytes(
                l.regs[irr..irr + 4]
                    .iter()
                    .map(|b| *b as u8)
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap(),
            );
            if v & bit != 0 {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(seen, "MSI vector {vector:#x} not in LAPIC IRR");
        // KVM consumed the eventfd count.
        assert!(sink.eventfd(1).unwrap().read().is_err());
        // Rewrite the route; the table keeps the defaults and the other route.
        sink.update_route(
            2,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x46,
            },
        );
        sink.update_route(
            1,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x47,
            },
        );
        let e = router.entries();
        assert_eq!(e.len(), 42);
        assert_eq!(msi_of(&e[40]), (0xfee0_0000, 0x47));
        drop(sink);
        assert_eq!(router.entries().len(), 40);
        assert!(router.allocate_gsi().unwrap() >= 24);

        // MSI-X on top of the KVM sink: masked -> pending, unmask -> route + delivery; a guest
        // rewrite of the entry changes the route.
        let sink = Arc::new(KvmMsiSink::new(router.clone(), 2).expect("sink"));
        let mut msix = crate::pci::msix::Msix::new(2, sink.clone());
        msix.set_control(crate::pci::msix::MSIX_CTRL_ENABLE);
        msix.table_write(16, &0xfee0_0000u32.to_le_bytes());
        msix.table_write(24, &0x51u32.to_le_bytes());
        assert_eq!(msix.trigger(1), crate::pci::msix::MsiDelivery::Pending);
        assert!(!irr_has(&vcpu, 0x51));
        msix.table_write(28, &0u32.to_le_bytes());
        assert!(wait_irr(&vcpu, 0x51), "pending vector delivered on unmask");
        msix.table_write(24, &0x62u32.to_le_bytes());
        assert_eq!(msix.trigger(1), crate::pci::msix::MsiDelivery::Sent);
        assert!(
            wait_irr(&vcpu, 0x62),
            "rewritten entry routes to the new vector"
        );
    }

    fn irr_has(vcpu: &kvm_ioctls::VcpuFd, vector: u32) -> bool {
        let l = vcpu.get_lapic().expect("get lapic");
        let irr = 0x200 + 0x10 * (vector as usize / 32);
        let b = |i: usize| l.regs[irr + i] as u8;
        u32::from_le_bytes([b(0), b(1), b(2), b(3)]) & (1 << (vector % 32)) != 0
    }

    fn wait_irr(vcpu: &kvm_ioctls::VcpuFd, vector: u32) -> bool {
        (0..100).any(|_| {
            let hit = irr_has(vcpu, vector);
            if !hit {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            hit
        })
    }
}
