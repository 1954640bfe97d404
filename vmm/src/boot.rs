//! Loading what the guest boots: the kernel (ELF vmlinux or bzImage, via `linux-loader`), the
//! command line and the initramfs, then the boot structures from `arch`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arch::boot_params::{initrd_addr_max, write_boot_params, BootParamsInput, InitrdLocation};
use arch::layout::{CMDLINE_START, HIMEM_START};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::config::KernelImage;

/// Offset of the 64-bit entry point in a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Why the guest payload could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No kernel was configured.
    #[error("no boot source configured: PUT /boot-source first")]
    NoKernel,
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {0}: {1}")]
    KernelRead(PathBuf, std::io::Error),
    /// Neither an ELF nor a bzImage.
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    KernelFormat(String),
    /// linux-loader refused the image.
    #[error("cannot load kernel {0}: {1}")]
    KernelLoad(String, linux_loader::loader::Error),
    /// The initramfs could not be opened or read.
    #[error("cannot read initramfs {0}: {1}")]
    InitrdRead(PathBuf, std::io::Error),
    /// The initramfs does not fit in guest memory.
    #[error("initramfs {0} ({1} bytes) does not fit below {2:#x} with this --memory")]
    InitrdTooLarge(PathBuf, u64, u64),
    /// Writing to guest memory failed.
    #[error("cannot write the {0} to guest memory")]
    GuestWrite(&'static str),
    /// A boot structure failed.
    #[error(transparent)]
    Arch(#[from] arch::Error),
}

/// Result of loading the kernel.
pub struct LoadedKernel {
    /// Entry point (64-bit).
    pub entry: u64,
    /// End of the loaded image.
    pub end: u64,
    /// bzImage setup header, if any.
    pub setup_header: Option<setup_header>,
}

fn kind_of(header: &[u8]) -> Option<bool> {
    if header.starts_with(b"\x7fELF") {
        return Some(true);
    }
    // bzImage: "HdrS" at 0x202.
    (header.get(0x202..0x206) == Some(b"HdrS")).then_some(false)
}

fn load_from<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    name: &str,
    image: &mut F,
) -> Result<LoadedKernel, BootError> {
    let mut header = [0u8; 0x210];
    let n = image
        .read(&mut header)
        .map_err(|e| BootError::KernelRead(name.into(), e))?;
    image
        .seek(SeekFrom::Start(0))
        .map_err(|e| BootError::KernelRead(name.into(), e))?;
    let is_elf = kind_of(&header[..n]).ok_or_else(|| BootError::KernelFormat(name.into()))?;
    let high = Some(GuestAddress(HIMEM_START));
    if is_elf {
        let r =
            Elf::load(mem, None, image, high).map_err(|e| BootError::KernelLoad(name.into(), e))?;
        Ok(LoadedKernel {
            entry: r.kernel_load.0,
            end: r.kernel_end,
            setup_header: None,
        })
    } else {
        let r = BzImage::load(mem, None, image, high)
            .map_err(|e| BootError::KernelLoad(name.into(), e))?;
        Ok(LoadedKernel {
            entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: r.kernel_end,
            setup_header: r.setup_header,
        })
    }
}

/// Loads the kernel image into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &KernelImage) -> Result<LoadedKernel, BootError> {
    match kernel {
        KernelImage::Path(p) => {
            let mut f = File::open(p).map_err(|e| BootError::KernelRead(p.clone(), e))?;
            if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                return Err(BootError::KernelFormat(p.display().to_string()));
            }
            load_from(mem, &p.display().to_string(), &mut f)
        }
        KernelImage::Embedded(bytes) => load_from(
            mem,
            "built-in self-test guest",
            &mut std::io::Cursor::new(*bytes),
        ),
    }
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`]; returns its length.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|_| BootError::GuestWrite("command line"))?;
    Ok(cmdline.len())
}

/// Loads the initramfs page-aligned at the top of the range the kernel allows, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<InitrdLocation, BootError> {
    let mut f = File::open(path).map_err(|e| BootError::InitrdRead(path.into(), e))?;
    let size = f
        .metadata()
        .map_err(|e| BootError::InitrdRead(path.into(), e))?
        .len();
    let top = initrd_addr_max(kernel.setup_header.as_ref(), mem_size);
    let addr = top.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(a) if a >= kernel.end.max(HIMEM_START) && size > 0 => a,
        _ => return Err(BootError::InitrdTooLarge(path.into(), size, top)),
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| BootError::InitrdRead(path.into(), std::io::Error::other(e.to_string())))?;
    Ok(InitrdLocation { addr, size })
}

/// Writes the zero page.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdLocation>,
    mem_size: u64,
    rsdp_addr: u64,
) -> Result<(), BootError> {
    let input = BootParamsInput {
        setup_header: kernel.setup_header,
        cmdline_len,
        initrd,
        mem_size,
        rsdp_addr,
    };
    Ok(write_boot_params(mem, &input)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    #[test]
    fn rejects_text_as_kernel() {
        let m = mem();
        let text: &'static [u8] = b"#!/bin/sh\necho not a kernel\n";
        let err = load_kernel(&m, &KernelImage::Embedded(text)).err().unwrap();
        assert!(matches!(err, BootError::KernelFormat(_)), "{err}");
        let err = load_kernel(&m, &KernelImage::Embedded(b"")).err().unwrap();
        assert!(matches!(err, BootError::KernelFormat(_)));
    }

    #[test]
    fn rejects_truncated_elf() {
        let m = mem();
        let err = load_kernel(&m, &KernelImage::Embedded(b"\x7fELF\x02\x01\x01"))
            .err()
            .unwrap();
        assert!(matches!(err, BootError::KernelLoad(..)), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let m = mem();
        let err = load_kernel(&m, &KernelImage::Path("/nonexistent/vmlinux".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn initrd_placed_high_and_read() {
        let m = mem();
        let dir = std::env::temp_dir().join(format!("dsavmm-initrd-{}", std::process::id()));
        std::fs::write(&dir, b"hello initrd").unwrap();
        let k = LoadedKernel {
            entry: 0x100000,
            end: 0x200000,
            setup_header: None,
        };
        let loc = load_initrd(&m, &dir, &k, 32 << 20).unwrap();
        assert_eq!(loc.size, 12);
        assert_eq!(loc.addr % 0x1000, 0);
        let mut buf = [0u8; 12];
        m.read_slice(&mut buf, GuestAddress(loc.addr)).unwrap();
        assert_eq!(&buf, b"hello initrd");
        std::fs::remove_file(&dir).unwrap();
    }
}
