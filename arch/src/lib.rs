//! x86_64 boot set-up: memory layout, page tables, GDT, boot params and e820, ACPI tables, CPUID.
//!
//! Pure functions over guest memory and KVM structures: no threads, no devices, no ioctls.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod paging;
pub mod regs;

/// Errors from building boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A boot structure did not fit in, or could not be written to, guest memory.
    #[error("cannot write the {0} to guest memory")]
    BootStructure(&'static str),
}
