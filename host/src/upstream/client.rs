//! The upstream HTTP client of a pool: hyper's connections, kept alive
//! per backend, HTTP/1.1 or (with `http2 = true`) HTTP/2,
//! with the pool's connect and idle timeouts. Pools with `tls = true` speak
//! TLS through hyper-rustls (ALPN `h2` for HTTP/2 pools, none otherwise),
//! verifying each backend against the pool's `ca` (or the system roots) and
//! its `server_name` (or the backend's configured host name).

use std::collections::HashMap;

/// Connections by backend authority. The keys come from the
/// configuration, never from a client, so the map uses foldhash (already
/// in the tree through hashbrown) instead of SipHash: a request looks its
/// backend up two or three times (bench/count, keep-alive: 39,643 ->
/// 39,101 instructions per request).
type Hosts = HashMap<Box<str>, Host, foldhash::fast::RandomState>;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;
use tower_service::Service;
use tracing::debug;

use super::Backend;
use crate::config::{BackendAddress, PoolConfig};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies sent upstream: the client's body (streamed, maybe
/// size-limited) or an empty one.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// A pool's connections to its backends, keyed by backend address.
///
/// hyper-util's pooling client (`client::legacy`) did this job until
/// issue 3's profiling: per request it cloned the client and its
/// connector, hashed the pool key, checked a connection out and back in
/// through its pool, and spawned a task to return an HTTP/1.1 connection
/// once its response body ended: ~2.7 µs of the 13 µs Switchyard spent per
/// proxied request (bench/RESULTS.md). This keeps hyper's own connection
/// types (`client::conn`) and the same hyper-rustls connector, and only
/// replaces the bookkeeping:
/// - HTTP/1.1: a backend's idle connections wait in a stack; a request
///   takes the newest (O(1)), else opens one while the backend has fewer
///   than `max_connections_per_backend` open, else waits for one to come
///   back, up to the connect timeout (then [`ClientError::Saturated`]).
///   A connection comes back when its response body ends
///   ([`ResponseBody`]), with no hand-off task; past `max_idle_per_backend`
///   idle ones it is closed instead.
/// - HTTP/2: one shared connection per backend, reopened when it closes.
///   Requests that find no connection open one each, so a burst at start
///   may open a few; the last one is kept, the others close when their
///   requests end.
/// - A connection that closed (HTTP/1.1) or is going away (HTTP/2 GOAWAY)
///   before it took the request gets the request back from hyper, which is
///   then sent on a new connection.
/// - Connections idle longer than the pool's `idle_timeout_ms` are not
///   used again and are closed (at the next request, or by a sweep every
///   half idle timeout).
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    http2: bool,
    idle_timeout: Duration,
    connect_timeout: Duration,
    max_open: usize,
    max_idle: usize,
    hosts: Mutex<Hosts>,
    sweeping: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn hosts(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().expect("upstream connections")
    }
}

#[derive(Default)]
struct Host {
    /// The backend address, shared with the responses that give a
    /// connection back (a reference count, not a copy, per request).
    name: Arc<str>,
    /// Idle HTTP/1.1 connections, the most recently used last.
    h1: Vec<H1>,
    /// HTTP/1.1 connections open: idle, busy, or being opened.
    open: usize,
    /// Told when a connection comes back or closes.
    freed: Arc<tokio::sync::Notify>,
    h2: Option<H2>,
}

struct H1 {
    sender: http1::SendRequest<UpstreamBody>,
    last_used: Instant,
}

struct H2 {
    sender: http2::SendRequest<UpstreamBody>,
    last_used: Instant,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be opened (refused, unreachable, timed out, or
    /// the TLS handshake failed).
    Connect(BoxError),
    /// The connection failed after the request went out, or the response
    /// was malformed.
    Http(hyper::Error),
    /// The request itself could not be sent as given.
    Request(String),
    /// The backend's response head has framing that could be read two
    /// ways; its connection was dropped.
    Framing(&'static str),
    /// The backend has `max_connections_per_backend` connections open and
    /// none came free within the connect timeout.
    Saturated,
}

impl ClientError {
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect(_))
    }

    /// Whether the exchange failed before any response byte: the
    /// connection could not be opened, or reset or closed before the
    /// response head (not: a malformed or ambiguous response, or a failure
    /// of the request's own body).
    pub fn before_response(&self) -> bool {
        match self {
            ClientError::Connect(_) | ClientError::Saturated => true,
            ClientError::Http(e) => !(e.is_parse() || e.is_user() || e.is_parse_status()),
            ClientError::Request(_) | ClientError::Framing(_) => false,
        }
    }
}

/// A request that got no response.
#[derive(Debug)]
pub struct Failed {
    pub error: ClientError,
    /// The request, when none of it reached the backend: no connection
    /// could be opened, or the connection closed before hyper wrote it. It
    /// may go to another backend whatever its method.
    /// Boxed: failures are rare, and the `Result` stays small.
    pub unsent: Option<Box<Request<UpstreamBody>>>,
}

impl Failed {
    /// A failure before any of `req` was written.
    fn unsent(error: ClientError, req: Request<UpstreamBody>) -> Self {
        Failed {
            error,
            unsent: Some(Box::new(req)),
        }
    }
}

impl From<ClientError> for Failed {
    fn from(error: ClientError) -> Self {
        Failed {
            error,
            unsent: None,
        }
    }
}

/// The result of a send whose request hyper may hand back.
fn handed_back<T>(
    r: Result<T, hyper::client::conn::TrySendError<Request<UpstreamBody>>>,
) -> Result<T, Failed> {
    r.map_err(|mut e| {
        let unsent = e.take_message().map(Box::new);
        Failed {
            error: ClientError::Http(e.into_error()),
            unsent,
        }
    })
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(_) => f.write_str("cannot connect"),
            ClientError::Http(e) => e.fmt(f),
            ClientError::Request(why) => f.write_str(why),
            ClientError::Framing(why) => write!(f, "ambiguous response framing: {why}"),
            ClientError::Saturated => {
                f.write_str("max_connections_per_backend reached; no connection came free")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) => Some(&**e),
            // The hyper error is this error's own text; its cause (a body
            // error such as the size limit) is the source.
            ClientError::Http(e) => e.source(),
            ClientError::Request(_) | ClientError::Framing(_) | ClientError::Saturated => None,
        }
    }
}

impl Host {
    /// Drops connections that closed or idled past `idle_timeout` (an
    /// HTTP/2 connection is closed by hyper once its last stream ends).
    fn prune(&mut self, now: Instant, idle_timeout: Duration) {
        let before = self.h1.len();
        self.h1
            .retain(|c| !(c.sender.is_closed() || expired(c, now, idle_timeout)));
        if self.h1.len() < before {
            self.open -= before - self.h1.len();
            self.freed.notify_waiters();
        }
        if self
            .h2
            .as_ref()
            .is_some_and(|c| c.sender.is_closed() || now.duration_since(c.last_used) > idle_timeout)
        {
            self.h2 = None;
        }
    }
}

/// An idle HTTP/1.1 connection unused for longer than `idle_timeout`.
fn expired(c: &H1, now: Instant, idle_timeout: Duration) -> bool {
    now.duration_since(c.last_used) > idle_timeout
}

impl UpstreamClient {
    /// Sends `req` (its URI absolute: scheme and backend address) on a
    /// pooled connection, or a new one.
    pub async fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, Failed> {
        let uri = req.uri().clone();
        let Some(authority) = uri.authority().map(|a| a.as_str()) else {
            return Err(ClientError::Request(format!("no backend address in {uri}")).into());
        };
        if self.inner.http2 {
            if let Some(mut sender) = self.h2_sender(authority) {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp.map(ResponseBody::unpooled)),
                    Err(mut e) => match e.take_message() {
                        // The connection was going away (GOAWAY, or closed)
                        // before it took the request: send it on a new one.
                        Some(back) => {
                            debug!(backend = %authority, error = %e.error(), "HTTP/2 connection closing; opening another");
                            self.forget_h2(authority);
                            req = back;
                        }
                        None => return Err(ClientError::Http(e.into_error()).into()),
                    },
                }
            }
            let mut sender = match self.connect_h2(&uri, authority).await {
                Ok(s) => s,
                Err(error) => return Err(Failed::unsent(error, req)),
            };
            return handed_back(sender.try_send_request(req).await)
                .map(|r| r.map(ResponseBody::unpooled));
        }
        // HTTP/1.1 sends the origin form; Host is set by the caller.
        *req.uri_mut() = origin_form(&uri);
        let deadline = tokio::time::Instant::now() + self.inner.connect_timeout;
        loop {
            let take = {
                let now = Instant::now();
                let mut hosts = self.inner.hosts();
                // Looked up first: inserting needs an owned key, which
                // would allocate on every request.
                if !hosts.contains_key(authority) {
                    hosts.insert(
                        authority.into(),
                        Host {
                            name: authority.into(),
                            ..Host::default()
                        },
                    );
                }
                let h = hosts.get_mut(authority).expect("inserted above");
                let mut idle = None;
                while let Some(c) = h.h1.pop() {
                    if c.sender.is_closed() || expired(&c, now, self.inner.idle_timeout) {
                        h.open -= 1;
                        continue;
                    }
                    idle = Some(c);
                    break;
                }
                match idle {
                    Some(c) => Take::Idle(c, h.name.clone()),
                    None if h.open < self.inner.max_open => {
                        h.open += 1;
                        Take::Open(h.name.clone())
                    }
                    None => Take::Wait(h.freed.clone()),
                }
            };
            let fresh = matches!(take, Take::Open(_));
            let (mut conn, name) = match take {
                Take::Idle(c, name) => (c, name),
                Take::Open(name) => {
                    let sender = match self.connect_h1(&uri).await {
                        Ok(s) => s,
                        Err(error) => {
                            self.closed(authority);
                            return Err(Failed::unsent(error, req));
                        }
                    };
                    self.start_sweeping();
                    let conn = H1 {
                        sender,
                        last_used: Instant::now(),
                    };
                    (conn, name)
                }
                Take::Wait(freed) => {
                    if tokio::time::timeout_at(deadline, freed.notified())
                        .await
                        .is_err()
                    {
                        return Err(Failed::unsent(ClientError::Saturated, req));
                    }
                    continue;
                }
            };
            // A connection whose response just ended may need one more
            // poll of its task before it takes the next request.
            // A pooled one that closed meanwhile is passed over; a new one
            // that closes at once fails the request (no loop against a
            // backend that accepts and hangs up).
            if !matches!(
                tokio::time::timeout_at(deadline, conn.sender.ready()).await,
                Ok(Ok(()))
            ) {
                self.closed(authority);
                if fresh {
                    let why = "the new connection closed before it took the request";
                    return Err(Failed::unsent(ClientError::Connect(why.into()), req));
                }
                continue;
            }
            conn.last_used = Instant::now();
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    return match check_framing(resp) {
                        Ok(resp) => Ok(resp.map(|inner| ResponseBody {
                            inner,
                            back: Some(Back {
                                client: self.inner.clone(),
                                authority: name,
                                conn,
                            }),
                        })),
                        Err(e) => {
                            // Dropped, so closed, even if the body was whole.
                            self.closed(authority);
                            Err(e.into())
                        }
                    };
                }
                Err(mut e) => {
                    self.closed(authority);
                    match e.take_message() {
                        // A pooled connection closed before it took the
                        // request: try another. A new one: give it back.
                        Some(back) if !fresh => {
                            debug!(backend = %authority, error = %e.error(), "pooled connection closed; trying another");
                            req = back;
                        }
                        back => {
                            return Err(Failed {
                                error: ClientError::Http(e.into_error()),
                                unsent: back.map(Box::new),
                            });
                        }
                    }
                }
            }
        }
    }

    /// One HTTP/1.1 connection of `authority` closed (or was dropped).
    fn closed(&self, authority: &str) {
        if let Some(h) = self.inner.hosts().get_mut(authority) {
            h.open = h.open.saturating_sub(1);
            h.freed.notify_one();
        }
    }

    /// Sends an HTTP/1.1 upgrade request on a connection of its own that
    /// is never pooled: after a 101 it is the tunnel's; after any other
    /// answer it closes once the response ends, so nothing the backend
    /// may still read as this request's body can meet the next request.
    pub async fn request_unpooled(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, Failed> {
        let uri = req.uri().clone();
        *req.uri_mut() = origin_form(&uri);
        let mut sender = match self.connect_h1(&uri).await {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        let resp = handed_back(sender.try_send_request(req).await)?;
        Ok(check_framing(resp)?.map(ResponseBody::unpooled))
    }

    /// The shared HTTP/2 connection to `authority`, unless it closed or
    /// idled out.
    fn h2_sender(&self, authority: &str) -> Option<http2::SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut hosts = self.inner.hosts();
        let h = hosts.get_mut(authority)?;
        h.prune(now, self.inner.idle_timeout);
        let c = h.h2.as_mut()?;
        c.last_used = now;
        Some(c.sender.clone())
    }

    /// Stops sharing the HTTP/2 connection to `authority` (it is going
    /// away); requests in flight on it finish.
    fn forget_h2(&self, authority: &str) {
        if let Some(h) = self.inner.hosts().get_mut(authority) {
            h.h2 = None;
        }
    }

    async fn connect(
        &self,
        uri: &Uri,
    ) -> Result<
        hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>,
        ClientError,
    > {
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ClientError::Connect)?;
        connector
            .call(uri.clone())
            .await
            .map_err(ClientError::Connect)
    }

    async fn connect_h1(&self, uri: &Uri) -> Result<http1::SendRequest<UpstreamBody>, ClientError> {
        let io = self.connect(uri).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ClientError::Connect(e.into()))?;
        // With upgrades, so a 101 hands the connection to the tunnel.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(
        &self,
        uri: &Uri,
        authority: &str,
    ) -> Result<http2::SendRequest<UpstreamBody>, ClientError> {
        let io = self.connect(uri).await?;
        if uri.scheme() == Some(&http::uri::Scheme::HTTPS) && !io.connected().is_negotiated_h2() {
            return Err(ClientError::Connect(
                "the backend did not agree to HTTP/2 (ALPN h2)".into(),
            ));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| ClientError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        self.inner.hosts().entry(authority.into()).or_default().h2 = Some(H2 {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        self.start_sweeping();
        Ok(sender)
    }

    /// Starts the sweep of idle connections, once per client; it ends with
    /// the client.
    fn start_sweeping(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = (self.inner.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut hosts = inner.hosts();
                for h in hosts.values_mut() {
                    h.prune(now, inner.idle_timeout);
                }
                hosts.retain(|_, h| h.open > 0 || h.h2.is_some());
            }
        });
    }
}

/// An HTTP/1 response, unless its framing is ambiguous (the response and
/// its body are dropped, which aborts an unfinished connection).
fn check_framing(resp: Response<Incoming>) -> Result<Response<Incoming>, ClientError> {
    match crate::l7::framing::check_response_framing(resp.headers()) {
        Ok(()) => Ok(resp),
        Err(why) => Err(ClientError::Framing(why)),
    }
}

/// What the HTTP/1.1 checkout found.
enum Take {
    Idle(H1, Arc<str>),
    Open(Arc<str>),
    Wait(Arc<tokio::sync::Notify>),
}

/// A pooled HTTP/1.1 connection lent to one response, to be given back.
struct Back {
    client: Arc<Inner>,
    authority: Arc<str>,
    conn: H1,
}

impl Back {
    /// The response ended: the connection is idle again (or closed, past
    /// `max_idle_per_backend`).
    fn give(self) {
        let mut hosts = self.client.hosts();
        let Some(h) = hosts.get_mut(&*self.authority) else {
            return;
        };
        if h.h1.len() < self.client.max_idle {
            let mut conn = self.conn;
            conn.last_used = Instant::now();
            h.h1.push(conn);
        } else {
            h.open = h.open.saturating_sub(1);
        }
        h.freed.notify_one();
    }

    /// The response was dropped before its end: hyper closes the
    /// connection.
    fn drop_conn(self) {
        let mut hosts = self.client.hosts();
        if let Some(h) = hosts.get_mut(&*self.authority) {
            h.open = h.open.saturating_sub(1);
            h.freed.notify_one();
        }
    }
}

/// A backend's response body; an HTTP/1.1 one gives its connection back
/// to the pool when it ends.
pub struct ResponseBody {
    inner: Incoming,
    back: Option<Back>,
}

impl ResponseBody {
    fn unpooled(inner: Incoming) -> Self {
        ResponseBody { inner, back: None }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None) => true,
            std::task::Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(back) = this.back.take() {
            back.give();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            if hyper::body::Body::is_end_stream(&self.inner) {
                back.give();
            } else {
                back.drop_conn();
            }
        }
    }
}

/// `/path?query` of an absolute URI.
fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::from(pq)
}

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
            hosts: Mutex::new(Hosts::default()),
            sweeping: std::sync::atomic::AtomicBool::new(false),
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
