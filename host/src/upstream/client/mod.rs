//! The upstream HTTP client of a pool: hyper's connections, kept alive
//! per backend, HTTP/1.1 or (with `http2 = true`) HTTP/2,
//! with the pool's connect and idle timeouts. Pools with `tls = true` speak
//! TLS through hyper-rustls (ALPN `h2` for HTTP/2 pools, none otherwise),
//! verifying each backend against the pool's `ca` (or the system roots) and
//! its `server_name` (or the backend's configured host name).

/// Connections by backend authority. The keys come from the
/// configuration, never from a client, so the map uses foldhash (already
/// in the tree through hashbrown) instead of SipHash: a request looks its
/// backend up two or three times (bench/count, keep-alive: 39,643 ->
/// 39,101 instructions per request).
type Hosts = hashbrown::HashMap<Box<str>, Host, foldhash::fast::RandomState>;
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
use tower_service::Service;
use tracing::debug;

use crate::workers::PerWorker;

mod body;
mod build;
mod error;
mod h1;

use body::Back;
pub use body::ResponseBody;
pub use build::build;
use error::handed_back;
pub use error::{ClientError, Failed};
use h1::{Slot, connect_uri, origin_form, ready, to_origin_form};

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
    /// Each worker's own connections (`workers.rs`): a worker never
    /// takes a lock another one takes on its requests, nor wakes it.
    hosts: PerWorker<Mutex<Hosts>>,
    /// Whether a worker's sweep of idle connections runs.
    sweeping: PerWorker<std::sync::atomic::AtomicBool>,
}

impl Inner {
    /// The connections of worker `shard`.
    fn hosts(&self, shard: usize) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.get(shard).lock().expect("upstream connections")
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
        if self.inner.http2 {
            return self.request_h2(req).await;
        }
        let (scheme, backend) = match to_origin_form(&mut req) {
            Ok(x) => x,
            Err(e) => return Err(e.into()),
        };
        let authority = backend.as_str();
        let shard = self.inner.hosts.local().0;
        // Read from the clock only when something has to wait.
        let mut deadline = None;
        let connect_timeout = self.inner.connect_timeout;
        let mut deadline =
            move || *deadline.get_or_insert_with(|| tokio::time::Instant::now() + connect_timeout);
        loop {
            let take = self.checkout(shard, authority);
            let fresh = matches!(take, Take::Open(_));
            // Idle or opening, the connection counts in `open` from here:
            // the slot gives it back if this future is dropped (a response
            // or total timeout, a client's reset) before the connection
            // is lent to a response.
            let slot = Slot {
                client: self,
                shard,
                authority,
                armed: !matches!(take, Take::Wait(_)),
            };
            let (mut conn, name) = match take {
                Take::Idle(c, name) => (c, name),
                Take::Open(name) => {
                    let uri = connect_uri(&scheme, &backend);
                    match Box::pin(self.connect_h1(&uri)).await {
                        Ok(sender) => {
                            self.start_sweeping(shard);
                            let last_used = Instant::now();
                            (H1 { sender, last_used }, name)
                        }
                        Err(error) => {
                            drop(slot);
                            return Err(Failed::unsent(error, req));
                        }
                    }
                }
                Take::Wait(freed) => {
                    if tokio::time::timeout_at(deadline(), freed.notified())
                        .await
                        .is_err()
                    {
                        return Err(Failed::unsent(ClientError::Saturated, req));
                    }
                    continue;
                }
            };
            // A pooled one that closed meanwhile is passed over; a new one
            // that closes at once fails the request (no loop against a
            // backend that accepts and hangs up).
            if !ready(&mut conn, &mut deadline).await {
                drop(slot);
                if fresh {
                    let why = "the new connection closed before it took the request";
                    return Err(Failed::unsent(ClientError::Connect(why.into()), req));
                }
                continue;
            }
            // `last_used` is set when the connection comes back idle.
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    slot.disarm();
                    return self.lend(resp, conn, shard, name);
                }
                Err(e) => {
                    drop(slot);
                    req = retry_on_another(e, fresh, authority)?;
                }
            }
        }
    }

    /// [`Self::request`] toward an HTTP/2 pool: one shared connection per
    /// backend.
    async fn request_h2(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, Failed> {
        let uri = req.uri().clone();
        let Some(authority) = uri.authority().map(|a| a.as_str()) else {
            return Err(ClientError::Request(format!("no backend address in {uri}")).into());
        };
        let shard = self.inner.hosts.local().0;
        if let Some(mut sender) = self.h2_sender(shard, authority) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(ResponseBody::unpooled)),
                Err(mut e) => match e.take_message() {
                    // The connection was going away (GOAWAY, or closed)
                    // before it took the request: send it on a new one.
                    Some(back) => {
                        debug!(backend = %authority, error = %e.error(), "HTTP/2 connection closing; opening another");
                        self.forget_h2(shard, authority);
                        req = back;
                    }
                    None => return Err(ClientError::Http(e.into_error()).into()),
                },
            }
        }
        let mut sender = match Box::pin(self.connect_h2(&uri, shard, authority)).await {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        handed_back(sender.try_send_request(req).await).map(|r| r.map(ResponseBody::unpooled))
    }

    /// An idle HTTP/1.1 connection to `authority` (the most recently
    /// used; closed and expired ones are dropped on the way), else room to
    /// open one under `max_connections_per_backend`, else what to wait on.
    /// O(1) per connection looked at, under the client's lock.
    fn checkout(&self, shard: usize, authority: &str) -> Take {
        let now = Instant::now();
        let mut hosts = self.inner.hosts(shard);
        // One look-up; the key is allocated only when inserted.
        let h = hosts.entry_ref(authority).or_insert_with(|| Host {
            name: authority.into(),
            ..Host::default()
        });
        while let Some(c) = h.h1.pop() {
            if c.sender.is_closed() || expired(&c, now, self.inner.idle_timeout) {
                h.open -= 1;
                continue;
            }
            return Take::Idle(c, h.name.clone());
        }
        if h.open < self.inner.max_open {
            h.open += 1;
            Take::Open(h.name.clone())
        } else {
            Take::Wait(h.freed.clone())
        }
    }

    /// A response on a pooled connection: the connection goes back when
    /// its body ends; a response framed two ways is refused and its
    /// connection dropped (so closed, even if the body was whole).
    fn lend(
        &self,
        resp: Response<Incoming>,
        conn: H1,
        shard: usize,
        name: Arc<str>,
    ) -> Result<Response<ResponseBody>, Failed> {
        if let Err(e) = check_framing(&resp) {
            self.closed(shard, &name);
            return Err(e.into());
        }
        Ok(resp.map(|inner| ResponseBody {
            inner,
            back: Some(Back {
                client: self.inner.clone(),
                shard,
                authority: name,
                conn,
            }),
        }))
    }

    /// One HTTP/1.1 connection of `authority` closed (or was dropped).
    fn closed(&self, shard: usize, authority: &str) {
        if let Some(h) = self.inner.hosts(shard).get_mut(authority) {
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
        let mut sender = match Box::pin(self.connect_h1(&uri)).await {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        let resp = handed_back(sender.try_send_request(req).await)?;
        check_framing(&resp)?;
        Ok(resp.map(ResponseBody::unpooled))
    }

    /// The shared HTTP/2 connection to `authority`, unless it closed or
    /// idled out.
    fn h2_sender(&self, shard: usize, authority: &str) -> Option<http2::SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut hosts = self.inner.hosts(shard);
        let h = hosts.get_mut(authority)?;
        h.prune(now, self.inner.idle_timeout);
        let c = h.h2.as_mut()?;
        c.last_used = now;
        Some(c.sender.clone())
    }

    /// Stops sharing the HTTP/2 connection to `authority` (it is going
    /// away); requests in flight on it finish.
    fn forget_h2(&self, shard: usize, authority: &str) {
        if let Some(h) = self.inner.hosts(shard).get_mut(authority) {
            h.h2 = None;
        }
    }

    /// A new connection to the backend `uri` names. The callers of
    /// `connect_h1` and `connect_h2` box their futures: they hold the TLS
    /// stream and hyper's handshake (1.3 KB for HTTP/1.1, 6.6 KB for
    /// HTTP/2), which inline sized every request's future, pooled or not
    /// (bench/RESULTS.md, 2026-12-04).
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
        shard: usize,
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
        self.inner
            .hosts(shard)
            .entry(authority.into())
            .or_default()
            .h2 = Some(H2 {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        self.start_sweeping(shard);
        Ok(sender)
    }

    /// Starts the sweep of a worker's idle connections, once per client
    /// and worker, on that worker; it ends with the client.
    fn start_sweeping(&self, shard: usize) {
        use std::sync::atomic::Ordering;
        if self.inner.sweeping.get(shard).swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = (self.inner.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut hosts = inner.hosts(shard);
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
fn check_framing(resp: &Response<Incoming>) -> Result<(), ClientError> {
    super::framing::check_response_framing(resp.headers()).map_err(ClientError::Framing)
}

/// A send that failed: a pooled connection that closed before it took
/// the request hands it back to try another connection; anything else
/// (or a new connection) fails the request, handing it back when none of
/// it was sent.
fn retry_on_another(
    mut e: hyper::client::conn::TrySendError<Request<UpstreamBody>>,
    fresh: bool,
    authority: &str,
) -> Result<Request<UpstreamBody>, Failed> {
    match e.take_message() {
        Some(back) if !fresh => {
            debug!(backend = %authority, error = %e.error(), "pooled connection closed; trying another");
            Ok(back)
        }
        back => Err(Failed {
            error: ClientError::Http(e.into_error()),
            unsent: back.map(Box::new),
        }),
    }
}

/// What the HTTP/1.1 checkout found.
enum Take {
    Idle(H1, Arc<str>),
    Open(Arc<str>),
    Wait(Arc<tokio::sync::Notify>),
}
