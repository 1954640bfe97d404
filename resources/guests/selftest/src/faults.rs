//! Cases that check the VMM acts as the CPU where it emulates instructions
//! (MOVDIR64B, MOVDIRI) or refuses to (an instruction nobody emulates): the
//! exception the CPU defines is delivered to the guest, with its error code,
//! CR2 and RIP at the instruction, and the guest keeps running.
//!
//! Each probe runs inside [`try_kernel`] (CPL 0) or [`try_user`] (CPL 3, the
//! environment of `usermode.rs`): the exception stubs (`entry.rs`) see
//! `selftest_fault_armed`, record vector, error code, CR2, RIP and CS, and
//! resume the kernel at the saved context, which returns "faulted". A user
//! routine that completes returns with `int $USER_RETURN_VECTOR`.
//!
//! A first probe finds whether MOVDIR64B and MOVDIRI execute at CPL 0. Where
//! one raises #UD there (a CPU without it, e.g. stock QEMU TCG) the cases
//! that use it report skipped. Where one executes at CPL 0 but raises #UD at
//! CPL 3, the CPL 3 cases report skipped with that reason: this project's PVM
//! KVM runs guest user mode natively on a host CPU without the instructions
//! and answers the hardware #UD itself, so the VMM never sees them. Under KVM
//! without a DSA device (so not dsavmm: QEMU on this machine's KVM stops the
//! guest on the emulation failure of any of these instructions) every case
//! is skipped.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::entry::{KERNEL_CS, KERNEL_DS};
use crate::fmt::Line;
use crate::tests::{Outcome, Runner};
use crate::usermode::{self as um, frame, page, user_va};

global_asm!(
    r#"
    .set KERNEL_DS, {kds}
    .set USER_CS, {ucs}
    .set USER_SS, {uss}

    .section .data, "aw", @progbits
    .balign 8
    /* non-zero while a try_* runs: exceptions are recorded, not fatal */
    .globl selftest_fault_armed
selftest_fault_armed:
    .quad 0
selftest_fault_rsp:
    .quad 0
    /* vector, error code, CR2, RIP, CS of the last exception caught */
    .globl selftest_fault_rec
selftest_fault_rec:
    .fill 5, 8, 0

    .text
    /* Saves the callee-saved registers and RFLAGS, arms the catch and    */
    /* clears CR2. Used by both try routines (a macro: it saves RSP).     */
    .macro FAULT_ENTER
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushfq
    movq %rsp, selftest_fault_rsp(%rip)
    xorl %eax, %eax
    movq %rax, %cr2
    movq $1, selftest_fault_armed(%rip)
    .endm

    /* u64 selftest_try_kernel(fn rdi, a rsi, b rdx): fn(a, b) at CPL 0.  */
    /* Returns 0 when fn returned, 1 when an exception was caught.        */
    .balign 16
    .globl selftest_try_kernel
selftest_try_kernel:
    FAULT_ENTER
    movq %rdi, %rax
    movq %rsi, %rdi
    movq %rdx, %rsi
    call *%rax
    xorl %eax, %eax
    jmp selftest_fault_resume

    /* u64 selftest_try_user(rip rdi, a rsi, b rdx): IRETQ to the user   */
    /* routine at rip (CPL 3, IF = 0) with RSI = a, RDX = b. Returns 0     */
    /* when it came back through the DPL-3 gate, 1 on an exception.        */
    .balign 16
    .globl selftest_try_user
selftest_try_user:
    FAULT_ENTER
    pushq $USER_SS
    movabsq ${stack_top}, %rax
    pushq %rax
    pushq $2
    pushq $USER_CS
    pushq %rdi
    iretq

    /* Gate of USER_RETURN_VECTOR (DPL 3): the user routine completed. */
    .balign 16
    .globl selftest_user_return_isr
selftest_user_return_isr:
    xorl %eax, %eax
    jmp selftest_fault_resume

    /* From selftest_exc_common while armed; RSP = [vector, error, rip, cs, ..]. */
    .globl selftest_fault_catch
selftest_fault_catch:
    movq %cr2, %rax
    movq %rax, selftest_fault_rec + 16(%rip)
    movq 0(%rsp), %rax
    movq %rax, selftest_fault_rec + 0(%rip)
    movq 8(%rsp), %rax
    movq %rax, selftest_fault_rec + 8(%rip)
    movq 16(%rsp), %rax
    movq %rax, selftest_fault_rec + 24(%rip)
    movq 24(%rsp), %rax
    movq %rax, selftest_fault_rec + 32(%rip)
    movl $1, %eax
selftest_fault_resume:
    movq $0, selftest_fault_armed(%rip)
    movq selftest_fault_rsp(%rip), %rsp
    /* an interrupt from CPL 3 left SS null and the IRETQ to CPL 3 DS/ES */
    movw $KERNEL_DS, %cx
    movw %cx, %ss
    movw %cx, %ds
    movw %cx, %es
    popfq
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    /* Kernel-mode probes (called through selftest_try_kernel). */
    /* movdir64b rax, [rdx]: dst = rdi, src = rsi */
    .balign 16
    .globl selftest_k_movdir64b
selftest_k_movdir64b:
    movq %rdi, %rax
    movq %rsi, %rdx
    .globl selftest_k_movdir64b_insn
selftest_k_movdir64b_insn:
    .byte 0x66, 0x0f, 0x38, 0xf8, 0x02
    ret

    /* movdir64b rax, [rdx] with RFLAGS.TF set by the POPFQ before it: the
       single-step #DB is raised after it, at selftest_k_movdir64b_tf_next. */
    .balign 16
    .globl selftest_k_movdir64b_tf
selftest_k_movdir64b_tf:
    movq %rdi, %rax
    movq %rsi, %rdx
    pushfq
    orq $0x100, (%rsp)
    popfq
    .byte 0x66, 0x0f, 0x38, 0xf8, 0x02
    .globl selftest_k_movdir64b_tf_next
selftest_k_movdir64b_tf_next:
    pushfq
    andq $~0x100, (%rsp)
    popfq
    ret

    /* movdiri [rdi], esi */
    .balign 16
    .globl selftest_k_movdiri32
selftest_k_movdiri32:
    .globl selftest_k_movdiri32_insn
selftest_k_movdiri32_insn:
    .byte 0x0f, 0x38, 0xf9, 0x37
    ret

    /* movdiri [rdi], rsi */
    .balign 16
    .globl selftest_k_movdiri64
selftest_k_movdiri64:
    .globl selftest_k_movdiri64_insn
selftest_k_movdiri64_insn:
    .byte 0x48, 0x0f, 0x38, 0xf9, 0x37
    ret

    /* popcnt rax, [rdi] */
    .balign 16
    .globl selftest_k_popcnt
selftest_k_popcnt:
    .globl selftest_k_popcnt_insn
selftest_k_popcnt_insn:
    .byte 0xf3, 0x48, 0x0f, 0xb8, 0x07
    ret
"#,
    kds = const KERNEL_DS,
    ucs = const um::CS,
    uss = const um::SS,
    stack_top = const um::STACK_TOP,
    options(att_syntax)
);

extern "C" {
    fn selftest_try_kernel(f: unsafe extern "C" fn(u64, u64), a: u64, b: u64) -> u64;
    fn selftest_try_user(rip: u64, a: u64, b: u64) -> u64;
    fn selftest_k_movdir64b(dst: u64, src: u64);
    static selftest_k_movdir64b_insn: u8;
    fn selftest_k_movdir64b_tf(dst: u64, src: u64);
    static selftest_k_movdir64b_tf_next: u8;
    fn selftest_k_movdiri32(dst: u64, value: u64);
    static selftest_k_movdiri32_insn: u8;
    fn selftest_k_movdiri64(dst: u64, value: u64);
    static selftest_k_movdiri64_insn: u8;
    fn selftest_k_popcnt(addr: u64, unused: u64);
    static selftest_k_popcnt_insn: u8;
    static selftest_fault_rec: [u64; 5];
    /// Handler of the DPL-3 gate [`um::USER_RETURN_VECTOR`].
    pub static selftest_user_return_isr: u8;
}

/// An exception caught inside a probe.
#[derive(Clone, Copy)]
struct Fault {
    vector: u64,
    error: u64,
    cr2: u64,
    rip: u64,
    cs: u64,
}

/// How a probe ended: `None` when it completed, else the exception.
type Probe = Option<Fault>;

fn last_fault() -> Fault {
    let rec = core::ptr::addr_of!(selftest_fault_rec) as *const u64;
    // SAFETY: five u64 in .data, written by the catch stub before the try
    // routine returned.
    let get = |i| unsafe { rec.add(i).read_volatile() };
    Fault {
        vector: get(0),
        error: get(1),
        cr2: get(2),
        rip: get(3),
        cs: get(4),
    }
}

/// Runs `f(a, b)` at CPL 0, catching any exception.
fn try_kernel(f: unsafe extern "C" fn(u64, u64), a: u64, b: u64) -> Probe {
    // SAFETY: the probes are asm routines that touch only the memory they
    // are given (and may fault on it); the try routine restores the kernel
    // context either way.
    let faulted = unsafe { selftest_try_kernel(f, a, b) };
    (faulted != 0).then(last_fault)
}

/// Runs user routine `sym` (a `selftest_user_*` symbol) at CPL 3 with
/// RSI = a, RDX = b, catching any exception.
fn try_user(sym: *const u8, a: u64, b: u64) -> Probe {
    // SAFETY: `sym` lies in the user code page (checked by `usermode::init`);
    // the user routine runs one instruction and returns through the gate.
    let faulted = unsafe { selftest_try_user(user_va(sym), a, b) };
    (faulted != 0).then(last_fault)
}

/// MOVDIR64B of the 64 bytes at `src` to `dst` at CPL 0 with exceptions caught: the vector
/// and error code of the one it raised, if any (for `crate::hostile`).
pub(crate) fn kernel_movdir64b(dst: u64, src: u64) -> Option<(u64, u64)> {
    try_kernel(selftest_k_movdir64b, dst, src).map(|f| (f.vector, f.error))
}

/// MOVDIRI of the low `bytes` (4 or 8) of `value` to `dst` at CPL 0, as
/// [`kernel_movdir64b`].
pub(crate) fn kernel_movdiri(bytes: u64, dst: u64, value: u64) -> Option<(u64, u64)> {
    let f = if bytes == 4 {
        selftest_k_movdiri32
    } else {
        selftest_k_movdiri64
    };
    try_kernel(f, dst, value).map(|f| (f.vector, f.error))
}

/// Whether MOVDIR64B (to RAM, at CPL 0) executed in the first probe.
static HAS_MOVDIR64B: AtomicBool = AtomicBool::new(false);
/// Whether MOVDIRI (to RAM, at CPL 0) executed in the first probe.
static HAS_MOVDIRI: AtomicBool = AtomicBool::new(false);

/// Skip reason (after the instruction's name) where an instruction that
/// executes at CPL 0 raises #UD at CPL 3. Seen on this project's PVM KVM,
/// whose host CPU lacks MOVDIR64B/MOVDIRI: it runs guest user mode natively,
/// and KVM answers the hardware #UD itself (`EMULTYPE_TRAP_UD`: no exit to
/// the VMM, even with `KVM_CAP_EXIT_ON_EMULATION_FAILURE`).
const USER_UD: &str = " raises #UD at CPL 3 but executes at CPL 0 \
    (KVM runs guest user mode on a host CPU without it and injects #UD itself)";

/// The instructions probed.
#[derive(Clone, Copy)]
enum Insn {
    Movdir64b,
    Movdiri,
    Popcnt,
}

impl Insn {
    fn name(self) -> &'static str {
        match self {
            Insn::Movdir64b => "MOVDIR64B",
            Insn::Movdiri => "MOVDIRI",
            Insn::Popcnt => "POPCNT",
        }
    }
}

/// What a probe must end with.
struct Want {
    /// What was tried, for the failure text.
    what: &'static str,
    /// The instruction probed.
    insn: Insn,
    /// Address of the instruction (RIP of a fault; the user VA at CPL 3).
    rip: u64,
    /// Whether it ran at CPL 3.
    user: bool,
    /// The exception (vector, error code, CR2 when #PF), or `None`: completes.
    fault: Option<(u64, u64, u64)>,
}

fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "#DE",
        1 => "#DB",
        6 => "#UD",
        13 => "#GP",
        14 => "#PF",
        _ => "vector",
    }
}

fn describe(l: &mut Line, f: &Fault) {
    l.s(vector_name(f.vector))
        .s(" (")
        .dec(f.vector)
        .s(") error ")
        .hex(f.error)
        .s(" cr2 ")
        .hex(f.cr2)
        .s(" rip ")
        .hex(f.rip)
        .s(" cs ")
        .hex(f.cs);
}

/// Checks a probe's end against `want`: Err(Fail) with the observation, or
/// Err(Skip) when the instruction itself raised #UD (a CPU without it).
fn check(got: Probe, want: &Want) -> Result<(), Outcome> {
    if let Some(f) = got {
        let unexpected_ud = f.vector == 6 && want.fault.map(|w| w.0) != Some(6);
        if unexpected_ud && f.rip == want.rip {
            let executes_at_cpl0 = match want.insn {
                Insn::Movdir64b => HAS_MOVDIR64B.load(Ordering::Relaxed),
                Insn::Movdiri => HAS_MOVDIRI.load(Ordering::Relaxed),
                Insn::Popcnt => true,
            };
            if !executes_at_cpl0 {
                let mut l = Line::new();
                l.s(want.insn.name()).s(" raises #UD on this CPU");
                return Err(Outcome::Skip(l));
            }
            if want.user {
                let mut l = Line::new();
                l.s(want.insn.name()).s(USER_UD);
                return Err(Outcome::Skip(l));
            }
        }
    }
    let cs = if want.user { um::CS } else { KERNEL_CS };
    let ok = match (got, want.fault) {
        (None, None) => true,
        (Some(f), Some((v, e, cr2))) => {
            f.vector == v
                && f.error == e
                && (v != 14 || f.cr2 == cr2)
                && f.rip == want.rip
                && f.cs == u64::from(cs)
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let mut l = Line::new();
    l.s(want.what).s(": want ");
    match want.fault {
        None => l.s("no exception"),
        Some((v, e, cr2)) => {
            l.s(vector_name(v)).s(" error ").hex(e);
            if v == 14 {
                l.s(" cr2 ").hex(cr2);
            }
            l.s(" rip ").hex(want.rip).s(" cs ").hex(u64::from(cs))
        }
    };
    l.s("; got ");
    match got {
        None => l.s("no exception"),
        Some(f) => {
            describe(&mut l, &f);
            &mut l
        }
    };
    Err(Outcome::Fail(l))
}

fn fail_at(what: &str, addr: u64, want: u64, got: u64) -> Outcome {
    let mut l = Line::new();
    l.s(what)
        .s(": at ")
        .hex(addr)
        .s(" want ")
        .hex(want)
        .s(" got ")
        .hex(got);
    Outcome::Fail(l)
}

fn rd8(a: u64) -> u8 {
    // SAFETY: callers pass identity-mapped addresses of the user frames.
    unsafe { (a as *const u8).read_volatile() }
}

fn wr8(a: u64, v: u8) {
    // SAFETY: as in `rd8`; the frames belong to this module.
    unsafe { (a as *mut u8).write_volatile(v) }
}

fn rd64(a: u64) -> u64 {
    // SAFETY: as in `rd8`.
    unsafe { (a as *const u64).read_volatile() }
}

fn wr64(a: u64, v: u64) {
    // SAFETY: as in `wr8`.
    unsafe { (a as *mut u64).write_volatile(v) }
}

/// Fills 64 bytes at `a` with qwords `seed ^ k`.
fn fill64(a: u64, seed: u64) {
    for k in 0..8u64 {
        wr64(a + 8 * k, seed ^ k);
    }
}

/// Checks the 64 bytes at `a` hold `seed ^ k` (what `fill64` wrote).
fn check64(what: &str, a: u64, seed: u64) -> Result<(), Outcome> {
    for k in 0..8u64 {
        let got = rd64(a + 8 * k);
        if got != seed ^ k {
            return Err(fail_at(what, a + 8 * k, seed ^ k, got));
        }
    }
    Ok(())
}

const SRC_SEED: u64 = 0x6d6f_7664_6972_3634;
const OLD_SEED: u64 = 0x6f6c_645f_6279_7465;

fn outcome(r: Result<(), Outcome>) -> Outcome {
    r.err().unwrap_or(Outcome::Ok)
}

/// CPL 3 MOVDIR64B from user data to user data.
fn user_movdir64b() -> Result<(), Outcome> {
    let routine = core::ptr::addr_of!(um::selftest_user_movdir64b);
    let insn = core::ptr::addr_of!(um::selftest_user_movdir64b_insn);
    let data = frame(um::FR_DATA);
    fill64(data + 0x100, SRC_SEED);
    fill64(data + 0x40, OLD_SEED);
    let got = try_user(routine, page(um::PG_DATA) + 0x40, page(um::PG_DATA) + 0x100);
    check(
        got,
        &Want {
            what: "MOVDIR64B to a user page",
            insn: Insn::Movdir64b,
            rip: user_va(insn),
            user: true,
            fault: None,
        },
    )?;
    check64("MOVDIR64B destination", data + 0x40, SRC_SEED)
}

/// Case `user_movdir64b`.
fn case_user_movdir64b() -> Outcome {
    outcome(user_movdir64b())
}

fn movdiri_sym(bytes: u64) -> (*const u8, u64) {
    if bytes == 4 {
        (
            core::ptr::addr_of!(um::selftest_user_movdiri32),
            user_va(core::ptr::addr_of!(um::selftest_user_movdiri32_insn)),
        )
    } else {
        (
            core::ptr::addr_of!(um::selftest_user_movdiri64),
            user_va(core::ptr::addr_of!(um::selftest_user_movdiri64_insn)),
        )
    }
}

/// A CPL 3 MOVDIRI of `bytes` (4 or 8) of `value` to user address `dst`,
/// which must complete.
fn user_movdiri_ok(bytes: u64, dst: u64, value: u64) -> Result<(), Outcome> {
    let (routine, rip) = movdiri_sym(bytes);
    check(
        try_user(routine, dst, value),
        &Want {
            what: if bytes == 4 {
                "4-byte MOVDIRI to a user page"
            } else {
                "8-byte MOVDIRI to a user page"
            },
            insn: Insn::Movdiri,
            rip,
            user: true,
            fault: None,
        },
    )
}

/// Checks `len` bytes at `a` against the little-endian bytes of `v` (or the
/// guard byte `g` where `v` is None).
fn check_bytes(what: &str, a: u64, len: u64, v: Option<u64>, g: u8) -> Result<(), Outcome> {
    for i in 0..len {
        let want = v.map_or(g, |v| (v >> (8 * i)) as u8);
        let got = rd8(a + i);
        if got != want {
            return Err(fail_at(what, a + i, u64::from(want), u64::from(got)));
        }
    }
    Ok(())
}

/// Case `user_movdiri`: 4 and 8 bytes, neighbours untouched.
fn case_user_movdiri() -> Outcome {
    let run = || -> Result<(), Outcome> {
        let data = frame(um::FR_DATA);
        let va = page(um::PG_DATA);
        for i in 0..32 {
            wr8(data + 0x200 + i, 0xee);
        }
        user_movdiri_ok(4, va + 0x204, 0x1122_3344)?;
        user_movdiri_ok(8, va + 0x210, 0x5566_7788_99aa_bbcc)?;
        check_bytes("MOVDIRI guard", data + 0x200, 4, None, 0xee)?;
        check_bytes("4-byte MOVDIRI", data + 0x204, 4, Some(0x1122_3344), 0)?;
        check_bytes("MOVDIRI guard", data + 0x208, 8, None, 0xee)?;
        check_bytes(
            "8-byte MOVDIRI",
            data + 0x210,
            8,
            Some(0x5566_7788_99aa_bbcc),
            0,
        )?;
        check_bytes("MOVDIRI guard", data + 0x218, 8, None, 0xee)
    };
    outcome(run())
}

/// Case `user_movdiri_split`: an 8-byte MOVDIRI 3 bytes before the end of
/// page 6 lands 3 bytes at the end of its frame and 5 at the start of page
/// 7's frame (which lies *below* it: a store to consecutive guest-physical
/// addresses would hit the supervisor read-only frame instead).
fn case_user_movdiri_split() -> Outcome {
    let run = || -> Result<(), Outcome> {
        const V: u64 = 0x0807_0605_0403_0201;
        let lo = frame(um::FR_SPLIT_LO);
        let hi = frame(um::FR_SPLIT_HI);
        let next = frame(um::FR_SUPER_RO);
        for i in 0..8 {
            wr8(lo + um::PAGE - 8 + i, 0xee);
            wr8(hi + i, 0xee);
            wr8(next + i, 0xdd);
        }
        user_movdiri_ok(8, page(um::PG_SPLIT) + um::PAGE - 3, V)?;
        check_bytes("split MOVDIRI guard", lo + um::PAGE - 8, 5, None, 0xee)?;
        check_bytes(
            "split MOVDIRI, first page",
            lo + um::PAGE - 3,
            3,
            Some(V),
            0,
        )?;
        check_bytes("split MOVDIRI, second page", hi, 5, Some(V >> 24), 0)?;
        check_bytes("split MOVDIRI guard", hi + 5, 3, None, 0xee)?;
        check_bytes(
            "split MOVDIRI wrote the frame after the first page's",
            next,
            8,
            None,
            0xdd,
        )
    };
    outcome(run())
}

/// A CPL 3 MOVDIR64B from user `src` to user `dst` that must raise #PF with
/// `error` and CR2 = `cr2`; the 64 bytes at identity address `dst_frame`
/// must stay unchanged.
fn user_movdir64b_pf(
    what: &'static str,
    dst: u64,
    src: u64,
    dst_frame: u64,
    error: u64,
    cr2: u64,
) -> Result<(), Outcome> {
    let routine = core::ptr::addr_of!(um::selftest_user_movdir64b);
    let insn = core::ptr::addr_of!(um::selftest_user_movdir64b_insn);
    fill64(frame(um::FR_DATA) + 0x100, SRC_SEED);
    fill64(dst_frame, OLD_SEED);
    check(
        try_user(routine, dst, src),
        &Want {
            what,
            insn: Insn::Movdir64b,
            rip: user_va(insn),
            user: true,
            fault: Some((14, error, cr2)),
        },
    )?;
    check64(
        "faulting MOVDIR64B changed its destination",
        dst_frame,
        OLD_SEED,
    )
}

/// #PF error code bits.
const PF_P: u64 = 1;
const PF_W: u64 = 2;
const PF_U: u64 = 4;

/// Case `user_movdir64b_pf_supervisor`.
fn case_user_pf_supervisor() -> Outcome {
    let dst = page(um::PG_SUPER) + 0x80;
    outcome(user_movdir64b_pf(
        "CPL 3 MOVDIR64B to a supervisor page",
        dst,
        page(um::PG_DATA) + 0x100,
        frame(um::FR_SUPER) + 0x80,
        PF_P | PF_W | PF_U,
        dst,
    ))
}

/// Case `user_movdir64b_pf_readonly`.
fn case_user_pf_readonly() -> Outcome {
    let dst = page(um::PG_RO) + 0xc0;
    outcome(user_movdir64b_pf(
        "CPL 3 MOVDIR64B to a read-only page",
        dst,
        page(um::PG_DATA) + 0x100,
        frame(um::FR_RO) + 0xc0,
        PF_P | PF_W | PF_U,
        dst,
    ))
}

/// Case `user_movdir64b_pf_source`.
fn case_user_pf_source() -> Outcome {
    let src = page(um::PG_ABSENT) + 0x40;
    outcome(user_movdir64b_pf(
        "CPL 3 MOVDIR64B from a not-present source",
        page(um::PG_DATA) + 0x300,
        src,
        frame(um::FR_DATA) + 0x300,
        PF_U,
        src,
    ))
}

/// Case `user_movdiri_pf_readonly`: 4 and 8 bytes.
fn case_user_movdiri_pf() -> Outcome {
    let run = || -> Result<(), Outcome> {
        for (bytes, off) in [(4u64, 0x104u64), (8, 0x108)] {
            let (routine, rip) = movdiri_sym(bytes);
            let ro = frame(um::FR_RO);
            fill64(ro + 0x100, OLD_SEED);
            let dst = page(um::PG_RO) + off;
            check(
                try_user(routine, dst, 0x1234_5678_9abc_def0),
                &Want {
                    what: if bytes == 4 {
                        "CPL 3 4-byte MOVDIRI to a read-only page"
                    } else {
                        "CPL 3 8-byte MOVDIRI to a read-only page"
                    },
                    insn: Insn::Movdiri,
                    rip,
                    user: true,
                    fault: Some((14, PF_P | PF_W | PF_U, dst)),
                },
            )?;
            check64(
                "faulting MOVDIRI changed its destination",
                ro + 0x100,
                OLD_SEED,
            )?;
        }
        Ok(())
    };
    outcome(run())
}

fn k_movdir64b_rip() -> u64 {
    core::ptr::addr_of!(selftest_k_movdir64b_insn) as u64
}

/// Case `movdir64b_gp_misaligned`: CPL 0, destination 8 bytes past a 64-byte
/// boundary -> #GP(0), nothing written.
fn case_gp_misaligned() -> Outcome {
    let run = || -> Result<(), Outcome> {
        let data = frame(um::FR_DATA);
        fill64(data + 0x500, SRC_SEED);
        fill64(data + 0x408, OLD_SEED);
        check(
            try_kernel(selftest_k_movdir64b, data + 0x408, data + 0x500),
            &Want {
                what: "MOVDIR64B to a misaligned destination",
                insn: Insn::Movdir64b,
                rip: k_movdir64b_rip(),
                user: false,
                fault: Some((13, 0, 0)),
            },
        )?;
        check64(
            "#GP MOVDIR64B changed its destination",
            data + 0x408,
            OLD_SEED,
        )
    };
    outcome(run())
}

/// Case `movdir64b_single_step`: CPL 0 MOVDIR64B with RFLAGS.TF: the store
/// completes, then the single-step #DB arrives with RIP after the
/// instruction and DR6.BS set, as the CPU retires any instruction (a VMM that
/// emulates it must do the same).
fn case_single_step() -> Outcome {
    const DR6_BS: u64 = 1 << 14;
    if !HAS_MOVDIR64B.load(Ordering::Relaxed) {
        let mut l = Line::new();
        l.s(Insn::Movdir64b.name()).s(" raises #UD on this CPU");
        return Outcome::Skip(l);
    }
    let run = || -> Result<(), Outcome> {
        let data = frame(um::FR_DATA);
        fill64(data + 0x500, SRC_SEED);
        fill64(data + 0x440, OLD_SEED);
        write_dr6(0);
        check(
            try_kernel(selftest_k_movdir64b_tf, data + 0x440, data + 0x500),
            &Want {
                what: "MOVDIR64B with RFLAGS.TF",
                insn: Insn::Movdir64b,
                rip: core::ptr::addr_of!(selftest_k_movdir64b_tf_next) as u64,
                user: false,
                fault: Some((1, 0, 0)),
            },
        )?;
        let dr6 = read_dr6();
        write_dr6(0);
        if dr6 & DR6_BS == 0 {
            let mut l = Line::new();
            l.s("single-step #DB without DR6.BS: dr6 ").hex(dr6);
            return Err(Outcome::Fail(l));
        }
        check64(
            "single-stepped MOVDIR64B destination",
            data + 0x440,
            SRC_SEED,
        )
    };
    outcome(run())
}

fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 at CPL 0 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

fn write_dr6(v: u64) {
    // SAFETY: DR6 is a status register; the guest uses no debug features.
    unsafe { core::arch::asm!("mov dr6, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

fn write_cr0(v: u64) {
    // SAFETY: only CR0.WP is changed by the callers (paging stays as it is).
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Case `movdir64b_pf_write_protect`: CPL 0 MOVDIR64B to a supervisor
/// read-only page: #PF P|W with CR0.WP = 1, then the store lands with
/// CR0.WP = 0.
fn case_pf_wp() -> Outcome {
    const WP: u64 = 1 << 16;
    let cr0 = read_cr0();
    let run = || -> Result<(), Outcome> {
        let src = frame(um::FR_DATA) + 0x500;
        let dst_frame = frame(um::FR_SUPER_RO) + 0x40;
        let dst = page(um::PG_SUPER_RO) + 0x40;
        fill64(src, SRC_SEED);
        fill64(dst_frame, OLD_SEED);
        write_cr0(cr0 | WP);
        let got = try_kernel(selftest_k_movdir64b, dst, src);
        write_cr0(cr0 & !WP);
        check(
            got,
            &Want {
                what: "CR0.WP=1: MOVDIR64B to a read-only page",
                insn: Insn::Movdir64b,
                rip: k_movdir64b_rip(),
                user: false,
                fault: Some((14, PF_P | PF_W, dst)),
            },
        )?;
        check64(
            "faulting MOVDIR64B changed its destination",
            dst_frame,
            OLD_SEED,
        )?;
        let got = try_kernel(selftest_k_movdir64b, dst, src);
        check(
            got,
            &Want {
                what: "CR0.WP=0: MOVDIR64B to a read-only page",
                insn: Insn::Movdir64b,
                rip: k_movdir64b_rip(),
                user: false,
                fault: None,
            },
        )?;
        check64("CR0.WP=0 MOVDIR64B destination", dst_frame, SRC_SEED)
    };
    let r = run();
    write_cr0(cr0);
    outcome(r)
}

fn k_movdiri(bytes: u64) -> (unsafe extern "C" fn(u64, u64), u64) {
    if bytes == 4 {
        (
            selftest_k_movdiri32,
            core::ptr::addr_of!(selftest_k_movdiri32_insn) as u64,
        )
    } else {
        (
            selftest_k_movdiri64,
            core::ptr::addr_of!(selftest_k_movdiri64_insn) as u64,
        )
    }
}

/// A CPL 0 MOVDIR64B from `src` to `dst` that must raise #PF with `error`
/// and CR2 = `cr2`, leaving the 64 bytes at identity address `dst_frame`.
fn kernel_movdir64b_pf(
    what: &'static str,
    dst: u64,
    src: u64,
    dst_frame: u64,
    error: u64,
    cr2: u64,
) -> Result<(), Outcome> {
    fill64(frame(um::FR_DATA) + 0x500, SRC_SEED);
    fill64(dst_frame, OLD_SEED);
    check(
        try_kernel(selftest_k_movdir64b, dst, src),
        &Want {
            what,
            insn: Insn::Movdir64b,
            rip: k_movdir64b_rip(),
            user: false,
            fault: Some((14, error, cr2)),
        },
    )?;
    check64(
        "faulting MOVDIR64B changed its destination",
        dst_frame,
        OLD_SEED,
    )
}

/// Case `movdir64b_pf_source`: CPL 0, source in a not-present page -> #PF
/// error 0 (not present, read, supervisor), CR2 = source.
fn case_k_pf_source() -> Outcome {
    let src = page(um::PG_ABSENT) + 0x80;
    outcome(kernel_movdir64b_pf(
        "CPL 0 MOVDIR64B from a not-present source",
        frame(um::FR_DATA) + 0x600,
        src,
        frame(um::FR_DATA) + 0x600,
        0,
        src,
    ))
}

/// Case `movdir64b_pf_absent`: CPL 0, destination in a not-present page ->
/// #PF error W, CR2 = destination.
fn case_k_pf_absent() -> Outcome {
    let dst = page(um::PG_ABSENT) + 0xc0;
    outcome(kernel_movdir64b_pf(
        "CPL 0 MOVDIR64B to a not-present page",
        dst,
        frame(um::FR_DATA) + 0x500,
        frame(um::FR_DATA) + 0x640,
        PF_W,
        dst,
    ))
}

/// Case `movdiri_split`: as `user_movdiri_split`, at CPL 0, for 4 bytes
/// (1 + 3) and 8 bytes (3 + 5).
fn case_k_movdiri_split() -> Outcome {
    let run = || -> Result<(), Outcome> {
        const V: u64 = 0x1817_1615_1413_1211;
        let lo = frame(um::FR_SPLIT_LO);
        let hi = frame(um::FR_SPLIT_HI);
        let next = frame(um::FR_SUPER_RO);
        for (bytes, first) in [(4u64, 1u64), (8, 3)] {
            for i in 0..8 {
                wr8(lo + um::PAGE - 8 + i, 0xee);
                wr8(hi + i, 0xee);
                wr8(next + i, 0xdd);
            }
            let (f, rip) = k_movdiri(bytes);
            check(
                try_kernel(f, page(um::PG_SPLIT) + um::PAGE - first, V),
                &Want {
                    what: "CPL 0 MOVDIRI across a page boundary",
                    insn: Insn::Movdiri,
                    rip,
                    user: false,
                    fault: None,
                },
            )?;
            let second = bytes - first;
            check_bytes(
                "split MOVDIRI guard",
                lo + um::PAGE - 8,
                8 - first,
                None,
                0xee,
            )?;
            check_bytes(
                "split MOVDIRI, first page",
                lo + um::PAGE - first,
                first,
                Some(V),
                0,
            )?;
            check_bytes(
                "split MOVDIRI, second page",
                hi,
                second,
                Some(V >> (8 * first)),
                0,
            )?;
            check_bytes("split MOVDIRI guard", hi + second, 8 - second, None, 0xee)?;
            check_bytes(
                "split MOVDIRI wrote the frame after the first page's",
                next,
                8,
                None,
                0xdd,
            )?;
        }
        Ok(())
    };
    outcome(run())
}

/// Case `movdiri_pf_write_protect`: CPL 0 MOVDIRI (4 and 8 bytes) to a
/// supervisor read-only page: #PF P|W with CR0.WP = 1, stored with WP = 0.
fn case_k_movdiri_wp() -> Outcome {
    const WP: u64 = 1 << 16;
    const V: u64 = 0x2122_2324_2526_2728;
    let cr0 = read_cr0();
    let run = || -> Result<(), Outcome> {
        for (bytes, off) in [(4u64, 0x204u64), (8, 0x208)] {
            let (f, rip) = k_movdiri(bytes);
            let dst_frame = frame(um::FR_SUPER_RO) + 0x200;
            let dst = page(um::PG_SUPER_RO) + off;
            fill64(dst_frame, OLD_SEED);
            write_cr0(cr0 | WP);
            let got = try_kernel(f, dst, V);
            write_cr0(cr0 & !WP);
            check(
                got,
                &Want {
                    what: "CR0.WP=1: MOVDIRI to a read-only page",
                    insn: Insn::Movdiri,
                    rip,
                    user: false,
                    fault: Some((14, PF_P | PF_W, dst)),
                },
            )?;
            check64(
                "faulting MOVDIRI changed its destination",
                dst_frame,
                OLD_SEED,
            )?;
            check(
                try_kernel(f, dst, V),
                &Want {
                    what: "CR0.WP=0: MOVDIRI to a read-only page",
                    insn: Insn::Movdiri,
                    rip,
                    user: false,
                    fault: None,
                },
            )?;
            check_bytes(
                "CR0.WP=0 MOVDIRI",
                frame(um::FR_SUPER_RO) + off,
                bytes,
                Some(V),
                0,
            )?;
        }
        Ok(())
    };
    let r = run();
    write_cr0(cr0);
    outcome(r)
}

/// Clears CR4.SMAP (if a VMM left it set): the CPL 0 cases store to user
/// pages (the split pages), as the kernel does with SMAP off.
fn clear_smap() {
    const SMAP: u64 = 1 << 21;
    let cr4: u64;
    // SAFETY: reads CR4; clearing SMAP only relaxes supervisor access checks.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
        if cr4 & SMAP != 0 {
            core::arch::asm!("mov cr4, {}", in(reg) cr4 & !SMAP, options(nostack, preserves_flags));
        }
    }
}

/// Stores to [`um::UNCLAIMED_MMIO`] (`base` is its address in the current
/// mode's mapping): MOVDIR64B, MOVDIRI 4 and 8 bytes; the CPU completes
/// each (nothing decodes the address: the write is dropped).
fn mmio_stores(base: u64, user: bool) -> Result<(), Outcome> {
    let src = if user {
        page(um::PG_DATA) + 0x500
    } else {
        frame(um::FR_DATA) + 0x500
    };
    fill64(frame(um::FR_DATA) + 0x500, SRC_SEED);
    let what = if user {
        "CPL 3 store to unclaimed MMIO"
    } else {
        "CPL 0 store to unclaimed MMIO"
    };
    let (got, rip) = if user {
        let insn = core::ptr::addr_of!(um::selftest_user_movdir64b_insn);
        (
            try_user(core::ptr::addr_of!(um::selftest_user_movdir64b), base, src),
            user_va(insn),
        )
    } else {
        (
            try_kernel(selftest_k_movdir64b, base, src),
            k_movdir64b_rip(),
        )
    };
    let want = |insn, rip| Want {
        what,
        insn,
        rip,
        user,
        fault: None,
    };
    check(got, &want(Insn::Movdir64b, rip))?;
    for (bytes, off) in [(4u64, 0x40u64), (8, 0x48)] {
        let (got, rip) = if user {
            let (routine, rip) = movdiri_sym(bytes);
            (try_user(routine, base + off, 0x3132_3334_3536_3738), rip)
        } else {
            let (f, rip) = k_movdiri(bytes);
            (try_kernel(f, base + off, 0x3132_3334_3536_3738), rip)
        };
        check(got, &want(Insn::Movdiri, rip))?;
    }
    Ok(())
}

/// Case `movdir64b_mmio_unclaimed`: [`mmio_stores`] at CPL 0.
fn case_k_mmio() -> Outcome {
    outcome(mmio_stores(um::UNCLAIMED_MMIO, false))
}

/// Case `user_movdir64b_mmio_unclaimed`: [`mmio_stores`] at CPL 3 (through
/// the user MMIO page).
fn case_user_mmio() -> Outcome {
    outcome(mmio_stores(page(um::PG_MMIO), true))
}

/// Probes at CPL 0 whether MOVDIR64B and MOVDIRI execute (to RAM); prints
/// `info faults cpl0 movdir64b=.. movdiri=..`.
fn probe_cpl0() {
    let data = frame(um::FR_DATA);
    fill64(data + 0x500, SRC_SEED);
    let m64 = !matches!(
        try_kernel(selftest_k_movdir64b, data + 0x700, data + 0x500),
        Some(f) if f.vector == 6
    );
    let (f, _) = k_movdiri(8);
    let mdi = !matches!(try_kernel(f, data + 0x740, 0), Some(f) if f.vector == 6);
    HAS_MOVDIR64B.store(m64, Ordering::Relaxed);
    HAS_MOVDIRI.store(mdi, Ordering::Relaxed);
    crate::tests::info(|l| {
        l.s("faults cpl0 movdir64b=")
            .s(if m64 { "executes" } else { "#UD" })
            .s(" movdiri=")
            .s(if mdi { "executes" } else { "#UD" });
    });
}

/// Case `ud_unemulated`: POPCNT with a memory operand on an unclaimed MMIO
/// address, at CPL 0 and at CPL 3. KVM's instruction emulator has no POPCNT
/// (Linux 6.12 arch/x86/kvm/emulate.c: `twobyte_table[0xb8]` is `N`), so
/// where the access goes through it (every access on a KVM that emulates
/// all instructions, MMIO accesses under VT-x/SVM) the VMM sees an
/// emulation failure and must deliver #UD at the instruction. Where POPCNT
/// simply executes (a CPU or TCG), skipped.
fn case_ud() -> Outcome {
    let k_rip = core::ptr::addr_of!(selftest_k_popcnt_insn) as u64;
    let u_routine = core::ptr::addr_of!(um::selftest_user_popcnt);
    let u_rip = user_va(core::ptr::addr_of!(um::selftest_user_popcnt_insn));
    let k = try_kernel(selftest_k_popcnt, um::UNCLAIMED_MMIO, 0);
    let u = try_user(u_routine, page(um::PG_MMIO), 0);
    if k.is_none() && u.is_none() {
        return Outcome::Skip({
            let mut l = Line::new();
            l.s("POPCNT on MMIO executed here (no emulation failure to turn into #UD)");
            l
        });
    }
    let run = || -> Result<(), Outcome> {
        check(
            k,
            &Want {
                what: "CPL 0 POPCNT on MMIO",
                insn: Insn::Popcnt,
                rip: k_rip,
                user: false,
                fault: Some((6, 0, 0)),
            },
        )?;
        check(
            u,
            &Want {
                what: "CPL 3 POPCNT on MMIO",
                insn: Insn::Popcnt,
                rip: u_rip,
                user: true,
                fault: Some((6, 0, 0)),
            },
        )
    };
    outcome(run())
}

/// A case: its name and its function.
type Case = (&'static str, fn() -> Outcome);

/// The cases, in order.
const CASES: [Case; 17] = [
    ("user_movdir64b", case_user_movdir64b),
    ("user_movdiri", case_user_movdiri),
    ("user_movdiri_split", case_user_movdiri_split),
    ("user_movdir64b_pf_supervisor", case_user_pf_supervisor),
    ("user_movdir64b_pf_readonly", case_user_pf_readonly),
    ("user_movdir64b_pf_source", case_user_pf_source),
    ("user_movdiri_pf_readonly", case_user_movdiri_pf),
    ("user_movdir64b_mmio_unclaimed", case_user_mmio),
    ("movdir64b_gp_misaligned", case_gp_misaligned),
    ("movdir64b_pf_source", case_k_pf_source),
    ("movdir64b_pf_absent", case_k_pf_absent),
    ("movdir64b_pf_write_protect", case_pf_wp),
    ("movdiri_split", case_k_movdiri_split),
    ("movdiri_pf_write_protect", case_k_movdiri_wp),
    ("movdir64b_mmio_unclaimed", case_k_mmio),
    ("movdir64b_single_step", case_single_step),
    ("ud_unemulated", case_ud),
];

/// Runs the fault cases; `dsa` is the number of DSA devices found (see the
/// module documentation for why it matters).
pub fn run_all(r: &mut Runner, dsa: usize) {
    let kvm = crate::cpuid::hypervisor().is_some_and(|h| h.starts_with(b"KVMKVMKVM"));
    let skip = if kvm && dsa == 0 {
        Some("KVM without a DSA device (not dsavmm): the VMM may stop the guest on an emulation failure")
    } else {
        um::init().err()
    };
    if let Some(why) = skip {
        for (name, _) in CASES {
            let mut l = Line::new();
            l.s(why);
            r.report(name, Outcome::Skip(l));
        }
        return;
    }
    clear_smap();
    probe_cpl0();
    for (name, case) in CASES {
        r.report(name, case());
    }
}
