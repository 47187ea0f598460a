//! One attempt of the upstream exchange: send a request to one backend
//! within the pool's response timeout, and say what a failure means: the
//! client's fault (its body), a busy backend, or a failure the request
//! may be resent after (`retry_on`).

use std::sync::Arc;

use http::{Request, Response};

use super::body::{BodyFailure, BodyFault, body_error};
use super::error::ProxyError;
use crate::admin::Metrics;
use crate::upstream::health::{self, Outcome};
use crate::upstream::{Backend, Failed, InFlight, Pool, ResponseBody, UpstreamBody};

/// Which resendable failure an attempt met (`retry_on`).
#[derive(Debug, Clone, Copy)]
pub(super) enum FailureClass {
    /// No connection, or reset/closed before the response head.
    Error,
    /// No response head within `response_timeout_ms`.
    Timeout,
}

/// One attempt that got no response.
pub(super) struct FailedAttempt {
    pub(super) error: ProxyError,
    /// The request, when none of it reached the backend.
    pub(super) unsent: Option<Box<Request<UpstreamBody>>>,
    /// `None`: not resendable (the response had started, or the client's
    /// body failed).
    pub(super) class: Option<FailureClass>,
}

/// How one request is sent.
pub(super) struct SendHow<'a> {
    /// On a connection of its own, never pooled (an upgrade).
    pub(super) unpooled: bool,
    /// Where the client's body notes how it failed, when it has one.
    pub(super) fault: Option<&'a BodyFault>,
    /// The listener's `max_request_body_bytes`, for the 413's text.
    pub(super) limit: u64,
}

/// Sends one request to one backend, counting it in flight, within the
/// pool's response timeout. A failure of the client's own body is the
/// client's (400 or 413), not counted against the backend.
pub(super) async fn send(
    metrics: &Metrics,
    pool: &Pool,
    backend: &Arc<Backend>,
    req: Request<UpstreamBody>,
    how: &SendHow<'_>,
) -> Result<(Response<ResponseBody>, InFlight), FailedAttempt> {
    let in_flight = backend.start();
    let timeout = pool.config.response_timeout;
    // Pinned where it is built, so the timeout wraps a pointer to it
    // rather than moving it (and the request in it) again.
    let exchange = std::pin::pin!(async {
        if how.unpooled {
            pool.client.request_unpooled(req).await
        } else {
            pool.client.request(req).await
        }
    });
    let result = tokio::time::timeout(timeout, exchange).await;
    if let Some(failed) = clients_fault(&result, how) {
        return Err(failed);
    }
    // No connection came free: the backend is busy, not failing. Another
    // backend may take the request (none of it was sent).
    let result = match result {
        Ok(Err(Failed {
            error: crate::upstream::ClientError::Saturated,
            unsent,
        })) => {
            return Err(FailedAttempt {
                error: ProxyError::Saturated {
                    pool: pool.name.to_string(),
                    backend: backend.name.to_string(),
                },
                unsent,
                class: Some(FailureClass::Error),
            });
        }
        other => other,
    };
    let outcome = match &result {
        Ok(Ok(resp)) => Outcome::Status(resp.status().as_u16()),
        _ => Outcome::Failure,
    };
    health::report(pool, backend, outcome);
    match &result {
        Ok(Err(f)) if f.error.is_connect() => {
            metrics.connect_error(&pool.name, &backend.name, "connect")
        }
        Ok(Err(_)) => metrics.connect_error(&pool.name, &backend.name, "reset"),
        Err(_) => metrics.connect_error(&pool.name, &backend.name, "timeout"),
        Ok(Ok(_)) => {}
    }
    match result {
        Ok(Ok(resp)) => Ok((resp, in_flight)),
        Ok(Err(failed)) => Err(upstream_failure(pool, backend, failed)),
        Err(_) => Err(FailedAttempt {
            error: ProxyError::Timeout {
                pool: pool.name.to_string(),
                backend: backend.name.to_string(),
                timeout_ms: timeout.as_millis(),
            },
            unsent: None,
            class: Some(FailureClass::Timeout),
        }),
    }
}

/// The client's own body failed, or it was still coming when the
/// response timeout fired: the client's fault (400, 413 or 408), never
/// the backend's.
fn clients_fault<T, E>(
    result: &Result<Result<T, E>, tokio::time::error::Elapsed>,
    how: &SendHow<'_>,
) -> Option<FailedAttempt> {
    let fault = how.fault?;
    let theirs = match result {
        Ok(Err(_)) => fault.0.get().is_some(),
        Err(_) => fault.0.get().is_some() || fault.waiting_on_client(),
        Ok(Ok(_)) => false,
    };
    theirs.then(|| FailedAttempt {
        error: body_error(Some(fault.0.get().unwrap_or(&BodyFailure::Idle)), how.limit),
        unsent: None,
        class: None,
    })
}

/// An exchange that failed on the backend's side: a connect error, or a
/// reset or close (resendable when no response byte had come).
fn upstream_failure(pool: &Pool, backend: &Backend, failed: Failed) -> FailedAttempt {
    let Failed { error, unsent } = failed;
    let cause = error_chain(&error);
    let class = error.before_response().then_some(FailureClass::Error);
    let (pool, backend) = (pool.name.to_string(), backend.name.to_string());
    let error = if error.is_connect() {
        ProxyError::Connect {
            pool,
            backend,
            cause,
        }
    } else {
        ProxyError::Upstream {
            pool,
            backend,
            cause,
        }
    };
    FailedAttempt {
        error,
        unsent,
        class,
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
