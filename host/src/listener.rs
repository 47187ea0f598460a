//! Bind and accept: one task per listener socket (one socket per worker,
//! `workers.rs`) that never dies, one task per connection, and a stop
//! signal that ends accepting. `max_connections` counts a listener's
//! connections on all its sockets. It is enforced on HTTP listeners by
//! not serving past it: a socket takes one connection more and waits for
//! a slot, and the kernel's backlog holds the rest, as nginx does; and on
//! TCP listeners by closing the excess at once (as HAProxy's `maxconn`
//! with a full queue does): a byte stream cannot be answered "busy", and
//! a client queued without a word would wait for its own timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};

use crate::config::{TcpSettings, UdpSettings};
use crate::l4::L4State;
use crate::l7::HttpState;

/// What a TCP listener hands its connections to.
#[derive(Clone)]
pub enum Handler {
    Http(Arc<ArcSwap<HttpState>>),
    Tcp(Arc<ArcSwap<L4State<TcpSettings>>>),
}

/// What a listener serves with, swapped whole on reload: its accept
/// loop's handler, or a UDP listener's state.
#[derive(Clone)]
pub enum Served {
    Stream(Handler),
    Datagram(Arc<ArcSwap<L4State<UdpSettings>>>),
}

impl Handler {
    /// Whether connections must start with a PROXY header, and from whom.
    fn proxy_protocol(&self) -> (bool, Vec<ipnet::IpNet>) {
        let pick = |accept: bool, trusted: &[ipnet::IpNet]| {
            (accept, if accept { trusted.to_vec() } else { Vec::new() })
        };
        match self {
            Handler::Http(s) => {
                let s = s.load();
                pick(s.config.accept_proxy_protocol, &s.config.trusted_proxies)
            }
            Handler::Tcp(s) => {
                let s = s.load();
                pick(s.config.accept_proxy_protocol, &s.config.trusted_proxies)
            }
        }
    }
}

/// A listener's bound sockets, not yet registered with any runtime: each
/// joins the reactor of the worker that serves it.
pub enum Socket {
    /// One per worker, all bound to the same address (`SO_REUSEPORT`).
    Tcp(Vec<std::net::TcpListener>),
    Udp(std::net::UdpSocket),
}

impl Socket {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Socket::Tcp(s) => s[0].local_addr(),
            Socket::Udp(s) => s.local_addr(),
        }
    }
}

/// Binds what a listener of `protocol` needs: for TCP, `sockets` of them
/// (one per worker), so that a failure on any refuses the listener before
/// anything changed.
pub fn bind(
    protocol: crate::config::Protocol,
    addr: SocketAddr,
    sockets: usize,
) -> std::io::Result<Socket> {
    match protocol {
        crate::config::Protocol::Udp => {
            // Plain bind: UDP listeners do not take part in SO_REUSEPORT
            // upgrades (docs/OPERATIONS.md).
            let socket = std::net::UdpSocket::bind(addr)?;
            socket.set_nonblocking(true)?;
            Ok(Socket::Udp(socket))
        }
        _ => {
            let first = bind_tcp(addr)?.into_std()?;
            // Port 0 is chosen once, by the first.
            let addr = first.local_addr()?;
            let mut all = vec![first];
            for _ in 1..sockets.max(1) {
                all.push(bind_tcp(addr)?.into_std()?);
            }
            Ok(Socket::Tcp(all))
        }
    }
}

/// Binds a TCP listener with `SO_REUSEADDR` (a restarted daemon can bind
/// while old connections sit in TIME_WAIT) and `SO_REUSEPORT`.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    // A new process (an upgraded binary) can bind beside this one, become
    // ready, and then this one drains: see docs/OPERATIONS.md.
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connections the kernel queues on a listening socket.
const BACKLOG: u32 = 1024;

/// Where connection tasks run, the signal that asks them to drain, and
/// the one that closes what is left when the drain times out (upgraded
/// tunnels).
#[derive(Clone)]
pub struct Connections {
    pub tracker: TaskTracker,
    pub drain: watch::Receiver<bool>,
    pub cancel: tokio_util::sync::CancellationToken,
    /// Connections accepted, by worker.
    pub accepted: crate::workers::Accepted,
}

/// Accepts on one socket of a listener (one per worker) until `stop`.
/// `slots` is the listener's `max_connections`, shared by all its
/// sockets: a TCP connection past it is reset at once; an HTTP one is
/// accepted and waits, unserved, for a slot, and the socket is not read
/// meanwhile (the kernel's backlog holds the rest). Waiting after the
/// accept, not before, keeps a worker from holding a slot for a
/// connection that lands on another worker's socket.
pub async fn accept_loop(
    name: String,
    listener: std::net::TcpListener,
    handler: Handler,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    conns: Connections,
) {
    // Registered here, with the reactor of the runtime that accepts.
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot accept on a socket");
            return;
        }
    };
    let local = listener.local_addr().ok();
    let refuse_excess = matches!(handler, Handler::Tcp(_));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log, breathe, go on.
                    crate::warn_limited!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if refuse_excess => {
                refuse(&name, &handler, stream, peer);
                continue;
            }
            Err(_) => tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
                _ = stop.changed() => {
                    // Served one request, as the queued ones below.
                    spawn(&name, stream, peer, local, &handler, &conns, None, true);
                    break;
                }
            },
        };
        spawn(
            &name,
            stream,
            peer,
            local,
            &handler,
            &conns,
            Some(permit),
            false,
        );
    }
    take_queued(&name, listener, local, &handler, &conns).await;
}

/// The last phase of an accept loop that stops: connections the kernel
/// already queued on its socket would be reset when it closes (with
/// SO_REUSEPORT, a new process may be taking new ones already). Takes
/// them, at most a full backlog, and serves each one request, yielding
/// now and then so that the worker serves its other connections.
async fn take_queued(
    name: &str,
    listener: TcpListener,
    local: Option<SocketAddr>,
    handler: &Handler,
    conns: &Connections,
) {
    let Ok(std_listener) = listener.into_std() else {
        return;
    };
    if std_listener.set_nonblocking(true).is_err() {
        return;
    }
    for taken in 0..BACKLOG {
        let Ok((stream, peer)) = std_listener.accept() else {
            break;
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            spawn(name, stream, peer, local, handler, conns, None, true);
        }
        if taken % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
}

/// Closes a connection past `max_connections` with a reset, so the client
/// learns at once.
fn refuse(name: &str, handler: &Handler, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let _ = stream.set_zero_linger();
    drop(stream);
    if let Handler::Tcp(s) = handler {
        s.load()
            .metrics
            .refused
            .get_or_create(&crate::admin::metrics::ListenerLabel {
                listener: name.into(),
            })
            .inc();
    }
    tracing::debug!(listener = %name, client = %peer, "max_connections reached; connection refused");
}

/// An HTTP connection: TLS first on an HTTPS listener (within its
/// handshake timeout), then the L7 server.
async fn serve_http(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    s: Arc<arc_swap::ArcSwap<crate::l7::HttpState>>,
    drain: tokio::sync::watch::Receiver<bool>,
    cancel: tokio_util::sync::CancellationToken,
    last_call: bool,
) {
    // No TCP_NODELAY here: an accepted socket inherits it from the
    // listening one (`bind_tcp`; test `accepted_sockets_inherit_nodelay`),
    // one setsockopt per connection fewer (issue 26, `strace -c`).
    // Made where it is served, and shared: the connection's
    // future holds a pointer, not the struct (bench/count).
    let conn = move |tls| {
        let mut conn = crate::l7::Conn::new(peer, local).with_cancel(cancel);
        conn.tls = tls;
        Arc::new(conn)
    };
    let state = s.load_full();
    let Some(tls) = state.tls.clone() else {
        drop(state);
        return crate::l7::serve_connection(stream, conn(None), s, drain, last_call).await;
    };
    let timeout = tls.settings.handshake_timeout;
    let failure = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => {
            let conn = conn(Some(crate::tls::TlsFacts::of(stream.get_ref().1)));
            drop(state);
            return crate::l7::serve_connection(stream, conn, s, drain, last_call).await;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    state
        .metrics
        .tls_handshake_errors
        .get_or_create(&crate::admin::metrics::ListenerLabel {
            listener: state.name.clone(),
        })
        .inc();
    tracing::debug!(error = %failure, "TLS handshake failed");
}

/// The address a connection came in on: the listener's own when it is
/// bound to one address, so that no `getsockname` is made per connection
/// (issue 26, `strace -c`); asked of the socket when the listener is bound
/// to a wildcard (`0.0.0.0`, `::`), where each connection has its own.
fn local_of(
    stream: &tokio::net::TcpStream,
    listener: Option<SocketAddr>,
    peer: SocketAddr,
) -> SocketAddr {
    match listener {
        Some(a) if !a.ip().is_unspecified() => a,
        _ => stream.local_addr().ok().or(listener).unwrap_or(peer),
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    name: &str,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    handler: &Handler,
    conns: &Connections,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    last_call: bool,
) {
    conns.accepted.inc();
    let local = local_of(&stream, local, peer);
    let span = info_span!("conn", listener = %name, client = %peer, local = %local);
    let handler = handler.clone();
    let drain = conns.drain.clone();
    let cancel = conns.cancel.clone();
    // Boxed where it is made: the connection's future (hyper's connection,
    // TLS, the PROXY header) is several KB, and tokio moves a spawned
    // future, and later its output stage, by value about five times; a box
    // makes those moves 16 bytes (bench/count: ~6,000 instructions per
    // connection, a tenth of a short one).
    conns.tracker.spawn(
        Box::pin(async move {
            let mut stream = stream;
            let mut peer = peer;
            let (accept_proxy, trusted) = handler.proxy_protocol();
            if accept_proxy {
                match crate::proxy_protocol::accept(&mut stream, peer, &trusted).await {
                    Ok(client) => peer = client,
                    Err(e) => {
                        crate::warn_limited!(error = %e, "PROXY protocol: connection closed");
                        return;
                    }
                }
            }
            match handler {
                Handler::Http(s) => {
                    serve_http(stream, peer, local, s, drain, cancel, last_call).await
                }
                Handler::Tcp(s) => crate::l4::serve_connection(stream, peer, local, s).await,
            }
            drop(permit);
        })
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve_http` and L4 relay rely on it: no setsockopt per connection.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY not inherited");
    }

    #[tokio::test]
    async fn a_connection_local_address_is_asked_only_behind_a_wildcard() {
        for bind in ["127.0.0.1:0", "0.0.0.0:0"] {
            let listener = bind_tcp(bind.parse().unwrap()).unwrap();
            let bound = listener.local_addr().unwrap();
            let port = bound.port();
            let client = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (accepted, peer) = listener.accept().await.unwrap();
            let local = local_of(&accepted, Some(bound), peer);
            assert_eq!(local, client.peer_addr().unwrap(), "bound to {bind}");
            assert!(!local.ip().is_unspecified(), "bound to {bind}: {local}");
        }
    }
}
