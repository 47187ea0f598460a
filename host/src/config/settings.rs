//! A checked listener: [`Listener<P>`], the keys every listener has, and
//! `P`, its protocol's own (`HttpSettings`, `TcpSettings`,
//! `UdpSettings`). Built by `listeners.rs`.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use super::limits::{EscapedSlashes, Format};
use super::{ListenerTls, OnError, Protocol};

/// A checked `[listeners.NAME]`: the keys every listener has, and `P`, the
/// keys of its protocol. It derefs to `P`, so code that holds a
/// `Listener<HttpSettings>` writes `cfg.send_timeout`, and code that holds
/// a `Listener<TcpSettings>` cannot name an HTTP key at all.
#[derive(Debug, Clone)]
pub struct Listener<P> {
    pub bind: SocketAddr,
    pub pool: Option<String>,
    /// The policy's name: `policies/<name>.wasm`.
    pub policy: Option<String>,
    pub on_error: OnError,
    /// Another config for the policy than `<policy>.json`.
    pub policy_config: Option<PathBuf>,
    /// http: connections served at once; tcp: past it a new connection is
    /// reset; udp: flows at once.
    pub max_connections: usize,
    /// One access-log line per request, connection or flow.
    pub access_log: Format,
    pub settings: P,
}

impl<P> Deref for Listener<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.settings
    }
}

/// A listener as the configuration holds it, before it is served.
pub type ListenerConfig = Listener<ProtocolSettings>;

#[derive(Debug, Clone)]
pub enum ProtocolSettings {
    /// Boxed: five times the size of the others.
    Http(Box<HttpSettings>),
    Tcp(TcpSettings),
    Udp(UdpSettings),
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub max_request_body_bytes: Option<u64>,
    /// The most body bytes a policy may ask to read (request or response).
    pub max_policy_body_bytes: u64,
    /// The pools the policy may send `http-call`s to.
    pub policy_call_pools: Vec<String>,
    /// The longest one `http-call` may take.
    pub policy_call_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Peers whose `X-Forwarded-For` (and PROXY header) is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection must start with a PROXY protocol v1/v2 header from
    /// a `trusted_proxies` peer; others are closed.
    pub accept_proxy_protocol: bool,
    pub http2_max_concurrent_streams: u32,
    /// TLS termination.
    pub tls: Option<ListenerTls>,
    /// Sampled request heads for `policy replay`.
    pub capture: Option<super::rollout::Capture>,
    /// The longest request target accepted (414 beyond).
    pub max_uri_bytes: usize,
    /// Normalize paths (`l7/path.rs`); off passes them raw.
    pub normalize_path: bool,
    /// Give each request an `X-Request-Id` and a W3C `traceparent`
    /// (`l7/trace.rs`).
    pub request_ids: bool,
    /// What `%2F`, `%5C` and `\` in a path do.
    pub path_with_escaped_slashes: EscapedSlashes,
    /// The longest wait for a connection's first byte.
    pub first_byte_timeout: Duration,
    /// The longest a write to the client may make no progress.
    pub send_timeout: Duration,
    /// The longest a lingering close reads after an unread request body.
    pub lingering_time: Duration,
    /// The longest a request body may send nothing.
    pub request_body_timeout: Duration,
    /// HTTP/2 PING interval, and the wait for its ack.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// An upgraded tunnel quiet this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// A connection with no request in progress this long is shut down.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Peers allowed to send a PROXY header.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub accept_proxy_protocol: bool,
    /// Read the ClientHello (bounded by `sni_peek_timeout` and 16 KiB) so
    /// the policy sees SNI and ALPN.
    pub peek_sni: bool,
    pub sni_peek_timeout: Duration,
    /// A connection with no bytes either way this long is closed.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct UdpSettings {
    /// A flow with no datagram either way this long is forgotten.
    pub idle_timeout: Duration,
    /// New flows one source address may start per second.
    pub new_flows_per_source_per_second: u32,
}

impl ListenerConfig {
    pub fn protocol(&self) -> Protocol {
        match self.settings {
            ProtocolSettings::Http(_) => Protocol::Http,
            ProtocolSettings::Tcp(_) => Protocol::Tcp,
            ProtocolSettings::Udp(_) => Protocol::Udp,
        }
    }

    /// Peers whose PROXY header is read, when connections must start with
    /// one.
    pub fn proxy_protocol_from(&self) -> Option<&[ipnet::IpNet]> {
        match &self.settings {
            ProtocolSettings::Http(h) if h.accept_proxy_protocol => Some(&h.trusted_proxies),
            ProtocolSettings::Tcp(t) if t.accept_proxy_protocol => Some(&t.trusted_proxies),
            _ => None,
        }
    }

    /// The same listener with `settings`: its protocol's, taken out of
    /// [`ProtocolSettings`] by the caller's `match`.
    pub fn with<P: Clone>(&self, settings: &P) -> Listener<P> {
        Listener {
            settings: settings.clone(),
            bind: self.bind,
            pool: self.pool.clone(),
            policy: self.policy.clone(),
            on_error: self.on_error,
            policy_config: self.policy_config.clone(),
            max_connections: self.max_connections,
            access_log: self.access_log,
        }
    }
}
