//! The engine workers through the device front end, as a vCPU and the guest driver use it:
//! the portal write only queues, completions and interrupts come from the workers, commands
//! that wait for work stay active until it is done, and many submitters, engines and commands
//! at once lose nothing.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::regs::*;
use super::super::{DsaConfig, DsaDevice};
use super::PoolHandle;
use crate::pci::msix::RecordingSink;
use crate::pci::PciDevice;

const RAM: u64 = 4 << 20;
const CR: u64 = 0x8000;
const SRC: u64 = 0x10_0000;
const DST: u64 = 0x20_0000;

/// Command codes with int_req (section 4.2).
const ENABLE_DEVICE: u32 = 0x8010_0000;
const ENABLE_WQ: u32 = 0x8060_0000;
const DISABLE_WQ: u32 = 0x8070_0000;
const DRAIN_WQ: u32 = 0x8080_0000;
const ABORT_WQ: u32 = 0x8090_0000;
const DRAIN_ALL: u32 = 0x8030_0000;
const RESET_DEVICE: u32 = 0x0050_0000;

struct W {
    dev: Arc<Mutex<DsaDevice>>,
    pool: PoolHandle,
    sink: Arc<RecordingSink>,
    mem: Arc<GuestMemoryMmap<()>>,
}

impl W {
    /// A device with `engines` engines in group 0 serving WQs 0..`wqs`, enabled, MSI-X up.
    fn up(wqs: u8, engines: u8) -> Self {
        let sink = Arc::new(RecordingSink::default());
        let mem =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
        let cfg = DsaConfig {
            wqs,
            engines,
            ..DsaConfig::default()
        };
        let (dev, pool) =
            DsaDevice::with_engine_workers(cfg, mem.clone(), sink.clone(), Arc::new(|| true))
                .unwrap();
        let w = Self {
            dev,
            pool,
            sink,
            mem,
        };
        {
            let mut d = w.d();
            d.config_write(1, 0, &[0x06, 0x00]);
            let cap = d.msix_cap;
            d.config_write(cap / 4, 2, &0x8000u16.to_le_bytes());
            for v in 0..u64::from(d.msix.num_vectors()) {
                w32(&mut d, MSIX_TABLE_OFFSET + 16 * v, 0xfee0_0000);
                w32(&mut d, MSIX_TABLE_OFFSET + 16 * v + 8, 0x20 + v as u32);
                w32(&mut d, MSIX_TABLE_OFFSET + 16 * v + 12, 0);
            }
            for q in 0..u64::from(wqs) {
                for (i, v) in [0x10u32, 0, 0xa1, 0xb5, 0, 0, 0, 0].iter().enumerate() {
                    w32(&mut d, WQCFG_OFFSET + 32 * q + 4 * i as u64, *v);
                }
            }
            let base = GRPCFG_OFFSET;
            w64(&mut d, base, (1u64 << wqs) - 1);
            w64(&mut d, base + 0x20, (1u64 << engines) - 1);
            w64(&mut d, base + 0x28, 0x0400_0009);
            assert_eq!(cmd(&mut d, ENABLE_DEVICE), 0);
            for q in 0..u32::from(wqs) {
                assert_eq!(cmd(&mut d, ENABLE_WQ | q), 0);
            }
            w32(&mut d, INTCAUSE, INTCAUSE_CMD);
        }
        w.sink.clear();
        w
    }

    fn d(&self) -> MutexGuard<'_, DsaDevice> {
        self.dev.lock().unwrap()
    }

    fn memmove(&self, cr: u64, len: u32, rci: bool) -> [u8; 64] {
        // CRAV (bit 2) | RCR (3), RCI (4) as asked; opcode 3.
        let flags: u32 = 0xc | if rci { 0x10 } else { 0 };
        let mut d = [0u8; 64];
        d[4..8].copy_from_slice(&(flags | (3 << 24)).to_le_bytes());
        d[8..16].copy_from_slice(&cr.to_le_bytes());
        d[16..24].copy_from_slice(&SRC.to_le_bytes());
        d[24..32].copy_from_slice(&DST.to_le_bytes());
        d[32..36].copy_from_slice(&len.to_le_bytes());
        d[36..38].copy_from_slice(&1u16.to_le_bytes());
        d
    }

    fn submit(&self, wq: u64, d: &[u8; 64]) {
        self.d().bar_write(2, wq * 0x4000, d);
    }

    fn status(&self, cr: u64) -> u8 {
        self.mem.read_obj::<u8>(GuestAddress(cr)).unwrap()
    }

    /// Waits (up to 10 s) for `f` to hold.
    fn wait(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn w32(d: &mut DsaDevice, off: u64, v: u32) {
    d.bar_write(0, off, &v.to_le_bytes());
}

fn w64(d: &mut DsaDevice, off: u64, v: u64) {
    d.bar_write(0, off, &v.to_le_bytes());
}

fn r32(d: &mut DsaDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.bar_read(0, off, &mut b);
    u32::from_le_bytes(b)
}

fn cmd(d: &mut DsaDevice, v: u32) -> u32 {
    w32(d, CMD, v);
    r32(d, CMDSTS)
}

#[test]
fn the_portal_write_only_queues_and_a_worker_completes() {
    let w = W::up(1, 1);
    w.mem
        .write_slice(&[0x5a; 65536], GuestAddress(SRC))
        .unwrap();
    w.pool.hold(true);
    w.submit(0, &w.memmove(CR, 65536, true));
    // Back from the exit: nothing executed, nothing signalled, the WQ holds the descriptor.
    assert_eq!(w.status(CR), 0, "no completion record yet");
    assert!(w.sink.triggered().is_empty(), "no interrupt yet");
    {
        let d = w.d();
        assert_eq!(d.state().wqs[0].occupancy, 1);
        assert_eq!(d.stats().inline_descriptors, 0);
        assert_eq!(d.stats().descriptors, 0);
    }
    w.pool.hold(false);
    w.wait("the completion interrupt", |w| w.sink.triggered() == [1]);
    assert_eq!(w.status(CR), 1);
    let mut out = vec![0u8; 65536];
    w.mem.read_slice(&mut out, GuestAddress(DST)).unwrap();
    assert!(out.iter().all(|b| *b == 0x5a));
    let s = w.d().stats();
    assert_eq!(
        (s.descriptors, s.bytes, s.inline_descriptors),
        (1, 65536, 0)
    );
    assert_eq!(s.engine_descriptors, vec![1]);
    assert_eq!(w.d().state().wqs[0].occupancy, 0);
}

#[test]
fn drain_stays_active_until_the_work_before_it_is_done() {
    let w = W::up(1, 1);
    w.pool.hold(true);
    for i in 0..3 {
        w.submit(0, &w.memmove(CR + 32 * i, 4096, false));
    }
    let sts = cmd(&mut w.d(), DRAIN_WQ | 1);
    assert_eq!(sts, 1 << 31, "CMDSTS active while the drain waits");
    // A command written meanwhile is ignored; a descriptor after the drain is accepted.
    assert_eq!(cmd(&mut w.d(), ABORT_WQ | 1), 1 << 31);
    w.submit(0, &w.memmove(CR + 96, 4096, false));
    assert_eq!(w.d().stats().commands_while_active, 1);
    assert_eq!(r32(&mut w.d(), INTCAUSE), 0);
    w.pool.hold(false);
    w.wait("the drain", |w| r32(&mut w.d(), CMDSTS) == 0);
    assert_eq!(r32(&mut w.d(), INTCAUSE), INTCAUSE_CMD);
    assert_eq!(w.sink.triggered().first(), Some(&0));
    for i in 0..3 {
        assert_eq!(
            w.status(CR + 32 * i),
            1,
            "descriptor {i} done before the drain ended"
        );
    }
    w.wait("the last descriptor", |w| w.status(CR + 96) == 1);
    assert_eq!(
        w.d().stats().commands,
        2 + 1,
        "enable device, enable WQ, drain"
    );
}

#[test]
fn abort_drops_what_no_engine_has_taken() {
    let w = W::up(1, 1);
    w.pool.hold(true);
    for i in 0..4 {
        w.submit(0, &w.memmove(CR + 32 * i, 4096, true));
    }
    assert_eq!(w.d().state().wqs[0].occupancy, 4);
    // Nothing is on an engine: the abort ends at once.
    assert_eq!(cmd(&mut w.d(), ABORT_WQ | 1), 0);
    assert_eq!(w.d().state().wqs[0].occupancy, 0);
    w.pool.hold(false);
    std::thread::sleep(Duration::from_millis(20));
    assert!(!w.pool.busy());
    assert_eq!(w.d().stats().descriptors, 0);
    assert!(
        (0..4).all(|i| w.status(CR + 32 * i) == 0),
        "no records for aborted work"
    );
    assert!(
        w.sink.triggered().iter().all(|v| *v == 0),
        "only the command interrupt"
    );
}

#[test]
fn disable_refuses_new_work_while_it_drains() {
    let w = W::up(1, 1);
    w.pool.hold(true);
    w.submit(0, &w.memmove(CR, 4096, false));
    assert_eq!(cmd(&mut w.d(), DISABLE_WQ | 1), 1 << 31);
    w.submit(0, &w.memmove(CR + 32, 4096, false));
    assert_eq!(w.d().stats().dropped_portal_writes, 1);
    w.pool.hold(false);
    w.wait("the disable", |w| r32(&mut w.d(), CMDSTS) == 0);
    let d = w.d();
    assert_eq!(d.state().wqs[0].state, "disabled");
    assert_eq!(d.stats().descriptors, 1);
    drop(d);
    assert_eq!((w.status(CR), w.status(CR + 32)), (1, 0));
}

#[test]
fn a_polled_reset_waits_and_raises_nothing() {
    let w = W::up(2, 2);
    w.pool.hold(true);
    for i in 0..8 {
        w.submit(i % 2, &w.memmove(CR + 32 * i, 4096, true));
    }
    // Nothing on an engine: the queued work is dropped, the reset ends in the write.
    assert_eq!(cmd(&mut w.d(), RESET_DEVICE), 0);
    w.pool.hold(false);
    assert_eq!(r32(&mut w.d(), GENSTS) & 3, 0);
    assert!(w.sink.triggered().is_empty());
    assert_eq!(w.d().stats().descriptors, 0);
}

/// Four vCPU-like submitters on four WQs of one group with four engines, DRAIN_ALL commands
/// from a fifth thread meanwhile: every accepted descriptor completes exactly once with its
/// record and interrupt, occupancy never passes the WQ size, and the counters add up.
#[test]
fn many_submitters_engines_and_drains_lose_nothing() {
    const PER_WQ: u64 = 3000;
    let w = Arc::new(W::up(4, 4));
    w.mem.write_slice(&[7u8; 4096], GuestAddress(SRC)).unwrap();
    let submitters: Vec<_> = (0..4u64)
        .map(|q| {
            let w = w.clone();
            std::thread::spawn(move || {
                for i in 0..PER_WQ {
                    // One record slot per WQ and descriptor (32 bytes each).
                    let cr = 0x4_0000 + (q * PER_WQ + i) * 32;
                    let desc = w.memmove(cr, 64 + (i as u32 % 4000), i % 7 == 0);
                    // As the driver does: submit only with room in the dedicated WQ.
                    loop {
                        let mut d = w.d();
                        if d.state().wqs[q as usize].occupancy < 16 {
                            d.bar_write(2, q * 0x4000, &desc);
                            break;
                        }
                        drop(d);
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let drainer = {
        let w = w.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let mut d = w.d();
                if r32(&mut d, CMDSTS) & (1 << 31) == 0 {
                    w32(&mut d, CMD, DRAIN_ALL);
                }
                let occ = d.state().wqs.iter().map(|q| q.occupancy).max().unwrap_or(0);
                assert!(occ <= 16, "occupancy {occ} above the WQ size");
                drop(d);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    for t in submitters {
        t.join().unwrap();
    }
    drainer.join().unwrap();
    w.wait("all work", |w| {
        !w.pool.busy() && r32(&mut w.d(), CMDSTS) & (1 << 31) == 0
    });
    let s = w.d().stats();
    let offered = 4 * PER_WQ;
    let accepted = offered - s.dropped_portal_writes;
    assert_eq!(s.wq_full_drops, 0, "the submitters waited for room");
    assert_eq!(s.descriptors, accepted, "{s:?}");
    assert_eq!(s.records_written, accepted);
    assert_eq!(s.engine_descriptors.iter().sum::<u64>(), accepted);
    assert_eq!(s.inline_descriptors, 0);
    let records = (0..offered)
        .filter(|i| w.status(0x4_0000 + i * 32) == 1)
        .count() as u64;
    assert_eq!(records, accepted, "one record per accepted descriptor");
    let irqs = w.sink.triggered().iter().filter(|v| **v == 1).count() as u64;
    assert_eq!(irqs, s.completion_interrupts);
    assert!(w.d().state().wqs.iter().all(|q| q.occupancy == 0));
    println!(
        "workers stress: {accepted} of {offered} accepted, per engine {:?}, {} WQ-full drops",
        s.engine_descriptors, s.wq_full_drops
    );
}

#[test]
fn dropping_a_busy_device_stops_its_workers() {
    let w = W::up(2, 2);
    for i in 0..16 {
        w.submit(i % 2, &w.memmove(CR + 32 * i, 1 << 20, false));
    }
    let weak = Arc::downgrade(&w.dev);
    drop(w);
    // A worker may hold the device for a moment while it reaps.
    let end = Instant::now() + Duration::from_secs(10);
    while weak.upgrade().is_some() {
        assert!(Instant::now() < end, "the device outlived its owner");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_device_reset_replaces_a_waiting_command() {
    let w = W::up(1, 1);
    w.pool.hold(true);
    w.submit(0, &w.memmove(CR, 4096, false));
    assert_eq!(cmd(&mut w.d(), DRAIN_WQ | 1), 1 << 31);
    // The probe's reset, written without looking at CMDSTS: taken, the queued work dropped.
    assert_eq!(cmd(&mut w.d(), RESET_DEVICE), 0);
    assert_eq!(w.d().stats().commands_while_active, 0);
    w.pool.hold(false);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(w.d().stats().descriptors, 0);
    assert_eq!(w.status(CR), 0);
}

#[test]
fn bus_mastering_off_drops_work_no_engine_has_taken() {
    let w = W::up(1, 1);
    w.pool.hold(true);
    w.submit(0, &w.memmove(CR, 4096, true));
    w.submit(0, &w.memmove(CR + 32, 4096, true));
    // PCI command: memory space on, bus master off.
    w.d().config_write(1, 0, &[0x02, 0x00]);
    w.pool.hold(false);
    std::thread::sleep(Duration::from_millis(20));
    assert!(!w.pool.busy());
    assert_eq!(w.d().stats().descriptors, 0);
    assert_eq!((w.status(CR), w.status(CR + 32)), (0, 0));
    assert!(w.sink.triggered().is_empty());
}
