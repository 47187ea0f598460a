//! A UDP listener: one flow per client address. The connection policy is
//! called once, on a flow's first datagram; the flow gets its own
//! connected socket to the chosen backend, so replies go back to the right
//! client. A flow with no datagram either way for `idle_timeout` is
//! forgotten; past `max_connections` flows, datagrams that would start a
//! new flow are dropped (and counted).
//!
//! The receive loop never waits on a flow. A new flow is set up (policy
//! call, which may need a cold instance, then the backend socket) in a
//! task of its own; the datagrams that arrive for it meanwhile wait in a
//! queue of [`PENDING_DATAGRAMS`], past which they are dropped, as a full
//! socket buffer would. New flows per source address are capped
//! (`new_flows_per_source_per_second`) in a table of at most
//! [`MAX_SOURCES`] addresses, least recently seen forgotten first. A flow
//! counts as in flight on its backend while it lives (least_request, p2c,
//! `max_requests_per_backend` see it), and an ICMP error from the backend
//! (port unreachable) is reported to outlier detection as a failure.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{L4State, Route};
use crate::config::UdpSettings;
use crate::policy::types;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams held for a flow while it is set up.
pub const PENDING_DATAGRAMS: usize = 16;

/// Source addresses whose new-flow rate is tracked.
pub const MAX_SOURCES: usize = 65_536;

struct Flow {
    upstream: UdpSocket,
    pool: Arc<crate::upstream::Pool>,
    backend: Arc<crate::upstream::Backend>,
    /// Counts the flow in its backend's in-flight requests while it lives.
    _in_flight: crate::upstream::InFlight,
    /// A reply came back (reported once to outlier detection).
    answered: AtomicBool,
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

/// A client address's flow: set up, or being set up with the datagrams
/// that wait for it.
enum Slot {
    Ready(Arc<Flow>),
    Pending(mpsc::Sender<Bytes>),
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Slot>>>;

/// New flows per source address and second, in a bounded table.
struct Sources {
    per_second: u32,
    table: lru::LruCache<IpAddr, (u64, u32)>,
    started: Instant,
}

impl Sources {
    fn new(per_second: u32) -> Self {
        Sources {
            per_second,
            table: lru::LruCache::new(NonZeroUsize::new(MAX_SOURCES).expect("nonzero")),
            started: Instant::now(),
        }
    }

    /// Whether `ip` may start one more flow this second. IPv6 sources
    /// count by /64, which one host usually holds whole. A forged source
    /// address spends its owner's budget: the cap bounds a real client,
    /// `max_connections` bounds everyone.
    fn admit(&mut self, ip: IpAddr) -> bool {
        let now = self.started.elapsed().as_secs();
        let key = match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !0u128 >> 64).into()),
            v4 => v4,
        };
        let entry = self.table.get_or_insert_mut(key, || (now, 0));
        if entry.0 != now {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_second
    }
}

/// Hands a datagram to its client's flow when it has one (sent to the
/// backend, or queued while the flow is set up), and returns `None`;
/// else the number of flows, for the caller to start one.
fn deliver(flows: &Flows, peer: SocketAddr, datagram: &[u8]) -> Option<usize> {
    let map = flows.lock().expect("flows lock");
    match map.get(&peer) {
        Some(Slot::Ready(flow)) => {
            flow.touch();
            flow.bytes_in
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
            // A connected UDP socket's send does not wait for the peer; a
            // full buffer drops the datagram, as UDP does.
            if let Err(e) = flow.upstream.try_send(datagram) {
                debug!(client = %peer, error = %e, "udp send to backend failed");
            }
            None
        }
        Some(Slot::Pending(queue)) => {
            // Held under the lock, so the flow's task cannot turn ready
            // between the look-up and the queueing.
            if queue.try_send(Bytes::copy_from_slice(datagram)).is_err() {
                debug!(client = %peer, "udp flow still being set up and its queue is full; datagram dropped");
            }
            None
        }
        None => Some(map.len()),
    }
}

/// Serves one UDP socket until `stop`; flows end with it.
pub async fn serve(
    socket: Arc<UdpSocket>,
    shared: Arc<ArcSwap<L4State<UdpSettings>>>,
    mut stop: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let flows: Flows = Arc::default();
    let mut sources = Sources::new(shared.load().config.new_flows_per_source_per_second);
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
        let Some(count) = deliver(&flows, peer, datagram) else {
            continue;
        };
        let state = shared.load_full();
        let refuse = |why: &str| {
            state
                .metrics
                .refused
                .get_or_create(&crate::admin::metrics::ListenerLabel {
                    listener: state.name.clone(),
                })
                .inc();
            debug!(listener = %state.name, client = %peer, flows = count, "{why}; datagram dropped");
        };
        if count >= state.config.max_connections {
            refuse("max_connections flows reached");
            continue;
        }
        if !sources.admit(peer.ip()) {
            refuse("new_flows_per_source_per_second reached");
            continue;
        }
        let (queue, waiting) = mpsc::channel(PENDING_DATAGRAMS);
        let _ = queue.try_send(Bytes::copy_from_slice(datagram));
        flows
            .lock()
            .expect("flows lock")
            .insert(peer, Slot::Pending(queue));
        tracker.spawn(flow_task(
            socket.clone(),
            peer,
            local,
            state,
            flows.clone(),
            waiting,
            stop.clone(),
        ));
    }
}

/// Sets up one flow off the receive loop, sends what waited for it, then
/// relays its replies until it ends.
async fn flow_task(
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    local: SocketAddr,
    state: Arc<L4State<UdpSettings>>,
    flows: Flows,
    mut waiting: mpsc::Receiver<Bytes>,
    stop: watch::Receiver<bool>,
) {
    /// Forgets a flow still being set up when its setup ends without it
    /// (refused, failed, or the task gone): its address is not held.
    struct Setup<'a>(&'a Flows, SocketAddr, bool);
    impl Drop for Setup<'_> {
        fn drop(&mut self) {
            if !self.2
                && let Ok(mut map) = self.0.lock()
                && matches!(map.get(&self.1), Some(Slot::Pending(_)))
            {
                map.remove(&self.1);
            }
        }
    }
    let mut setup = Setup(&flows, peer, false);
    let Some((route, flow)) = start_flow(&state, peer, local).await else {
        return;
    };
    // Drain the queue (the flow's own task may wait on its socket), then
    // turn ready under the lock once it is empty: no datagram overtakes
    // one that waited.
    loop {
        while let Ok(d) = waiting.try_recv() {
            flow.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
            if let Err(e) = flow.upstream.send(&d).await {
                debug!(client = %peer, error = %e, "udp send to backend failed");
            }
        }
        let mut map = flows.lock().expect("flows lock");
        if waiting.is_empty() {
            map.insert(peer, Slot::Ready(flow.clone()));
            setup.2 = true;
            break;
        }
    }
    drop(setup);
    flow.touch();
    relay(socket, peer, route, flow, state, flows, stop).await;
}

/// Where a flow went, for its access-log line.
struct FlowRoute {
    pool: String,
    backend: String,
    decision: &'static str,
}

async fn start_flow(
    state: &L4State<UdpSettings>,
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
        crate::warn_limited!(listener = %state.name, client = %peer, pool = %pool.name, "no backend available; datagram dropped");
        return None;
    };
    let at = backend.address().socket;
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
            crate::warn_limited!(listener = %state.name, backend = %backend.name, error = %e, "cannot open a udp socket to the backend");
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
        _in_flight: backend.start(),
        pool: pool.clone(),
        backend: backend.clone(),
        answered: AtomicBool::new(false),
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
    state: Arc<L4State<UdpSettings>>,
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
                let (n, refused) = forward_replies(&flow.upstream, &socket, peer);
                if n > 0 {
                    flow.touch();
                    flow.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    if !flow.answered.swap(true, Ordering::Relaxed) {
                        crate::upstream::health::report(&flow.pool, &flow.backend, crate::upstream::health::Outcome::Connected);
                    }
                }
                if refused {
                    // ICMP port unreachable: nothing listens there.
                    crate::upstream::health::report(&flow.pool, &flow.backend, crate::upstream::health::Outcome::Failure);
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
    state.access_log.log(state.config.access_log, || {
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
            ..Default::default()
        }
    });
}

/// Sends every datagram waiting on `upstream` to `peer`; returns the bytes
/// sent and whether the backend refused one (ICMP port unreachable). A
/// reply the client's side cannot take right now is dropped, as UDP
/// would. Synchronous, so one 64 KiB buffer per thread serves every flow
/// instead of one in each flow's task.
fn forward_replies(upstream: &UdpSocket, socket: &UdpSocket, peer: SocketAddr) -> (usize, bool) {
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
                Err(e) => return (total, e.kind() == io::ErrorKind::ConnectionRefused),
            }
        }
    })
}
