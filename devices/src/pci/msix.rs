//! MSI-X as a reusable piece: the capability body, the vector table and the pending-bit array
//! (both living in a BAR chosen by the device), per-vector and function masks, and delivery
//! through an [`MsiInterruptSink`].
//!
//! Rules (PCI Local Bus 3.0 section 6.8.2, docs/dsa-device-model.md §5):
//! - A vector may fire only when MSI-X is enabled, the function is not masked and the vector's
//!   mask bit is clear. A vector that fires while masked sets its pending bit instead, and is
//!   delivered (pending bit cleared) as soon as it becomes unmasked.
//! - While MSI-X is disabled nothing is sent and nothing becomes pending.
//! - The sink is told the message (address/data) of a vector before the vector is first
//!   delivered after any change (it is told on unmask, on enable, when an unmasked entry is
//!   rewritten, and lazily before a delivery if still stale).
//! - Table and PBA accept any access size; the PBA is read-only; the vector control word has
//!   only bit 0 writable.

use std::sync::Arc;

/// PCI capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;

/// An MSI message: what the device writes, and where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (low 32 bits meaningful on x86, high kept for completeness).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Where MSI-X messages go. Implemented with KVM irqfds in [`super::kvm_msi`], and by fakes in
/// tests.
pub trait MsiInterruptSink: Send + Sync {
    /// The message of `vector` changed (called before its next delivery).
    fn update_route(&self, vector: u16, msg: MsiMessage);
    /// Delivers `vector` with the message last passed to `update_route`.
    fn trigger(&self, vector: u16);
}

/// What [`Msix::trigger`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiDelivery {
    /// The message was sent.
    Sent,
    /// The vector (or function) is masked: its pending bit is set.
    Pending,
    /// MSI-X is disabled or the vector does not exist: nothing happened.
    Dropped,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.ctrl & 1 != 0
    }
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_lo) | (u64::from(self.addr_hi) << 32),
            data: self.data,
        }
    }
    fn dword(&self, i: usize) -> u32 {
        [self.addr_lo, self.addr_hi, self.data, self.ctrl][i & 3]
    }
}

/// MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    /// The message each vector's route was last set to.
    routed: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    /// Masking is done by whoever owns the vectors' eventfds (a vfio-user client): every
    /// trigger goes to the sink.
    passthrough: bool,
    sink: Arc<dyn MsiInterruptSink>,
}

impl Msix {
    /// `num_vectors` (1..=2048) vectors, all masked, MSI-X disabled.
    pub fn new(num_vectors: u16, sink: Arc<dyn MsiInterruptSink>) -> Self {
        let n = usize::from(num_vectors.clamp(1, 2048));
        Self {
            entries: vec![
                Entry {
                    ctrl: 1,
                    ..Entry::default()
                };
                n
            ],
            pba: vec![0; n.div_ceil(64)],
            routed: vec![None; n],
            enabled: false,
            function_masked: false,
            passthrough: false,
            sink,
        }
    }

    /// Hands masking to the sink's owner: as a device behind VFIO or vfio-user, whose client
    /// emulates the table, enable bit and PBA and switches the vector's eventfd itself.
    pub fn set_passthrough(&mut self) {
        self.passthrough = true;
    }

    /// Vector `v` would be sent now (MSI-X on, function and vector unmasked).
    pub fn deliverable(&self, v: u16) -> bool {
        self.can_send(usize::from(v))
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size in bytes of the table.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size in bytes of the PBA (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// The capability body after the ID/next bytes (message control, table offset/BIR, PBA
    /// offset/BIR) and its guest-writable mask, for [`super::PciConfig::add_capability`].
    /// Offsets must be 8-byte aligned.
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> ([u8; 10], [u8; 2]) {
        let ctrl = (self.num_vectors() - 1) & 0x7ff;
        let mut b = [0u8; 10];
        b[0..2].copy_from_slice(&ctrl.to_le_bytes());
        b[2..6].copy_from_slice(&((table_offset & !7) | u32::from(table_bar & 7)).to_le_bytes());
        b[6..10].copy_from_slice(&((pba_offset & !7) | u32::from(pba_bar & 7)).to_le_bytes());
        (
            b,
            (MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK).to_le_bytes(),
        )
    }

    /// MSI-X is enabled in the capability.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The function mask bit is set.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Vector `v` is masked by its own mask bit (absent vectors count as masked).
    pub fn vector_masked(&self, v: u16) -> bool {
        self.entries.get(usize::from(v)).is_none_or(Entry::masked)
    }

    /// Vector `v`'s pending bit.
    pub fn pending(&self, v: u16) -> bool {
        let v = usize::from(v);
        self.pba
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// The message programmed in entry `v`.
    pub fn message(&self, v: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(v)).map(Entry::message)
    }

    /// Applies the message control word from configuration space (enable, function mask).
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & MSIX_CTRL_ENABLE != 0;
        self.function_masked = ctrl & MSIX_CTRL_FUNCTION_MASK != 0;
        self.deliver_unmasked_pending();
    }

    fn can_send(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && self.entries.get(v).is_some_and(|e| !e.masked())
    }

    fn push_route(&mut self, v: usize) {
        if let Some(e) = self.entries.get(v) {
            let msg = e.message();
            if self.routed[v] != Some(msg) {
                self.routed[v] = Some(msg);
                self.sink.update_route(v as u16, msg);
            }
        }
    }

    fn set_pending(&mut self, v: usize, on: bool) {
        if let Some(q) = self.pba.get_mut(v / 64) {
            if on {
                *q |= 1 << (v % 64);
            } else {
                *q &= !(1 << (v % 64));
            }
        }
    }

    fn deliver_unmasked_pending(&mut self) {
        for v in 0..self.entries.len() {
            if self.can_send(v) {
                self.push_route(v);
                if self.pending(v as u16) {
                    self.set_pending(v, false);
                    self.sink.trigger(v as u16);
                }
            }
        }
    }

    /// Raises vector `v`.
    pub fn trigger(&mut self, v: u16) -> MsiDelivery {
        let i = usize::from(v);
        if self.passthrough && i < self.entries.len() {
            self.sink.trigger(v);
            return MsiDelivery::Sent;
        }
        if !self.enabled || i >= self.entries.len() {
            return MsiDelivery::Dropped;
        }
        if !self.can_send(i) {
            self.set_pending(i, true);
            return MsiDelivery::Pending;
        }
        self.push_route(i);
        self.sink.trigger(v);
        MsiDelivery::Sent
    }

    /// Reads the table at byte `offset` (any size; outside the table reads 0).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (k, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(k as u64);
            let (v, dw, sh) = ((o / 16) as usize, ((o % 16) / 4) as usize, (o % 4) * 8);
            *b = self.entries.get(v).map_or(0, |e| (e.dword(dw) >> sh) as u8);
        }
    }

    /// Writes the table at byte `offset` (any size; only vector-control bit 0 is writable in the
    /// control dword).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (k, b) in data.iter().enumerate() {
            let o = offset.saturating_add(k as u64);
            let (v, dw, sh) = ((o / 16) as usize, ((o % 16) / 4) as usize, (o % 4) * 8);
            let Some(e) = self.entries.get_mut(v) else {
                continue;
            };
            let field = match dw {
                0 => &mut e.addr_lo,
                1 => &mut e.addr_hi,
                2 => &mut e.data,
                _ => &mut e.ctrl,
            };
            *field = (*field & !(0xff << sh)) | (u32::from(*b) << sh);
            if dw == 3 {
                e.ctrl &= 1;
            }
            if touched.last() != Some(&v) {
                touched.push(v);
            }
        }
        for v in touched {
            if self.can_send(v) {
                // Unmasked (or rewritten while unmasked): route first, then deliver pending.
                self.push_route(v);
                if self.pending(v as u16) {
                    self.set_pending(v, false);
                    self.sink.trigger(v as u16);
                }
            }
        }
    }

    /// Reads the PBA at byte `offset` (any size; outside reads 0).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (k, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(k as u64);
            *b = self
                .pba
                .get((o / 8) as usize)
                .map_or(0, |q| (q >> ((o % 8) * 8)) as u8);
        }
    }

    /// Masks every vector and clears pending bits (device-level MSI-X reset; not used by a DSA
    /// RESET_DEVICE, which leaves the table alone: docs/dsa-device-model.md §2.19).
    pub fn reset(&mut self) {
        for e in &mut self.entries {
            *e = Entry {
                ctrl: 1,
                ..Entry::default()
            };
        }
        self.pba.iter_mut().for_each(|q| *q = 0);
        self.routed.iter_mut().for_each(|r| *r = None);
        self.enabled = false;
        self.function_masked = false;
    }
}

/// A sink that records everything: for unit tests of devices that use MSI-X.
#[derive(Default)]
pub struct RecordingSink {
    /// Route updates and triggers in order.
    pub events: std::sync::Mutex<Vec<SinkEvent>>,
}

/// One call seen by [`RecordingSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkEvent {
    /// `update_route(vector, msg)`.
    Route(u16, MsiMessage),
    /// `trigger(vector)`.
    Trigger(u16),
}

impl RecordingSink {
    /// The vectors triggered so far, in order.
    pub fn triggered(&self) -> Vec<u16> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|e| match e {
                SinkEvent::Trigger(v) => Some(*v),
                SinkEvent::Route(..) => None,
            })
            .collect()
    }

    /// Forgets the recorded events.
    pub fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl MsiInterruptSink for RecordingSink {
    fn update_route(&self, vector: u16, msg: MsiMessage) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SinkEvent::Route(vector, msg));
    }
    fn trigger(&self, vector: u16) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SinkEvent::Trigger(vector));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(n: u16) -> (Msix, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::default());
        (Msix::new(n, sink.clone()), sink)
    }

    fn program(m: &mut Msix, v: u64, addr: u32, data: u32) {
        m.table_write(v * 16, &addr.to_le_bytes());
        m.table_write(v * 16 + 4, &0u32.to_le_bytes());
        m.table_write(v * 16 + 8, &data.to_le_bytes());
    }

    #[test]
    fn capability_layout() {
        let (m, _) = setup(9);
        let (body, wmask) = m.capability(0, 0x2000, 0, 0x3000);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 8);
        assert_eq!(
            u32::from_le_bytes([body[2], body[3], body[4], body[5]]),
            0x2000
        );
        assert_eq!(
            u32::from_le_bytes([body[6], body[7], body[8], body[9]]),
            0x3000
        );
        assert_eq!(wmask, [0, 0xc0]);
        assert_eq!(m.table_size(), 144);
        assert_eq!(m.pba_size(), 8);
    }

    #[test]
    fn disabled_drops_masked_pends_unmask_fires() {
        let (mut m, sink) = setup(3);
        assert_eq!(m.trigger(1), MsiDelivery::Dropped);
        m.set_control(MSIX_CTRL_ENABLE);
        program(&mut m, 1, 0xfee0_0000, 0x41);
        // Still masked (reset state): pending.
        assert_eq!(m.trigger(1), MsiDelivery::Pending);
        assert!(m.pending(1));
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        assert!(sink.triggered().is_empty());
        // Unmask: route, then the pending vector fires.
        m.table_write(16 + 12, &0u32.to_le_bytes());
        assert!(!m.pending(1));
        let ev = sink.events.lock().unwrap().clone();
        assert_eq!(
            ev,
            vec![
                SinkEvent::Route(
                    1,
                    MsiMessage {
                        address: 0xfee0_0000,
                        data: 0x41
                    }
                ),
                SinkEvent::Trigger(1)
            ]
        );
        assert_eq!(m.trigger(1), MsiDelivery::Sent);
        assert_eq!(sink.triggered(), vec![1, 1]);
        // Out of range vector.
        assert_eq!(m.trigger(3), MsiDelivery::Dropped);
    }

    #[test]
    fn function_mask() {
        let (mut m, sink) = setup(2);
        m.set_control(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
        program(&mut m, 0, 0xfee0_0000, 0x30);
        m.table_write(12, &[0]);
        assert_eq!(m.trigger(0), MsiDelivery::Pending);
        m.set_control(MSIX_CTRL_ENABLE);
        assert_eq!(sink.triggered(), vec![0]);
        assert!(!m.pending(0));
    }

    #[test]
    fn rewrite_updates_route() {
        let (mut m, sink) = setup(2);
        m.set_control(MSIX_CTRL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 0x30);
        m.table_write(12, &0u32.to_le_bytes());
        m.trigger(0);
        // Rewrite data while unmasked (64-bit write covering data + ctrl).
        m.table_write(8, &0x31u64.to_le_bytes());
        m.trigger(0);
        let routes: Vec<_> = sink
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| {
                if let SinkEvent::Route(_, msg) = e {
                    Some(msg.data)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(routes, vec![0x30, 0x31]);
        let mut b = [0u8; 16];
        m.table_read(0, &mut b);
        assert_eq!(&b[8..16], &[0x31, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn control_reserved_bits_and_pba_read_only() {
        let (mut m, _) = setup(1);
        m.table_write(12, &0xffff_fffeu32.to_le_bytes());
        let mut b = [0u8; 4];
        m.table_read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        m.table_write(0x1000, &[1; 8]);
        m.table_read(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 4]);
        m.reset();
        assert!(m.vector_masked(0));
    }
}
