//! Which engine runs which descriptor next: the WQ queues of the engine workers
//! (docs/dsa-device-model.md §17).
//!
//! Pure bookkeeping, no threads: [`Sched`] holds one FIFO per WQ, the descriptors each WQ has
//! on an engine now, and the group map GRPCFG gave at ENABLE_DEVICE / ENABLE_WQ. An engine
//! takes work only from the WQs of its own group. Among those it serves, WQs share the engines
//! in proportion to their WQCFG priority (1..=15): each pick spends one credit of the chosen WQ,
//! every WQ's credits are refilled to its priority when no WQ that has work has credits left,
//! and ties go round-robin. A DRAIN descriptor at the head of a WQ waits until every earlier
//! descriptor of that WQ has finished on whatever engine ran it; nothing behind it overtakes
//! it. A BATCH runs on one engine, its members in order, so its fences hold.

use std::collections::VecDeque;

use super::super::config::Tables;
use super::super::descriptor::{opcode, DESC_SIZE};
use super::super::engine::EngineLimits;

/// A descriptor accepted on a WQ, waiting for an engine or running on one.
#[derive(Clone, Debug)]
pub struct Job {
    /// The WQ it was submitted to.
    pub wq: usize,
    /// Its number on that WQ (0, 1, 2, ... in submission order).
    pub seq: u64,
    /// The 64 bytes the guest wrote.
    pub desc: [u8; DESC_SIZE],
    /// The WQ's limits at submission.
    pub limits: EngineLimits,
}

impl Job {
    fn is_drain(&self) -> bool {
        // Opcode: byte 7 (dword 1 bits 31:24, §6.1).
        self.desc.get(7).copied() == Some(opcode::DRAIN)
    }
}

#[derive(Clone, Debug, Default)]
struct WqQueue {
    queued: VecDeque<Job>,
    /// Sequence numbers of this WQ's descriptors on an engine now.
    running: Vec<u64>,
    next_seq: u64,
    group: Option<usize>,
    priority: u8,
    credits: u32,
}

impl WqQueue {
    /// The head can go to an engine now (a DRAIN only once nothing before it runs).
    fn ready(&self) -> bool {
        self.queued
            .front()
            .is_some_and(|j| !j.is_drain() || self.running.is_empty())
    }
}

/// The engines' work queues.
#[derive(Clone, Debug)]
pub struct Sched {
    wqs: Vec<WqQueue>,
    /// The group each engine belongs to (GRPENGCFG).
    engine_group: Vec<Option<usize>>,
    /// Where the round-robin among equal credits starts next.
    next_start: usize,
}

impl Sched {
    /// Queues for `wqs` WQs and `engines` engines, no groups yet.
    pub fn new(wqs: usize, engines: usize) -> Self {
        Self {
            wqs: vec![WqQueue::default(); wqs],
            engine_group: vec![None; engines],
            next_start: 0,
        }
    }

    /// Takes the group map and WQ priorities of the guest's tables.
    pub fn configure(&mut self, t: &Tables) {
        for (e, g) in self.engine_group.iter_mut().enumerate() {
            *g = t.groups.iter().position(|g| g.engines & (1u64 << e) != 0);
        }
        for (i, q) in self.wqs.iter_mut().enumerate() {
            q.group = t.group_of_wq(i);
            q.priority = t.wqs.get(i).map_or(1, |w| w.priority().max(1));
            q.credits = q.credits.min(u32::from(q.priority));
        }
    }

    /// Whether `engine` takes work from `wq`: the WQ's group is the engine's, or no engine
    /// serves the WQ's group (ENABLE_DEVICE refuses such a configuration with 0x15; this keeps a
    /// descriptor from waiting forever if one slips through).
    fn serves(&self, engine: usize, wq: &WqQueue) -> bool {
        let mine = self.engine_group.get(engine).copied().flatten();
        if mine.is_some() && wq.group == mine {
            return true;
        }
        !self
            .engine_group
            .iter()
            .any(|g| g.is_some() && *g == wq.group)
    }

    /// Whether `engine` takes work from `wq` (an idle engine to wake for it).
    pub fn engine_takes(&self, engine: usize, wq: usize) -> bool {
        self.wqs.get(wq).is_some_and(|q| self.serves(engine, q))
    }

    /// Queues a descriptor; returns its sequence number, or `None` for a WQ that does not exist.
    pub fn push(&mut self, wq: usize, desc: [u8; DESC_SIZE], limits: EngineLimits) -> Option<u64> {
        let q = self.wqs.get_mut(wq)?;
        let seq = q.next_seq;
        q.next_seq += 1;
        q.queued.push_back(Job {
            wq,
            seq,
            desc,
            limits,
        });
        Some(seq)
    }

    /// The next descriptor for `engine`, now marked running; `None` if it has nothing to do.
    pub fn pick(&mut self, engine: usize) -> Option<Job> {
        let n = self.wqs.len();
        let candidates: Vec<usize> = (0..n)
            .map(|i| (self.next_start + i) % n)
            .filter(|&i| {
                self.wqs
                    .get(i)
                    .is_some_and(|q| q.ready() && self.serves(engine, q))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        if candidates
            .iter()
            .all(|&i| self.wqs.get(i).is_none_or(|q| q.credits == 0))
        {
            // A new round among the WQs this engine serves (not another group's).
            for &i in &candidates {
                if let Some(q) = self.wqs.get_mut(i) {
                    q.credits = u32::from(q.priority.max(1));
                }
            }
        }
        // The first candidate (in round-robin order) with the most credits.
        let mut best = *candidates.first()?;
        for &i in &candidates {
            let (Some(a), Some(b)) = (self.wqs.get(i), self.wqs.get(best)) else {
                continue;
            };
            if a.credits > b.credits {
                best = i;
            }
        }
        self.next_start = (best + 1) % n;
        let q = self.wqs.get_mut(best)?;
        q.credits = q.credits.saturating_sub(1);
        let job = q.queued.pop_front()?;
        q.running.push(job.seq);
        Some(job)
    }

    /// `seq` of `wq` left its engine. Returns whether that may let a waiting DRAIN go.
    pub fn finish(&mut self, wq: usize, seq: u64) -> bool {
        let Some(q) = self.wqs.get_mut(wq) else {
            return false;
        };
        q.running.retain(|s| *s != seq);
        q.running.is_empty() && q.queued.front().is_some_and(Job::is_drain)
    }

    /// Drops the queued (not running) descriptors of `wqs`; returns how many.
    pub fn cancel(&mut self, wqs: &[usize]) -> usize {
        let mut n = 0;
        for &w in wqs {
            if let Some(q) = self.wqs.get_mut(w) {
                n += std::mem::take(&mut q.queued).len();
            }
        }
        n
    }

    /// Drops every queued descriptor (RESET_DEVICE; nothing runs). The numbering goes on.
    pub fn reset(&mut self) {
        for q in &mut self.wqs {
            q.queued.clear();
        }
    }

    /// Descriptors of `wq` queued or running.
    pub fn occupancy(&self, wq: usize) -> usize {
        self.wqs
            .get(wq)
            .map_or(0, |q| q.queued.len() + q.running.len())
    }

    /// The sequence number the next descriptor of `wq` gets.
    pub fn next_seq(&self, wq: usize) -> u64 {
        self.wqs.get(wq).map_or(0, |q| q.next_seq)
    }

    /// The oldest descriptor of `wq` not finished yet (queued or running).
    pub fn oldest_outstanding(&self, wq: usize) -> Option<u64> {
        let q = self.wqs.get(wq)?;
        let queued = q.queued.front().map(|j| j.seq);
        let running = q.running.iter().copied().min();
        match (queued, running) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether any descriptor waits or runs.
    pub fn busy(&self) -> bool {
        self.wqs
            .iter()
            .any(|q| !q.queued.is_empty() || !q.running.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(op: u8) -> [u8; DESC_SIZE] {
        let mut d = [0u8; DESC_SIZE];
        d[7] = op;
        d
    }

    /// Two groups: WQs 0 and 1 with engines 0 and 1 in group 0, WQ 2 with engine 2 in group 1.
    fn tables(prio: [u32; 3]) -> Tables {
        let mut t = Tables::new(2, 3, 3);
        t.groups[0].wqs[0] = 0b011;
        t.groups[0].engines = 0b011;
        t.groups[1].wqs[0] = 0b100;
        t.groups[1].engines = 0b100;
        for (w, p) in t.wqs.iter_mut().zip(prio) {
            w.cfg[0] = 16;
            w.cfg[2] = 1 | (p << 4);
        }
        t
    }

    #[test]
    fn engines_take_only_their_groups_wqs() {
        let mut s = Sched::new(3, 3);
        s.configure(&tables([1, 1, 1]));
        s.push(2, desc(opcode::NOOP), EngineLimits::default());
        assert!(s.pick(0).is_none());
        assert!(s.pick(1).is_none());
        let j = s.pick(2).expect("engine 2 serves WQ 2");
        assert_eq!((j.wq, j.seq), (2, 0));
        assert_eq!(s.occupancy(2), 1);
        s.finish(2, 0);
        assert_eq!(s.occupancy(2), 0);
        assert!(!s.busy());
    }

    #[test]
    fn priorities_share_engines_in_proportion() {
        let mut s = Sched::new(3, 3);
        s.configure(&tables([3, 1, 1]));
        for _ in 0..40 {
            s.push(0, desc(opcode::NOOP), EngineLimits::default());
            s.push(1, desc(opcode::NOOP), EngineLimits::default());
        }
        let mut taken = [0usize; 2];
        for _ in 0..40 {
            let j = s.pick(0).expect("work");
            taken[j.wq] += 1;
            s.finish(j.wq, j.seq);
        }
        assert_eq!(taken, [30, 10], "priority 3 vs 1");
    }

    #[test]
    fn a_drain_waits_for_everything_before_it() {
        let mut s = Sched::new(3, 3);
        s.configure(&tables([1, 1, 1]));
        s.push(0, desc(opcode::MEMMOVE), EngineLimits::default());
        s.push(0, desc(opcode::DRAIN), EngineLimits::default());
        s.push(0, desc(opcode::NOOP), EngineLimits::default());
        let first = s.pick(0).expect("memmove");
        assert_eq!(first.seq, 0);
        assert!(
            s.pick(1).is_none(),
            "the drain waits, the noop stays behind it"
        );
        assert_eq!(s.oldest_outstanding(0), Some(0));
        assert!(s.finish(0, 0), "the drain may go now");
        assert_eq!(s.pick(1).map(|j| j.seq), Some(1));
        assert_eq!(s.pick(0).map(|j| j.seq), Some(2));
        assert_eq!(s.oldest_outstanding(0), Some(1));
    }

    #[test]
    fn cancel_drops_only_queued_work() {
        let mut s = Sched::new(3, 3);
        s.configure(&tables([1, 1, 1]));
        for _ in 0..3 {
            s.push(0, desc(opcode::NOOP), EngineLimits::default());
        }
        let running = s.pick(0).expect("work");
        assert_eq!(s.cancel(&[0, 1]), 2);
        assert_eq!(s.occupancy(0), 1);
        assert_eq!(s.oldest_outstanding(0), Some(running.seq));
        assert_eq!(s.next_seq(0), 3);
        s.finish(0, running.seq);
        assert_eq!(s.oldest_outstanding(0), None);
    }

    #[test]
    fn a_wq_no_engine_serves_is_not_stranded() {
        let mut s = Sched::new(3, 3);
        s.configure(&Tables::new(2, 3, 3));
        s.push(1, desc(opcode::NOOP), EngineLimits::default());
        assert_eq!(s.pick(2).map(|j| j.wq), Some(1));
    }

    #[test]
    fn a_missing_wq_is_refused() {
        let mut s = Sched::new(1, 1);
        assert!(s
            .push(5, desc(opcode::NOOP), EngineLimits::default())
            .is_none());
        assert!(s.pick(7).is_none());
        assert!(!s.finish(9, 0));
    }
}
