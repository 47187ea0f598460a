//! Health: active checks (one task per backend, not per listener) and
//! passive outlier ejection, feeding one shared view — the backend's
//! `available()` that every balancing algorithm and the policy's backend
//! list read.
//!
//! Each transition is logged once: `unhealthy` (checks failing),
//! `healthy again`, `ejected` (passive), `returns after ejection`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use super::{Backend, Pool};
use crate::config::{CheckKind, HealthCheck, Outlier};

/// Milliseconds on a process-wide monotonic clock (never 0).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A backend's health as checks and traffic have seen it.
#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict (true until checks say otherwise).
    checks_pass: AtomicBool,
    /// `now_ms()` until which the backend is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_failures: AtomicU32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            checks_pass: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
        }
    }
}

impl Health {
    pub fn checks_pass(&self) -> bool {
        self.checks_pass.load(Ordering::Relaxed)
    }

    pub fn set_checks_pass(&self, up: bool) {
        self.checks_pass.store(up, Ordering::Relaxed);
    }

    /// Times it was ejected since it was created.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Whether the backend is ejected now; an ejection that has run out is
    /// ended here, and said once (`name` is for that log line).
    pub fn ejected(&self, name: &str) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms() < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            info!(backend = %name, "backend returns after ejection");
        }
        false
    }
}

/// What one request or connection to a backend came to.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// An HTTP response with this status.
    Status(u16),
    /// Connected (L4), nothing more known.
    Connected,
    /// Connect error, reset, or timeout.
    Failure,
}

/// Passive outlier detection: counts consecutive 5xx and failures per
/// backend and ejects it when a threshold is reached, for
/// `base_ejection × 2^(ejections so far)` up to `max_ejection`, unless that
/// would eject more than `max_ejected_percent` of the pool.
pub fn report(pool: &Pool, backend: &Backend, outcome: Outcome) {
    let Some(o) = &pool.config.outlier else {
        return;
    };
    let h = &backend.health;
    let (counter, threshold, reason) = match outcome {
        Outcome::Status(s) if s >= 500 => {
            h.consecutive_failures.store(0, Ordering::Relaxed);
            (
                &h.consecutive_5xx,
                o.consecutive_5xx,
                "consecutive 5xx responses",
            )
        }
        Outcome::Failure => (
            &h.consecutive_failures,
            o.consecutive_failures,
            "consecutive connect/reset/timeout failures",
        ),
        Outcome::Status(_) | Outcome::Connected => {
            h.consecutive_5xx.store(0, Ordering::Relaxed);
            h.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
    };
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n < threshold || h.ejected(&backend.name) {
        return;
    }
    eject(pool, backend, o, reason, n);
}

fn eject(pool: &Pool, backend: &Backend, o: &Outlier, reason: &str, count: u32) {
    let total = pool.backends.len() as u64;
    let ejected = pool
        .backends
        .iter()
        .filter(|b| b.health.ejected(&b.name))
        .count() as u64;
    if (ejected + 1) * 100 > total * u64::from(o.max_ejected_percent) {
        warn!(pool = %pool.name, backend = %backend.name, reason, count,
            max_ejected_percent = o.max_ejected_percent,
            "backend would be ejected, but the pool is at its ejection limit");
        backend.health.consecutive_5xx.store(0, Ordering::Relaxed);
        backend
            .health
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        return;
    }
    let times = backend.health.ejections.fetch_add(1, Ordering::Relaxed);
    let factor = 1u32.checked_shl(times.min(16)).unwrap_or(u32::MAX);
    let length = o.base_ejection.saturating_mul(factor).min(o.max_ejection);
    backend
        .health
        .ejected_until
        .store(now_ms() + length.as_millis() as u64, Ordering::Relaxed);
    backend.health.consecutive_5xx.store(0, Ordering::Relaxed);
    backend
        .health
        .consecutive_failures
        .store(0, Ordering::Relaxed);
    warn!(pool = %pool.name, backend = %backend.name, reason, count,
        ejection_ms = length.as_millis() as u64, "backend ejected");
}

/// Starts the active checks of a pool: one task per backend, jittered so
/// that checks of many backends do not fire together. Each task ends when
/// the pool is dropped (replaced by a reload).
pub fn start_checks(pool: &Arc<Pool>) {
    let Some(hc) = pool.config.health.clone() else {
        return;
    };
    for i in 0..pool.backends.len() {
        tokio::spawn(check_loop(Arc::downgrade(pool), i, hc.clone()));
    }
}

fn jittered(d: Duration) -> Duration {
    // ±10%.
    let ms = d.as_millis() as u64;
    let spread = ms / 5;
    Duration::from_millis(ms - ms / 10 + fastrand::u64(0..=spread))
}

async fn check_loop(pool: Weak<Pool>, index: usize, hc: HealthCheck) {
    tokio::time::sleep(Duration::from_millis(fastrand::u64(
        0..=hc.interval.as_millis() as u64 / 2,
    )))
    .await;
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let Some(p) = pool.upgrade() else {
            return;
        };
        let backend = p.backends[index].clone();
        let pool_name = p.name.clone();
        // TLS pools are checked through their own client, so the check
        // speaks TLS and verifies the backend as requests do.
        let tls_client = p.config.tls.is_some().then(|| p.client.clone());
        drop(p);
        let verdict = probe(&backend, &hc, tls_client.as_ref()).await;
        let was_up = backend.health.checks_pass();
        match verdict {
            Ok(()) => {
                passes += 1;
                fails = 0;
                if !was_up && passes >= hc.healthy_threshold {
                    backend.health.set_checks_pass(true);
                    info!(pool = %pool_name, backend = %backend.name, passes, "backend healthy again");
                }
            }
            Err(reason) => {
                fails += 1;
                passes = 0;
                if was_up && fails >= hc.unhealthy_threshold {
                    backend.health.set_checks_pass(false);
                    warn!(pool = %pool_name, backend = %backend.name, fails, %reason, "backend unhealthy");
                }
            }
        }
        tokio::time::sleep(jittered(hc.interval)).await;
    }
}

fn expect(status: u16, hc: &HealthCheck) -> Result<(), String> {
    if (hc.expect_status.0..=hc.expect_status.1).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "status {status}, expected {}-{}",
            hc.expect_status.0, hc.expect_status.1
        ))
    }
}

/// One check: a TCP connect, or an HTTP/1.1 GET (HTTPS through the pool's
/// client for TLS pools) whose status must fall in `expect_status`, all
/// within `timeout`.
async fn probe(
    backend: &Backend,
    hc: &HealthCheck,
    tls_client: Option<&super::UpstreamClient>,
) -> Result<(), String> {
    let at = backend.address();
    // The check's own port (`health.port`), else the backend's.
    let (socket, authority) = match hc.port {
        Some(port) => {
            let s = std::net::SocketAddr::new(at.socket.ip(), port);
            (s, s.to_string())
        }
        None => (at.socket, at.authority.clone()),
    };
    let attempt = async {
        if let (CheckKind::Http, Some(client)) = (hc.kind, tls_client) {
            let host = hc.host.clone().unwrap_or_else(|| authority.clone());
            let req = http::Request::get(format!("https://{authority}{}", hc.path))
                .header(http::header::HOST, host)
                .header(http::header::USER_AGENT, "switchyard-health-check")
                .body(
                    Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .map_err(|e| format!("request: {e}"))?;
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("https: {}", e.error))?;
            return expect(resp.status().as_u16(), hc);
        }
        let stream = tokio::net::TcpStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if hc.kind == CheckKind::Tcp {
            return Ok(());
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        let host = hc.host.clone().unwrap_or_else(|| authority.clone());
        let req = http::Request::get(hc.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "switchyard-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        expect(resp.status().as_u16(), hc)
    };
    match tokio::time::timeout(hc.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", hc.timeout.as_millis())),
    }
}
