//! Proxy errors and the one place that maps them to HTTP statuses:
//! nothing available → 503, upstream unreachable or broken → 502, upstream
//! too slow → 504, request too large → 413, a Host the TLS connection was
//! not made for → 421, a request Switchyard will not forward as it could
//! be read two ways (framing, Host, path) → 400, 414 or 501.

use bytes::Bytes;
use http::{Response, StatusCode, header};

use crate::l7::framing::Refusal;
use crate::l7::path::PathError;
use crate::policy::PolicyError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no pool to send to: {0}")]
    NoPool(String),
    #[error("no backend available in pool {pool}")]
    NoBackend { pool: String },
    #[error("cannot connect to backend {backend} of pool {pool}: {cause}")]
    Connect {
        pool: String,
        backend: String,
        cause: String,
    },
    #[error("backend {backend} of pool {pool} did not answer within {timeout_ms} ms")]
    Timeout {
        pool: String,
        backend: String,
        timeout_ms: u128,
    },
    #[error("backend {backend} of pool {pool} failed: {cause}")]
    Upstream {
        pool: String,
        backend: String,
        cause: String,
    },
    #[error("policy failed and on_error = \"reject\": {0}")]
    PolicyRejected(PolicyError),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request for {host:?} on a TLS connection made for {sni:?}")]
    Misdirected { sni: String, host: String },
    #[error("request refused: {0:?}")]
    Refused(Refusal),
    #[error("bad request path: {0}")]
    BadPath(PathError),
    #[error("the policy's rewritten path is refused: {0}")]
    BadRewrite(PathError),
    /// The client's body broke its own framing (a bad chunk size, fewer
    /// bytes than its Content-Length) after the head went upstream: the
    /// client's fault, not the backend's.
    #[error("the request body is malformed: {0}")]
    BadRequestBody(String),
    /// The client's body sent nothing for `request_body_timeout_ms`, or
    /// was still coming when the response timeout fired.
    #[error("the request body was too slow")]
    BodyTimeout,
    /// `max_connections_per_backend` open and none came free in time.
    #[error("backend {backend} of pool {pool} has no connection free")]
    Saturated { pool: String, backend: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoPool(_)
            | ProxyError::NoBackend { .. }
            | ProxyError::Saturated { .. }
            | ProxyError::PolicyRejected(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Refused(Refusal::BadRequest(_))
            | ProxyError::BadPath(_)
            | ProxyError::BadRewrite(_)
            | ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Refused(Refusal::UriTooLong(_)) => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Refused(Refusal::NotImplemented(_)) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Whether the client connection must close after this answer: its
    /// framing can no longer be trusted (RFC 9112 §6.3, §11.2).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::Refused(_) | ProxyError::BadRequestBody(_) | ProxyError::BodyTimeout
        )
    }
}

/// A short plain-text response from the proxy itself.
pub fn plain(status: StatusCode) -> Response<Bytes> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(Bytes::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether an HTTP/1.x request's body may still be on its way: if the
/// proxy answers it itself, hyper reads what it already holds of the body
/// and closes the connection otherwise, and it decides that only after it
/// may have sent the head. That head then says nothing of the close, and
/// a client that sent the whole body takes the connection for reusable
/// and loses its next request to the close ([`closing`]).
pub(super) fn body_left<B: hyper::body::Body>(req: &http::Request<B>) -> bool {
    req.version() < http::Version::HTTP_2 && !req.body().is_end_stream()
}

/// Says `Connection: close` on an answer the proxy gives to a request
/// whose body it did not read to the end ([`body_left`]): the client
/// knows the connection ends, and hyper closes it (with a lingering
/// close, `guard.rs`).
pub(super) fn closing<B>(resp: &mut Response<B>) {
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
}
