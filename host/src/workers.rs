//! Per-core workers (issue 26), the model of nginx's worker processes and
//! Pingora's no-steal runtimes: `runtime.worker_threads` N is N threads,
//! each running a current-thread tokio runtime of its own. Every listener
//! binds one `SO_REUSEPORT` socket per worker, so the kernel spreads
//! connections, and a connection lives its whole life on the worker that
//! accepted it: its upstream connections, HTTP/2 streams and timers too.
//!
//! Data a worker keeps for itself (upstream connection pools, warm policy
//! instances) sits in a [`PerWorker`], one slot per worker on a cache line
//! of its own, found by the worker's [`index`]. Code that runs on no
//! worker (the control runtime: admin, reloads, health checks; or a test's
//! own runtime) has index 0.
//!
//! Each worker keeps a [`HEARTBEAT`] timer: see there why.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::runtime::Handle;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How often a worker's heartbeat timer fires. tokio's current-thread
/// driver is woken (an `eventfd` write, then one more `epoll_wait` and
/// trip round the scheduler) whenever a timer is set to expire before the
/// wake it planned when it last parked. A keep-alive request sets two:
/// the response timeout (30 s) when it is sent upstream, and hyper's
/// header timer (10 s) for the next request when the response is out;
/// the second is earlier than the first, whose expiry was the planned
/// wake, so every request cost that wake-up: 3 `epoll_wait`s and 8
/// syscalls where 2 and 6 do (bench/RESULTS.md, issue 18's bar). With a
/// heartbeat always due within this, no timer of 250 ms or more is ever
/// earlier than the planned wake. The heartbeat itself costs a worker 4
/// timer wakes a second, each with that one extra turn (its re-armed
/// timer is earlier than the wake planned after it fired): 4 `eventfd`
/// writes a second in all, where a worker at 10,000 requests a second
/// made 10,000.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(250);

/// Fires every [`HEARTBEAT`], forever.
async fn heartbeat() {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.tick().await;
    }
}

/// The most workers any [`Workers`] of this process started with: what a
/// [`PerWorker`] made now is sized by.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// This thread's worker (0 off the workers).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many slots a [`PerWorker`] made now has.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// One value per worker, each on its own cache line, so two workers never
/// write the same line.
pub struct PerWorker<T> {
    slots: Box<[Padded<T>]>,
}

#[repr(align(128))]
struct Padded<T>(T);

impl<T> PerWorker<T> {
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            slots: (0..count()).map(|_| Padded(make())).collect(),
        }
    }

    /// The slot of this thread's worker, and its number (to give a value
    /// back to the same slot from elsewhere).
    pub fn local(&self) -> (usize, &T) {
        let i = self.slot(index());
        (i, &self.slots[i].0)
    }

    /// Slot `i` (taken from [`PerWorker::local`]).
    pub fn get(&self, i: usize) -> &T {
        &self.slots[self.slot(i)].0
    }

    /// Worker `i`'s slot: its own, unless this was made before the
    /// workers started (then fewer slots are shared). No division on the
    /// usual path.
    fn slot(&self, i: usize) -> usize {
        if i < self.slots.len() {
            i
        } else {
            i % self.slots.len()
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }
}

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

/// Connections each worker accepted and served (not those reset at
/// `max_connections`), as the counter family
/// `worker_connections{worker}`: each worker counts on its own cache line,
/// summed only when `/metrics` is read. It shows how evenly the kernel
/// spreads connections over the workers' sockets.
#[derive(Clone, Default)]
pub struct Accepted(Arc<PerWorker<AtomicU64>>);

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accepted")
    }
}

impl Accepted {
    /// One more connection on this thread's worker.
    pub fn inc(&self) {
        self.0.local().1.fetch_add(1, Ordering::Relaxed);
    }

    /// Each worker's count, by worker.
    pub fn counts(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

impl prometheus_client::collector::Collector for Accepted {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::{TypedMetric, counter::Counter, family::Family};
        let family = Family::<Vec<(&'static str, String)>, Counter>::default();
        for (i, n) in self.counts().into_iter().enumerate() {
            family
                .get_or_create(&vec![("worker", i.to_string())])
                .inc_by(n);
        }
        let descriptor = encoder.encode_descriptor(
            "worker_connections",
            "Connections accepted and served, by worker",
            None,
            Counter::<u64>::TYPE,
        )?;
        family.encode(descriptor)
    }
}

/// The worker threads of a daemon. Dropping it asks each to stop: its
/// runtime ends, and with it every task left on it.
pub struct Workers {
    handles: Vec<Handle>,
    stops: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `n` workers (at least one), named `switchyard-w0`, `-w1`, ...
    pub fn start(n: usize) -> std::io::Result<Arc<Workers>> {
        let n = n.max(1);
        COUNT.fetch_max(n, Ordering::Relaxed);
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stops: Default::default(),
            threads: Default::default(),
        };
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.get_mut().expect("stops").push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("switchyard-w{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    // Tasks spawned through the handle run while this
                    // blocks; the runtime and what is left on it end with
                    // the thread.
                    runtime.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            () = heartbeat() => {}
                        }
                    });
                })?;
            workers.threads.get_mut().expect("threads").push(thread);
        }
        Ok(Arc::new(workers))
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `future` on worker `i`.
    pub fn spawn<F>(&self, i: usize, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handles[i % self.handles.len()].spawn(future));
    }
}

impl Workers {
    /// Asks every worker to stop, and waits up to `within` for their
    /// threads to end (each drops what is left on its runtime, closing
    /// its sockets), so that the process exits after them.
    pub fn stop(&self, within: std::time::Duration) {
        for stop in self.stops.lock().expect("stops").drain(..) {
            let _ = stop.send(());
        }
        let deadline = std::time::Instant::now() + within;
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads"));
        for t in threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Workers {
    /// Asks the workers to stop, waiting for nothing (this may run on one
    /// of them).
    fn drop(&mut self) {
        for stop in self.stops.get_mut().expect("stops").drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_its_tasks_on_its_own_thread_and_knows_its_index() {
        let workers = Workers::start(3).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            workers.spawn(i, async move {
                // A task spawned from a worker stays on it.
                let inner = tokio::spawn(async { (index(), std::thread::current().id()) });
                let outer = (index(), std::thread::current().id());
                tx.send((i, outer, inner.await.unwrap())).unwrap();
            });
        }
        let mut threads = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (i, outer, inner) = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
            assert_eq!(outer.0, i);
            assert_eq!(inner, outer, "a spawned task moved off its worker");
            threads.insert(format!("{:?}", outer.1));
        }
        assert_eq!(threads.len(), 3, "workers share a thread");
        assert!(count() >= 3);
        let slots = PerWorker::new(|| 0u8);
        assert_eq!(slots.local().0, 0, "the test's thread is on no worker");
    }
}
