//! The per-request context every phase of the L7 path reads and adds to
//! (Pingora's `CTX`): what was settled about the client, what the policy
//! decided and where the request went, for the phases after and for the
//! log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Uri, Version};

use crate::admin::metrics::Label;
use crate::policy::{Directory, RequestView};

pub(super) struct Ctx {
    /// When the request head was handed over.
    pub started: Instant,
    /// The request line as the client sent it, for the log. The URI is
    /// kept only when something logs it: the access log, a debug log, or
    /// a failure's warning ([`Ctx::keep_uri`]).
    pub method: Method,
    pub uri: Option<Uri>,
    pub version: Version,
    /// `default` (no policy), `forward`, `respond`, `reject` or
    /// `fallback` (the policy failed).
    pub decision: &'static str,
    pub pool: Option<Label>,
    pub backend: Option<Label>,
    /// Time to the backend's response head, when something logs it.
    pub upstream: Option<Duration>,
    /// The connection's peer (after a trusted PROXY header, the client
    /// that header named), as logged.
    pub peer: SocketAddr,
    /// The client: the peer, or the address a trusted proxy named in
    /// `X-Forwarded-For` (`trusted_proxies`).
    pub client: SocketAddr,
    /// Whether the peer itself is a trusted proxy (its forwarding headers
    /// are extended, not replaced).
    pub trusted_peer: bool,
    /// The authority the client named (`:authority` or `Host`), as sent.
    pub client_host: Option<HeaderValue>,
    /// The backends the policy may read, made at the first policy call.
    pub directory: Option<Arc<dyn Directory>>,
    /// The request head as the policy saw it, kept for `on-response` and
    /// `on-log`.
    pub snapshot: Option<Box<RequestView>>,
    /// The policy exports the log hook: what it is told is kept
    /// (`log_hook.rs`).
    pub log_hook: bool,
    /// The forward decision's context, kept for `on-log`.
    pub context: Option<Vec<u8>>,
    /// What counts the client's body bytes, kept for `on-log` and the
    /// access log.
    pub request_body: Option<Arc<super::body::BodyFault>>,
    /// The request's `User-Agent`, `Referer`, request id and trace id,
    /// kept (boxed, so a request that is not logged carries one pointer)
    /// for the access log.
    pub agent: Option<Box<[Option<String>; 4]>>,
    /// With a shadow running: the request as the policy saw it and the
    /// decision acted on, for the shadow's call after the response.
    pub shadow: Option<Box<ShadowCall>>,
}

/// A request a shadow decides after the serving version (`logging.rs`).
pub(super) struct ShadowCall {
    pub view: Box<RequestView>,
    pub live: crate::policy::HttpDecision,
    pub info: Arc<crate::policy::ConnectionInfo>,
}

impl Ctx {
    /// `logged`: whether this request's line is written whatever happens
    /// (an access log, or debug logging).
    pub fn new<B>(req: &Request<B>, peer: SocketAddr, logged: bool) -> Self {
        Ctx {
            started: Instant::now(),
            method: req.method().clone(),
            uri: logged.then(|| req.uri().clone()),
            version: req.version(),
            decision: "default",
            pool: None,
            backend: None,
            upstream: None,
            peer,
            client: peer,
            trusted_peer: false,
            client_host: None,
            directory: None,
            snapshot: None,
            log_hook: false,
            context: None,
            request_body: None,
            shadow: None,
            agent: logged.then(|| {
                let h = |n| {
                    req.headers()
                        .get(n)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                };
                Box::new([
                    h(http::header::USER_AGENT),
                    h(http::header::REFERER),
                    None,
                    None,
                ])
            }),
        }
    }

    /// Keeps the URI for the log of a request that failed.
    pub fn keep_uri(&mut self, uri: &Uri) {
        if self.uri.is_none() {
            self.uri = Some(uri.clone());
        }
    }

    /// The path as logged.
    pub fn path(&self) -> &str {
        self.uri.as_ref().map_or("", Uri::path)
    }

    pub fn client_ip(&self) -> IpAddr {
        self.client.ip()
    }
}
