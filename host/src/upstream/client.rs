//! The upstream HTTP client of a pool: hyper-util's pooling client, keep-
//! alive connections per backend, HTTP/1.1 or (with `http2 = true`) HTTP/2,
//! with the pool's connect and idle timeouts. Pools with `tls = true` speak
//! TLS through hyper-rustls (ALPN `h2` for HTTP/2 pools, none otherwise),
//! verifying each backend against the pool's `ca` (or the system roots) and
//! its `server_name` (or the backend's configured host name).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use super::Backend;
use crate::config::{BackendAddress, PoolConfig};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies sent upstream: the client's body (streamed, maybe
/// size-limited) or an empty one.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// The client of pool `name`; an error names the key and file at fault.
pub fn build(
    name: &str,
    c: &PoolConfig,
    backends: &[Arc<Backend>],
) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(c.connect_timeout));
    http.set_nodelay(true);
    // The TLS wrapper checks the scheme: `https` only for TLS pools.
    http.enforce_http(false);
    let connector = match &c.tls {
        None => {
            // Never used for TLS (the pool's URIs are `http`); a config
            // that trusts nothing, so it could not be by mistake.
            let plain = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(plain)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        }
        Some(tls) => {
            // ALPN is the connector's: `h2` for HTTP/2 pools, none (so
            // HTTP/1.1) for the others.
            let config = crate::tls::client_config(name, tls)?;
            let fixed = tls.server_name.clone();
            let backends = backends.to_vec();
            let names = move |uri: &http::Uri| {
                let name = fixed.clone().unwrap_or_else(|| server_name(uri, &backends));
                ServerName::try_from(name)
            };
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .with_server_name_resolver(names);
            if c.http2 {
                builder.enable_http2().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            }
        }
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(c.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(c.http2)
        // The proxy sets Host itself, from the client's request.
        .set_host(false)
        .build(connector))
}

/// The name a backend's certificate is checked against: its configured
/// host (a DNS name, or the IP address).
fn server_name(uri: &http::Uri, backends: &[Arc<Backend>]) -> String {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    backends
        .iter()
        .find(|b| b.address().is_some_and(|r| r.authority == authority))
        .map(|b| match &b.configured {
            BackendAddress::Ip(a) => a.ip().to_string(),
            BackendAddress::Name { host, .. } => host.clone(),
        })
        .unwrap_or_else(|| {
            uri.host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
}
