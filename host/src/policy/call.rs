//! One hook call, whichever hook it is: admitted under the policy's
//! concurrency cap, a warm instance checked out and armed with the
//! deadline, the request, response and connection lent to it, the hook
//! called under its deadline and the wall-clock cap, everything lent given
//! back, and the instance returned to the pool unless the call failed.
//! Each hook is a [`Hook`]: which export to call and what it returns
//! (`instances.rs`, `hooks.rs` say what the answer means).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;

use super::bindings::types;
use super::directory::Directory;
use super::host_api::HostState;
use super::instances::{Policy, Warm};
use super::view::{ConnectionInfo, Lent, RequestView, ResponseView, handle};
use super::waits::within;
use super::worlds::Bindings;
use super::{PolicyError, PolicyKind, v0_2};

/// What a call lends the guest, swapped into the instance's store for
/// the call and back out after it, whatever the outcome.
#[derive(Default)]
pub(super) struct Loan<'a> {
    pub request: Option<&'a mut Box<RequestView>>,
    pub response: Option<&'a mut Box<ResponseView>>,
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

/// One export of a policy: how to call it in each world that has it.
pub(super) trait Hook {
    type Out;
    /// Calls the export; an error when the component does not have it.
    fn invoke(
        self,
        bindings: &Bindings,
        store: &mut Store<HostState>,
        kind: PolicyKind,
    ) -> impl Future<Output = wasmtime::Result<Self::Out>> + Send;
}

/// The error of a policy that does not export an optional hook.
fn missing(interface: &str) -> wasmtime::Error {
    wasmtime::format_err!("the policy does not export switchyard:policy/{interface}")
}

fn wrong_world(kind: PolicyKind) -> wasmtime::Error {
    wasmtime::format_err!("{}", PolicyError::WrongWorld(kind))
}

/// `on-request`.
pub(super) struct OnRequest;

impl Hook for OnRequest {
    type Out = types::Decision;
    async fn invoke(
        self,
        bindings: &Bindings,
        store: &mut Store<HostState>,
        kind: PolicyKind,
    ) -> wasmtime::Result<types::Decision> {
        match bindings {
            Bindings::Http { b, .. } => b.call_on_request(store, handle(), handle()).await,
            Bindings::HttpV0_2(b) => b
                .call_on_request(store, handle(), handle())
                .await
                .map(v0_2::decision),
            _ => Err(wrong_world(kind)),
        }
    }
}

/// `on-request-body` (`body-hook`).
pub(super) struct OnRequestBody<'a> {
    pub body: &'a [u8],
    pub context: Option<&'a [u8]>,
}

impl Hook for OnRequestBody<'_> {
    type Out = types::Decision;
    async fn invoke(
        self,
        bindings: &Bindings,
        store: &mut Store<HostState>,
        _kind: PolicyKind,
    ) -> wasmtime::Result<types::Decision> {
        match bindings {
            Bindings::Http {
                body: Some(hook), ..
            } => {
                hook.call_on_request_body(store, handle(), self.body, self.context)
                    .await
            }
            _ => Err(missing("body-hook")),
        }
    }
}

/// `on-response` (`response-hook`; 0.2's `on-response`).
pub(super) struct OnResponse<'a> {
    pub body: &'a types::ResponseBody,
    pub context: Option<&'a [u8]>,
}

impl Hook for OnResponse<'_> {
    type Out = types::ResponseAction;
    async fn invoke(
        self,
        bindings: &Bindings,
        store: &mut Store<HostState>,
        _kind: PolicyKind,
    ) -> wasmtime::Result<types::ResponseAction> {
        match bindings {
            Bindings::Http {
                response: Some(hook),
                ..
            } => {
                hook.call_on_response(store, handle(), handle(), self.body, self.context)
                    .await
            }
            Bindings::HttpV0_2(b) => b
                .call_on_response(store, handle(), handle())
                .await
                .map(v0_2::response_action),
            _ => Err(missing("response-hook")),
        }
    }
}

/// `on-log` (`log-hook`).
pub(super) struct OnLog<'a> {
    pub context: Option<&'a [u8]>,
    pub summary: &'a types::LogSummary,
}

impl Hook for OnLog<'_> {
    type Out = ();
    async fn invoke(
        self,
        bindings: &Bindings,
        store: &mut Store<HostState>,
        _kind: PolicyKind,
    ) -> wasmtime::Result<()> {
        match bindings {
            Bindings::Http {
                log: Some(hook), ..
            } => {
                hook.call_on_log(store, handle(), self.context, self.summary)
                    .await
            }
            _ => Err(missing("log-hook")),
        }
    }
}

/// `on-connect`.
pub(super) struct OnConnect;

impl Hook for OnConnect {
    type Out = types::ConnectDecision;
    async fn invoke(
        self,
        bindings: &Bindings,
        store: &mut Store<HostState>,
        kind: PolicyKind,
    ) -> wasmtime::Result<types::ConnectDecision> {
        match bindings {
            Bindings::Connection(b) => b.call_on_connect(store, handle()).await,
            Bindings::ConnectionV0_2(b) => b
                .call_on_connect(store, handle())
                .await
                .map(v0_2::connect_decision),
            _ => Err(wrong_world(kind)),
        }
    }
}

impl Policy {
    /// Calls `hook` with `loan` lent; `started` is when the caller's clock
    /// started (the call's budget counts from it).
    pub(super) async fn call<H: Hook>(
        &self,
        directory: &Arc<dyn Directory>,
        started: Instant,
        loan: &mut Loan<'_>,
        hook: H,
    ) -> Result<H::Out, PolicyError> {
        let (_permit, queued) = self.admit().await?;
        // Waiting in the queue is not the guest's time; the wall cap
        // counts it.
        let budget_from = if queued { Instant::now() } else { started };
        let _busy = self.engine.ticker.busy(self.limits.timeout);
        let (mut w, guest_until, wall) = self.checkout(directory, started, budget_from).await?;
        loan.swap(&mut w.store.data_mut().lent);
        let call = {
            let Warm {
                store,
                bindings,
                waits,
                ..
            } = &mut *w;
            let call = std::pin::pin!(hook.invoke(bindings, store, self.kind));
            within(guest_until, wall, waits, call).await
        };
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
