//! The optional hooks of an HTTP policy, called only when its component
//! exports them (`worlds.rs`): the response hook and the log hook.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PolicyError;
use super::bindings::types::LogSummary;
use super::decision::{self, ResponseAction};
use super::directory::Directory;
use super::instances::{Policy, Warm};
use super::view::{RequestView, ResponseView, handle};
use super::worlds::Bindings;

impl Policy {
    /// Runs the response hook and validates its header edits. Both heads
    /// are lent to the call and are back when this returns.
    pub async fn on_response(
        &self,
        request: &mut RequestView,
        response: &mut ResponseView,
        context: Option<&[u8]>,
        directory: &Arc<dyn Directory>,
    ) -> Result<ResponseAction, PolicyError> {
        let started = Instant::now();
        let r = async {
            let _permit = self.admit().await?;
            let _busy = self.engine.ticker.busy(self.limits.timeout);
            let (mut w, until) = self.checkout(directory, started).await?;
            let Warm {
                store, bindings, ..
            } = &mut w;
            let lent = &mut store.data_mut().lent;
            std::mem::swap(&mut lent.request, request);
            std::mem::swap(&mut lent.response, response);
            let call = tokio::time::timeout_at(until, async {
                match bindings {
                    Bindings::Http {
                        response: Some(hook),
                        ..
                    } => {
                        hook.call_on_response(&mut *store, handle(), handle(), context)
                            .await
                    }
                    Bindings::HttpV0_2(b) => b
                        .call_on_response(&mut *store, handle(), handle())
                        .await
                        .map(super::v0_2::response_action),
                    _ => Err(wasmtime::format_err!(
                        "the policy does not export switchyard:policy/response-hook"
                    )),
                }
            })
            .await;
            let lent = &mut w.store.data_mut().lent;
            std::mem::swap(&mut lent.request, request);
            std::mem::swap(&mut lent.response, response);
            match call {
                Ok(Ok(ops)) => {
                    self.checkin(w);
                    decision::response_action(ops).map_err(PolicyError::InvalidDecision)
                }
                Ok(Err(e)) => Err(self.classify(e, &w.store, self.limits.timeout)),
                Err(_) => Err(self.timed_out(started)),
            }
        }
        .await;
        self.record(started, r).0
    }

    /// Runs the log hook, when the policy exports it, with how a request
    /// ended. The request is lent to the call and is back when this
    /// returns. Nothing it does changes the exchange.
    pub async fn on_log(
        &self,
        request: &mut RequestView,
        context: Option<&[u8]>,
        summary: LogSummary,
        directory: &Arc<dyn Directory>,
    ) -> (Result<(), PolicyError>, Duration) {
        let started = Instant::now();
        let r = async {
            let _permit = self.admit().await?;
            let _busy = self.engine.ticker.busy(self.limits.timeout);
            let (mut w, until) = self.checkout(directory, started).await?;
            let Warm {
                store, bindings, ..
            } = &mut w;
            std::mem::swap(&mut store.data_mut().lent.request, request);
            let call = tokio::time::timeout_at(until, async {
                match bindings {
                    Bindings::Http {
                        log: Some(hook), ..
                    } => {
                        hook.call_on_log(&mut *store, handle(), context, &summary)
                            .await
                    }
                    _ => Err(wasmtime::format_err!(
                        "the policy does not export switchyard:policy/log-hook"
                    )),
                }
            })
            .await;
            std::mem::swap(&mut w.store.data_mut().lent.request, request);
            match call {
                Ok(Ok(())) => {
                    self.checkin(w);
                    Ok(())
                }
                Ok(Err(e)) => Err(self.classify(e, &w.store, self.limits.timeout)),
                Err(_) => Err(self.timed_out(started)),
            }
        }
        .await;
        self.record(started, r)
    }
}
