//! x86_64 boot set-up: memory layout, page tables, GDT, boot params and e820, ACPI tables, CPUID.

pub mod layout;
