//! ACPI tables (RSDP, XSDT, FADT, DSDT, MADT, MCFG) that tell the guest its CPUs, interrupt
//! controllers, PCI host bridge and ECAM window, and how to power off.
//!
//! The platform is hardware-reduced ACPI (as Cloud Hypervisor does): no PM timer or SCI, power-off
//! through the FADT sleep control register at [`ACPI_SLEEP_CONTROL_PORT`] with the `_S5_` sleep
//! type from the DSDT.

use acpi_tables::{aml, fadt, gas, madt, mcfg::MCFG, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{Immutable, IntoBytes};

use crate::layout::*;
use crate::Error;

const OEM_ID: [u8; 6] = *b"DSAVMM";
const OEM_TABLE_ID: [u8; 8] = *b"DSAVMM  ";
const OEM_REVISION: u32 = 1;
/// The `_S5_` sleep type the DSDT advertises (and the sleep register acts on).
pub const S5_SLEEP_TYPE: u8 = 5;
/// Top of the area the tables may use (the BIOS scan area ends at 1 MiB).
const ACPI_END: u64 = HIMEM_START;

/// MADT Interrupt Source Override (ACPI 6.5, 5.2.12.5).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// What the tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC IDs 0..n).
    pub vcpus: u8,
}

fn dsdt() -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);

    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &aml::ZERO]),
    );

    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_io = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_lo = aml::AddressSpace::new_io(0u16, 0xcf7u16, None);
    let io_hi = aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let mmio32 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        MMIO_32_START as u32,
        (MMIO_32_START + MMIO_32_BAR_SIZE - 1) as u32,
        None,
    );
    let mmio64 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        MMIO_64_START,
        MMIO_64_START + MMIO_64_SIZE - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_lo, &io_hi, &mmio32, &mmio64]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    let pci0 = aml::Device::new(
        "_SB_.PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs_name],
    );

    // Motherboard resources: reserve the ECAM window so Linux trusts MCFG.
    let ecam = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let mb_crs = aml::ResourceTemplate::new(vec![&ecam]);
    let mb_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
    let mb_uid = aml::Name::new("_UID".into(), &aml::ONE);
    let mb_crs_name = aml::Name::new("_CRS".into(), &mb_crs);
    let mbrs = aml::Device::new("_SB_.MBRS".into(), vec![&mb_hid, &mb_uid, &mb_crs_name]);

    // COM1, so ACPI-aware guests see the console port and its IRQ.
    let com_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com_irq = aml::Interrupt::new(true, true, false, false, 4);
    let com_crs = aml::ResourceTemplate::new(vec![&com_io, &com_irq]);
    let com_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com_crs_name = aml::Name::new("_CRS".into(), &com_crs);
    let com1 = aml::Device::new("_SB_.COM1".into(), vec![&com_hid, &com_uid, &com_crs_name]);

    // The i8042 keyboard controller, so that Linux's i8042 driver finds it through PNP.
    let kbd_data = aml::IO::new(I8042_PORT, I8042_PORT, 1, 1);
    let kbd_cmd = aml::IO::new(I8042_PORT + 4, I8042_PORT + 4, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, true, false, false, 1);
    let kbd_crs = aml::ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    let kbd_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303"));
    let kbd_crs_name = aml::Name::new("_CRS".into(), &kbd_crs);
    let ps2 = aml::Device::new("_SB_.PS2_".into(), vec![&kbd_hid, &kbd_crs_name]);

    s5.to_aml_bytes(&mut dsdt);
    ps2.to_aml_bytes(&mut dsdt);
    pci0.to_aml_bytes(&mut dsdt);
    mbrs.to_aml_bytes(&mut dsdt);
    com1.to_aml_bytes(&mut dsdt);
    dsdt.update_checksum();
    dsdt
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = fadt::FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton);
    let sleep = gas::GAS::new(
        gas::AddressSpace::SystemIo,
        8,
        0,
        gas::AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_CONTROL_PORT),
    );
    // IAPC_BOOT_ARCH: an 8042 is present (bit 1).
    f.iapc_boot_arch = 0x2u16.into();
    f.sleep_control_reg = sleep;
    f.sleep_status_reg = sleep;
    let mut bytes = Vec::new();
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut m = madt::MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        madt::LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..cfg.vcpus {
        m.add_structure(madt::ProcessorLocalApic::new(
            id,
            id,
            madt::EnabledStatus::Enabled,
        ));
    }
    m.add_structure(madt::IoApic::new(0, IOAPIC_START as u32, 0));
    // ISA IRQ 0 (PIT) is wired to IOAPIC pin 2 in KVM's in-kernel irqchip.
    m.add_structure(InterruptSourceOverride {
        r#type: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2,
        flags: 0,
    });
    let mut bytes = Vec::new();
    m.to_aml_bytes(&mut bytes);
    bytes
}

fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(PCI_ECAM_START, 0, 0, ((PCI_ECAM_SIZE >> 20) - 1) as u8);
    let mut bytes = Vec::new();
    m.to_aml_bytes(&mut bytes);
    bytes
}

/// Writes all tables from [`ACPI_START`] on and returns the RSDP address.
pub fn write_acpi_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<u64, Error> {
    let rsdp_addr = ACPI_START;
    let mut next = ACPI_START + 64; // RSDP (36 bytes) first, for the BIOS-area scan.
    let mut place = |bytes: &[u8]| -> Result<u64, Error> {
        let addr = next;
        let end = addr + bytes.len() as u64;
        if end > ACPI_END {
            return Err(Error::BootStructure("ACPI tables too large"));
        }
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|_| Error::BootStructure("ACPI tables"))?;
        next = (end + 15) & !15;
        Ok(addr)
    };

    let dsdt_addr = place(dsdt().as_slice())?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(cfg))?;
    let mcfg_addr = place(&mcfg())?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for a in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(a);
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(&xsdt_bytes)?;

    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(rsdp_addr))
        .map_err(|_| Error::BootStructure("RSDP"))?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut v = vec![0u8; len as usize];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn tables_parse_and_checksum() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write_acpi_tables(&mem, &AcpiConfig { vcpus: 4 }).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let xsdt = table_at(&mem, xsdt_addr);
        assert!(checksum_ok(&xsdt));
        let mut sigs = Vec::new();
        for e in xsdt[36..].chunks(8) {
            let t = table_at(&mem, u64::from_le_bytes(e.try_into().unwrap()));
            assert!(checksum_ok(&t), "{:?}", &t[..4]);
            if &t[..4] == b"APIC" {
                let lapics = t[44..].chunks(2).count();
                assert!(lapics > 0);
                // Count type-0 entries by walking the structures.
                let (mut off, mut n) = (44, 0);
                while off + 2 <= t.len() {
                    if t[off] == 0 {
                        n += 1;
                    }
                    off += t[off + 1] as usize;
                }
                assert_eq!(n, 4);
            }
            if &t[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                let d = table_at(&mem, dsdt);
                assert!(checksum_ok(&d));
                assert!(d.windows(4).any(|w| w == b"_S5_"));
            }
            sigs.push(t[..4].to_vec());
        }
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );
    }
}
