//! The HTTP listener's per-connection server (hyper's HTTP/1.1 and HTTP/2
//! servers, h2c on the same port told apart by `sniff.rs`, with the
//! connection's timers) and the
//! request path through its phases, one file each under `l7/`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Level, debug};

use super::connect::connect_and_retry;
use super::context::Ctx;
use super::error::ProxyError;
use super::guard::InProgress;
use super::hygiene;
use super::request_filter;
use super::response_filter::{self, Reply, response_filter};
pub use super::sniff::BoxingExecutor;
use super::sniff::sniff_or_drain;
use super::upstream_peer::upstream_peer;
use super::upstream_request::{is_upgrade, read_replay, upstream_request};
use crate::admin::access_log::Format;
use crate::admin::{AccessLog, Metrics};
use crate::config::{HttpSettings, Listener};
use crate::policy::{ConnectionInfo, Directory, ForwardAction, HttpDecision, Policy, types};
use crate::upstream::{BoxError, Upstreams};

/// What an HTTP listener serves with; swapped whole on reload.
pub struct HttpState {
    pub name: crate::admin::metrics::Label,
    pub config: Listener<HttpSettings>,
    pub policy: Option<Arc<Policy>>,
    pub upstreams: Arc<Upstreams>,
    /// The pools as the policy sees them, with the calls it may make
    /// (`policy_call_pools`): made once per state.
    pub policy_directory: Arc<dyn Directory>,
    /// The listener's `pool`, looked up once per state (a state is
    /// published again whenever the pools change).
    pub default_pool: Option<Arc<crate::upstream::Pool>>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// TLS termination, when the listener has `[listeners.NAME.tls]`.
    pub tls: Option<Arc<crate::tls::Terminator>>,
    /// The policy's `ok` call counter and duration histogram, looked up
    /// once (errors are rarer and looked up when they happen).
    pub policy_metrics: Option<crate::admin::metrics::PolicyHandles>,
    /// This listener's timeout counters, by phase, looked up once.
    pub timeouts: super::guard::TimeoutCounters,
    /// This listener's request counter and latency histogram.
    pub requests: crate::admin::request_metrics::RequestHandles,
    /// The counters a response body increments, shared by its bodies.
    pub body_counters: Arc<super::body::BodyCounters>,
    /// This listener's byte counters (`in`, `out`), looked up once.
    pub bytes: (
        crate::admin::metrics::ShardedCounter,
        crate::admin::metrics::ShardedCounter,
    ),
    /// While the policy has a canary running (`policy/rollout.rs`).
    pub rollout: Option<Box<Rollout>>,
    /// `capture`: sampled request heads for `policy replay`.
    pub capture: Option<Arc<super::capture::CaptureWriter>>,
    /// hyper's servers with this listener's settings, made once per state
    /// rather than per connection (two `Arc`s and ~300 bytes each time).
    pub server: super::sniff::Builders<BoxingExecutor>,
}

/// A listener's side of a canary run: which side this state decides for,
/// and, on the current version's state, the canary's state, which decides
/// the requests of the clients the canary picks.
pub struct Rollout {
    pub run: Arc<crate::policy::rollout::Canary>,
    pub side: usize,
    pub canary_state: Option<Arc<HttpState>>,
}

/// The client connection a request arrived on.
#[derive(Debug)]
pub struct Conn {
    /// The client (after a trusted PROXY header, the original client).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// What the TLS handshake told, on a TLS listener.
    pub tls: Option<crate::tls::TlsFacts>,
    /// The peer as the forwarding headers show it.
    peer_text: hygiene::PeerText,
    /// The last `Forwarded` element built on this connection.
    forwarded: hygiene::ForwardedCache,
    /// The connection as the policy sees it, built at the first request
    /// (when the client is the peer itself, i.e. no trusted
    /// `X-Forwarded-For` names another).
    policy_info: std::sync::OnceLock<Arc<ConnectionInfo>>,
    /// This connection's upgraded tunnels: the connection waits for them
    /// before it ends, so they stay counted in `max_connections` and are
    /// waited for by drain; `cancel` (a drain that timed out) closes them.
    /// Both made only when needed: most connections never upgrade.
    tunnels: std::sync::OnceLock<tokio_util::task::TaskTracker>,
    cancel: Option<tokio_util::sync::CancellationToken>,
}

impl Conn {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Conn {
            peer,
            local,
            tls: None,
            peer_text: hygiene::PeerText::of(peer.ip()),
            forwarded: hygiene::ForwardedCache::default(),
            policy_info: std::sync::OnceLock::new(),
            tunnels: std::sync::OnceLock::new(),
            cancel: None,
        }
    }

    /// The token that closes this connection's tunnels when a drain times
    /// out.
    pub fn with_cancel(mut self, cancel: tokio_util::sync::CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// The connection-info a policy gets for a request from `client`.
    fn view(&self, client: SocketAddr, state: &HttpState) -> Arc<ConnectionInfo> {
        let mut info = ConnectionInfo::new(
            client,
            self.local,
            &state.name,
            state.config.pool.as_deref(),
            types::Transport::Tcp,
        );
        info.tls = self.tls.clone().map(|t| types::TlsInfo {
            sni: t.sni,
            alpn: t.alpn,
            version: t.version,
            client_subject: t.client_subject,
        });
        Arc::new(info)
    }

    /// The connection-info a policy gets for a request from `client`:
    /// built once per connection while the client is the peer itself.
    pub(super) fn policy_view(&self, client: SocketAddr, state: &HttpState) -> Arc<ConnectionInfo> {
        match self.policy_info.get() {
            Some(i) if client == self.peer && i.pool.as_deref() == state.config.pool.as_deref() => {
                i.clone()
            }
            _ => {
                let fresh = self.view(client, state);
                if client == self.peer {
                    let _ = self.policy_info.set(fresh.clone());
                }
                fresh
            }
        }
    }

    pub(super) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub(super) fn peer_text(&self) -> &hygiene::PeerText {
        &self.peer_text
    }

    pub(super) fn forwarded(&self) -> &hygiene::ForwardedCache {
        &self.forwarded
    }

    /// The token that closes this connection's tunnels, when it has one.
    pub(super) fn cancel(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.cancel.clone()
    }

    /// This connection's tunnels, made at the first upgrade.
    pub(super) fn tunnels(&self) -> &tokio_util::task::TaskTracker {
        self.tunnels.get_or_init(tokio_util::task::TaskTracker::new)
    }
}

impl HttpState {
    pub(super) fn directory(&self) -> Arc<dyn Directory> {
        self.policy_directory.clone()
    }
}

/// Responses to the client: streamed from a backend, or made here.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub(super) fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// Serves one accepted connection until it closes. When `drain` turns
/// true, the connection finishes its in-flight requests and closes
/// (HTTP/1.1: after the current response; HTTP/2: GOAWAY). A `last_call`
/// connection (taken from the backlog of a closing listener) is served
/// without keep-alive and is not drained, so its first request is answered.
pub async fn serve_connection<S>(
    stream: S,
    conn: Arc<Conn>,
    shared: Arc<ArcSwap<HttpState>>,
    mut drain: tokio::sync::watch::Receiver<bool>,
    last_call: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let tunnels_of = conn.clone();
    let state = shared.load();
    let _active = state.metrics.connection_open(&state.name);
    let mut stream = super::guard::Guarded::new(
        stream,
        state.config.first_byte_timeout,
        state.config.send_timeout,
        state.timeouts.clone(),
    );
    let idle_timeout = state.config.idle_timeout;
    let lingering_time = state.config.lingering_time;
    let idle_closes = state.timeouts.idle.clone();
    drop(state);
    let streams = super::guard::Streams::new();
    let open = streams.clone();
    let Some(version) =
        sniff_or_drain(&mut stream, &mut drain, last_call, peer, streams.started()).await
    else {
        return;
    };
    if version == super::sniff::Version::H1 {
        stream.linger(streams.clone(), lingering_time);
    }
    // A drain that began while an HTTP/1.1 request was on its way: that
    // request is answered, without keep-alive, as a last call (hyper's
    // graceful shutdown would close the connection unread). HTTP/2 says
    // GOAWAY below and finishes the streams it was sent.
    let last_call = last_call || (version == super::sniff::Version::H1 && *drain.borrow());
    // Boxed: hyper's connection (either version's) is several KB, and
    // held inline it made this future, which the accept loop moves into
    // its task, that much larger (bench/count, a new connection each:
    // +5,900 instructions of memcpy).
    let state = shared.load_full();
    // Keep this closure as it is: with more work in it (the state loaded
    // here, the body looked at), LLVM built the request's future (then
    // 13 KB, now 5.6) aside and copied it into hyper's slot, +13,000
    // instructions (bench/count).
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let conn = conn.clone();
        let open = open.begin();
        async move { Ok::<_, Infallible>(handle(req, &conn, &shared.load_full(), open).await) }
    });
    let mut conn = if last_call {
        let mut server = state.server.clone();
        server.http1.keep_alive(false);
        Box::pin(server.serve(version, stream, service))
    } else {
        Box::pin(state.server.serve(version, stream, service))
    };
    drop(state);
    let result = if last_call {
        conn.await
    } else if *drain.borrow() {
        conn.as_mut().graceful_shutdown();
        conn.await
    } else {
        tokio::select! {
            // The connection first; no random branch order to draw.
            biased;
            r = conn.as_mut() => r,
            _ = drain.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = streams.idle(idle_timeout) => {
                idle_closes.inc();
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
    // An upgraded connection lives on as its tunnel.
    wait_for_tunnels(&tunnels_of).await;
}

/// The last phase: the connection's upgraded tunnels, waited for (up to
/// a drain's timeout, which cancels them).
async fn wait_for_tunnels(conn: &Conn) {
    let Some(tunnels) = conn.tunnels.get() else {
        return;
    };
    tunnels.close();
    match &conn.cancel {
        Some(cancel) => {
            tokio::select! {
                _ = tunnels.wait() => {}
                _ = cancel.cancelled() => {}
            }
        }
        None => tunnels.wait().await,
    }
}

/// One request through the phases (`docs/ARCHITECTURE.md` has the
/// chart): `request_filter` → `upstream_peer` → `upstream_request` →
/// `connect_and_retry` → `response_filter`, then `logging`, whatever the
/// outcome.
async fn handle(
    req: Request<Incoming>,
    conn: &Conn,
    state: &Arc<HttpState>,
    open: InProgress,
) -> Response<ProxyBody> {
    // A client the canary picks is served by the canary's state throughout.
    let state = match state.rollout.as_deref() {
        Some(Rollout {
            run,
            canary_state: Some(canary),
            ..
        }) if run.picks(canary_hash(conn.peer.ip())) => canary,
        _ => state,
    };
    let logged = state.config.access_log != Format::Off
        || tracing::enabled!(target: "switchyard::l7::logging", Level::DEBUG);
    let mut ctx = Ctx::new(&req, conn.peer, logged);
    let body_left = super::error::body_left(&req);
    if body_left {
        // For a lingering close. Here, not in `serve_connection`'s service
        // closure: see there why.
        open.saw_body();
    }
    let resp = match proxy(req, conn, state, &mut ctx, open).await {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = super::logging::failed(&e, state, &ctx);
            if body_left {
                super::error::closing(&mut resp);
            }
            resp
        }
    };
    let access = super::logging::logging(state, conn, &mut ctx, &resp);
    super::log_hook::attach(resp, state, &mut ctx, access)
}

/// The phases in order. Only the policy calls, a body read whole for a
/// resend, and the exchange itself are awaited: a request without a
/// policy builds no future for the filters. A failure keeps the request's
/// URI for its warning (`fail!`); a success copies it only when logged.
async fn proxy(
    mut req: Request<Incoming>,
    conn: &Conn,
    state: &Arc<HttpState>,
    ctx: &mut Ctx,
    open: InProgress,
) -> Result<Response<ProxyBody>, ProxyError> {
    macro_rules! fail {
        ($r:expr, $uri:expr) => {
            match $r {
                Ok(v) => v,
                Err(e) => {
                    ctx.keep_uri($uri);
                    return Err(e);
                }
            }
        };
    }
    fail!(
        request_filter::checks(&mut req, conn, state, ctx),
        req.uri()
    );
    if let Some(c) = &state.capture {
        c.maybe(&req, ctx.client.ip());
    }
    let mut decision = match &state.policy {
        None => HttpDecision::Forward(ForwardAction::default()),
        Some(_) => fail!(
            request_filter::on_request(&mut req, conn, state, ctx).await,
            req.uri()
        ),
    };
    // The body and response hooks are boxed: only decisions that ask for
    // them pay for their futures (2.6 and 2.7 KB), not every request's.
    let read = match &decision {
        HttpDecision::ReadBody(_) => {
            let reading = super::request_body::read_body(&mut req, &mut decision, conn, state, ctx);
            fail!(Box::pin(reading).await, req.uri())
        }
        _ => None,
    };
    let action = match fail!(request_filter::decided(decision, state), req.uri()) {
        request_filter::Filtered::Respond(mut resp) => {
            if super::error::body_left(&req) {
                super::error::closing(&mut resp);
            }
            return Ok(resp);
        }
        request_filter::Filtered::Forward(action) => action,
    };
    let peer = fail!(upstream_peer(&action, &req, state, ctx), req.uri());
    let upgrade = fail!(is_upgrade(&req, &peer.pool, &action), req.uri());
    let (mut out, client_upgrade) =
        upstream_request(req, read, upgrade, &action, &peer, conn, state, ctx);
    if out.unread.is_some() {
        fail!(read_replay(&mut out).await, &out.line.uri);
    }
    let answered = fail!(
        connect_and_retry(&mut out, &action, &peer, state, ctx).await,
        &out.line.uri
    );
    let reply = Reply {
        action: &action,
        conn,
        state,
        client_upgrade,
    };
    let mut head = match response_filter(answered, reply, open) {
        response_filter::Filtered::Tunnel(resp) => return Ok(resp),
        response_filter::Filtered::Head(head) => head,
    };
    if action.inspect_response {
        let hooking = response_filter::hook(head, &mut out, &action, &peer, conn, state, ctx);
        head = match fail!(Box::pin(hooking).await, &out.line.uri) {
            Ok(head) => head,
            Err(resp) => return Ok(resp),
        };
    }
    Ok(response_filter::respond(head, &peer, state, ctx))
}

/// The hash that puts a client on a canary's side: of its IPv4 address,
/// or of its IPv6 /64 (one site's network), so that a client cannot pick
/// addresses on the canary's side from its own /64.
fn canary_hash(ip: std::net::IpAddr) -> u64 {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            crate::balance::stable_hash_ip(std::net::Ipv6Addr::from(net).into())
        }
        v4 => crate::balance::stable_hash_ip(v4),
    }
}
