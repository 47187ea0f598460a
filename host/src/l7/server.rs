//! The HTTP listener's per-connection server and per-request proxy:
//! snapshot → policy → decision → balance → upstream → response edits.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::body::{BodyFault, ClientBody, REPLAY_CAP, Replay, Tracked, body_error, empty};
use super::exchange::{FailureClass, SendHow, send};
use super::hygiene;
use super::path;
use super::request;
use crate::admin::access_log::{Entry, Format};
use crate::admin::metrics::{Label, ListenerPool, RequestLabels, status_class};
use crate::admin::{AccessLog, Metrics};
use crate::config::{Algorithm, ListenerConfig, OnError};
use crate::error::{self, ProxyError};
use crate::policy::{
    ConnectionInfo, Directory, ForwardAction, HttpDecision, Policy, RequestView, ResponseView,
    types,
};
use crate::upstream::{Backend, BoxError, UpstreamBody, Upstreams};

/// What an HTTP listener serves with; swapped whole on reload.
pub struct HttpState {
    pub name: crate::admin::metrics::Label,
    pub config: ListenerConfig,
    pub policy: Option<Arc<Policy>>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// TLS termination, when the listener has `[listeners.NAME.tls]`.
    pub tls: Option<Arc<crate::tls::Terminator>>,
    /// The policy's `ok` call counter and duration histogram, looked up
    /// once (errors are rarer and looked up when they happen).
    pub policy_metrics: Option<crate::admin::metrics::PolicyHandles>,
    /// This listener's timeout counters, by phase, looked up once.
    pub timeouts: super::guard::TimeoutCounters,
    /// This listener's byte counters (`in`, `out`), looked up once.
    pub bytes: (
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    ),
}

/// The client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The client (after a trusted PROXY header, the original client).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// What the TLS handshake told, on a TLS listener.
    pub tls: Option<crate::tls::TlsFacts>,
    /// The peer as the forwarding headers show it.
    peer_text: hygiene::PeerText,
    /// The connection as the policy sees it, built at the first request
    /// (when the client is the peer itself, i.e. no trusted
    /// `X-Forwarded-For` names another).
    policy_view: std::sync::OnceLock<Arc<ConnectionInfo>>,
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
            policy_view: std::sync::OnceLock::new(),
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

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What happened to one request, for metrics and the access log.
#[derive(Default)]
struct Trace {
    decision: &'static str,
    pool: Option<Label>,
    backend: Option<Label>,
    upstream: Option<std::time::Duration>,
}

impl HttpState {
    fn directory(&self) -> Arc<dyn Directory> {
        self.upstreams.clone()
    }
}

/// Responses to the client: streamed from a backend, or made here.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    error::plain(e.status()).map(full)
}

/// Serves one accepted connection until it closes. When `drain` turns
/// true, the connection finishes its in-flight requests and closes
/// (HTTP/1.1: after the current response; HTTP/2: GOAWAY). A `last_call`
/// connection (taken from the backlog of a closing listener) is served
/// without keep-alive and is not drained, so its first request is answered.
pub async fn serve_connection<S>(
    stream: S,
    conn: Conn,
    shared: Arc<ArcSwap<HttpState>>,
    mut drain: tokio::sync::watch::Receiver<bool>,
    last_call: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let tunnels_of = conn.clone();
    let state = shared.load();
    let _active = state.metrics.connection_open(&state.name);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(!last_call)
        .header_read_timeout(state.config.header_read_timeout)
        .max_headers(state.config.max_headers)
        .max_buf_size(state.config.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(state.config.http2_keepalive_interval)
        .keep_alive_timeout(state.config.http2_keepalive_timeout)
        .max_concurrent_streams(state.config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(state.config.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256);
    let stream = super::guard::Guarded::new(
        stream,
        state.config.first_byte_timeout,
        state.config.send_timeout,
        state.timeouts.clone(),
    );
    let idle_timeout = state.config.idle_timeout;
    let idle_closes = state.timeouts.idle.clone();
    drop(state);
    let streams = super::guard::Streams::new();
    let open = streams.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let conn = conn.clone();
        let open = open.begin();
        async move { Ok::<_, Infallible>(handle(req, &conn, &shared.load_full(), open).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = if last_call {
        conn.await
    } else if *drain.borrow() {
        conn.as_mut().graceful_shutdown();
        conn.await
    } else {
        tokio::select! {
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
    if let Some(tunnels) = tunnels_of.tunnels.get() {
        tunnels.close();
        match &tunnels_of.cancel {
            Some(cancel) => {
                tokio::select! {
                    _ = tunnels.wait() => {}
                    _ = cancel.cancelled() => {}
                }
            }
            None => tunnels.wait().await,
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    conn: &Conn,
    state: &HttpState,
    open: super::guard::InProgress,
) -> Response<ProxyBody> {
    let peer = conn.peer;
    let started = Instant::now();
    let method = req.method().clone();
    let version = req.version();
    // Cheap to clone (shared bytes); only read if something is logged.
    let uri = req.uri().clone();
    let mut trace = Trace {
        decision: "default",
        ..Trace::default()
    };
    let resp = match proxy(req, conn, state, &mut trace, open).await {
        Ok(resp) => {
            debug!(listener = %state.name, %method, path = %uri.path(), status = resp.status().as_u16(),
                elapsed_us = started.elapsed().as_micros() as u64, "request");
            resp
        }
        Err(e) => {
            crate::warn_limited!(listener = %state.name, client = %peer, %method, path = %uri.path(),
                status = e.status().as_u16(), cause = %e, "request failed");
            let mut resp = error_response(&e);
            if e.closes_connection() && version < Version::HTTP_2 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    let total = started.elapsed();
    let status = resp.status().as_u16();
    let m = &state.metrics;
    let label = |l: &Option<Label>| l.clone().unwrap_or_else(crate::admin::metrics::none);
    m.http_duration
        .get_or_create(&ListenerPool {
            listener: state.name.clone(),
            pool: label(&trace.pool),
        })
        .observe(total.as_secs_f64());
    m.http_requests
        .get_or_create(&RequestLabels {
            listener: state.name.clone(),
            pool: label(&trace.pool),
            backend: label(&trace.backend),
            status_class: status_class(status),
        })
        .inc();
    if state.config.access_log != Format::Off {
        let some = |s: Option<Label>| s.map(|s| s.to_string());
        state.access_log.log(
            state.config.access_log,
            Entry {
                listener: state.name.to_string(),
                client: peer.to_string(),
                kind: "http",
                method: Some(method.to_string()),
                path: Some(uri.path().to_owned()),
                status: Some(status),
                pool: some(trace.pool),
                backend: some(trace.backend),
                decision: trace.decision,
                upstream_ms: trace.upstream.map(|d| d.as_secs_f64() * 1000.0),
                total_ms: total.as_secs_f64() * 1000.0,
                bytes_in: resp.body().size_hint().exact(),
                bytes_out: None,
            },
        );
    }
    resp
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

async fn proxy(
    mut req: Request<Incoming>,
    conn: &Conn,
    state: &HttpState,
    trace: &mut Trace,
    open: super::guard::InProgress,
) -> Result<Response<ProxyBody>, ProxyError> {
    let peer = conn.peer;
    let cfg = &state.config;
    super::framing::check_request(req.version(), req.uri(), req.headers(), cfg.max_uri_bytes)
        .map_err(ProxyError::Refused)?;
    if cfg.normalize_path {
        let normal = path::normalize(req.uri().path(), cfg.path_with_escaped_slashes)
            .map_err(ProxyError::BadPath)?;
        if let Cow::Owned(p) = normal {
            let uri = with_path(req.uri(), &p)
                .map_err(|_| ProxyError::BadPath(path::PathError::BadEscape))?;
            *req.uri_mut() = uri;
        }
    }
    if let Some(limit) = cfg.max_request_body_bytes {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
    }
    let client_ip = hygiene::client_ip(
        peer.ip().to_canonical(),
        req.headers(),
        &cfg.trusted_proxies,
    );
    let client = SocketAddr::new(client_ip, peer.port());
    let trusted_peer = cfg
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer.ip().to_canonical()));
    // The authority the client named (`:authority`/absolute form, else
    // `Host`), as it sent it; a Host that is not visible ASCII counts as
    // none, for the policy, the TLS Host check and the backend alike.
    let client_host = request::authority(req.uri(), req.headers());
    let authority = client_host.as_ref().and_then(|v| v.to_str().ok());
    // Domain-fronting guard: a TLS connection made for one name carries
    // requests for that name only.
    if let (Some(tls), Some(terminator)) = (&conn.tls, &state.tls)
        && terminator.settings.check_host
        && let (Some(sni), Some(host)) = (&tls.sni, authority)
        && !request::host_matches(host, sni)
    {
        return Err(ProxyError::Misdirected {
            sni: sni.clone(),
            host: host.to_owned(),
        });
    }
    let directory = state.directory();

    // The policy decides, on the request as the client sent it. Its head
    // is lent to the call and comes back after it; a copy is kept only for
    // a response hook.
    let mut snapshot = None;
    let decision = match &state.policy {
        None => HttpDecision::Forward(ForwardAction::default()),
        Some(policy) => {
            let mut view = RequestView {
                method: req.method().clone(),
                uri: std::mem::take(req.uri_mut()),
                version: req.version(),
                headers: std::mem::take(req.headers_mut()),
                scheme: conn.scheme(),
                authority: client_host.clone(),
            };
            let info = match conn.policy_view.get() {
                Some(i) if client == peer && i.pool.as_deref() == cfg.pool.as_deref() => i.clone(),
                _ => {
                    let fresh = conn.view(client, state);
                    if client == peer {
                        let _ = conn.policy_view.set(fresh.clone());
                    }
                    fresh
                }
            };
            let (d, took) = policy
                .on_request_timed(&mut view, &info, cfg.pool.as_deref(), &directory)
                .await;
            state.metrics.record_policy_call(
                &policy.name,
                state.policy_metrics.as_ref(),
                took,
                d.as_ref().err(),
            );
            if let Ok(HttpDecision::Forward(f)) = &d
                && f.inspect_response
            {
                snapshot = Some(view.clone());
            }
            *req.uri_mut() = view.uri;
            *req.headers_mut() = view.headers;
            match d {
                Ok(d) => {
                    trace.decision = match d {
                        HttpDecision::Forward(_) => "forward",
                        HttpDecision::Respond(_) => "respond",
                    };
                    d
                }
                Err(e) => {
                    trace.decision = match cfg.on_error {
                        OnError::Fallback => "fallback",
                        OnError::Reject => "reject",
                    };
                    crate::warn_limited!(listener = %state.name, policy = %policy.name, version = %policy.version,
                        error = %e, on_error = ?cfg.on_error, "policy call failed");
                    match cfg.on_error {
                        OnError::Fallback => HttpDecision::Forward(ForwardAction::default()),
                        OnError::Reject => return Err(ProxyError::PolicyRejected(e)),
                    }
                }
            }
        }
    };
    let action = match decision {
        HttpDecision::Respond(r) => {
            let mut resp = Response::new(full(r.body));
            *resp.status_mut() = r.status;
            for (n, v) in r.headers {
                resp.headers_mut().append(n, v);
            }
            return Ok(resp);
        }
        HttpDecision::Forward(f) => f,
    };
    let mut action = action;
    if cfg.normalize_path
        && let Some(p) = &action.path
        && let Cow::Owned(normal) = path::normalize(p.path(), cfg.path_with_escaped_slashes)
            .map_err(ProxyError::BadRewrite)?
    {
        let with_query = match p.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        action.path = Some(
            http::uri::PathAndQuery::try_from(with_query)
                .map_err(|_| ProxyError::BadRewrite(path::PathError::BadEscape))?,
        );
    }

    let pool_name = action
        .pool
        .as_deref()
        .or(cfg.pool.as_deref())
        .ok_or_else(|| {
            ProxyError::NoPool(format!("listener {} has no default pool", state.name))
        })?;
    let Some(pool) = state.upstreams.pool(pool_name).cloned() else {
        trace.pool = Some(pool_name.into());
        return Err(ProxyError::NoPool(format!("no pool named {pool_name:?}")));
    };
    trace.pool = Some(pool.name.clone());
    let key = (pool.config.algorithm == Algorithm::Hash)
        .then(|| request::hash_key(&pool.config.hash_key, client_ip, req.uri(), req.headers()))
        .flatten();
    let named = action
        .backend
        .as_deref()
        .and_then(|b| pool.backend(b))
        .filter(|b| crate::balance::Candidate::available(&***b))
        .cloned();
    let backend = named
        .or_else(|| pool.pick(key, None))
        .ok_or_else(|| ProxyError::NoBackend {
            pool: pool_name.to_owned(),
        })?;

    // The request as the backend gets it. An upgrade goes to HTTP/1.1
    // pools only (toward HTTP/2 its fields are hop-by-hop and removed),
    // and never with a body: the backend could leave a body it did not
    // read for the next request on that connection.
    let upgrade = req.version() == Version::HTTP_11
        && !pool.config.http2
        && hygiene::is_upgrade(req.headers());
    if upgrade && !req.body().is_end_stream() {
        return Err(ProxyError::Refused(super::framing::Refusal::BadRequest(
            "an upgrade request with a body",
        )));
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let trailers = pool.config.http2 && hygiene::wants_trailers(&headers);
    hygiene::strip_hop_by_hop(&mut headers, upgrade);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    for edit in &action.request_headers {
        edit.apply(&mut headers);
    }
    let host = match &action.authority {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => client_host.clone(),
    };
    match host {
        Some(v) => headers.insert(header::HOST, v),
        None => headers.remove(header::HOST),
    };
    hygiene::add_forwarded(
        &mut headers,
        &conn.peer_text,
        trusted_peer,
        conn.scheme(),
        client_host.as_ref(),
    );
    let version = if pool.config.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let limit = cfg.max_request_body_bytes.unwrap_or(u64::MAX);
    let bodyless = body.is_end_stream();
    let retry = &pool.config.retry;
    // Whether a request that reached a backend may be sent again: an
    // idempotent method (RFC 9110 §9.2.2), retries configured, another
    // backend to try.
    let may_resend = retry.retries > 0 && pool.backends.len() > 1 && idempotent(&parts.method);
    let fault = (!bodyless).then(|| Arc::new(BodyFault::default()));
    // The body as sent, and a copy to send again: a body of at most
    // REPLAY_CAP bytes is read whole first when it may be resent.
    let (body, spare_body): (UpstreamBody, Option<Replay>) = match &fault {
        None => (empty(), Some(Replay::default())),
        Some(fault) => {
            let client_body = ClientBody {
                inner: body,
                idle: super::guard::Idle::new(cfg.request_body_timeout),
                timeouts: state.timeouts.request_body.clone(),
                bytes_in: state.bytes.0.clone(),
                left: limit,
                fault: fault.clone(),
            };
            let small = client_body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= REPLAY_CAP);
            if may_resend && small {
                let read = client_body
                    .collect()
                    .await
                    .map_err(|_| body_error(fault.0.get(), limit))?;
                let replay = Replay {
                    trailers: read.trailers().cloned(),
                    data: read.to_bytes(),
                };
                (replay.body(), Some(replay))
            } else {
                (client_body.boxed_unsync(), None)
            }
        }
    };
    let build = |backend: &Backend, headers: http::HeaderMap, body: UpstreamBody| {
        let Some(at) = backend.address() else {
            return Err(ProxyError::NoBackend {
                pool: pool_name.to_owned(),
            });
        };
        let uri = request::upstream_uri(
            &parts.uri,
            &action,
            &at.authority,
            pool.config.tls.is_some(),
        )
        .map_err(|e| ProxyError::Upstream {
            pool: pool_name.to_owned(),
            backend: backend.name.to_string(),
            cause: format!("cannot build the upstream URI: {e}"),
        })?;
        let mut r = Request::new(body);
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = uri;
        *r.version_mut() = version;
        *r.headers_mut() = headers;
        Ok::<_, ProxyError>(r)
    };

    // Headers kept for a resend after the request went out, only when
    // one is possible (an unsent request comes back whole).
    let spare = match &spare_body {
        Some(b) if may_resend => Some((headers.clone(), b)),
        _ => None,
    };
    let mut req = build(&backend, headers, body)?;
    // Upstream time is for the access log only.
    let sent = (cfg.access_log != Format::Off).then(Instant::now);
    let how = SendHow {
        unpooled: upgrade,
        fault: fault.as_deref(),
        limit,
    };
    // Each attempt goes to a backend not tried yet, at most `retries`
    // resends; a request that reached a backend is resent only within the
    // pool's retry budget (docs/CONFIG.md).
    pool.count_request();
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut target = backend;
    let deadline = pool
        .config
        .total_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let outcome = {
        // Pinned where it is built: the attempts future holds the upstream
        // exchange (~8 KB), and moving it into an `.await` or a timeout
        // cost a memcpy of all of it per request (bench/count: ~8,300 of
        // 48,000 instructions).
        let mut attempts = std::pin::pin!(async {
            loop {
                trace.backend = Some(target.name.clone());
                let failed = match send(&state.metrics, &pool, &target, req, &how).await {
                    Ok(ok) => return Ok(ok),
                    Err(failed) => failed,
                };
                tried.push(target.clone());
                let allowed = match failed.class {
                    Some(FailureClass::Error) => retry.on_error,
                    Some(FailureClass::Timeout) => retry.on_timeout,
                    None => false,
                };
                if !allowed || tried.len() > retry.retries as usize {
                    return Err(failed.error);
                }
                // Unsent: whatever the method. Sent: an idempotent request whose
                // body was kept.
                let again = match (failed.unsent, &spare) {
                    (Some(unsent), _) => Ok(unsent),
                    (None, Some((h, b))) => Err((h.clone(), b.body())),
                    (None, None) => return Err(failed.error),
                };
                let Some(next) = pool.pick_untried(key, &tried) else {
                    return Err(failed.error);
                };
                if again.is_err() && !pool.may_resend() {
                    crate::warn_limited!(listener = %state.name, pool = %pool_name, backend = %target.name,
                cause = %failed.error, "retry budget spent; not resending");
                    return Err(failed.error);
                }
                crate::warn_limited!(listener = %state.name, pool = %pool_name, backend = %target.name,
            cause = %failed.error, retry = %next.name, "upstream failed before responding; resending on another backend");
                req = match again {
                    Ok(unsent) => {
                        let (p, b) = unsent.into_parts();
                        build(&next, p.headers, b)?
                    }
                    Err((h, b)) => build(&next, h, b)?,
                };
                target = next;
            }
        });
        // With `total_timeout_ms`, the attempts (resends included) must
        // bring a response head, and the body must end, by one deadline.
        match deadline {
            None => Ok(attempts.as_mut().await),
            Some(at) => tokio::time::timeout_at(at, attempts.as_mut()).await,
        }
    };
    let (mut resp, in_flight) = match outcome {
        Ok(r) => r?,
        Err(_) => {
            state.timeouts.total.inc();
            return Err(ProxyError::Timeout {
                pool: pool_name.to_owned(),
                backend: trace.backend.as_deref().unwrap_or_default().to_owned(),
                timeout_ms: pool.config.total_timeout.unwrap_or_default().as_millis(),
            });
        }
    };

    trace.upstream = sent.map(|s| s.elapsed());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let (idle, cancel) = (cfg.tunnel_idle_timeout, conn.cancel.clone());
            let idle_closes = state.timeouts.tunnel.clone();
            let tunnels = conn.tunnels.get_or_init(tokio_util::task::TaskTracker::new);
            tunnels.spawn(async move {
                let _hold = (in_flight, open);
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let cancelled = async {
                            match &cancel {
                                Some(c) => c.cancelled().await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            (_, _, end) = crate::l4::tcp::copy(&mut c, &mut u, idle) => {
                                if end.is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut) {
                                    idle_closes.inc();
                                }
                            }
                            _ = cancelled => {}
                        }
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
        }
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, full(Bytes::new())));
    }

    let (mut rparts, rbody) = resp.into_parts();
    hygiene::strip_hop_by_hop(&mut rparts.headers, false);
    for edit in &action.response_headers {
        edit.apply(&mut rparts.headers);
    }
    if action.inspect_response
        && let (Some(policy), Some(head)) = (&state.policy, &mut snapshot)
    {
        let mut view = ResponseView {
            status: rparts.status,
            headers: std::mem::take(&mut rparts.headers),
        };
        let edits = policy.on_response(head, &mut view, &directory).await;
        rparts.headers = view.headers;
        match edits {
            Ok(edits) => edits.iter().for_each(|e| e.apply(&mut rparts.headers)),
            // A response hook may strip what must not leave (an internal
            // header, a cookie) or add what must (a CSP): failing closed
            // means not sending the response it did not edit.
            Err(e) if state.config.on_error == OnError::Reject => {
                crate::warn_limited!(listener = %state.name, policy = %policy.name, error = %e,
                    "response hook failed; response refused (on_error = reject)");
                return Err(ProxyError::PolicyRejected(e));
            }
            Err(e) => {
                crate::warn_limited!(listener = %state.name, policy = %policy.name, error = %e,
                "response hook failed; response sent unedited (on_error = fallback)")
            }
        }
    }
    trace.backend = Some(in_flight.backend().name.clone());
    let body = Tracked {
        inner: rbody,
        in_flight,
        idle: super::guard::Idle::new(pool.config.body_timeout),
        deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        total: state.timeouts.total.clone(),
        pool: pool.clone(),
        timeouts: state.timeouts.upstream_body.clone(),
        bytes_out: state.bytes.1.clone(),
        _open: open,
    };
    Ok(Response::from_parts(rparts, body.boxed_unsync()))
}

/// `uri` with its path replaced by `path` (already normalized), the
/// query kept.
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, http::Error> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq)?);
    Ok(http::Uri::from_parts(parts)?)
}
