//! Boot entry points, static descriptor tables, page tables, interrupt stubs and
//! the real-mode AP trampoline, all in `global_asm!`.
//!
//! Entry points:
//! - `_start64` (ELF `e_entry`): Linux 64-bit boot protocol. Long mode, paging
//!   on, RSI = `struct boot_params`.
//! - `pvh_entry` (Xen ELF note `XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit protected
//!   mode, paging off, EBX = `struct hvm_start_info`.
//! - `ap_tramp_start`..`ap_tramp_end`: 16-bit code copied to [`AP_TRAMPOLINE`]
//!   and started by INIT/SIPI on the application processors.
//!
//! All of them load this guest's own GDT (kernel and user segments and a TSS
//! slot, see [`crate::usermode`]) and identity-mapped page tables (0..4 GiB in
//! 2 MiB pages, the 4th GiB uncached; PDPT slot 511 is a window for RAM above
//! 4 GiB, see [`crate::phys`]; PML4 slot 1 holds the 4 KiB user-mode test
//! pages of [`crate::usermode`]), enable SSE (CR0.MP, CR4.OSFXSR,
//! CR4.OSXMMEXCPT) and only then call Rust: `rust_main(kind, arg)` on the BSP
//! and `ap_main(index)` on the APs.

use core::arch::global_asm;

/// Physical address the AP trampoline is copied to (SIPI vector 0x06).
pub const AP_TRAMPOLINE: u64 = 0x6000;
/// Most CPUs this guest brings up (BSP included).
pub const MAX_CPUS: usize = 64;
/// Stack size of the bootstrap processor.
pub const BSP_STACK_SIZE: usize = 64 * 1024;
/// Stack size of each application processor.
pub const AP_STACK_SIZE: usize = 16 * 1024;
/// `rust_main` kind: entered through the Linux 64-bit boot protocol.
pub const BOOT_LINUX64: u32 = 1;
/// `rust_main` kind: entered through PVH.
pub const BOOT_PVH: u32 = 2;
/// Kernel code selector (64-bit).
pub const KERNEL_CS: u16 = 0x10;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x18;
/// User (CPL 3) data selector: GDT entry 4, RPL 3.
pub const USER_DS: u16 = 0x23;
/// User (CPL 3) 64-bit code selector: GDT entry 5, RPL 3.
pub const USER_CS: u16 = 0x2b;
/// Selector of the 64-bit TSS (GDT entries 6 and 7).
pub const TSS_SEL: u16 = 0x30;
/// Interrupt vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0x40;
/// Spurious interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Size of one exception stub (they are laid out every 16 bytes).
pub const EXC_STUB_SIZE: u64 = 16;
/// First vector of the counting interrupt stubs (device MSI-X vectors, the AP wake IPI).
pub const IRQ_FIRST_VECTOR: u8 = 0x50;
/// Number of counting interrupt stubs (vectors `IRQ_FIRST_VECTOR..IRQ_FIRST_VECTOR + n`).
pub const IRQ_STUBS: usize = 80;
/// Size of one counting interrupt stub.
pub const IRQ_STUB_SIZE: u64 = 64;
/// Bytes of DMA buffer memory (`selftest_dma`, 4 KiB aligned, not cleared, not loaded).
pub const DMA_SIZE: usize = 1 << 20;

global_asm!(
    r#"
    .set BSP_STACK_SIZE, {bsp_stack}
    .set AP_STACK_SIZE, {ap_stack}
    .set MAX_CPUS, {max_cpus}
    .set AP_TRAMP, {ap_tramp}
    .set IRQ_STUBS, {irq_stubs}
    .set DMA_SIZE, {dma_size}

    /* ---------------------------------------------------------------- */
    /* PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18), 8-byte descriptor as     */
    /* Linux emits for ELF64 (QEMU reads 8 bytes for ELF64).             */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry
    .balign 4

    /* ---------------------------------------------------------------- */
    .section .data.pagetables, "aw", @progbits
    .balign 4096
    .globl selftest_pml4
selftest_pml4:
    .quad selftest_pdpt + 3
    /* 512 GiB: the 4 KiB user-mode test pages (usermode.rs), U at every level */
    .quad selftest_user_pdpt + 7
    .fill 510, 8, 0
    .globl selftest_pdpt
selftest_pdpt:
    .quad selftest_pd + 3
    .quad selftest_pd + 0x1000 + 3
    .quad selftest_pd + 0x2000 + 3
    .quad selftest_pd + 0x3000 + 3
    .fill 507, 8, 0
    .quad selftest_pd_window + 3
    .globl selftest_pd
selftest_pd:
    .set __st_pd_i, 0
    .rept 1536
    .quad (__st_pd_i << 21) | 0x83
    .set __st_pd_i, __st_pd_i + 1
    .endr
    /* 3..4 GiB: MMIO (PCI window, ECAM, IOAPIC, LAPIC): PCD|PWT */
    .rept 512
    .quad (__st_pd_i << 21) | 0x9b
    .set __st_pd_i, __st_pd_i + 1
    .endr
    .globl selftest_pd_window
selftest_pd_window:
    .fill 512, 8, 0

    /* ---------------------------------------------------------------- */
    .section .data, "aw", @progbits
    .balign 16
    .globl selftest_gdt
selftest_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 0x08: 32-bit code */
    .quad 0x00af9a000000ffff    /* 0x10: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x18: data */
    .quad 0x00cff2000000ffff    /* 0x20: user data (DPL 3; selector 0x23) */
    .quad 0x00affa000000ffff    /* 0x28: user 64-bit code (DPL 3; selector 0x2b) */
    .globl selftest_gdt_tss
selftest_gdt_tss:
    .quad 0, 0                  /* 0x30: 64-bit TSS, written by usermode::init */
selftest_gdt_end:
    .balign 8
    .word 0, 0, 0
selftest_gdt_ptr:
    .word selftest_gdt_end - selftest_gdt - 1
    .quad selftest_gdt

    .balign 8
selftest_boot_arg:
    .quad 0
selftest_boot_kind:
    .long 0
    .globl selftest_ap_next
selftest_ap_next:
    .long 1
    .globl selftest_timer_ticks
selftest_timer_ticks:
    .quad 0
    .balign 8
    .globl selftest_irq_counts
selftest_irq_counts:
    .fill IRQ_STUBS, 8, 0
    .globl selftest_movdir64b_ud
selftest_movdir64b_ud:
    .quad 0
    .globl selftest_irq_tsc
selftest_irq_tsc:
    .fill IRQ_STUBS, 8, 0

    /* ---------------------------------------------------------------- */
    .section .stack, "aw", @nobits
    .balign 4096
    .globl selftest_bsp_stack
selftest_bsp_stack:
    .skip BSP_STACK_SIZE
selftest_bsp_stack_top:
    .globl selftest_ap_stacks
selftest_ap_stacks:
    .skip AP_STACK_SIZE * (MAX_CPUS - 1)
    .balign 4096
    .globl selftest_dma
selftest_dma:
    .skip DMA_SIZE

    /* ---------------------------------------------------------------- */
    /* 32-bit: enable PAE+SSE, load CR3, set EFER.LME, enable paging and  */
    /* jump to a 64-bit target. Needs the GDT loaded.                    */
    .macro ENTER_LONG target
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    movl $selftest_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    andl $0xfffffff3, %eax
    orl $0x80000023, %eax
    movl %eax, %cr0
    ljmpl $0x10, $\target
    .endm

    .section .text.entry, "ax", @progbits
    .code64
    .globl _start64
_start64:
    cli
    cld
    movq %rsi, selftest_boot_arg(%rip)
    movl ${linux64}, selftest_boot_kind(%rip)
    lgdt selftest_gdt_ptr(%rip)
    leaq selftest_bsp_stack_top(%rip), %rsp
    pushq $0x10
    leaq 1f(%rip), %rax
    pushq %rax
    lretq
1:
    leaq selftest_pml4(%rip), %rax
    movq %rax, %cr3
    movq %cr4, %rax
    orq $0x620, %rax
    movq %rax, %cr4
    movq %cr0, %rax
    andq $0xfffffffffffffff3, %rax
    orq $0x22, %rax
    movq %rax, %cr0
    jmp selftest_long_common

    .code32
    .globl pvh_entry
pvh_entry:
    cli
    cld
    movl %ebx, selftest_boot_arg
    movl ${pvh}, selftest_boot_kind
    lgdt selftest_gdt_ptr
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    ENTER_LONG selftest_long_common

    .code64
selftest_long_common:
    leaq selftest_bsp_stack_top(%rip), %rsp
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    /* zero .bss (small; the stacks are in .stack and not cleared) */
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    rep stosq
    movl selftest_boot_kind(%rip), %edi
    movq selftest_boot_arg(%rip), %rsi
    call rust_main
2:
    cli
    hlt
    jmp 2b

    /* ---------------------------------------------------------------- */
    /* AP trampoline: copied to AP_TRAMP, entered at CS:IP = (AP_TRAMP>>4):0 */
    .balign 16
    .globl ap_tramp_start
ap_tramp_start:
    .code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (AP_TRAMP + ap_tramp_gdtptr - ap_tramp_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $selftest_ap_entry32
    .balign 8
ap_tramp_gdtptr:
    .word selftest_gdt_end - selftest_gdt - 1
    .long selftest_gdt
    .globl ap_tramp_end
ap_tramp_end:

    .code32
selftest_ap_entry32:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    ENTER_LONG selftest_ap_entry64

    .code64
selftest_ap_entry64:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %eax
    lock xaddl %eax, selftest_ap_next(%rip)
    cmpl $MAX_CPUS, %eax
    jae 3f
    movl %eax, %edi
    movl %eax, %eax
    imulq $AP_STACK_SIZE, %rax
    leaq selftest_ap_stacks(%rip), %rsp
    addq %rax, %rsp
    call ap_main
3:
    cli
    hlt
    jmp 3b

    /* ---------------------------------------------------------------- */
    /* Interrupt stubs.                                                  */
    .macro EXC_NOERR vec
    .balign 16
    pushq $0
    pushq $\vec
    jmp selftest_exc_common
    .endm
    .macro EXC_ERR vec
    .balign 16
    pushq $\vec
    jmp selftest_exc_common
    .endm

    .balign 16
    .globl selftest_exc_stubs
selftest_exc_stubs:
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

selftest_exc_common:
    /* frame: [vector, error, rip, cs, rflags, rsp, ss] */
    /* inside faults::try_kernel/try_user: record it and resume there */
    cmpq $0, selftest_fault_armed(%rip)
    jne selftest_fault_catch
    movq %rsp, %rdi
    andq $-16, %rsp
    call selftest_exception
4:
    cli
    hlt
    jmp 4b

    /* LAPIC timer: count and EOI, touching no register but RAX (saved). */
    .balign 16
    .globl selftest_timer_isr
selftest_timer_isr:
    lock incq selftest_timer_ticks(%rip)
    pushq %rax
    movabsq $0xfee000b0, %rax
    movl $0, (%rax)
    popq %rax
    iretq

    .balign 16
    .globl selftest_spurious_isr
selftest_spurious_isr:
    iretq

    /* MOVDIR64B as the kernel encodes it (movdir64b rax, [rdx]):          */
    /* selftest_movdir64b(dst = rdi, src = rsi).                            */
    .balign 16
    .globl selftest_movdir64b
selftest_movdir64b:
    movq %rdi, %rax
    movq %rsi, %rdx
    .globl selftest_movdir64b_insn
selftest_movdir64b_insn:
    .byte 0x66, 0x0f, 0x38, 0xf8, 0x02
    ret

    /* #UD: at selftest_movdir64b_insn (a CPU or emulator without          */
    /* MOVDIR64B, e.g. stock QEMU TCG under a nested KVM) count it and     */
    /* skip the 5 bytes; anywhere else report it like other exceptions.    */
    .balign 16
    .globl selftest_ud_isr
selftest_ud_isr:
    pushq %rax
    leaq selftest_movdir64b_insn(%rip), %rax
    cmpq %rax, 8(%rsp)
    jne 5f
    addq $5, 8(%rsp)
    lock incq selftest_movdir64b_ud(%rip)
    popq %rax
    iretq
5:
    popq %rax
    pushq $0
    pushq $6
    jmp selftest_exc_common

    /* Counting stubs: vector IRQ_FIRST + i stores the TSC in               */
    /* selftest_irq_tsc[i], increments selftest_irq_counts[i] and EOIs      */
    /* (device MSI-X completions, the AP wake IPI). 64 bytes each.          */
    .balign 64
    .globl selftest_irq_stubs
selftest_irq_stubs:
    .set __st_irq_i, 0
    .rept IRQ_STUBS
    .balign 64
    pushq %rax
    pushq %rdx
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, selftest_irq_tsc + 8 * __st_irq_i(%rip)
    popq %rdx
    popq %rax
    lock incq selftest_irq_counts + 8 * __st_irq_i(%rip)
    jmp selftest_irq_common
    .set __st_irq_i, __st_irq_i + 1
    .endr
selftest_irq_common:
    pushq %rax
    movabsq $0xfee000b0, %rax
    movl $0, (%rax)
    popq %rax
    iretq

    .text
"#,
    bsp_stack = const BSP_STACK_SIZE,
    ap_stack = const AP_STACK_SIZE,
    max_cpus = const MAX_CPUS,
    irq_stubs = const IRQ_STUBS,
    dma_size = const DMA_SIZE,
    ap_tramp = const AP_TRAMPOLINE,
    linux64 = const BOOT_LINUX64,
    pvh = const BOOT_PVH,
    options(att_syntax)
);

extern "C" {
    /// MOVDIR64B of the 64 bytes at `src` to `dst` (`66 0F 38 F8 02`); a #UD
    /// is skipped and counted in [`selftest_movdir64b_ud`].
    pub fn selftest_movdir64b(dst: u64, src: *const u8);
    /// First byte of the AP trampoline (in the kernel image).
    pub static ap_tramp_start: u8;
    /// One past the last byte of the AP trampoline.
    pub static ap_tramp_end: u8;
    /// Start of the 32 exception stubs, [`EXC_STUB_SIZE`] bytes apart.
    pub static selftest_exc_stubs: u8;
    /// LAPIC timer interrupt handler.
    pub static selftest_timer_isr: u8;
    /// Spurious interrupt handler.
    pub static selftest_spurious_isr: u8;
    /// Timer interrupt count, incremented by `selftest_timer_isr`.
    pub static selftest_timer_ticks: core::sync::atomic::AtomicU64;
    /// Lowest byte of the BSP stack ([`BSP_STACK_SIZE`] bytes).
    pub static selftest_bsp_stack: u8;
    /// Start of the counting interrupt stubs, [`IRQ_STUB_SIZE`] bytes apart.
    pub static selftest_irq_stubs: u8;
    /// Interrupt counts of the counting stubs, one per vector from [`IRQ_FIRST_VECTOR`].
    pub static selftest_irq_counts: [core::sync::atomic::AtomicU64; IRQ_STUBS];
    /// #UD handler that skips a MOVDIR64B the CPU does not execute.
    pub static selftest_ud_isr: u8;
    /// How many times `selftest_movdir64b` raised #UD.
    pub static selftest_movdir64b_ud: core::sync::atomic::AtomicU64;
    /// TSC at the last interrupt of each counting stub.
    pub static selftest_irq_tsc: [core::sync::atomic::AtomicU64; IRQ_STUBS];
    /// DMA buffer memory ([`DMA_SIZE`] bytes, identity mapped, contents undefined at boot).
    pub static selftest_dma: u8;
    /// The 16-byte TSS descriptor slot of the GDT (written by `usermode::init`).
    pub static selftest_gdt_tss: u8;
    /// The page directory used as a window onto RAM above 4 GiB.
    pub static selftest_pd_window: u8;
    /// First byte of the loaded image.
    pub static __kernel_start: u8;
    /// One past the last byte of the image including its stacks.
    pub static __kernel_end: u8;
}
