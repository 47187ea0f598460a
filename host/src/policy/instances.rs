//! One loaded version of a policy and its small pool of warm instances.
//!
//! A call takes a warm instance (or makes one: instantiate, then `init`),
//! arms the deadline, calls the hook, and gives the instance back unless the
//! call trapped or the instance has served `max_calls`. An instance is never
//! shared by two calls at once, so a policy may keep per-call scratch state
//! in globals; state that must outlive an instance belongs in the `kv`
//! import.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::call::{Loan, OnConnect, OnRequest};
use super::decision::{self, Allowed, ConnDecision, HttpDecision};
use super::directory::Directory;
use super::engine::{Compiled, Limits, PolicyEngine};
use super::host_api::HostState;
use super::stats::Live;
pub use super::stats::PolicyStats;
use super::view::{ConnectionInfo, RequestView};
use super::worlds::Bindings;
pub(crate) use super::worlds::Pre;
use super::{PolicyError, PolicyKind};
use crate::workers::PerWorker;

/// Kept boxed: checkout, the call and checkin move it by pointer, not
/// its bindings' few hundred bytes (bench/count: ~90 instructions per
/// policy call).
pub(super) struct Warm {
    pub(super) store: Store<HostState>,
    pub(super) bindings: Bindings,
    /// The store's `waits`, reachable while the store is lent to a call.
    pub(super) waits: Arc<super::waits::Waits>,
    calls: u64,
    /// Made for the scratch KV namespace (a shadow's).
    scratch: bool,
    _live: Live,
}

/// One loaded, validated version of a policy.
pub struct Policy {
    pub name: Arc<str>,
    pub kind: PolicyKind,
    /// Content hash of the `.wasm` and its config.
    pub version: String,
    pub file: PathBuf,
    pub loaded_at: SystemTime,
    pub compile_time: Duration,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    pub stats: PolicyStats,
    pub(super) engine: Arc<PolicyEngine>,
    pub(super) pre: Pre,
    config: String,
    pub(super) limits: Limits,
    // Boxed on purpose: an instance moves in and out of this list by
    // pointer on every call (see `Warm`).
    // Each worker's own (`workers.rs`): a call takes and gives back on
    // its worker's list, a lock no other worker takes unless the policy
    // is at `max_instances` and that worker's own list is empty.
    #[allow(clippy::vec_box)]
    idle: PerWorker<Mutex<Vec<Box<Warm>>>>,
    /// One permit per instance of the budget (`max_instances`): a call
    /// holds one from before it takes an instance until it gives it back.
    permits: tokio::sync::Semaphore,
    /// Calls waiting for a permit.
    queued: AtomicUsize,
    /// Instances that exist, idle or in a call.
    live: Arc<AtomicUsize>,
    /// Linear memories one instance allocates.
    memories: usize,
    /// Set while a shadow (`shadow.rs`): its instances use the KV
    /// namespace `NAME.shadow` instead of its name's.
    kv_scratch: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Policy {
    pub(crate) fn new(
        engine: Arc<PolicyEngine>,
        c: Compiled,
        config: &str,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Policy {
            name: c.name.into(),
            kind: c.kind,
            version: c.version,
            file: c.file,
            loaded_at: SystemTime::now(),
            compile_time: c.compile_time,
            from_cache: c.from_cache,
            stats: PolicyStats::default(),
            engine,
            pre: c.pre,
            config: config.to_owned(),
            permits: tokio::sync::Semaphore::new(limits.max_instances.max(1)),
            queued: AtomicUsize::new(0),
            live: Arc::new(AtomicUsize::new(0)),
            memories: c.memories,
            limits,
            idle: PerWorker::default(),
            kv_scratch: std::sync::atomic::AtomicBool::new(c.scratch_kv),
        })
    }

    /// Warm instances now idle (for tests and the admin API).
    pub fn idle_instances(&self) -> usize {
        self.idle
            .iter()
            .map(|i| i.lock().expect("idle instances").len())
            .sum()
    }

    /// Instances that exist now, idle or in a call; never more than
    /// `max_instances`.
    pub fn live_instances(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether the policy exports the log hook (`on-log`).
    pub fn has_log_hook(&self) -> bool {
        self.pre.has_log_hook()
    }

    /// Calls that hold an instance now.
    pub fn calls_in_progress(&self) -> usize {
        self.limits.max_instances.max(1) - self.permits.available_permits()
    }

    /// Calls waiting in the queue for an instance now.
    pub fn calls_queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// What this version may hold of the engine's pool.
    pub fn need(&self) -> super::engine::Need {
        super::engine::Need::of(&self.limits, self.memories)
    }

    /// A permit to hold an instance: at once when one is free, else after
    /// waiting in the bounded queue for at most `queue_timeout`.
    /// With the permit, whether the call waited for it (its budget then
    /// starts after the wait).
    pub(super) async fn admit(
        &self,
    ) -> Result<(tokio::sync::SemaphorePermit<'_>, bool), PolicyError> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok((p, false));
        }
        let overloaded = || {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            PolicyError::Overloaded(self.limits.max_instances)
        };
        /// Counts a call in the queue until it leaves it, however it
        /// leaves (a client that resets its stream drops the waiting call).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _waiting = Waiting(&self.queued);
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.limits.max_queued {
            return Err(overloaded());
        }
        match tokio::time::timeout(self.limits.queue_timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok((p, true)),
            _ => Err(overloaded()),
        }
    }

    /// Drops the warm instances of a version that no listener serves with
    /// any more: connections that still hold it (a long TCP connection, a
    /// UDP flow) make a new one if they call again, and its pool slots go
    /// back at once instead of when the last such connection ends.
    pub fn retire(&self) {
        for idle in self.idle.iter() {
            idle.lock().expect("idle instances").clear();
        }
    }

    /// With `true`, this version's instances from now on use the KV
    /// namespace `NAME.shadow`, so that a shadow's writes never reach what
    /// the serving version reads; `false` when it is promoted. Its warm
    /// instances, which hold the other namespace, are dropped.
    pub fn use_scratch_kv(&self, scratch: bool) {
        self.kv_scratch.store(scratch, Ordering::Relaxed);
        self.retire();
    }

    fn arm(store: &mut Store<HostState>, started: Instant, budget: Duration) {
        store.data_mut().deadline = started + budget;
        store.set_epoch_deadline(1);
    }

    /// Maps a failed call to its typed error, looking at what the store saw.
    pub(super) fn classify(
        &self,
        e: wasmtime::Error,
        store: &Store<HostState>,
        budget: Duration,
    ) -> PolicyError {
        if store.data().limits.tripped {
            return PolicyError::Memory(self.limits.memory_bytes >> 20);
        }
        if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return PolicyError::Timeout(budget);
        }
        let mut reason = e.root_cause().to_string();
        // A Rust guest's panic message, on one line, without the hint about
        // RUST_BACKTRACE (the guest has no environment to set it in).
        let stderr = store.data().stderr_text();
        let said: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        if !said.is_empty() {
            reason.push_str(": ");
            reason.push_str(&said.join(" "));
        }
        PolicyError::Trap(reason)
    }

    pub(super) async fn instantiate(
        &self,
        directory: Arc<dyn Directory>,
    ) -> Result<Box<Warm>, PolicyError> {
        self.instantiate_as(directory, Live::new(&self.live)).await
    }

    /// Makes an instance counted by `live`.
    async fn instantiate_as(
        &self,
        directory: Arc<dyn Directory>,
        live: Live,
    ) -> Result<Box<Warm>, PolicyError> {
        let scratch = self.kv_scratch.load(Ordering::Relaxed);
        let state = HostState::new(
            self.name.clone(),
            if scratch {
                self.engine.kv.namespace(&format!("{}.shadow", self.name))
            } else {
                self.engine.kv.namespace(&self.name)
            },
            self.engine.custom_metrics.of(&self.name),
            directory,
            self.limits.memory_bytes,
            self.engine.frozen.clone(),
        );
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| {
            let data = ctx.data();
            if Instant::now() >= data.deadline + data.waits.paused() {
                return Ok(UpdateDeadline::Interrupt);
            }
            // Yield, so that a long call does not hold the worker; the time
            // until the runtime polls it again is not the guest's (under
            // load it can be longer than the whole budget).
            let waits = data.waits.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    waits.begin();
                    tokio::task::yield_now().await;
                    waits.end();
                }),
            ))
        });
        let budget = self.limits.init_timeout;
        let _busy = self.engine.ticker.busy(budget);
        Self::arm(&mut store, Instant::now(), budget);
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let made = tokio::time::timeout(budget, async {
            let bindings = self.pre.instantiate(&mut store).await.map_err(|e| {
                match self.classify(e, &store, budget) {
                    PolicyError::Trap(r) => PolicyError::Instantiate(r),
                    other => other,
                }
            })?;
            let init = bindings.init(&mut store, &self.config).await;
            match init {
                Ok(Ok(())) => Ok(bindings),
                Ok(Err(msg)) => Err(PolicyError::Init(msg)),
                Err(e) => Err(self.classify(e, &store, budget)),
            }
        })
        .await
        // Out of time while waiting in WASI: the epoch only stops wasm code.
        .unwrap_or(Err(PolicyError::Timeout(budget)))?;
        Ok(Box::new(Warm {
            waits: store.data().waits.clone(),
            store,
            bindings: made,
            calls: 0,
            scratch,
            _live: live,
        }))
    }

    /// A warm instance armed with the call budget: from `budget_from` when
    /// one was waiting (the call's start, or the end of its wait in the
    /// queue), from now when one had to be made (the instantiation has its
    /// own budget and must not eat the call's). With it, when the call must
    /// end: the guest's deadline (moved on by the time it waits on other
    /// services, `call::Waits`) or the wall-clock cap from `started`.
    pub(super) async fn checkout(
        &self,
        directory: &Arc<dyn Directory>,
        started: Instant,
        budget_from: Instant,
    ) -> Result<(Box<Warm>, Instant, Instant), PolicyError> {
        let wall = started + self.limits.max_call_wall;
        let (mut warm, from) = match self.take_or_reserve() {
            Ok(w) => (w, budget_from),
            Err(live) => {
                let make = self.instantiate_as(directory.clone(), live);
                let made = tokio::time::timeout_at(wall.into(), make)
                    .await
                    .unwrap_or(Err(PolicyError::Timeout(self.limits.max_call_wall)))?;
                (made, Instant::now())
            }
        };
        // As a rule the same: no clone and drop of a count all workers write.
        if !Arc::ptr_eq(&warm.store.data().directory, directory) {
            warm.store.data_mut().directory = directory.clone();
        }
        warm.calls += 1;
        Self::arm(&mut warm.store, from, self.limits.timeout);
        warm.waits.reset();
        warm.store.data_mut().calls = 0;
        Ok((warm, from + self.limits.timeout, wall))
    }

    /// A warm instance, or the count of a new one to make: this worker's
    /// newest; else, under `max_instances`, a new one (checked and counted
    /// in one step, so two workers cannot both take the last place); at
    /// the budget, another worker's idle one. A call holds a permit, so
    /// one is idle somewhere unless moving between lists just then: after
    /// a few looks one is made, a moment over the budget (the engine's
    /// pool holds twice every policy's budget).
    fn take_or_reserve(&self) -> Result<Box<Warm>, Live> {
        let (mine, idle) = self.idle.local();
        let max = self.limits.max_instances.max(1);
        for _ in 0..3 {
            if let Some(w) = idle.lock().expect("idle instances").pop() {
                return Ok(w);
            }
            if let Some(live) = Live::reserve(&self.live, max) {
                return Err(live);
            }
            let other = self
                .idle
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != mine)
                .find_map(|(_, idle)| idle.lock().expect("idle instances").pop());
            if let Some(w) = other {
                return Ok(w);
            }
        }
        Err(Live::new(&self.live))
    }

    /// The error of a call whose timer fired while the guest waited on
    /// the host (a WASI sleep or poll): the wall-clock cap when that is
    /// what ran out, else the guest's deadline.
    pub(super) fn timed_out(&self, started: Instant) -> PolicyError {
        if started.elapsed() >= self.limits.max_call_wall {
            PolicyError::Timeout(self.limits.max_call_wall)
        } else {
            PolicyError::Timeout(self.limits.timeout)
        }
    }

    pub(super) fn checkin(&self, warm: Box<Warm>) {
        // One made for the other KV namespace (a shadow's call that ended
        // after its promotion) is dropped.
        if warm.calls >= self.limits.max_calls
            || warm.scratch != self.kv_scratch.load(Ordering::Relaxed)
        {
            return;
        }
        let mut idle = self.idle.local().1.lock().expect("idle instances");
        if idle.len() < self.limits.max_idle {
            idle.push(warm);
        }
    }

    /// Counts a finished call; returns how long it took. Takes the
    /// result by reference: a decision is a few hundred bytes to move.
    pub(super) fn record<T>(&self, started: Instant, r: &Result<T, PolicyError>) -> Duration {
        let took = started.elapsed();
        self.stats.observe(took);
        if let Err(e) = &r {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            *self.stats.last_error.lock().expect("last error") = Some(e.to_string());
            tracing::debug!(policy = %self.name, version = %self.version, error = %e, "policy call failed");
        }
        took
    }

    /// Runs the request hook and validates its decision. The request is
    /// lent to the call and is back in `request` when this returns,
    /// whatever the outcome.
    pub async fn on_request(
        &self,
        request: &mut Box<RequestView>,
        conn: &Arc<ConnectionInfo>,
        default_pool: Option<&str>,
        directory: &Arc<dyn Directory>,
    ) -> Result<HttpDecision, PolicyError> {
        self.on_request_timed(request, conn, default_pool, directory)
            .await
            .0
    }

    /// [`Policy::on_request`], with how long the call took (one clock
    /// read for the caller's metrics instead of two more).
    pub async fn on_request_timed(
        &self,
        request: &mut Box<RequestView>,
        conn: &Arc<ConnectionInfo>,
        default_pool: Option<&str>,
        directory: &Arc<dyn Directory>,
    ) -> (Result<HttpDecision, PolicyError>, Duration) {
        let started = Instant::now();
        let mut loan = Loan {
            request: Some(request),
            response: None,
            connection: Some(conn.clone()),
        };
        let called = self.call(directory, started, &mut loan, OnRequest).await;
        let r = called.and_then(|d| {
            let allowed = Allowed {
                read_body: self.pre.has_body_hook(),
                inspect_response: self.pre.has_response_hook(),
            };
            decision::http(d, default_pool, directory.as_ref(), allowed)
                .map_err(PolicyError::InvalidDecision)
        });
        let took = self.record(started, &r);
        (r, took)
    }

    /// What a forward decision from this policy may ask for, outside
    /// `on-request`.
    pub(super) fn allowed_later(&self) -> Allowed {
        Allowed {
            read_body: false,
            inspect_response: self.pre.has_response_hook(),
        }
    }

    /// Runs the connection hook and validates its decision.
    pub async fn on_connect(
        &self,
        conn: &Arc<ConnectionInfo>,
        default_pool: Option<&str>,
        directory: &Arc<dyn Directory>,
    ) -> Result<ConnDecision, PolicyError> {
        self.on_connect_timed(conn, default_pool, directory).await.0
    }

    /// [`Policy::on_connect`], with how long the call took.
    pub async fn on_connect_timed(
        &self,
        conn: &Arc<ConnectionInfo>,
        default_pool: Option<&str>,
        directory: &Arc<dyn Directory>,
    ) -> (Result<ConnDecision, PolicyError>, Duration) {
        let started = Instant::now();
        let mut loan = Loan {
            connection: Some(conn.clone()),
            ..Loan::default()
        };
        let called = self.call(directory, started, &mut loan, OnConnect).await;
        let r = called.and_then(|d| {
            decision::connection(d, default_pool, directory.as_ref())
                .map_err(PolicyError::InvalidDecision)
        });
        let took = self.record(started, &r);
        (r, took)
    }
}
