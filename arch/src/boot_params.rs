//! The Linux zero page (`struct boot_params`): setup header, command line, initramfs and the e820
//! map that describes guest RAM around the fixed holes of [`crate::layout`].

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::Error;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved ranges.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// `loadflags` bit: the protected-mode kernel is loaded at 0x100000.
const LOADED_HIGH: u8 = 0x01;
/// `loadflags` bit: the loader may not reload segments (we enter in 64-bit mode anyway).
const KEEP_SEGMENTS: u8 = 0x40;

/// The guest RAM regions for `mem_size` bytes: below the 32-bit MMIO hole, then above 4 GiB.
pub fn guest_ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_32_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_32_START {
        regions.push((
            GuestAddress(RAM_64BIT_START),
            (mem_size - MMIO_32_START) as usize,
        ));
    }
    regions
}

/// The e820 map for `mem_size` bytes of RAM: `(addr, size, type)` in address order.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let low_end = mem_size.min(MMIO_32_START);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    if mem_size > MMIO_32_START {
        map.push((RAM_64BIT_START, mem_size - MMIO_32_START, E820_RAM));
    }
    map
}

/// Where and how large the initramfs is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdLocation {
    /// Guest-physical start.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Everything the zero page needs.
pub struct BootParamsInput {
    /// The bzImage setup header, when the kernel was a bzImage.
    pub setup_header: Option<setup_header>,
    /// Command line length in bytes, without the NUL.
    pub cmdline_len: usize,
    /// The loaded initramfs.
    pub initrd: Option<InitrdLocation>,
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

/// Builds the zero page and writes it at [`ZERO_PAGE_START`].
pub fn write_boot_params(mem: &GuestMemoryMmap, input: &BootParamsInput) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = input.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH | KEEP_SEGMENTS;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = input.cmdline_len as u32;
    if let Some(initrd) = input.initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    params.acpi_rsdp_addr = input.rsdp_addr;

    let map = e820_map(input.mem_size);
    if map.len() > params.e820_table.len() {
        return Err(Error::BootStructure("e820 table"));
    }
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;

    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| Error::BootStructure("zero page"))
}

/// Highest address (exclusive) an initramfs may end at: the boot protocol's `initrd_addr_max`
/// (or 2 GiB - 1 for old kernels), clamped to low RAM.
pub fn initrd_addr_max(setup_header: Option<&setup_header>, mem_size: u64) -> u64 {
    let proto_max = match setup_header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max) + 1,
        Some(_) => 0x3800_0000,
        None => 1 << 32,
    };
    proto_max.min(mem_size.min(MMIO_32_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_has_no_high_region() {
        let r = guest_ram_regions(128 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
        let m = e820_map(128 << 20);
        assert_eq!(m[2], (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM));
        assert!(m.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    }

    #[test]
    fn large_memory_splits_around_hole() {
        let size = 5u64 << 30;
        let r = guest_ram_regions(size);
        assert_eq!(r[1], (GuestAddress(RAM_64BIT_START), (2usize << 30)));
        let total: u64 = e820_map(size)
            .iter()
            .filter(|e| e.2 == E820_RAM)
            .map(|e| e.1)
            .sum();
        assert_eq!(total, size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn zero_page_fields() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let input = BootParamsInput {
            setup_header: None,
            cmdline_len: 5,
            initrd: Some(InitrdLocation {
                addr: 0x200_0000,
                size: 0x1234,
            }),
            mem_size: 64 << 20,
            rsdp_addr: ACPI_START,
        };
        write_boot_params(&mem, &input).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(p.e820_entries, 4);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
    }
}
