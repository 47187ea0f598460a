//! A pool's client, built from its configuration: the connector (TCP
//! with the pool's connect timeout, TLS through hyper-rustls) and the
//! limits of its connections.

use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName;

use super::super::Backend;
use super::{Inner, UpstreamClient};
use crate::config::PoolConfig;

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
    Ok(UpstreamClient {
        inner: Arc::new(Inner {
            connector,
            http2: c.http2,
            idle_timeout: c.idle_timeout,
            hosts: Default::default(),
            sweeping: Default::default(),
            connect_timeout: c.connect_timeout,
            max_open: c.max_connections_per_backend,
            max_idle: c.max_idle_per_backend,
        }),
    })
}

/// The name a backend's certificate is checked against: its configured
/// host (a DNS name, or the IP address).
fn server_name(uri: &http::Uri, backends: &[Arc<Backend>]) -> String {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    backends
        .iter()
        .find(|b| b.address().authority == authority)
        .map(|b| b.tls_name.clone())
        .unwrap_or_else(|| {
            uri.host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
}
