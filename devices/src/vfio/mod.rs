//! A physical DSA function through kernel VFIO, mediated for one guest:
//! `--dsa backend=vfio,device=BDF[,wqs=LIST]` (docs/vfio.md).
//!
//! - [`physical`]: the function itself (VFIO container, group, regions, DMA map, MSI-X).
//! - [`mediated`]: the guest's configuration and commands, validated by the vDSA front end and
//!   translated to the physical WQs, groups and engines the guest was given.
//! - [`device`]: the PCI function the guest sees: the vDSA front end's registers, the given
//!   WQs' portal pages as KVM memory slots, the host vectors as KVM irqfds.
//! - [`swerr`]: the physical device's software errors, translated into the guest's SWERR.

pub mod device;
pub mod mediated;
pub mod physical;
pub mod swerr;

/// Errors setting up a mediated DSA.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// Not a PCI address.
    #[error("device={0:?} is not a PCI address (DDDD:BB:DD.F or BB:DD.F)")]
    BadAddress(String),
    /// No such function.
    #[error("PCI device {0} does not exist")]
    NoDevice(String),
    /// Not bound to vfio-pci.
    #[error(
        "PCI device {0} is bound to {1}, not vfio-pci (echo vfio-pci > \
         /sys/bus/pci/devices/{0}/driver_override and bind it: docs/vfio.md)"
    )]
    NotVfio(String, String),
    /// VFIO refused.
    #[error("cannot open PCI device {0} through VFIO: {1}")]
    Open(String, String),
    /// Not a DSA this backend can drive.
    #[error("PCI device {0} is not a usable DSA: {1}")]
    NotDsa(String, String),
    /// A `wqs=` entry that the device does not have, or a repeated one.
    #[error("wqs={0}: {1}")]
    Wqs(String, String),
    /// DMA mapping failed.
    #[error("VFIO DMA map of {0:#x}+{1:#x}: {2}")]
    Dma(u64, u64, String),
    /// MSI-X set-up failed.
    #[error("VFIO MSI-X: {0}")]
    Interrupts(String),
    /// The front end could not be built.
    #[error("vDSA front end: {0}")]
    Front(String),
}
