//! The software engine on worker threads: one thread per DSA engine, so that a portal write in
//! a vCPU's exit only validates and queues, and copies run beside the guest as on hardware
//! (docs/dsa-device-model.md §17).
//!
//! - [`WorkerBackend`] is the [`DsaBackend`]: `submit` queues the descriptor on its WQ
//!   ([`sched::Sched`]) and wakes one idle engine of the WQ's group; it never executes.
//! - Each worker takes a descriptor, executes it with no lock held (the engine writes the
//!   completion record itself), records the outcome, and then calls the reaper the owner set
//!   ([`PoolHandle::set_reaper`]): for the in-process device it locks the device and runs
//!   [`DsaDevice::reap`], which counts the completion, reports SWERR and sends the interrupt.
//! - Lock order: device, then the pool's state. A worker holds neither while it executes, and
//!   releases the pool's state before it takes the device, so a vCPU (or the API) holding the
//!   device never waits for a copy, and a worker never waits while holding anything a vCPU
//!   needs. Commands that must wait for work (drains, aborts, disables, resets) stay pending in
//!   CMDSTS (active) and finish in the reap after the last descriptor before them
//!   (`command.rs`), so no one blocks on them either.

pub mod sched;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;

use super::backend::{DmaMemory, DsaBackend, Mirror, SoftwareBackend, Submitted};
use super::descriptor::{Descriptor, DESC_SIZE};
use super::engine::{self, EngineLimits, Outcome};
use super::{DsaConfig, DsaDevice, DsaError};
use crate::pci::msix::MsiInterruptSink;
use sched::Sched;

/// Called by a worker after each descriptor it finished, with no lock held.
pub type Reaper = Box<dyn Fn() + Send + Sync>;
/// Run first in every worker thread (the VMM installs its seccomp filter there); `false`: the
/// thread ends at once and executes nothing.
pub type ThreadInit = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long an engine that ran out of work watches for more before it sleeps, in spin-loop
/// hints (a few microseconds): a guest streaming descriptors then hands each one over without
/// a futex wake-up per descriptor.
const SPIN_BEFORE_SLEEP: u32 = 200;

struct State {
    sched: Sched,
    /// Finished descriptors not yet taken by the front end, in completion order.
    done: Vec<(usize, Outcome)>,
    /// Descriptors each engine executed.
    executed: Vec<u64>,
    /// Engines waiting for work.
    idle: Vec<bool>,
    /// Workers take nothing while set (tests: observe queued work).
    held: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// One per engine: work for it, or shutdown.
    wake: Vec<Condvar>,
    mem: Arc<dyn DmaMemory>,
    reaper: OnceLock<Reaper>,
    /// Descriptors queued and not yet taken by an engine (read without the lock while an
    /// engine spins).
    queued: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes one idle engine that serves `wq`, if any (a busy one picks the work up itself).
    fn wake_for(&self, st: &mut State, wq: usize) {
        let engine = (0..st.idle.len())
            .find(|&e| st.idle.get(e).copied().unwrap_or(false) && st.sched.engine_takes(e, wq));
        if let Some(e) = engine {
            if let (Some(flag), Some(cv)) = (st.idle.get_mut(e), self.wake.get(e)) {
                *flag = false;
                cv.notify_one();
            }
        }
    }

    fn worker(&self, engine: usize) {
        let mut st = self.lock();
        let mut spun = false;
        loop {
            if st.shutdown {
                return;
            }
            let job = if st.held { None } else { st.sched.pick(engine) };
            if job.is_some() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            let Some(job) = job else {
                if !st.held && !spun {
                    // Watch for a moment before sleeping (the submitter wakes only idle
                    // engines, so one that spins costs it nothing).
                    spun = true;
                    drop(st);
                    for _ in 0..SPIN_BEFORE_SLEEP {
                        if self.queued.load(Ordering::Relaxed) > 0 {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    st = self.lock();
                    continue;
                }
                spun = false;
                if let Some(flag) = st.idle.get_mut(engine) {
                    *flag = true;
                }
                st = match self.wake.get(engine) {
                    Some(cv) => cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                    None => return,
                };
                if let Some(flag) = st.idle.get_mut(engine) {
                    *flag = false;
                }
                continue;
            };
            spun = false;
            drop(st);
            let out = engine::execute(
                &*self.mem.snapshot(),
                &Descriptor::parse(&job.desc),
                &job.limits,
            );
            st = self.lock();
            if st.sched.finish(job.wq, job.seq) {
                // A DRAIN just became ready: this engine takes it or the next job; an idle one
                // may take the other.
                self.wake_for(&mut st, job.wq);
            }
            if let Some(n) = st.executed.get_mut(engine) {
                *n += 1;
            }
            st.done.push((job.wq, out));
            drop(st);
            if let Some(reap) = self.reaper.get() {
                reap();
            }
            st = self.lock();
        }
    }
}

/// The owner's handle on a [`WorkerBackend`] inside a device.
#[derive(Clone)]
pub struct PoolHandle(Arc<Shared>);

impl PoolHandle {
    /// Sets what a worker calls after each finished descriptor (once; later calls are ignored).
    pub fn set_reaper(&self, reaper: Reaper) {
        let _ = self.0.reaper.set(reaper);
    }

    /// Holds the workers (they take no new descriptor) or lets them go. For tests that need
    /// to see work queued and not yet executed.
    pub fn hold(&self, held: bool) {
        let mut st = self.0.lock();
        st.held = held;
        if !held {
            for (flag, cv) in st.idle.iter_mut().zip(&self.0.wake) {
                *flag = false;
                cv.notify_one();
            }
        }
    }

    /// Whether any descriptor is queued or running.
    pub fn busy(&self) -> bool {
        self.0.lock().sched.busy()
    }
}

/// The software engine on one worker thread per engine.
pub struct WorkerBackend {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerBackend {
    /// Starts `engines` workers over `mem` for a device of `wqs` WQs; `init` runs first in
    /// each.
    pub fn spawn(
        engines: usize,
        wqs: usize,
        mem: Arc<dyn DmaMemory>,
        init: ThreadInit,
    ) -> std::io::Result<(Self, PoolHandle)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sched: Sched::new(wqs, engines),
                done: Vec::new(),
                executed: vec![0; engines],
                idle: vec![false; engines],
                held: false,
                shutdown: false,
            }),
            wake: (0..engines).map(|_| Condvar::new()).collect(),
            mem,
            reaper: OnceLock::new(),
            queued: AtomicUsize::new(0),
        });
        let mut backend = Self {
            shared: shared.clone(),
            threads: Vec::with_capacity(engines),
        };
        for e in 0..engines {
            let s = shared.clone();
            let init = init.clone();
            let t = std::thread::Builder::new()
                .name(format!("dsa-engine{e}"))
                .spawn(move || {
                    if init() {
                        s.worker(e);
                    }
                })?;
            backend.threads.push(t);
        }
        Ok((backend, PoolHandle(shared)))
    }
}

impl Drop for WorkerBackend {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        for cv in &self.shared.wake {
            cv.notify_all();
        }
        // The device may be dropped by a worker's reaper (it held the last reference): that
        // worker sees the shutdown when it returns; it cannot join itself.
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl DsaBackend for WorkerBackend {
    fn name(&self) -> &'static str {
        "software"
    }

    fn opcodes(&self) -> Vec<u8> {
        engine::SUPPORTED_OPCODES.to_vec()
    }

    fn mirror(&mut self, cmd: Mirror<'_>) -> u8 {
        if let Mirror::EnableDevice(t) | Mirror::EnableWq(_, t) = cmd {
            self.shared.lock().sched.configure(t);
        }
        0
    }

    fn submit(&mut self, wq: usize, desc: &[u8; DESC_SIZE], limits: &EngineLimits) -> Submitted {
        let mut st = self.shared.lock();
        if st.sched.push(wq, *desc, *limits).is_none() {
            // The front end checked the WQ; a device with more WQs than queues is a bug.
            drop(st);
            return Submitted::Done(self.reject(wq, desc, super::descriptor::status::HW_ERR1));
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        self.shared.wake_for(&mut st, wq);
        Submitted::Queued
    }

    fn reject(&mut self, wq: usize, desc: &[u8; DESC_SIZE], status: u8) -> Outcome {
        SoftwareBackend::with_dma(self.shared.mem.clone()).reject(wq, desc, status)
    }

    fn occupancy(&self, wq: usize) -> u16 {
        let n = self.shared.lock().sched.occupancy(wq);
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    fn next_seq(&self, wq: usize) -> u64 {
        self.shared.lock().sched.next_seq(wq)
    }

    fn oldest_outstanding(&self, wq: usize) -> Option<u64> {
        self.shared.lock().sched.oldest_outstanding(wq)
    }

    fn completed(&mut self) -> Vec<(usize, Outcome)> {
        std::mem::take(&mut self.shared.lock().done)
    }

    /// Returns what has finished on `wqs` without waiting: the front end keeps a draining
    /// command pending until [`DsaBackend::oldest_outstanding`] has passed it.
    fn drain(&mut self, wqs: &[usize]) -> Vec<(usize, Outcome)> {
        let mut st = self.shared.lock();
        let (mine, rest) = std::mem::take(&mut st.done)
            .into_iter()
            .partition(|(w, _)| wqs.contains(w));
        st.done = rest;
        mine
    }

    fn abort(&mut self, wqs: &[usize]) {
        let n = self.shared.lock().sched.cancel(wqs);
        self.shared.queued.fetch_sub(n, Ordering::Relaxed);
        if n > 0 {
            tracing::debug!("DSA abort: {n} queued descriptor(s) dropped");
        }
    }

    fn reset(&mut self) {
        let mut st = self.shared.lock();
        st.sched.reset();
        st.done.clear();
        self.shared.queued.store(0, Ordering::Relaxed);
    }

    fn engine_descriptors(&self) -> Vec<u64> {
        self.shared.lock().executed.clone()
    }
}

impl DsaDevice {
    /// A vDSA whose software engine runs on `cfg.engines` worker threads over `mem`, interrupts
    /// to `sink`; `init` runs first in each worker. The device reaps its completions from the
    /// workers through a weak reference, so dropping the last `Arc` stops them. The
    /// [`PoolHandle`] is for observing the workers (tests); the device works without it.
    pub fn with_engine_workers(
        cfg: DsaConfig,
        mem: Arc<GuestMemoryMmap<()>>,
        sink: Arc<dyn MsiInterruptSink>,
        init: ThreadInit,
    ) -> Result<(Arc<Mutex<DsaDevice>>, PoolHandle), DsaError> {
        cfg.validate()?;
        let (backend, pool) = WorkerBackend::spawn(
            usize::from(cfg.engines),
            usize::from(cfg.wqs),
            Arc::new(super::backend::FixedMemory(mem)),
            init,
        )
        .map_err(DsaError::Thread)?;
        let dev = Arc::new(Mutex::new(DsaDevice::with_backend(
            cfg,
            Box::new(backend),
            sink,
        )?));
        let weak: Weak<Mutex<DsaDevice>> = Arc::downgrade(&dev);
        pool.set_reaper(Box::new(move || {
            if let Some(d) = weak.upgrade() {
                d.lock().unwrap_or_else(PoisonError::into_inner).reap();
            }
        }));
        Ok((dev, pool))
    }
}

#[cfg(test)]
mod tests;
