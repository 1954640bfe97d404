//! Everything a guest can touch: the PIO/MMIO bus, legacy devices, PCI with MSI-X, and the
//! virtual DSA.

pub mod bus;
pub mod dsa;
pub mod legacy;
pub mod pci;
pub mod vfio;
pub mod vfio_user;
