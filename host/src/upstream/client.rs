//! The upstream HTTP client of a pool: hyper-util's pooling client, keep-
//! alive connections per backend, HTTP/1.1 or (with `http2 = true`) HTTP/2
//! prior knowledge, with the pool's connect and idle timeouts.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::PoolConfig;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies sent upstream: the client's body (streamed, maybe
/// size-limited) or an empty one.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

pub fn build(c: &PoolConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(c.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(c.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(c.http2)
        // The proxy sets Host itself, from the client's request.
        .set_host(false)
        .build(connector)
}
