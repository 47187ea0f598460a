//! What a policy instance can reach: the per-store state and the host side
//! of the `log`, `clock`, `random`, `kv` and `backends` imports, plus an
//! empty WASI context for guests whose toolchain imports WASI (no files, no
//! sockets, no environment, no arguments; output goes nowhere).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{backends, clock, http_client, kv, log, metrics, random, types};
use super::directory::Directory;
use super::kv_handle::KvHandle;

/// The data of one `Store`: one per warm instance.
pub struct HostState {
    pub(crate) policy: Arc<str>,
    pub(crate) kv: KvHandle,
    /// The policy's own metrics (`metrics.rs`).
    pub(crate) metrics: Arc<super::metrics::PolicyMetrics>,
    /// The pools the current call may see; replaced before each call.
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) limits: MemoryLimiter,
    /// When the current call must have returned; read by the epoch callback.
    pub(crate) deadline: Instant,
    /// The current call's waits on other services (`http-call`): its
    /// deadline moves on by them.
    pub(crate) waits: Arc<super::waits::Waits>,
    /// `http-call`s made by the current hook call ([`MAX_CALLS_PER_HOOK`]).
    pub(crate) calls: u32,
    wasi: WasiCtx,
    table: ResourceTable,
    /// The request, response and connection lent to the running call.
    pub(crate) lent: super::view::Lent,
    /// The guest's stderr (a Rust panic message lands here), kept so that a
    /// trap's error can say why.
    stderr: MemoryOutputPipe,
    /// `policy replay`: the frozen clock, and the random import's
    /// generator with the request it was seeded for.
    frozen: Option<(Arc<Frozen>, u64, fastrand::Rng)>,
}

/// For `policy replay`: every instance's clocks stand at `wall_ms` (the
/// captured request's time), and random numbers are seeded: the `random`
/// import from `seed` and the request's index, again at each request;
/// WASI's random from `seed`, once per instance.
#[derive(Debug, Default)]
pub struct Frozen {
    pub wall_ms: std::sync::atomic::AtomicU64,
    /// Which request runs now; the `random` import restarts at a new one.
    pub request: std::sync::atomic::AtomicU64,
    pub seed: u64,
}

impl Frozen {
    fn wall(&self) -> Duration {
        Duration::from_millis(self.wall_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

struct FrozenClock(Arc<Frozen>);

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0.wall()
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.wall().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl HostState {
    pub(crate) fn new(
        policy: Arc<str>,
        kv: KvHandle,
        metrics: Arc<super::metrics::PolicyMetrics>,
        directory: Arc<dyn Directory>,
        memory_bytes: usize,
        frozen: Option<Arc<Frozen>>,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // Nothing is inherited or granted: no preopens, env, args, stdio.
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone());
        if let Some(f) = &frozen {
            use rand::SeedableRng;
            wasi.wall_clock(FrozenClock(f.clone()))
                .monotonic_clock(FrozenClock(f.clone()))
                .secure_random(rand::rngs::StdRng::seed_from_u64(f.seed))
                .insecure_random(rand::rngs::StdRng::seed_from_u64(f.seed ^ 1))
                .insecure_random_seed(u128::from(f.seed));
        }
        HostState {
            policy,
            kv,
            metrics,
            directory,
            limits: MemoryLimiter::new(memory_bytes),
            deadline: Instant::now(),
            waits: Arc::default(),
            calls: 0,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            lent: Default::default(),
            stderr,
            frozen: frozen.map(|f| (f, u64::MAX, fastrand::Rng::with_seed(0))),
        }
    }

    /// What the guest wrote to stderr, lossily decoded.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }
}

/// Bytes of guest stderr kept per instance; writes beyond fail in the guest.
const STDERR_CAPACITY: usize = 4096;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `StoreLimits` that also remembers whether it refused memory, so that the
/// trap that follows can be reported as a memory-cap error.
pub(crate) struct MemoryLimiter {
    inner: StoreLimits,
    pub(crate) tripped: bool,
}

impl MemoryLimiter {
    fn new(memory_bytes: usize) -> Self {
        MemoryLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            tripped: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.tripped = true;
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        super::guest_log::emit(&self.policy, level, &message);
    }
}

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl clock::Host for HostState {
    fn monotonic_now(&mut self) -> u64 {
        if let Some((f, ..)) = &self.frozen {
            return u64::try_from(f.wall().as_nanos()).unwrap_or(u64::MAX);
        }
        u64::try_from(process_start().elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn wall_now_ms(&mut self) -> u64 {
        if let Some((f, ..)) = &self.frozen {
            return u64::try_from(f.wall().as_millis()).unwrap_or(u64::MAX);
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl random::Host for HostState {
    fn next_u64(&mut self) -> u64 {
        if let Some((f, seen, rng)) = &mut self.frozen {
            let request = f.request.load(std::sync::atomic::Ordering::Relaxed);
            if *seen != request {
                *seen = request;
                rng.seed(f.seed ^ request.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            }
            return rng.u64(..);
        }
        fastrand::u64(..)
    }
}

/// The store's refusal as the policy sees it.
fn kv_error(e: super::kv::KvError) -> kv::KvError {
    use super::kv::KvError as E;
    match e {
        E::KeyTooLarge(_) | E::ValueTooLarge(_) => kv::KvError::TooLarge(e.to_string()),
        E::TooLargeForNamespace(_) => kv::KvError::Full(e.to_string()),
        E::Unavailable(m) => kv::KvError::Unavailable(m),
    }
}

/// A store operation; a remote one's wait is not the guest's time
/// (`waits.rs`), as with `http-call`.
async fn kv_op<T>(
    waits: Arc<super::waits::Waits>,
    remote: bool,
    op: impl Future<Output = Result<T, super::kv::KvError>>,
) -> Result<T, kv::KvError> {
    if remote {
        waits.begin();
    }
    let r = op.await;
    if remote {
        waits.end();
    }
    r.map_err(kv_error)
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let kv = self.kv.clone();
        kv_op(self.waits.clone(), kv.remote(), kv.get(&key)).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::KvError> {
        let kv = self.kv.clone();
        kv_op(self.waits.clone(), kv.remote(), kv.set(&key, value, ttl_ms)).await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, kv::KvError> {
        let kv = self.kv.clone();
        kv_op(
            self.waits.clone(),
            kv.remote(),
            kv.compare_and_swap(&key, expected.as_deref(), new, ttl_ms),
        )
        .await
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        let kv = self.kv.clone();
        kv_op(
            self.waits.clone(),
            kv.remote(),
            kv.increment(&key, delta, ttl_ms),
        )
        .await
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        let kv = self.kv.clone();
        kv_op(self.waits.clone(), kv.remote(), kv.delete(&key)).await
    }
}

impl HostState {
    /// An update the policy's metrics refused: logged, never a trap.
    fn metric_update(&self, r: Result<(), String>) {
        if let Err(why) = r {
            crate::warn_limited!(policy = %self.policy, "metric update ignored: {why}");
        }
    }
}

impl metrics::Host for HostState {
    fn define(
        &mut self,
        name: String,
        help: String,
        kind: metrics::MetricKind,
        label_names: Vec<String>,
    ) -> Result<(), String> {
        let kind = match kind {
            metrics::MetricKind::Counter => super::metrics::Kind::Counter,
            metrics::MetricKind::Gauge => super::metrics::Kind::Gauge,
            metrics::MetricKind::Histogram => super::metrics::Kind::Histogram,
        };
        self.metrics.define(&name, &help, kind, label_names)
    }

    fn counter_add(&mut self, name: String, label_values: Vec<String>, delta: u64) {
        let r = self.metrics.counter_add(&name, label_values, delta);
        self.metric_update(r);
    }

    fn gauge_set(&mut self, name: String, label_values: Vec<String>, value: f64) {
        let r = self.metrics.gauge_set(&name, label_values, value);
        self.metric_update(r);
    }

    fn histogram_observe(&mut self, name: String, label_values: Vec<String>, value: f64) {
        let r = self.metrics.histogram_observe(&name, label_values, value);
        self.metric_update(r);
    }
}

impl backends::Host for HostState {
    fn for_pool(&mut self, pool: String) -> Option<Vec<types::Backend>> {
        self.directory.backends(&pool)
    }
}

/// The most `http-call`s one hook call may make.
pub const MAX_CALLS_PER_HOOK: u32 = 8;

impl http_client::Host for HostState {
    async fn http_call(
        &mut self,
        pool: String,
        request: http_client::OutgoingRequest,
    ) -> Result<http_client::IncomingResponse, http_client::CallError> {
        // One client request must not turn into an unbounded number of
        // requests to another service (its waits do not count against
        // timeout_ms, so only the wall cap would stop a loop).
        if self.calls >= MAX_CALLS_PER_HOOK {
            return Err(http_client::CallError::NotAllowed(format!(
                "more than {MAX_CALLS_PER_HOOK} calls in one hook call"
            )));
        }
        self.calls += 1;
        let call = self.directory.http_call(&pool, request);
        // The wait is not the guest's: its deadline moves on by it (the
        // epoch callback's and the call's timer, through `waits`); the
        // wall cap does not.
        self.waits.begin();
        let r = call.await;
        self.waits.end();
        r
    }
}
