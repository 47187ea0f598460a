//! The time a hook call spends suspended, which is not the guest's: its
//! deadline moves on by it ([`Waits`], [`within`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The time a call spends suspended: on other services (`http-call`), or
/// yielded to the runtime at an epoch tick until it is polled again. Not
/// the guest's, so it does not count against `timeout_ms` (the epoch
/// callback and [`within`] both add it to the deadline).
#[derive(Default)]
pub(crate) struct Waits {
    /// Nanoseconds waited so far in this call.
    paused: AtomicU64,
    /// When the wait in progress started (nanoseconds since `epoch`), or 0.
    since: AtomicU64,
    /// Told when a wait ends.
    done: tokio::sync::Notify,
    epoch: std::sync::OnceLock<Instant>,
}

impl Waits {
    fn now(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// A new call: nothing waited yet.
    pub(crate) fn reset(&self) {
        self.paused.store(0, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }

    pub(crate) fn begin(&self) {
        self.since.store(self.now(), Ordering::Relaxed);
    }

    /// The wait ended; returns how long it took.
    pub(crate) fn end(&self) -> Duration {
        let since = self.since.swap(0, Ordering::Relaxed);
        let waited = self.now().saturating_sub(since);
        self.paused.fetch_add(waited, Ordering::Relaxed);
        self.done.notify_one();
        Duration::from_nanos(waited)
    }

    fn waiting(&self) -> bool {
        self.since.load(Ordering::Relaxed) != 0
    }

    /// How long the current call has waited so far.
    pub(crate) fn paused(&self) -> Duration {
        Duration::from_nanos(self.paused.load(Ordering::Relaxed))
    }
}

/// `call`, cut at the guest's deadline (moved on by what it spent
/// suspended on other services, [`Waits`]) or the wall cap, whichever
/// comes first. `Err` when cut. A call that never waits costs one timer,
/// as before; the loop runs only once the guest's deadline has passed
/// with waits in it.
/// `call` is pinned where it was made: the hook's future holds wasmtime's
/// and is large, and each move of it is a memcpy (bench/count).
pub(super) async fn within<F: std::future::Future>(
    guest_until: Instant,
    wall: Instant,
    waits: &Waits,
    mut call: std::pin::Pin<&mut F>,
) -> Result<F::Output, ()> {
    let mut until = guest_until.min(wall);
    loop {
        if waits.waiting() {
            // Suspended on another service: only the wall cap runs.
            tokio::select! {
                biased;
                out = call.as_mut() => return Ok(out),
                _ = waits.done.notified() => {}
                _ = tokio::time::sleep_until(wall.into()) => return Err(()),
            }
        } else {
            if let Ok(out) = tokio::time::timeout_at(until.into(), call.as_mut()).await {
                return Ok(out);
            }
        }
        until = (guest_until + waits.paused()).min(wall);
        if !waits.waiting() && until <= Instant::now() {
            return Err(());
        }
    }
}
