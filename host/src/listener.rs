//! Bind and accept: one task per listener that never dies, one task per
//! connection, `max_connections` enforced by not accepting past it (the
//! kernel's backlog holds the rest), and a stop signal that ends accepting.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::l4::TcpState;
use crate::l7::HttpState;

/// What a listener hands its connections to.
#[derive(Clone)]
pub enum Handler {
    Http(Arc<ArcSwap<HttpState>>),
    Tcp(Arc<ArcSwap<TcpState>>),
}

impl Handler {
    /// Whether connections must start with a PROXY header, and from whom.
    fn proxy_protocol(&self) -> (bool, Vec<ipnet::IpNet>) {
        let cfg = |c: &crate::config::ListenerConfig| {
            (
                c.accept_proxy_protocol,
                if c.accept_proxy_protocol {
                    c.trusted_proxies.clone()
                } else {
                    Vec::new()
                },
            )
        };
        match self {
            Handler::Http(s) => cfg(&s.load().config),
            Handler::Tcp(s) => cfg(&s.load().config),
        }
    }
}

/// Binds a TCP listener with `SO_REUSEADDR` (a restarted daemon can bind
/// while old connections sit in TIME_WAIT) and `SO_REUSEPORT`.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
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
    socket.listen(1024)
}

/// Where connection tasks run, and the signal that asks them to drain.
#[derive(Clone)]
pub struct Connections {
    pub tracker: TaskTracker,
    pub drain: watch::Receiver<bool>,
}

pub async fn accept_loop(
    name: String,
    listener: TcpListener,
    handler: Handler,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
    conns: Connections,
) {
    let local = listener.local_addr().ok();
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log, breathe, go on.
                    warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
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
    // Stopping: connections the kernel already queued on this socket would
    // be reset when it closes (with SO_REUSEPORT, a new process may be
    // taking new ones already). Take them, and serve each one request.
    let Ok(std_listener) = listener.into_std() else {
        return;
    };
    if std_listener.set_nonblocking(true).is_err() {
        return;
    }
    while let Ok((stream, peer)) = std_listener.accept() {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            spawn(&name, stream, peer, local, &handler, &conns, None, true);
        }
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
    let local = stream.local_addr().ok().or(local).unwrap_or(peer);
    let span = info_span!("conn", listener = %name, client = %peer, local = %local);
    let handler = handler.clone();
    let drain = conns.drain.clone();
    conns.tracker.spawn(
        async move {
            let mut stream = stream;
            let mut peer = peer;
            let (accept_proxy, trusted) = handler.proxy_protocol();
            if accept_proxy {
                match crate::proxy_protocol::accept(&mut stream, peer, &trusted).await {
                    Ok(client) => peer = client,
                    Err(e) => {
                        warn!(error = %e, "PROXY protocol: connection closed");
                        return;
                    }
                }
            }
            match handler {
                Handler::Http(s) => {
                    crate::l7::serve_connection(stream, peer, local, s, drain, last_call).await
                }
                Handler::Tcp(s) => crate::l4::serve_connection(stream, peer, local, s).await,
            }
            drop(permit);
        }
        .instrument(span),
    );
}
