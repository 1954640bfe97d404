/*
 * Tiny PVH guest that checks MOVDIR64B and MOVDIRI under QEMU's TCG.
 *
 * Booted with `qemu-system-x86_64 -M microvm -kernel guest.elf`: QEMU finds the
 * XEN_ELFNOTE_PHYS32_ENTRY note and enters pvh_start in 32-bit protected mode
 * with paging off.  The guest switches to long mode (identity map of the
 * first GiB with 2 MiB pages; 1 GiB..2 GiB is left unmapped to provoke page
 * faults), installs an IDT, runs the checks and reports on the serial port
 * (0x3f8).  It ends with a write to isa-debug-exit at 0xf4: 0x10 on success
 * (QEMU exit status 33), 0x11 on failure (status 35).  An exception that no
 * check expects (for example #UD from a QEMU without MOVDIR64B) prints its
 * vector and RIP and fails.
 */

#define SERIAL      0x3f8
#define DEBUG_EXIT  0xf4
#define UNMAPPED    0x40000000      /* first byte past the identity map */
#define LAST_MAPPED 0x3ffffff0      /* 16 bytes before UNMAPPED */

#define CODE64_SEL  0x08
#define DATA_SEL    0x10

/* ------------------------------------------------------------------------ */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start

/* ------------------------------------------------------------------------ */
    .text
    .code32
    .globl pvh_start
pvh_start:
    cli
    movl $stack_top, %esp

    /* PD: 512 x 2 MiB identity pages (present, writable, PS). */
    movl $pd, %edi
    xorl %eax, %eax
    movl $0x83, %eax
    movl $512, %ecx
1:  movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 1b
    /* PDPT[0] -> PD; PDPT[1] stays 0, so 1 GiB..2 GiB is not present. */
    movl $pd, %eax
    orl $3, %eax
    movl %eax, pdpt
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4

    lgdt gdt_desc
    movl %cr4, %eax
    orl $(1 << 5), %eax         /* PAE */
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      /* EFER */
    rdmsr
    orl $(1 << 8), %eax         /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmp $CODE64_SEL, $long_mode

    .code64
long_mode:
    movl $DATA_SEL, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movabsq $stack_top, %rsp

    /* IDT: vectors 0..31 -> isr_stubs + 16 * vector. */
    leaq idt(%rip), %rdi
    leaq isr_stubs(%rip), %rdx
    xorl %ecx, %ecx
2:  movq %rdx, %rax
    movw %ax, (%rdi)                /* offset 15:0 */
    movw $CODE64_SEL, 2(%rdi)
    movw $0x8e00, 4(%rdi)           /* present, DPL0, 64-bit interrupt gate */
    shrq $16, %rax
    movw %ax, 6(%rdi)               /* offset 31:16 */
    shrq $16, %rax
    movl %eax, 8(%rdi)              /* offset 63:32 */
    movl $0, 12(%rdi)
    addq $16, %rdi
    addq $16, %rdx
    incl %ecx
    cmpl $32, %ecx
    jb 2b
    lidt idt_desc(%rip)

    leaq msg_hello(%rip), %rsi
    call puts

    call test_cpuid
    call test_movdir64b_basic
    call test_movdir64b_addr32
    call test_movdir64b_misaligned
    call test_movdir64b_dst_fault
    call test_movdir64b_src_fault
    call test_movdir64b_src_partial_fault
    call test_movdir64b_reg_form
    call test_movdiri_32
    call test_movdiri_64
    call test_movdiri_reg_form

    cmpl $0, failures(%rip)
    jne 3f
    leaq msg_pass(%rip), %rsi
    call puts
    movb $0x10, %al
    outb %al, $DEBUG_EXIT
    jmp halt
3:  leaq msg_fail(%rip), %rsi
    call puts
    movl failures(%rip), %eax
    call puthex
    call newline
fail_exit:
    movb $0x11, %al
    outb %al, $DEBUG_EXIT
halt:
    hlt
    jmp halt

/* ------------------------------------------------------------------------ */
/* Serial output helpers (clobber rax, rcx, rdx, rsi). */
putc:                               /* al = char */
    movw $SERIAL, %dx
    outb %al, %dx
    ret

puts:                               /* rsi = NUL-terminated string */
    lodsb
    testb %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret

puthex:                             /* rax = value, prints 16 hex digits */
    pushq %rbx
    movq %rax, %rbx
    movl $16, %ecx
1:  rolq $4, %rbx
    movl %ebx, %eax
    andl $15, %eax
    cmpb $10, %al
    jb 2f
    addb $('a' - 10 - '0'), %al
2:  addb $'0', %al
    pushq %rcx
    call putc
    popq %rcx
    loop 1b
    popq %rbx
    ret

newline:
    movb $'\n', %al
    jmp putc

/* check: report a failed check.  rsi = name of the check. */
fail:
    pushq %rsi
    leaq msg_check_failed(%rip), %rsi
    call puts
    popq %rsi
    call puts
    call newline
    incl failures(%rip)
    ret

ok:                                 /* rsi = name of the check */
    pushq %rsi
    leaq msg_ok(%rip), %rsi
    call puts
    popq %rsi
    call puts
    jmp newline

/* ------------------------------------------------------------------------ */
/* Exceptions.  Each stub pushes a dummy error code where the CPU does not,
 * then the vector, so the frame is: vector, error, rip, cs, rflags, rsp, ss. */
    .balign 16
isr_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    pushq $\v
    jmp isr_common
    .else
    pushq $0
    pushq $\v
    jmp isr_common
    .endif
    .endr

isr_common:
    movq (%rsp), %rax               /* vector */
    cmpq expect_vector(%rip), %rax
    jne unexpected
    /* Expected fault: record it and resume at the recovery label. */
    movq %rax, got_vector(%rip)
    movq 8(%rsp), %rax
    movq %rax, got_error(%rip)
    movq 16(%rsp), %rax
    movq %rax, got_rip(%rip)
    movq %cr2, %rax
    movq %rax, got_cr2(%rip)
    movq $-1, expect_vector(%rip)
    movq recover_rip(%rip), %rax
    movq %rax, 16(%rsp)
    addq $16, %rsp
    iretq

unexpected:
    /* A fault while reporting a fault: give up at once. */
    cmpl $0, in_unexpected(%rip)
    jne fail_exit
    movl $1, in_unexpected(%rip)
    leaq msg_unexpected(%rip), %rsi
    call puts
    movq (%rsp), %rax
    call puthex
    leaq msg_at_rip(%rip), %rsi
    call puts
    movq 16(%rsp), %rax
    call puthex
    leaq msg_error(%rip), %rsi
    call puts
    movq 8(%rsp), %rax
    call puthex
    call newline
    leaq msg_fail(%rip), %rsi
    call puts
    call newline
    jmp fail_exit

/* ------------------------------------------------------------------------ */
/* Test helpers. */

/* fill_dst: set the 192-byte dst area (guard, 64-byte target, guard) to 0xcc. */
fill_dst:
    leaq dst_area(%rip), %rdi
    movl $192, %ecx
    movb $0xcc, %al
    rep stosb
    ret

/* fill_src: src_area[i] = i * 7 + 1 for 128 bytes. */
fill_src:
    leaq src_area(%rip), %rdi
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    imull $7, %eax
    incl %eax
    movb %al, (%rdi,%rcx)
    incl %ecx
    cmpl $128, %ecx
    jb 1b
    ret

/* dst_untouched: ZF=1 if all 192 bytes of dst_area are 0xcc. */
dst_untouched:
    leaq dst_area(%rip), %rdi
    movl $192, %ecx
    movb $0xcc, %al
    repe scasb
    ret

/* dst_matches: ZF=1 if dst target == src_area[3..67) and both guards are 0xcc.
 * Preserves rsi (the caller's check name). */
dst_matches:
    pushq %rsi
    leaq dst_area(%rip), %rdi
    movl $64, %ecx
    movb $0xcc, %al
    repe scasb
    jne 1f
    leaq src_area+3(%rip), %rsi
    leaq dst_area+64(%rip), %rdi
    movl $64, %ecx
    repe cmpsb
    jne 1f
    leaq dst_area+128(%rip), %rdi
    movl $64, %ecx
    movb $0xcc, %al
    repe scasb
1:  popq %rsi                       /* popq leaves the flags alone */
    ret

/* expect a fault with the given vector and recovery label. */
.macro EXPECT vec, recover
    movq $\vec, expect_vector(%rip)
    movq $-1, got_vector(%rip)
    leaq \recover(%rip), %rax
    movq %rax, recover_rip(%rip)
.endm

/* ------------------------------------------------------------------------ */
test_cpuid:
    movl $7, %eax
    xorl %ecx, %ecx
    cpuid
    movl %ecx, %ebx
    leaq msg_cpuid(%rip), %rsi
    call puts
    movl %ebx, %eax
    call puthex
    call newline
    leaq name_cpuid_movdiri(%rip), %rsi
    btl $27, %ebx
    jc 1f
    call fail
    jmp 2f
1:  call ok
2:  leaq name_cpuid_movdir64b(%rip), %rsi
    btl $28, %ebx
    jc 3f
    jmp fail
3:  jmp ok

/* 64-byte store from an unaligned source to an aligned destination. */
test_movdir64b_basic:
    call fill_src
    call fill_dst
    leaq src_area+3(%rip), %rsi
    leaq dst_area+64(%rip), %rdi
    movq %rdi, %r8
    movdir64b (%rsi), %rdi
    leaq name_basic(%rip), %rsi
    cmpq %r8, %rdi                  /* registers unchanged */
    jne fail
    call dst_matches
    jne fail
    jmp ok

/* Address-size prefix: destination is EDI and source ESI, upper halves ignored. */
test_movdir64b_addr32:
    call fill_src
    call fill_dst
    leaq src_area+3(%rip), %rsi
    leaq dst_area+64(%rip), %rdi
    movabsq $0x5a5a5a5a00000000, %rax
    orq %rax, %rsi
    orq %rax, %rdi
    movdir64b (%esi), %edi
    leaq name_addr32(%rip), %rsi
    call dst_matches
    jne fail
    jmp ok

/* Destination not 64-byte aligned: #GP(0), nothing written. */
test_movdir64b_misaligned:
    call fill_src
    call fill_dst
    EXPECT 13, 1f
    leaq src_area+3(%rip), %rsi
    leaq dst_area+72(%rip), %rdi
    leaq 2f(%rip), %r9
2:  movdir64b (%rsi), %rdi
1:  leaq name_misaligned(%rip), %rsi
    cmpq $13, got_vector(%rip)
    jne fail
    cmpq $0, got_error(%rip)
    jne fail
    cmpq %r9, got_rip(%rip)
    jne fail
    call dst_untouched
    jne fail
    jmp ok

/* Destination not mapped: #PF (write) at the destination, RIP at the insn. */
test_movdir64b_dst_fault:
    call fill_src
    EXPECT 14, 1f
    leaq src_area+3(%rip), %rsi
    movl $UNMAPPED, %edi
    leaq 2f(%rip), %r9
2:  movdir64b (%rsi), %rdi
1:  leaq name_dst_fault(%rip), %rsi
    cmpq $14, got_vector(%rip)
    jne fail
    cmpq $UNMAPPED, got_cr2(%rip)
    jne fail
    testq $2, got_error(%rip)       /* W/R = write */
    jz fail
    cmpq %r9, got_rip(%rip)
    jne fail
    jmp ok

/* Source not mapped: #PF (read) at the source, nothing written. */
test_movdir64b_src_fault:
    call fill_dst
    EXPECT 14, 1f
    movl $(UNMAPPED + 8), %esi
    leaq dst_area+64(%rip), %rdi
    leaq 2f(%rip), %r9
2:  movdir64b (%rsi), %rdi
1:  leaq name_src_fault(%rip), %rsi
    cmpq $14, got_vector(%rip)
    jne fail
    cmpq $(UNMAPPED + 8), got_cr2(%rip)
    jne fail
    testq $2, got_error(%rip)       /* read */
    jnz fail
    cmpq %r9, got_rip(%rip)
    jne fail
    call dst_untouched
    jne fail
    jmp ok

/* Source crosses into an unmapped page after 16 bytes: all loads happen
 * before any store, so the destination is still untouched. */
test_movdir64b_src_partial_fault:
    call fill_dst
    EXPECT 14, 1f
    movl $LAST_MAPPED, %esi
    leaq dst_area+64(%rip), %rdi
    leaq 2f(%rip), %r9
2:  movdir64b (%rsi), %rdi
1:  leaq name_src_partial(%rip), %rsi
    cmpq $14, got_vector(%rip)
    jne fail
    cmpq $UNMAPPED, got_cr2(%rip)
    jne fail
    cmpq %r9, got_rip(%rip)
    jne fail
    call dst_untouched
    jne fail
    jmp ok

/* A register r/m operand is #UD. */
test_movdir64b_reg_form:
    EXPECT 6, 1f
    leaq 2f(%rip), %r9
2:  .byte 0x66, 0x0f, 0x38, 0xf8, 0xc7  /* movdir64b with mod=3 */
1:  leaq name_movdir64b_reg(%rip), %rsi
    cmpq $6, got_vector(%rip)
    jne fail
    cmpq %r9, got_rip(%rip)
    jne fail
    jmp ok

test_movdiri_32:
    call fill_dst
    leaq dst_area+64(%rip), %rdi
    movabsq $0x1122334455667788, %rax
    movdiri %eax, (%rdi)
    leaq name_movdiri32(%rip), %rsi
    cmpl $0x55667788, dst_area+64(%rip)
    jne fail
    cmpl $0xcccccccc, dst_area+68(%rip)
    jne fail
    cmpl $0xcccccccc, dst_area+60(%rip)
    jne fail
    jmp ok

test_movdiri_64:
    call fill_dst
    leaq dst_area+64(%rip), %rdi
    movabsq $0x1122334455667788, %rax
    movdiri %rax, (%rdi)
    leaq name_movdiri64(%rip), %rsi
    movabsq $0x1122334455667788, %rax
    cmpq %rax, dst_area+64(%rip)
    jne fail
    cmpl $0xcccccccc, dst_area+72(%rip)
    jne fail
    cmpl $0xcccccccc, dst_area+60(%rip)
    jne fail
    jmp ok

test_movdiri_reg_form:
    EXPECT 6, 1f
    leaq 2f(%rip), %r9
2:  .byte 0x0f, 0x38, 0xf9, 0xc7        /* movdiri with mod=3 */
1:  leaq name_movdiri_reg(%rip), %rsi
    cmpq $6, got_vector(%rip)
    jne fail
    cmpq %r9, got_rip(%rip)
    jne fail
    jmp ok

/* ------------------------------------------------------------------------ */
    .section .rodata
msg_hello:          .asciz "movdir test guest: long mode up\n"
msg_pass:           .asciz "RESULT: PASS\n"
msg_fail:           .asciz "RESULT: FAIL "
msg_ok:             .asciz "ok   "
msg_check_failed:   .asciz "FAIL "
msg_unexpected:     .asciz "unexpected exception vector 0x"
msg_at_rip:         .asciz " rip 0x"
msg_error:          .asciz " error 0x"
msg_cpuid:          .asciz "cpuid(7,0).ecx = 0x"
name_cpuid_movdiri:   .asciz "cpuid movdiri (ecx bit 27)"
name_cpuid_movdir64b: .asciz "cpuid movdir64b (ecx bit 28)"
name_basic:         .asciz "movdir64b 64-bit address, unaligned source"
name_addr32:        .asciz "movdir64b 32-bit address size (67 prefix)"
name_misaligned:    .asciz "movdir64b misaligned destination -> #GP(0), no store"
name_dst_fault:     .asciz "movdir64b unmapped destination -> #PF write, cr2, rip"
name_src_fault:     .asciz "movdir64b unmapped source -> #PF read, no store"
name_src_partial:   .asciz "movdir64b source crossing into unmapped page -> #PF, no store"
name_movdir64b_reg: .asciz "movdir64b register operand -> #UD"
name_movdiri32:     .asciz "movdiri 32-bit store"
name_movdiri64:     .asciz "movdiri 64-bit store"
name_movdiri_reg:   .asciz "movdiri register operand -> #UD"

    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt
idt_desc:
    .word 32 * 16 - 1
    .quad idt

    .data
    .balign 8
failures:       .long 0
in_unexpected:  .long 0
    .balign 8
expect_vector:  .quad -1
recover_rip:    .quad 0
got_vector:     .quad -1
got_error:      .quad 0
got_rip:        .quad 0
got_cr2:        .quad 0

    .bss
    .balign 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4096
idt:    .skip 32 * 16
    .balign 64
src_area:   .skip 128
    .balign 64
dst_area:   .skip 192
    .balign 16
stack:      .skip 16384
stack_top:
