//! The user-mode (CPL 3) environment of the fault cases (`faults.rs`): a TSS
//! whose RSP0 is a kernel stack (so an exception raised at CPL 3 switches to
//! it), and a small 4 KiB-page mapping at [`USER_BASE`] (PML4 slot 1, with U
//! set at every level above the leaf entries):
//!
//! | page | leaf entry | maps |
//! | --- | --- | --- |
//! | 0 | U, read-only | the user routines (`selftest_user_code`) |
//! | 1 | U, W | the user stack |
//! | 2 | U, W | user data |
//! | 3 | U, read-only | a user read-only page |
//! | 4 | W, no U | a supervisor-only page |
//! | 5 | not present | |
//! | 6, 7 | U, W | two pages whose frames are *not* consecutive: page 7's frame lies below page 6's (for a store split across them) |
//! | 8 | read-only, no U | a supervisor read-only page (the CR0.WP case) |
//! | 9 | U, W, PCD, PWT | [`UNCLAIMED_MMIO`] (no device decodes it) |
//!
//! The frames are [`FRAMES`] pages in the image (`selftest_user_pages`, not
//! loaded and not cleared); frame `i` is also reachable through the identity
//! map at [`frame`]`(i)`. The user routines each run one instruction and then
//! `int $USER_RETURN_VECTOR` back to the kernel (see `faults.rs`).

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::entry::{selftest_gdt_tss, TSS_SEL, USER_CS, USER_DS};

/// Virtual base of the user mapping (PML4 slot 1: 512 GiB).
pub const USER_BASE: u64 = 1 << 39;
/// Page size.
pub const PAGE: u64 = 4096;
/// Page index: user code.
pub const PG_CODE: u64 = 0;
/// Page index: user stack.
pub const PG_STACK: u64 = 1;
/// Page index: user-writable data.
pub const PG_DATA: u64 = 2;
/// Page index: user read-only.
pub const PG_RO: u64 = 3;
/// Page index: supervisor-only (writable).
pub const PG_SUPER: u64 = 4;
/// Page index: not present.
pub const PG_ABSENT: u64 = 5;
/// Page index: the first of the two split-store pages.
pub const PG_SPLIT: u64 = 6;
/// Page index: supervisor read-only.
pub const PG_SUPER_RO: u64 = 8;
/// Page index: the unclaimed MMIO page.
pub const PG_MMIO: u64 = 9;
/// Frames (in `selftest_user_pages`) of the stack, data, read-only,
/// supervisor, split second page, split first page and supervisor read-only
/// pages (in this order).
pub const FRAMES: usize = 7;
/// Frame index of page [`PG_DATA`].
pub const FR_DATA: usize = 1;
/// Frame index of page [`PG_RO`].
pub const FR_RO: usize = 2;
/// Frame index of page [`PG_SUPER`].
pub const FR_SUPER: usize = 3;
/// Frame index of page [`PG_SPLIT`] + 1 (below the first one's frame).
pub const FR_SPLIT_HI: usize = 4;
/// Frame index of page [`PG_SPLIT`].
pub const FR_SPLIT_LO: usize = 5;
/// Frame index of page [`PG_SUPER_RO`] (the frame right after [`FR_SPLIT_LO`]).
pub const FR_SUPER_RO: usize = 6;
/// A physical address no device decodes, on dsavmm (between the ECAM window
/// and the IOAPIC) and on QEMU microvm.
pub const UNCLAIMED_MMIO: u64 = 0xf800_0000;
/// Interrupt vector (gate DPL 3) the user routines return to the kernel with.
pub const USER_RETURN_VECTOR: u8 = 0xe0;
/// Size of the kernel stack that RSP0 points to.
const KSTACK_SIZE: usize = 8192;

global_asm!(
    r#"
    .set USER_MMIO, {mmio}
    .set USER_RETURN_VECTOR, {ret_vec}

    /* ---------------------------------------------------------------- */
    /* Page tables of the user mapping (PML4 slot 1, see entry.rs).      */
    .section .data.pagetables, "aw", @progbits
    .balign 4096
    .globl selftest_user_pdpt
selftest_user_pdpt:
    .quad selftest_user_pd + 7
    .fill 511, 8, 0
selftest_user_pd:
    .quad selftest_user_pt + 7
    .fill 511, 8, 0
selftest_user_pt:
    .quad selftest_user_code + 5              /* 0: code, U|P */
    .quad selftest_user_pages + 0x0000 + 7    /* 1: stack, U|W|P */
    .quad selftest_user_pages + 0x1000 + 7    /* 2: data, U|W|P */
    .quad selftest_user_pages + 0x2000 + 5    /* 3: read-only, U|P */
    .quad selftest_user_pages + 0x3000 + 3    /* 4: supervisor, W|P */
    .quad 0                                   /* 5: not present */
    .quad selftest_user_pages + 0x5000 + 7    /* 6: split low, U|W|P */
    .quad selftest_user_pages + 0x4000 + 7    /* 7: split high, U|W|P */
    .quad selftest_user_pages + 0x6000 + 1    /* 8: supervisor read-only, P */
    .quad USER_MMIO + 0x1f                    /* 9: MMIO, PCD|PWT|U|W|P */
    .fill 502, 8, 0

    /* ---------------------------------------------------------------- */
    /* 64-bit TSS: RSP0 = the kernel stack below; no IST, no I/O bitmap. */
    .section .data, "aw", @progbits
    .balign 16
    .globl selftest_tss
selftest_tss:
    .long 0
    .quad selftest_user_kstack_top            /* RSP0 */
    .fill 11, 8, 0                            /* RSP1, RSP2, reserved, IST1-7, reserved */
    .word 0
    .word 104                                 /* I/O map base: none */
selftest_tss_end:

    /* ---------------------------------------------------------------- */
    .section .stack.user, "aw", @nobits
    .balign 4096
    .globl selftest_user_pages
selftest_user_pages:
    .skip {frames} * 4096
selftest_user_kstack:
    .skip {kstack}
selftest_user_kstack_top:

    /* ---------------------------------------------------------------- */
    /* User routines (page 0 of the mapping, CPL 3). Each runs the        */
    /* instruction at its *_insn label with RSI/RDX as the caller set     */
    /* them, then returns to the kernel through the DPL-3 gate.           */
    .section .text.user, "ax", @progbits
    .balign 4096
    .globl selftest_user_code
selftest_user_code:

    /* movdir64b rax, [rdx]: RSI = destination, RDX = source */
    .globl selftest_user_movdir64b
selftest_user_movdir64b:
    movq %rsi, %rax
    .globl selftest_user_movdir64b_insn
selftest_user_movdir64b_insn:
    .byte 0x66, 0x0f, 0x38, 0xf8, 0x02
    int $USER_RETURN_VECTOR

    /* movdiri [rdx], eax: RSI = destination, RDX = value */
    .globl selftest_user_movdiri32
selftest_user_movdiri32:
    movq %rdx, %rax
    movq %rsi, %rdx
    .globl selftest_user_movdiri32_insn
selftest_user_movdiri32_insn:
    .byte 0x0f, 0x38, 0xf9, 0x02
    int $USER_RETURN_VECTOR

    /* movdiri [rdx], rax: RSI = destination, RDX = value */
    .globl selftest_user_movdiri64
selftest_user_movdiri64:
    movq %rdx, %rax
    movq %rsi, %rdx
    .globl selftest_user_movdiri64_insn
selftest_user_movdiri64_insn:
    .byte 0x48, 0x0f, 0x38, 0xf9, 0x02
    int $USER_RETURN_VECTOR

    /* popcnt rax, [rsi]: RSI = address */
    .globl selftest_user_popcnt
selftest_user_popcnt:
    .globl selftest_user_popcnt_insn
selftest_user_popcnt_insn:
    .byte 0xf3, 0x48, 0x0f, 0xb8, 0x06
    int $USER_RETURN_VECTOR

    .globl selftest_user_code_end
selftest_user_code_end:
    .balign 4096

    .text
"#,
    mmio = const UNCLAIMED_MMIO,
    ret_vec = const USER_RETURN_VECTOR,
    frames = const FRAMES,
    kstack = const KSTACK_SIZE,
    options(att_syntax)
);

extern "C" {
    /// The 104-byte TSS.
    static selftest_tss: u8;
    /// The first of the [`FRAMES`] user frames.
    static selftest_user_pages: u8;
    /// Start of the user code page.
    static selftest_user_code: u8;
    /// End of the user routines (must lie within the code page).
    static selftest_user_code_end: u8;
    /// User routine: MOVDIR64B from RDX to RSI.
    pub static selftest_user_movdir64b: u8;
    /// Its MOVDIR64B instruction.
    pub static selftest_user_movdir64b_insn: u8;
    /// User routine: 4-byte MOVDIRI of EDX to [RSI].
    pub static selftest_user_movdiri32: u8;
    /// Its MOVDIRI instruction.
    pub static selftest_user_movdiri32_insn: u8;
    /// User routine: 8-byte MOVDIRI of RDX to [RSI].
    pub static selftest_user_movdiri64: u8;
    /// Its MOVDIRI instruction.
    pub static selftest_user_movdiri64_insn: u8;
    /// User routine: POPCNT of the 8 bytes at [RSI].
    pub static selftest_user_popcnt: u8;
    /// Its POPCNT instruction.
    pub static selftest_user_popcnt_insn: u8;
}

/// User (CPL 3) code selector.
pub const CS: u16 = USER_CS;
/// User (CPL 3) stack selector.
pub const SS: u16 = USER_DS;

/// Virtual address of page `index` of the user mapping.
pub const fn page(index: u64) -> u64 {
    USER_BASE + index * PAGE
}

/// Top of the user stack.
pub const STACK_TOP: u64 = page(PG_STACK) + PAGE;

/// Identity-mapped (supervisor) address of user frame `i`.
pub fn frame(i: usize) -> u64 {
    core::ptr::addr_of!(selftest_user_pages) as u64 + i as u64 * PAGE
}

/// User virtual address of a symbol in the user code page (`selftest_user_*`).
pub fn user_va(sym: *const u8) -> u64 {
    page(PG_CODE) + (sym as u64 - core::ptr::addr_of!(selftest_user_code) as u64)
}

static READY: AtomicBool = AtomicBool::new(false);

/// Writes the TSS descriptor into the GDT and loads TR (once, on the BSP).
/// Returns an error when the user routines outgrew their page.
pub fn init() -> Result<(), &'static str> {
    let code = core::ptr::addr_of!(selftest_user_code) as u64;
    let end = core::ptr::addr_of!(selftest_user_code_end) as u64;
    if end - code > PAGE {
        return Err("user routines span more than their 4 KiB page");
    }
    if READY.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let base = core::ptr::addr_of!(selftest_tss) as u64;
    let limit = 103u64;
    let lo = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, DPL 0, available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let hi = base >> 32;
    let slot = core::ptr::addr_of!(selftest_gdt_tss) as *mut u64;
    // SAFETY: `selftest_gdt_tss` is the 16-byte (two-qword) TSS slot of the
    // GDT in .data, 8-byte aligned; TR is not loaded yet, so the descriptor
    // is not in use.
    unsafe {
        slot.write_volatile(lo);
        slot.add(1).write_volatile(hi);
        core::arch::asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, preserves_flags));
    }
    Ok(())
}
