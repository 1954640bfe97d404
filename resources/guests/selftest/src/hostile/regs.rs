//! `hostile_bar0` and `hostile_msix`: random accesses of every size and alignment to the whole of
//! BAR0 (registers, tables, the PERFMON window, the MSI-X table and PBA, the holes), then the
//! MSI-X rules of docs/dsa-device-model.md §5 under random table contents: only vector-control
//! bit 0 is writable, the PBA is read-only, a masked vector pends and is delivered on unmask, a
//! disabled function neither sends nor pends. The function is masked whenever the table holds
//! messages this guest could not survive (INIT, SMI, NMI, vectors without a handler).

use super::{check_eq, Hostile};
use crate::dsa::*;
use crate::dsatest::{OP_NOP, POLL};

/// BAR0 accesses in `hostile_bar0`.
const BAR0_OPS: u64 = 12_000;
/// Table and PBA accesses in `hostile_msix`.
const MSIX_OPS: u64 = 6_000;

/// One MMIO access of `size` (1, 2, 4 or 8) bytes at any alignment: a plain `mov` (what a
/// guest's compiler emits), never a split access.
pub fn mmio_write(addr: u64, size: u64, v: u64) {
    // SAFETY: `addr` is inside a BAR of the device under test (MMIO in the uncached identity
    // map); the store has no effect on this program's memory.
    unsafe {
        match size {
            1 => {
                core::arch::asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) v as u8, options(nostack, preserves_flags))
            }
            2 => {
                core::arch::asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr, v = in(reg) v as u16, options(nostack, preserves_flags))
            }
            4 => {
                core::arch::asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) v as u32, options(nostack, preserves_flags))
            }
            _ => {
                core::arch::asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) v, options(nostack, preserves_flags))
            }
        }
    }
}

/// One MMIO load of `size` bytes at any alignment (see [`mmio_write`]).
pub fn mmio_read(addr: u64, size: u64) -> u64 {
    let v: u64;
    // SAFETY: as in `mmio_write`; the load only reads.
    unsafe {
        match size {
            1 => {
                core::arch::asm!("movzx {v:e}, byte ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags, readonly))
            }
            2 => {
                core::arch::asm!("movzx {v:e}, word ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags, readonly))
            }
            4 => {
                core::arch::asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags, readonly))
            }
            _ => {
                core::arch::asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags, readonly))
            }
        }
    }
    v
}

/// All ones in `size` bytes.
pub fn ones(size: u64) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1 << (8 * size)) - 1
    }
}

/// Waits 2 ms with interrupts enabled: MSIs sent through KVM's irqfds land meanwhile.
pub fn settle() {
    let deadline = crate::time::Deadline::after_ms(2);
    crate::cpu::sti();
    while !deadline.passed() {
        crate::cpu::pause();
    }
}

/// Sets or clears the MSI-X function mask (and sets MSI-X enable) in configuration space.
pub fn function_mask(d: &Dsa, on: bool) {
    let c = d.msix_cap + 2;
    let ctrl = d.cfg.r16(d.dev, d.func, c) | 0x8000;
    let ctrl = if on { ctrl | 0x4000 } else { ctrl & !0x4000 };
    d.cfg.w16(d.dev, d.func, c, ctrl);
}

/// `hostile_bar0`: random reads and writes over all 64 KiB of BAR0 with the MSI-X function
/// masked; then the capability registers are unchanged, the holes and the PERFMON window read
/// 0, a read that crosses a qword reads all ones (§2.1), and CMDSTS is not active (§4.4).
pub fn case_bar0(h: &mut Hostile) -> Res<u64> {
    function_mask(h.d, true);
    let caps: [u32; 29] = core::array::from_fn(|k| match k {
        28 => h.d.r32(CMDCAP),
        _ => h.d.r32(4 * k as u64),
    });
    let mut ops = 0;
    for _ in 0..BAR0_OPS {
        let r = &mut h.rng;
        let off = match r.below(10) {
            0..=5 => r.below(0x600),
            6 => 0x2000 + r.below(0x1100),
            7 => 0x1000 + r.below(0x1000),
            _ => r.below(0x1_0000),
        };
        let size = r.pick(&[1, 2, 4, 8], 4);
        let off = if r.chance(224) {
            off & !(size - 1)
        } else {
            off
        };
        let off = off.min(0x1_0000 - size);
        if r.chance(64) {
            let _ = mmio_read(h.d.bar0 + off, size);
        } else {
            let v = r.wild();
            mmio_write(h.d.bar0 + off, size, v);
        }
        ops += 1;
    }
    for (k, &want) in caps.iter().enumerate() {
        let off = if k == 28 { CMDCAP } else { 4 * k as u64 };
        check_eq(
            "read-only capability register changed",
            u64::from(h.d.r32(off)),
            u64::from(want),
        )
        .map_err(|mut l| {
            l.s(" at ").hex(off);
            l
        })?;
    }
    let holes = [0x100, 0x180, 0x2f8, 0x1000, 0x1ff8, 0x3100, 0x8000, 0xfff8];
    for off in holes {
        check_eq("BAR0 hole", h.d.r64(off), 0).map_err(|mut l| {
            l.s(" at ").hex(off);
            l
        })?;
    }
    check_eq(
        "8-byte read across a qword",
        mmio_read(h.d.bar0 + 0x14, 8),
        u64::MAX,
    )?;
    check_eq("CMDSTS.active", u64::from(h.d.r32(CMDSTS) >> 31), 0)?;
    check_eq("GENSTS reserved bits", u64::from(h.d.r32(GENSTS) & !0xf), 0)?;
    Ok(ops + 40)
}

/// The reset values of docs/dsa-device-model.md §2.19 after RESET_DEVICE: GENSTS, GENCFG,
/// GENCTRL, INTCAUSE, SWERR, EVLCFG, EVLSTATUS, MSIX_PERM, GRPCFG and WQCFG all 0.
pub fn check_reset_values(d: &Dsa) -> Res<()> {
    for (off, what) in [
        (GENSTS, "GENSTS"),
        (GENCFG, "GENCFG"),
        (GENCTRL, "GENCTRL"),
        (INTCAUSE, "INTCAUSE"),
    ] {
        check_eq(what, u64::from(d.r32(off)), 0).map_err(|mut l| {
            l.s(" after RESET_DEVICE");
            l
        })?;
    }
    for q in 0..4 {
        check_eq("SWERR after RESET_DEVICE", d.r64(SWERR + 8 * q), 0)?;
    }
    for off in [EVLCFG, EVLCFG + 8, EVLCFG + 16] {
        check_eq("EVLCFG/EVLSTATUS after RESET_DEVICE", d.r64(off), 0)?;
    }
    if d.msix_perm != 0 {
        for e in 0..u64::from(d.msix_entries) {
            check_eq(
                "MSIX_PERM after RESET_DEVICE",
                d.r64(d.msix_perm + 8 * e),
                0,
            )?;
        }
    }
    for g in 0..u64::from(d.num_groups) {
        for q in 0..8 {
            check_eq(
                "GRPCFG after RESET_DEVICE",
                d.r64(d.grpcfg + 64 * g + 8 * q),
                0,
            )?;
        }
    }
    for w in 0..d.num_wqs {
        for dw in 0..8 {
            check_eq(
                "WQCFG after RESET_DEVICE",
                u64::from(d.wqcfg_dword(w, dw)),
                0,
            )?;
        }
    }
    Ok(())
}

/// Puts MSI-X back: enabled, every entry reprogrammed with its own message, every pending bit
/// delivered (all entries briefly unmasked), then only entry 0 left unmasked, as
/// [`Dsa::msix_enable`] leaves it. Fails if a pending bit survives its delivery.
pub fn msix_restore(d: &Dsa) -> Res<()> {
    function_mask(d, true);
    for e in 0..d.msix_entries {
        d.unmask(e, false);
    }
    d.msix_program();
    function_mask(d, false);
    for e in 0..d.msix_entries {
        d.unmask(e, true);
    }
    settle();
    for e in 1..d.msix_entries {
        d.unmask(e, false);
    }
    for e in 0..d.msix_entries {
        if d.pending(e) {
            return Err(err_hex(
                "MSI-X pending bit not cleared by delivery, entry",
                u64::from(e),
            ));
        }
    }
    Ok(())
}

/// A completion interrupt on entry `e` of WQ `e - 1` (a NOP with RCI), its record polled.
fn ring(h: &mut Hostile, e: u16) -> Res<()> {
    let wq = u32::from(e.max(1) - 1) % h.d.num_wqs.max(1);
    let rec = h.record(u64::from(e));
    let c =
        h.d.run(wq, &Desc::new(OP_NOP, POLL | F_RCI, rec).handle(e))?;
    check_eq("NOP with RCI: status", u64::from(c.status), 1)
}

/// Clears the function mask, then [`ring`]s every WQ entry; returns how many.
fn ring_all(h: &mut Hostile) -> Res<u64> {
    function_mask(h.d, false);
    for e in 1..h.d.msix_entries {
        ring(h, e)?;
    }
    Ok(u64::from(h.d.msix_entries) - 1)
}

/// `hostile_msix`: random writes and reads of every size to the MSI-X table (and past its
/// end) and to the PBA with the function masked; then masked vectors pend and deliver on
/// unmask, a disabled function neither sends nor pends, and random fixed-mode messages to this
/// guest's own vectors (some to APIC IDs that do not exist) are delivered without pending.
pub fn case_msix(h: &mut Hostile) -> Res<u64> {
    let d = &*h.d;
    function_mask(d, true);
    let n = u64::from(d.msix_entries);
    let pba_before = rd64(d.msix_pba);
    let mut ops = 0;
    for _ in 0..MSIX_OPS {
        let r = &mut h.rng;
        let size = r.pick(&[1, 2, 4, 8], 4);
        let (base, span) = if r.chance(32) {
            (d.msix_pba, 64)
        } else {
            (d.msix_table, 16 * n + 64)
        };
        let off = r.below(span);
        let off = if r.chance(200) {
            off & !(size - 1)
        } else {
            off
        };
        if r.chance(48) {
            let _ = mmio_read(base + off, size);
        } else {
            mmio_write(base + off, size, r.wild());
        }
        ops += 1;
    }
    for e in 0..n {
        let ctrl = rd32(d.msix_table + 16 * e + 12);
        check_eq("MSI-X vector control beyond bit 0", u64::from(ctrl & !1), 0)?;
    }
    check_eq("MSI-X table past its end", rd64(d.msix_table + 16 * n), 0)?;
    check_eq(
        "MSI-X PBA after writes (read-only)",
        rd64(d.msix_pba),
        pba_before,
    )?;
    // Masked entries pend and deliver on unmask.
    d.msix_program();
    for e in 0..n as u16 {
        d.unmask(e, false);
    }
    ops += ring_all(h)?;
    let d = &*h.d;
    for e in 1..n as u16 {
        if !d.pending(e) {
            return Err(err_hex(
                "masked MSI-X entry: no pending bit, entry",
                u64::from(e),
            ));
        }
        let before = crate::idt::irq_count(d.vector(e));
        d.unmask(e, true);
        if !wait_irq(d.vector(e), before, 200) {
            return Err(err_hex(
                "pending MSI-X entry not delivered on unmask:",
                u64::from(e),
            ));
        }
        if d.pending(e) {
            return Err(err_hex(
                "PBA bit still set after delivery, entry",
                u64::from(e),
            ));
        }
        ops += 1;
    }
    // MSI-X disabled: nothing sent, nothing pending (§5).
    let c = d.msix_cap + 2;
    d.cfg
        .w16(d.dev, d.func, c, d.cfg.r16(d.dev, d.func, c) & !0x8000);
    let before = crate::idt::irq_count(d.vector(1));
    ring(h, 1)?;
    let d = &*h.d;
    if d.pending(1) || wait_irq(d.vector(1), before, 5) {
        return Err(err("MSI-X disabled: the vector was sent or left pending"));
    }
    function_mask(d, true);
    // Random but survivable messages: fixed or lowest-priority, edge, one of this device's
    // vectors, to this CPU or to an APIC ID that does not exist, logical mode now and then.
    for e in 0..n {
        let r = &mut h.rng;
        let dest = if r.chance(192) { d.apic & 0xff } else { 0x7e };
        let addr = 0xfee0_0000 | (dest << 12) | (r.below(4) as u32) << 2;
        let data = u32::from(d.vector(r.below(n) as u16)) | (r.below(2) as u32) << 8;
        let a = d.msix_table + 16 * e;
        wr32(a, addr);
        wr32(a + 4, if r.chance(32) { r.next() as u32 } else { 0 });
        wr32(a + 8, data);
        d.unmask(e as u16, true);
        ops += 4;
    }
    ops += ring_all(h)?;
    let d = &*h.d;
    for e in 0..n as u16 {
        if d.pending(e) {
            return Err(err_hex("unmasked MSI-X entry left pending:", u64::from(e)));
        }
    }
    Ok(ops)
}
