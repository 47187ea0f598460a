//! One hook call, whichever hook it is: admitted under the policy's
//! concurrency cap, a warm instance checked out and armed with the
//! deadline, the request, response and connection lent to it, the hook
//! called under the wall-clock cap, everything lent given back, and the
//! instance returned to the pool unless the call failed. The hooks
//! (`instances.rs`, `hooks.rs`) only say which export to call and what
//! its answer means.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::types;
use super::directory::Directory;
use super::host_api::HostState;
use super::instances::{Policy, Warm};
use super::view::{ConnectionInfo, Lent, RequestView, ResponseView, handle};
use super::worlds::Bindings;
use super::{PolicyError, PolicyKind};

/// What a call lends the guest, swapped into the instance's store for
/// the call and back out after it, whatever the outcome.
#[derive(Default)]
pub(super) struct Loan<'a> {
    pub request: Option<&'a mut RequestView>,
    pub response: Option<&'a mut ResponseView>,
    pub connection: Option<Arc<ConnectionInfo>>,
}

impl Loan<'_> {
    /// Swaps what is lent with the store's: in before the call, out after.
    fn swap(&mut self, lent: &mut Lent) {
        if let Some(r) = self.request.as_deref_mut() {
            std::mem::swap(&mut lent.request, r);
        }
        if let Some(r) = self.response.as_deref_mut() {
            std::mem::swap(&mut lent.response, r);
        }
        std::mem::swap(&mut lent.connection, &mut self.connection);
    }
}

/// The export to call, with its arguments beyond the lent handles.
pub(super) enum Hook<'a> {
    Request,
    RequestBody {
        body: &'a [u8],
        context: Option<&'a [u8]>,
    },
    Response {
        body: &'a types::ResponseBody,
        context: Option<&'a [u8]>,
    },
    Log {
        context: Option<&'a [u8]>,
        summary: &'a types::LogSummary,
    },
    Connect,
}

/// What the export returned, in 0.3's types.
pub(super) enum Output {
    Decision(types::Decision),
    Action(types::ResponseAction),
    Done,
    Connect(types::ConnectDecision),
}

impl Output {
    /// The answer of a hook that returns a decision.
    pub(super) fn decision(self) -> Result<types::Decision, PolicyError> {
        match self {
            Output::Decision(d) => Ok(d),
            _ => Err(PolicyError::Trap("the hook returned no decision".into())),
        }
    }
}

impl Hook<'_> {
    /// The error of a policy that does not export this hook.
    fn missing(&self, kind: PolicyKind) -> String {
        let interface = match self {
            Hook::Request | Hook::Connect => return PolicyError::WrongWorld(kind).to_string(),
            Hook::RequestBody { .. } => "body-hook",
            Hook::Response { .. } => "response-hook",
            Hook::Log { .. } => "log-hook",
        };
        format!("the policy does not export switchyard:policy/{interface}")
    }
}

impl Policy {
    /// Calls `hook` with `loan` lent; `started` is when the caller's clock
    /// started (the call's budget counts from it).
    pub(super) async fn call(
        &self,
        directory: &Arc<dyn Directory>,
        started: Instant,
        loan: &mut Loan<'_>,
        hook: Hook<'_>,
    ) -> Result<Output, PolicyError> {
        let (_permit, queued) = self.admit().await?;
        // Waiting in the queue is not the guest's time; the wall cap
        // counts it.
        let budget_from = if queued { Instant::now() } else { started };
        let _busy = self.engine.ticker.busy(self.limits.timeout);
        let (mut w, guest_until, wall) = self.checkout(directory, started, budget_from).await?;
        loan.swap(&mut w.store.data_mut().lent);
        let waits = w.store.data().waits.clone();
        let Warm {
            store, bindings, ..
        } = &mut w;
        let call = invoke(bindings, store, hook, self.kind);
        let call = within(guest_until, wall, &waits, call).await;
        loan.swap(&mut w.store.data_mut().lent);
        match call {
            Ok(Ok(out)) => {
                self.checkin(w);
                Ok(out)
            }
            Ok(Err(e)) => Err(self.classify(e, &w.store, self.limits.timeout)),
            Err(_) => Err(self.timed_out(started)),
        }
    }
}

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
async fn within<F: std::future::Future>(
    guest_until: Instant,
    wall: Instant,
    waits: &Waits,
    call: F,
) -> Result<F::Output, ()> {
    let mut call = std::pin::pin!(call);
    let mut until = guest_until.min(wall);
    loop {
        if waits.waiting() {
            // Suspended on another service: only the wall cap runs.
            tokio::select! {
                biased;
                out = &mut call => return Ok(out),
                _ = waits.done.notified() => {}
                _ = tokio::time::sleep_until(wall.into()) => return Err(()),
            }
        } else {
            if let Ok(out) = tokio::time::timeout_at(until.into(), &mut call).await {
                return Ok(out);
            }
        }
        until = (guest_until + waits.paused()).min(wall);
        if !waits.waiting() && until <= Instant::now() {
            return Err(());
        }
    }
}

/// The one call into the guest, by hook and by world.
async fn invoke(
    bindings: &Bindings,
    store: &mut Store<HostState>,
    hook: Hook<'_>,
    kind: PolicyKind,
) -> wasmtime::Result<Output> {
    use super::v0_2;
    Ok(match (hook, bindings) {
        (Hook::Request, Bindings::Http { b, .. }) => {
            Output::Decision(b.call_on_request(store, handle(), handle()).await?)
        }
        (Hook::Request, Bindings::HttpV0_2(b)) => Output::Decision(v0_2::decision(
            b.call_on_request(store, handle(), handle()).await?,
        )),
        (
            Hook::RequestBody { body, context },
            Bindings::Http {
                body: Some(hook), ..
            },
        ) => Output::Decision(
            hook.call_on_request_body(store, handle(), body, context)
                .await?,
        ),
        (
            Hook::Response { body, context },
            Bindings::Http {
                response: Some(hook),
                ..
            },
        ) => Output::Action(
            hook.call_on_response(store, handle(), handle(), body, context)
                .await?,
        ),
        (Hook::Response { .. }, Bindings::HttpV0_2(b)) => Output::Action(v0_2::response_action(
            b.call_on_response(store, handle(), handle()).await?,
        )),
        (
            Hook::Log { context, summary },
            Bindings::Http {
                log: Some(hook), ..
            },
        ) => {
            hook.call_on_log(store, handle(), context, summary).await?;
            Output::Done
        }
        (Hook::Connect, Bindings::Connection(b)) => {
            Output::Connect(b.call_on_connect(store, handle()).await?)
        }
        (Hook::Connect, Bindings::ConnectionV0_2(b)) => Output::Connect(v0_2::connect_decision(
            b.call_on_connect(store, handle()).await?,
        )),
        (hook, _) => return Err(wasmtime::format_err!("{}", hook.missing(kind))),
    })
}
