//! The guest-physical memory map dsavmm builds. One place for every fixed address.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (usable RAM in e820 up to EBDA_START)
//! 0x0000_0500  boot GDT                 0x0000_0520  boot IDT
//! 0x0000_1000  free for the guest (0x1000..0x7000, e.g. an AP start-up trampoline)
//! 0x0000_7000  zero page (boot_params)  0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four PDs (identity map of 0..4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line (CMDLINE_MAX_SIZE)
//! 0x0009_fc00  EBDA (reserved)          0x000e_0000  ACPI tables, RSDP first (reserved)
//! 0x0010_0000  kernel (ELF physical addresses / bzImage protected-mode part)
//! ...          RAM up to min(size, MMIO_32_START)
//! 0xc000_0000  32-bit PCI MMIO window (BARs)      0xe000_0000  PCIe ECAM (bus 0)
//! 0xfec0_0000  IOAPIC                 0xfee0_0000  LAPIC
//! 0x1_0000_0000 RAM above 4 GiB (the rest of --memory)
//! MMIO_64_START 64-bit PCI MMIO window
//! ```

/// GDT used for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) loaded for the 64-bit entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// First byte of low memory the VMM leaves untouched for the guest's own use.
pub const GUEST_FREE_LOW_START: u64 = 0x1000;
/// Linux zero page (`struct boot_params`); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer at entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (identity map of 4 GiB with 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Extended BIOS data area start; [EBDA_START, 1 MiB) is reserved in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, 16-byte aligned, inside the BIOS scan area).
pub const ACPI_START: u64 = 0xe0000;
/// Where kernels are loaded (the high-memory start of the boot protocol).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM below 4 GiB stops here.
pub const MMIO_32_START: u64 = 0xc000_0000;
/// Size of the part of the hole handed to PCI BARs.
pub const MMIO_32_BAR_SIZE: u64 = 0x2000_0000;
/// PCIe ECAM window (bus 0 only: 1 MiB).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window (one bus).
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// LAPIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// RAM beyond the hole continues here.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// 64-bit PCI MMIO window (above any RAM size we accept).
pub const MMIO_64_START: u64 = 0x100_0000_0000;
/// Size of the 64-bit MMIO window.
pub const MMIO_64_SIZE: u64 = 0x10_0000_0000;
/// ACPI PM1a/sleep control I/O port (hardware-reduced ACPI sleep register: write SLP_TYP|SLP_EN).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// Serial COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// i8042 command port (0xFE = CPU reset).
pub const I8042_PORT: u16 = 0x60;
