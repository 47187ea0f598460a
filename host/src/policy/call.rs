//! One hook call, whichever hook it is: admitted under the policy's
//! concurrency cap, a warm instance checked out and armed with the
//! deadline, the request, response and connection lent to it, the hook
//! called under the wall-clock cap, everything lent given back, and the
//! instance returned to the pool unless the call failed. The hooks
//! (`instances.rs`, `hooks.rs`) only say which export to call and what
//! its answer means.

use std::sync::Arc;
use std::time::Instant;

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
        let _permit = self.admit().await?;
        let _busy = self.engine.ticker.busy(self.limits.timeout);
        let (mut w, until) = self.checkout(directory, started).await?;
        loan.swap(&mut w.store.data_mut().lent);
        let Warm {
            store, bindings, ..
        } = &mut w;
        let call = tokio::time::timeout_at(until, invoke(bindings, store, hook, self.kind)).await;
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
