//! `[listeners.NAME]` as written, with its TLS table and defaults.

use std::path::PathBuf;

use serde::Deserialize;

use super::yes;

fn default_max_connections() -> usize {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Go on as if the policy had not been there: the listener's pool and
    /// its algorithm. Only for policies that steer, never for ones that
    /// deny: a client who can make the policy fail turns the rule off.
    Fallback,
    /// Fail closed (the default, as Envoy's ext_authz and proxy-wasm do):
    /// 503 at L7, a closed connection at L4.
    #[default]
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub protocol: Protocol,
    pub bind: String,
    pub pool: Option<String>,
    pub policy: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    pub policy_config: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    // The keys below only some protocols read. They are `Option`s, so that
    // one set on a listener whose protocol does not read it is refused by
    // name (`config/listeners.rs`); the defaults are filled in there.
    /// http (default 10000).
    pub header_read_timeout_ms: Option<u64>,
    pub max_request_body_bytes: Option<u64>,
    /// http (default 1 MiB): the most body bytes a policy may read.
    pub max_policy_body_bytes: Option<u64>,
    /// http: the pools the policy may send `http-call`s to.
    pub policy_call_pools: Option<Vec<String>>,
    /// http (default 1000): one `http-call`, response body included.
    pub policy_call_timeout_ms: Option<u64>,
    /// http (default 65536).
    pub max_header_bytes: Option<usize>,
    /// http (default 100).
    pub max_headers: Option<usize>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub accept_proxy_protocol: bool,
    #[serde(default)]
    pub access_log: super::super::limits::Format,
    /// http (default 200).
    pub http2_max_concurrent_streams: Option<u32>,
    /// tcp: read the TLS ClientHello for SNI/ALPN before calling the policy
    /// (default: on when the listener has a policy).
    pub peek_sni: Option<bool>,
    /// tcp (default 1000).
    pub sni_peek_timeout_ms: Option<u64>,
    /// tcp/udp: close a connection or forget a flow idle this long
    /// (default 300 000 for tcp, 60 000 for udp).
    pub idle_timeout_ms: Option<u64>,
    /// http: terminate TLS (`[listeners.NAME.tls]`).
    pub tls: Option<TlsFile>,
    pub capture: Option<super::super::rollout::CaptureFile>,
    /// http: the longest request target accepted (414 beyond; default 8192).
    pub max_uri_bytes: Option<usize>,
    /// http: normalize the path before the policy and the backend see it
    /// (default true).
    pub normalize_path: Option<bool>,
    /// http: stamp X-Request-Id and traceparent (default true).
    pub request_ids: Option<bool>,
    /// http: what `%2F`, `%5C` and `\` in a path do (default reject).
    pub path_with_escaped_slashes: Option<super::super::limits::EscapedSlashes>,
    /// http: the first byte of a connection must come within this
    /// (default: header_read_timeout_ms).
    pub first_byte_timeout_ms: Option<u64>,
    /// http: a write to the client that makes no progress this long ends
    /// the connection (default 60000).
    pub send_timeout_ms: Option<u64>,
    /// http: the longest a close after an unread request body reads and
    /// drops what the client still sends (default 30000).
    pub lingering_time_ms: Option<u64>,
    /// http: a request body that sends nothing this long is 408 (default
    /// 60000).
    pub request_body_timeout_ms: Option<u64>,
    /// http: HTTP/2 PING interval and the wait for its ack (default 30000
    /// and 20000).
    pub http2_keepalive_interval_ms: Option<u64>,
    pub http2_keepalive_timeout_ms: Option<u64>,
    /// http: an upgraded tunnel with no byte either way this long is
    /// closed (default 300000).
    pub tunnel_idle_timeout_ms: Option<u64>,
    /// udp: new flows one source address may start per second (default
    /// 100).
    pub new_flows_per_source_per_second: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSni {
    /// Serve the default certificate.
    #[default]
    Default,
    /// Fail the handshake.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub certs: Vec<CertFile>,
    pub default: Option<CertFile>,
    #[serde(default)]
    pub unknown_sni: UnknownSni,
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Answer 421 when a request's Host is not the name the TLS connection
    /// was made for.
    #[serde(default = "yes")]
    pub check_host: bool,
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}
