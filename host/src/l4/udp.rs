//! A UDP listener: one flow per client address. The connection policy is
//! called once, on a flow's first datagram; the flow gets its own
//! connected socket to the chosen backend, so replies go back to the right
//! client. A flow with no datagram either way for `idle_timeout` is
//! forgotten; past `max_connections` flows, datagrams that would start a
//! new flow are dropped (and counted).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{L4State, Route};
use crate::policy::types;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

struct Flow {
    upstream: UdpSocket,
    started: Instant,
    /// Milliseconds after `started` of the last datagram either way.
    last: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Flow {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Serves one UDP socket until `stop`; flows end with it.
pub async fn serve(
    socket: Arc<UdpSocket>,
    shared: Arc<ArcSwap<L4State>>,
    mut stop: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; go on.
                    debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let datagram = &buf[..n];
        let existing = flows.lock().expect("flows lock").get(&peer).cloned();
        if let Some(flow) = existing {
            flow.touch();
            flow.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            if let Err(e) = flow.upstream.send(datagram).await {
                debug!(client = %peer, error = %e, "udp send to backend failed");
            }
            continue;
        }
        let state = shared.load_full();
        let count = flows.lock().expect("flows lock").len();
        if count >= state.config.max_connections {
            state
                .metrics
                .refused
                .get_or_create(&crate::admin::metrics::ListenerLabel {
                    listener: state.name.clone(),
                })
                .inc();
            debug!(listener = %state.name, client = %peer, flows = count,
                "max_connections flows reached; datagram dropped");
            continue;
        }
        let Some((route, flow)) = start_flow(&state, peer, local).await else {
            continue;
        };
        flow.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = flow.upstream.send(datagram).await {
            debug!(client = %peer, error = %e, "udp send to backend failed");
        }
        flows.lock().expect("flows lock").insert(peer, flow.clone());
        tracker.spawn(relay(
            socket.clone(),
            peer,
            route,
            flow,
            state,
            flows.clone(),
            stop.clone(),
        ));
    }
}

/// Where a flow went, for its access-log line.
struct FlowRoute {
    pool: String,
    backend: String,
    decision: &'static str,
}

async fn start_flow(
    state: &L4State,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<(FlowRoute, Arc<Flow>)> {
    let info = crate::policy::ConnectionInfo::new(
        peer,
        local,
        &state.name,
        state.config.pool.as_deref(),
        types::Transport::Udp,
    );
    let Route {
        pool,
        first,
        decision,
    } = super::route(state, info, peer).await?;
    let Some(backend) = first else {
        warn!(listener = %state.name, client = %peer, pool = %pool.name, "no backend available; datagram dropped");
        return None;
    };
    let at = backend.address()?.socket;
    let bind: SocketAddr = if at.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = async {
        let s = UdpSocket::bind(bind).await?;
        s.connect(at).await?;
        io::Result::Ok(s)
    }
    .await;
    let upstream = match upstream {
        Ok(s) => s,
        Err(e) => {
            warn!(listener = %state.name, backend = %backend.name, error = %e, "cannot open a udp socket to the backend");
            return None;
        }
    };
    state
        .metrics
        .udp_flows
        .get_or_create(&crate::admin::metrics::TcpLabels {
            listener: state.name.clone(),
            pool: pool.name.clone(),
            backend: backend.name.clone(),
        })
        .inc();
    let flow = Arc::new(Flow {
        upstream,
        started: Instant::now(),
        last: AtomicU64::new(0),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
    });
    let route = FlowRoute {
        pool: pool.name.to_string(),
        backend: backend.name.to_string(),
        decision,
    };
    Some((route, flow))
}

/// Relays a flow's replies to its client until it is idle or the listener
/// stops, then forgets it.
async fn relay(
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    route: FlowRoute,
    flow: Arc<Flow>,
    state: Arc<L4State>,
    flows: Flows,
    mut stop: watch::Receiver<bool>,
) {
    let FlowRoute {
        pool,
        backend,
        decision,
    } = route;
    let idle = state.config.idle_timeout;
    let _active = state.metrics.connection_open(&state.name);
    loop {
        let quiet = idle.saturating_sub(flow.idle_for());
        if quiet.is_zero() {
            break;
        }
        tokio::select! {
            r = flow.upstream.readable() => {
                if r.is_err() {
                    break;
                }
                let n = forward_replies(&flow.upstream, &socket, peer);
                if n > 0 {
                    flow.touch();
                    flow.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            _ = tokio::time::sleep(quiet) => {}
            _ = stop.changed() => break,
        }
    }
    flows.lock().expect("flows lock").remove(&peer);
    let (bytes_in, bytes_out) = (
        flow.bytes_in.load(Ordering::Relaxed),
        flow.bytes_out.load(Ordering::Relaxed),
    );
    state
        .metrics
        .bytes_counter(&state.name, "in")
        .inc_by(bytes_in);
    state
        .metrics
        .bytes_counter(&state.name, "out")
        .inc_by(bytes_out);
    debug!(listener = %state.name, client = %peer, backend = %backend, bytes_in, bytes_out, "udp flow ended");
    state.access_log.log(
        state.config.access_log,
        crate::admin::access_log::Entry {
            listener: state.name.to_string(),
            client: peer.to_string(),
            kind: "udp",
            method: None,
            path: None,
            status: None,
            pool: Some(pool),
            backend: Some(backend),
            decision,
            upstream_ms: None,
            total_ms: flow.started.elapsed().as_secs_f64() * 1000.0,
            bytes_in: Some(bytes_in),
            bytes_out: Some(bytes_out),
        },
    );
}

/// Sends every datagram waiting on `upstream` to `peer`; returns the bytes
/// sent. A reply the client's side cannot take right now is dropped, as
/// UDP would. Synchronous, so one 64 KiB buffer per thread serves every
/// flow instead of one in each flow's task.
fn forward_replies(upstream: &UdpSocket, socket: &UdpSocket, peer: SocketAddr) -> usize {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_DATAGRAM]);
    }
    BUF.with_borrow_mut(|buf| {
        let mut total = 0;
        loop {
            match upstream.try_recv(buf) {
                Ok(n) => {
                    if socket.try_send_to(&buf[..n], peer).is_ok() {
                        total += n;
                    }
                }
                // WouldBlock: all taken. Other errors (ICMP unreachable
                // from the backend) are per-datagram: the flow stays.
                Err(_) => return total,
            }
        }
    })
}
