//! Software errors of the physical device, forwarded to the guest: an error the physical DSA
//! logs in its SWERR (a descriptor it could not complete into a completion record, docs/
//! dsa-device-model.md §10.1) becomes the guest's SWERR with the WQ index translated to the
//! guest's, and the guest's misc interrupt (when its GENCTRL asks for it).
//!
//! The physical device signals a software error on its MSI-X vector 0, which mediation never
//! binds to the guest (the vector also carries causes the guest must not see); it is parked on
//! an eventfd and read by [`super::device::VfioDsa::poll_misc`]. What reaches the guest is only
//! what the front end itself would report: the valid, overflow, descriptor-valid, WQ-valid,
//! batch and fault-on-write bits, the error code, the (translated) WQ index and the opcode; the
//! batch index and invalid flags; the fault address (a guest physical address: IOVA = GPA). The
//! privilege bit and PASID fields are dropped (the guest has no PASIDs).

/// SWERR qword 0: the entry is valid.
pub const SWERR_VALID: u64 = 1 << 0;
/// SWERR qword 0: an error was lost while the entry was valid.
pub const SWERR_OVERFLOW: u64 = 1 << 1;
/// SWERR qword 0: the WQ index field is valid.
const SWERR_WQ_VALID: u64 = 1 << 3;
/// SWERR qword 0 bits passed to the guest: valid, overflow, desc valid, WQ valid, batch, fault
/// on write (\[5:0\]), error code (\[15:8\]), WQ index (\[23:16\], translated), opcode (\[39:32\]).
const SWERR_Q0_PASSED: u64 = 0x3f | (0xff << 8) | (0xff << 16) | (0xff << 32);
const SWERR_WQ_SHIFT: u32 = 16;

/// What one physical SWERR entry is to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Report `(qword 0, qword 1, address)` as the guest's software error.
    Guest(u64, u64, u64),
    /// It names a physical WQ this guest was not given: not the guest's to see.
    Foreign(usize),
    /// Not valid, overflow set: an error came while the last entry was being taken and only
    /// its overflow was logged. The guest's entry, if valid, gets its overflow bit.
    Lost,
    /// The entry is not valid.
    Nothing,
}

/// SWERR qword 1 fields the guest sees: batch index \[15:0\] and invalid flags \[63:32\]; the
/// rest is reserved.
const SWERR_Q1_PASSED: u64 = 0xffff_ffff_0000_ffff;

/// Translates the physical SWERR `q` for the guest whose WQ `i` is physical WQ `wqs[i]`.
/// An error without a WQ index is the device's own and this guest owns the device: it is
/// passed on as such.
pub fn translate(q: [u64; 4], wqs: &[usize]) -> Forward {
    if q[0] & SWERR_VALID == 0 {
        return if q[0] & SWERR_OVERFLOW != 0 {
            Forward::Lost
        } else {
            Forward::Nothing
        };
    }
    let mut q0 = q[0] & SWERR_Q0_PASSED;
    if q0 & SWERR_WQ_VALID != 0 {
        let phys = ((q0 >> SWERR_WQ_SHIFT) & 0xff) as usize;
        let Some(guest) = wqs.iter().position(|w| *w == phys) else {
            return Forward::Foreign(phys);
        };
        q0 = (q0 & !(0xff << SWERR_WQ_SHIFT)) | ((guest as u64) << SWERR_WQ_SHIFT);
    }
    Forward::Guest(q0, q[1] & SWERR_Q1_PASSED, q[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A physical entry: valid, desc and WQ valid, error 0x1a, WQ `wq`, opcode 3, priv, PASID 5.
    fn entry(wq: u64) -> [u64; 4] {
        let q0 = SWERR_VALID
            | (1 << 2)
            | SWERR_WQ_VALID
            | (1 << 6)
            | (0x1a << 8)
            | (wq << 16)
            | (3 << 32)
            | (5 << 40);
        [q0, 7 | (0x40 << 32), 0xdead_b000, 0x1234]
    }

    #[test]
    fn the_wq_index_becomes_the_guests() {
        let Forward::Guest(q0, q1, addr) = translate(entry(5), &[2, 5]) else {
            panic!("not forwarded");
        };
        assert_eq!((q0 >> 16) & 0xff, 1, "physical WQ 5 is guest WQ 1");
        assert_eq!((q0 >> 8) & 0xff, 0x1a);
        assert_eq!((q0 >> 32) & 0xff, 3);
        assert_eq!(q0 & 0x3f, 0b1101, "valid, desc valid, WQ valid");
        assert_eq!(q0 & (1 << 6), 0, "no privilege bit");
        assert_eq!(q0 >> 40, 0, "no PASID");
        assert_eq!((q1, addr), (7 | (0x40 << 32), 0xdead_b000));
    }

    #[test]
    fn another_wq_is_not_the_guests() {
        assert_eq!(translate(entry(3), &[2, 5]), Forward::Foreign(3));
    }

    #[test]
    fn invalid_entries_and_device_errors() {
        assert_eq!(translate([0, 1, 2, 3], &[0]), Forward::Nothing);
        let device_error = [SWERR_VALID | SWERR_OVERFLOW | (0x03 << 8), 0, 0, 0];
        assert_eq!(
            translate(device_error, &[4]),
            Forward::Guest(SWERR_VALID | SWERR_OVERFLOW | (0x03 << 8), 0, 0)
        );
    }
}
