//! A policy's `http-call`: a request to a backend of a pool its listener
//! allows (`policy_call_pools`), through the pool's own client, balancing,
//! health and TLS, within `policy_call_timeout_ms`, its response read
//! whole up to [`MAX_CALL_BODY_BYTES`]. [`PolicyCalls`] is the listener's
//! view of the pools for its policy: the pools as [`Upstreams`] shows them,
//! plus the calls it may make.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};

use super::health::{self, Outcome};
use super::pool::Upstreams;
use super::{Pool, UpstreamBody};
use crate::policy::bindings::http_client::{CallError, IncomingResponse, OutgoingRequest};
use crate::policy::bindings::types::{Backend, Header};
use crate::policy::directory::{CallFuture, Directory};

/// The largest request or response body of one call.
pub const MAX_CALL_BODY_BYTES: usize = 1 << 20;

/// The pools a listener's policy sees, and the ones it may call.
pub struct PolicyCalls {
    pub upstreams: Arc<Upstreams>,
    /// `policy_call_pools`.
    pub allowed: Vec<String>,
    /// `policy_call_timeout_ms`: the whole call, response body included.
    pub timeout: Duration,
}

impl Directory for PolicyCalls {
    fn backends(&self, pool: &str) -> Option<Vec<Backend>> {
        self.upstreams.backends(pool)
    }

    fn check(&self, pool: &str, backend: Option<&str>) -> Result<(), String> {
        self.upstreams.check(pool, backend)
    }

    fn http_call(&self, pool: &str, request: OutgoingRequest) -> CallFuture {
        let found = self
            .allowed
            .iter()
            .any(|p| p == pool)
            .then(|| self.upstreams.pool(pool).cloned())
            .flatten();
        let Some(pool) = found else {
            let why = format!("pool {pool:?} is not in this listener's policy_call_pools");
            return Box::pin(std::future::ready(Err(CallError::NotAllowed(why))));
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let req = build(request)?;
            tokio::time::timeout(timeout, call(&pool, req))
                .await
                .unwrap_or(Err(CallError::Timeout))
        })
    }
}

/// The request, checked as strictly as a policy's decision: what is not
/// valid HTTP, or a header that is the host's, is refused.
fn build(r: OutgoingRequest) -> Result<Request<(String, Bytes)>, CallError> {
    let invalid = |why: String| CallError::InvalidRequest(why);
    let method = Method::from_bytes(r.method.as_bytes())
        .map_err(|_| invalid(format!("method {:?} is not a token", r.method)))?;
    if !r.path.starts_with('/') {
        return Err(invalid(format!(
            "path {:?} does not start with '/'",
            r.path
        )));
    }
    let path = http::uri::PathAndQuery::try_from(r.path.as_str())
        .map_err(|_| invalid(format!("path {:?} is not a valid request path", r.path)))?;
    if r.body.len() > MAX_CALL_BODY_BYTES {
        return Err(invalid(format!("a body of {} bytes", r.body.len())));
    }
    let mut req = Request::new((path.to_string(), Bytes::from(r.body)));
    *req.method_mut() = method;
    for Header { name, value } in &r.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("{name:?} is not a header name")))?;
        if crate::headers::host_only(&n) {
            return Err(invalid(format!("header {:?} is the host's", n.as_str())));
        }
        let v = HeaderValue::from_str(value)
            .map_err(|_| invalid(format!("the value of {name:?} is not a header value")))?;
        req.headers_mut().append(n, v);
    }
    Ok(req)
}

/// One call: a backend picked by the pool's algorithm, the request sent
/// through the pool's client, the response read whole. The outcome counts
/// for the backend's health as a proxied request's does.
async fn call(
    pool: &Arc<Pool>,
    req: Request<(String, Bytes)>,
) -> Result<IncomingResponse, CallError> {
    let unavailable = |why: String| CallError::Unavailable(why);
    let backend = pool
        .choose(None, None)
        .ok_or_else(|| unavailable(format!("no backend available in pool {}", pool.name)))?;
    let at = backend.address();
    let (mut parts, (path, body)) = req.into_parts();
    let scheme = if pool.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    parts.uri = Uri::try_from(format!("{scheme}://{}{path}", at.authority))
        .map_err(|e| unavailable(format!("cannot build the URI: {e}")))?;
    parts.version = if pool.config.http2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    if !body.is_empty() {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body: UpstreamBody = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let _in_flight = backend.start();
    let resp = match pool.client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(failed) => {
            health::report(pool, &backend, Outcome::Failure);
            return Err(unavailable(format!(
                "backend {} of pool {}: {}",
                backend.name, pool.name, failed.error
            )));
        }
    };
    health::report(pool, &backend, Outcome::Status(resp.status().as_u16()));
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_CALL_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                CallError::TooLarge
            } else {
                unavailable(format!("the response body failed: {e}"))
            }
        })?
        .to_bytes();
    let mut headers = parts.headers;
    for n in &crate::headers::HOP_BY_HOP {
        headers.remove(n);
    }
    Ok(IncomingResponse {
        status: parts.status.as_u16(),
        headers: headers
            .iter()
            .map(|(n, v)| Header {
                name: n.as_str().to_owned(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            })
            .collect(),
        body: body.to_vec(),
    })
}
