//! The optional hooks of an HTTP policy, called only when its component
//! exports them (`worlds.rs`): the body hook, the response hook and the
//! log hook.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PolicyError;
use super::bindings::types::{LogSummary, ResponseBody};
use super::call::{Loan, OnLog, OnRequestBody, OnResponse};
use super::decision::{self, HttpDecision, ResponseAction};
use super::directory::Directory;
use super::instances::Policy;
use super::view::{RequestView, ResponseView};

impl Policy {
    /// Runs the body hook with the request body `on-request` asked for,
    /// and validates its final decision (which may not ask for the body
    /// again). The request is lent to the call and is back when this
    /// returns.
    pub async fn on_request_body(
        &self,
        request: &mut Box<RequestView>,
        body: &[u8],
        context: Option<&[u8]>,
        default_pool: Option<&str>,
        directory: &Arc<dyn Directory>,
    ) -> (Result<HttpDecision, PolicyError>, Duration) {
        let started = Instant::now();
        let mut loan = Loan {
            request: Some(request),
            ..Loan::default()
        };
        let hook = OnRequestBody { body, context };
        let called = self.call(directory, started, &mut loan, hook).await;
        let r = called.and_then(|d| {
            decision::http(d, default_pool, directory.as_ref(), self.allowed_later())
                .map_err(PolicyError::InvalidDecision)
        });
        let took = self.record(started, &r);
        (r, took)
    }

    /// Runs the response hook and validates its action. Both heads are
    /// lent to the call and are back when this returns.
    pub async fn on_response(
        &self,
        request: &mut Box<RequestView>,
        response: &mut Box<ResponseView>,
        body: &ResponseBody,
        context: Option<&[u8]>,
        directory: &Arc<dyn Directory>,
    ) -> Result<ResponseAction, PolicyError> {
        let started = Instant::now();
        let mut loan = Loan {
            request: Some(request),
            response: Some(response),
            connection: None,
        };
        let hook = OnResponse { body, context };
        let called = self.call(directory, started, &mut loan, hook).await;
        let r =
            called.and_then(|a| decision::response_action(a).map_err(PolicyError::InvalidDecision));
        self.record(started, &r);
        r
    }

    /// Runs the log hook, when the policy exports it, with how a request
    /// ended. The request is lent to the call and is back when this
    /// returns. Nothing it does changes the exchange.
    pub async fn on_log(
        &self,
        request: &mut Box<RequestView>,
        context: Option<&[u8]>,
        summary: LogSummary,
        directory: &Arc<dyn Directory>,
    ) -> (Result<(), PolicyError>, Duration) {
        let started = Instant::now();
        let mut loan = Loan {
            request: Some(request),
            ..Loan::default()
        };
        let hook = OnLog {
            context,
            summary: &summary,
        };
        let r = self.call(directory, started, &mut loan, hook).await;
        let took = self.record(started, &r);
        (r, took)
    }
}
