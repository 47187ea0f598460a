//! A TCP connection: read the TLS ClientHello when the listener peeks at
//! SNI, ask the connection policy (when there is one) where it goes,
//! connect to a backend of that pool (another one if the connect fails,
//! before any client byte is sent), send a PROXY header when the pool asks
//! for one, then copy both ways until both sides are done. A client's
//! half-close reaches the backend and the response still flows back; a
//! connection quiet for `idle_timeout` is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::{L4State, Route, sni};
use crate::config::TcpSettings;
use crate::policy::types;

/// A connection whose connect failed goes to another backend, once.
const CONNECT_RESENDS: usize = 1;

/// A client connection and the backend it was connected to.
struct Link<'a> {
    state: &'a L4State<TcpSettings>,
    pool: &'a crate::upstream::Pool,
    backend: &'a Arc<crate::upstream::Backend>,
    peer: SocketAddr,
    local: SocketAddr,
    decision: &'static str,
    started: std::time::Instant,
    /// Time to the backend's connect.
    connected: Duration,
}

/// Sends the PROXY header and the bytes already read, then copies both
/// ways until both sides are done; counts and logs the connection.
async fn relay(link: Link<'_>, mut client: TcpStream, mut upstream: TcpStream, early: &[u8]) {
    let Link {
        state,
        pool,
        backend,
        peer,
        local,
        ..
    } = link;
    crate::upstream::health::report(pool, backend, crate::upstream::health::Outcome::Connected);
    // The client's socket has TCP_NODELAY from its listener already.
    let _ = upstream.set_nodelay(true);
    let _in_flight = backend.start();
    state
        .metrics
        .tcp_connections
        .get_or_create(&crate::admin::metrics::TcpLabels {
            listener: state.name.clone(),
            pool: pool.name.clone(),
            backend: backend.name.clone(),
        })
        .inc();
    let mut preface = match pool.config.proxy_protocol {
        Some(v) => crate::proxy_protocol::header(v, peer, local),
        None => Vec::new(),
    };
    preface.extend_from_slice(early);
    let copied = if preface.is_empty() {
        Ok(())
    } else {
        upstream.write_all(&preface).await
    };
    let (up, down, end) = match copied {
        Ok(()) => copy(&mut client, &mut upstream, state.config.idle_timeout).await,
        Err(e) => (0, 0, Err(e)),
    };
    let up = up + early.len() as u64;
    match &end {
        Ok(()) => debug!(listener = %state.name, client = %peer,
            backend = %backend.name, bytes_up = up, bytes_down = down, "connection done"),
        Err(e) => debug!(listener = %state.name, client = %peer,
            backend = %backend.name, bytes_up = up, bytes_down = down, error = %e,
            "connection ended"),
    }
    state.metrics.bytes_counter(&state.name, "in").inc_by(up);
    state.metrics.bytes_counter(&state.name, "out").inc_by(down);
    state.access_log.log(state.config.access_log, || {
        crate::admin::access_log::Entry {
            listener: state.name.to_string(),
            client: peer.to_string(),
            kind: "tcp",
            method: None,
            path: None,
            status: None,
            pool: Some(pool.name.to_string()),
            backend: Some(backend.name.to_string()),
            decision: link.decision,
            upstream_ms: Some(link.connected.as_secs_f64() * 1000.0),
            total_ms: link.started.elapsed().as_secs_f64() * 1000.0,
            bytes_in: Some(up),
            bytes_out: Some(down),
            ..Default::default()
        }
    });
}

pub async fn serve_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    shared: Arc<ArcSwap<L4State<TcpSettings>>>,
) {
    let started = std::time::Instant::now();
    let state = shared.load_full();
    let cfg = &state.config;
    let _active = state.metrics.connection_open(&state.name);
    let mut early = Vec::new();
    let hello = if cfg.peek_sni {
        sni::read_client_hello(&mut client, &mut early, cfg.sni_peek_timeout).await
    } else {
        None
    };
    let mut info = crate::policy::ConnectionInfo::new(
        peer,
        local,
        &state.name,
        cfg.pool.as_deref(),
        types::Transport::Tcp,
    );
    info.tls = hello.map(|h| types::TlsInfo {
        sni: h.sni,
        alpn: h.alpn,
        version: h.version,
        client_subject: None,
    });
    let Some(Route {
        pool,
        first,
        decision,
    }) = super::route(&state, info, peer).await
    else {
        return;
    };
    let mut tried = Vec::new();
    let mut candidate = first;
    while let Some(backend) = candidate {
        let at = backend.address();
        let connect = TcpStream::connect(at.socket);
        let failure = match tokio::time::timeout(pool.config.connect_timeout, connect).await {
            Ok(Ok(upstream)) => {
                let connected = started.elapsed();
                let link = Link {
                    state: &state,
                    pool: &pool,
                    backend: &backend,
                    peer,
                    local,
                    decision,
                    started,
                    connected,
                };
                return relay(link, client, upstream, &early).await;
            }
            Ok(Err(e)) => ("connect", e.to_string()),
            Err(_) => ("timeout", "connect timed out".to_owned()),
        };
        state
            .metrics
            .connect_error(&pool.name, &backend.name, failure.0);
        crate::warn_limited!(listener = %state.name, pool = %pool.name, backend = %backend.name,
            error = %failure.1, "connect failed");
        crate::upstream::health::report(&pool, &backend, crate::upstream::health::Outcome::Failure);
        tried.push(backend);
        candidate = pool.next_attempt(Route::key(peer), &tried, CONNECT_RESENDS);
    }
    crate::warn_limited!(listener = %state.name, client = %peer, pool = %pool.name, "no backend reachable; connection closed");
}

/// Copies both ways until both directions are done, an error, or `idle`
/// passes with no byte either way (checked every quarter of it, so a quiet
/// connection closes between 1 and 1.25 × `idle`). Returns the bytes
/// copied up (client → backend) and down.
pub(crate) async fn copy<A, B>(
    client: &mut A,
    upstream: &mut B,
    idle: Duration,
) -> (u64, u64, io::Result<()>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut a = Counted {
        inner: client,
        read: up.clone(),
    };
    let mut b = Counted {
        inner: upstream,
        read: down.clone(),
    };
    let both = super::copy::both_ways(&mut a, &mut b);
    tokio::pin!(both);
    let tick = idle / 4;
    let (mut seen, mut quiet) = (0u64, 0u32);
    let end = loop {
        tokio::select! {
            r = &mut both => break r.map(|_| ()),
            _ = tokio::time::sleep(tick) => {
                let now = up.load(Ordering::Relaxed) + down.load(Ordering::Relaxed);
                if now == seen {
                    quiet += 1;
                    if quiet >= 4 {
                        break Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                    }
                } else {
                    (seen, quiet) = (now, 0);
                }
            }
        }
    };
    (
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        end,
    )
}

/// A stream that counts the bytes read from it.
struct Counted<'a, S> {
    inner: &'a mut S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
