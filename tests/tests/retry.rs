//! Resending requests that fail before a response byte (issue 27), over
//! real loopback sockets: a backend killed under load costs no GET and
//! duplicates no POST, a reset on a pooled connection is resent for GETs
//! and not for POSTs, and resends stay within the pool's retry budget.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend that answers after `delay`, records the body of every
/// request it answers (the test puts a unique id in each), and can be
/// killed: its listener and every open connection close at once, with
/// the requests in flight on them unanswered.
struct Counting {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    async fn start(delay: Duration) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                open.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let method = req.method().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            tokio::time::sleep(delay).await;
                            seen.lock()
                                .unwrap()
                                .push(format!("{method} {}", String::from_utf8_lossy(&body)));
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while open.try_join_next().is_some() {}
            }
        });
        Counting { addr, bodies, task }
    }

    fn kill(&self) {
        self.task.abort();
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

fn two_backends(extra_pool: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
[pools.web]
backends = ["{{a}}", "{{b}}"]
{extra_pool}
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
"#
    )
}

/// Runs `connections` clients, each sending requests one after another
/// for `run`, killing `victim` after `kill_after`. Returns each request's
/// (id, status). `post`: POSTs whose body is the id, else GETs.
async fn load(
    at: SocketAddr,
    connections: usize,
    run: Duration,
    kill_after: Duration,
    victim: &Counting,
    post: bool,
) -> Vec<(String, u16)> {
    let deadline = Instant::now() + run;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let next = next.clone();
        tasks.spawn(async move {
            let c = client(false);
            let mut got = Vec::new();
            // Bounded by time and by count.
            while Instant::now() < deadline && got.len() < 2_000 {
                let id = format!("r{}", next.fetch_add(1, Ordering::Relaxed));
                let req = if post {
                    Request::post(format!("http://{at}/p"))
                        .body(
                            Full::new(Bytes::from(id.clone()))
                                .map_err(|n| match n {})
                                .boxed(),
                        )
                        .unwrap()
                } else {
                    Request::get(format!("http://{at}/g"))
                        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
                        .unwrap()
                };
                let status =
                    match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                        Ok(Ok(resp)) => {
                            let s = resp.status().as_u16();
                            let _ = resp.into_body().collect().await;
                            s
                        }
                        _ => 0,
                    };
                got.push((id, status));
            }
            got
        });
    }
    tokio::time::sleep(kill_after).await;
    victim.kill();
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

/// Two backends (5 ms per answer) behind Switchyard, 50 connections of
/// load for 3 s (POSTs with an id as body, or GETs), the second backend
/// killed 1 s in.
async fn kill_under_load(
    post: bool,
) -> (
    Counting,
    Counting,
    switchyard::daemon::Running,
    Vec<(String, u16)>,
) {
    let (a, b) = (
        Counting::start(Duration::from_millis(5)).await,
        Counting::start(Duration::from_millis(5)).await,
    );
    let sy = start_switchyard(
        &two_backends(""),
        &BTreeMap::from([("a", a.addr), ("b", b.addr)]),
    )
    .await;
    let results = load(
        sy.addr("l"),
        50,
        Duration::from_secs(3),
        Duration::from_secs(1),
        &b,
        post,
    )
    .await;
    (a, b, sy, results)
}

/// The measurement of issue 27 as a test: two backends under steady GET
/// load from 50 connections, one killed mid-run; every request succeeds.
#[tokio::test]
async fn a_backend_killed_under_get_load_costs_no_request() {
    let (a, b, sy, results) = kill_under_load(false).await;
    let failed: Vec<_> = results.iter().filter(|(_, s)| *s != 200).collect();
    assert!(results.len() > 500, "only {} requests", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(!b.bodies().is_empty() && !a.bodies().is_empty());
    sy.shutdown(Duration::from_secs(5)).await;
}

/// The same with POSTs carrying bodies: a POST is not idempotent, so one
/// that reached the dying backend is never sent again. The backends count
/// them: no id is answered twice.
#[tokio::test]
async fn a_backend_killed_under_post_load_duplicates_no_post() {
    // The dying backend records a POST when it answers; one it read but
    // never answered must not show up at the other either.
    let (a, b, sy, results) = kill_under_load(true).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for body in a.bodies().into_iter().chain(b.bodies()) {
        *count.entry(body).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTs answered twice: {twice:?}");
    let ok = results.iter().filter(|(_, s)| *s == 200).count();
    assert!(ok > 500, "only {ok} POSTs succeeded");
    // Every POST that succeeded was answered exactly once.
    for (id, s) in &results {
        if *s == 200 {
            assert_eq!(count.get(&format!("POST {id}")), Some(&1), "{id}");
        }
    }
    sy.shutdown(Duration::from_secs(5)).await;
}

/// A backend that answers the first request on each connection, then
/// reads the next one and resets the connection (SO_LINGER 0). Counts
/// the requests it reset.
struct Resetting {
    raw: RawBackend,
    resets: Arc<AtomicUsize>,
    answered: Arc<Mutex<Vec<String>>>,
}

impl Resetting {
    /// `first_ok`: answer the first request of each connection.
    async fn start(first_ok: bool) -> Resetting {
        let resets = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (r, a) = (resets.clone(), answered.clone());
        let raw = RawBackend::start(move |mut s| {
            let (resets, answered) = (r.clone(), a.clone());
            async move {
                let mut served = 0;
                while let Some(head) = read_head(&mut s).await {
                    let mut body = vec![0u8; content_length(&head)];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    if first_ok && served == 0 {
                        served += 1;
                        answered
                            .lock()
                            .unwrap()
                            .push(format!("{line} {}", String::from_utf8_lossy(&body)));
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                        continue;
                    }
                    resets.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_zero_linger();
                    return;
                }
            }
        })
        .await;
        Resetting {
            raw,
            resets,
            answered,
        }
    }
}

/// A reset on an established, pooled connection: GETs are resent to the
/// other backend and succeed; a POST that met the reset is not resent.
#[tokio::test]
async fn a_reset_on_a_pooled_connection_is_resent_for_gets_not_posts() {
    let bad = Resetting::start(true).await;
    let good = Counting::start(Duration::ZERO).await;
    let at = BTreeMap::from([("a", bad.raw.addr), ("b", good.addr)]);
    let sy = start_switchyard(&two_backends(""), &at).await;
    let c = client(false);
    for i in 0..12 {
        let got = get(&c, sy.addr("l"), &format!("/g{i}"), &[]).await;
        assert_eq!(got.status, 200, "GET {i}: {}", got.text());
    }
    // The backend resets only a connection's second request, so each
    // reset met an established, pooled connection.
    assert!(
        bad.resets.load(Ordering::Relaxed) >= 1,
        "a GET met a reset on an established connection"
    );
    sy.shutdown(Duration::from_secs(5)).await;

    let bad = Resetting::start(true).await;
    let good = Counting::start(Duration::ZERO).await;
    let at = BTreeMap::from([("a", bad.raw.addr), ("b", good.addr)]);
    let sy = start_switchyard(&two_backends(""), &at).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let req = Request::post(format!("http://{}/p", sy.addr("l")))
            .body(
                Full::new(Bytes::from(format!("p{i}")))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .unwrap();
        statuses.push(send(&c, req).await.status.as_u16());
    }
    let resets = bad.resets.load(Ordering::Relaxed);
    assert!(resets >= 1, "a POST met a reset");
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        resets,
        "each POST that met a reset is a 502, not resent: {statuses:?}"
    );
    let good_posts = good.bodies().len();
    let bad_answered = bad.answered.lock().unwrap().len();
    assert_eq!(good_posts + bad_answered + resets, 8, "{statuses:?}");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// With every backend failing after reading the request, resends of
/// those requests stay within the budget: at most 20% of the requests
/// (min_retries_per_second = 0 here), and the failures name the backend
/// that failed last.
#[tokio::test]
async fn resends_stay_within_the_retry_budget_when_every_backend_fails() {
    let (a, b) = (Resetting::start(false).await, Resetting::start(false).await);
    let at = BTreeMap::from([("a", a.raw.addr), ("b", b.raw.addr)]);
    let sy = start_switchyard(
        &two_backends("retry_budget_percent = 20\nmin_retries_per_second = 0"),
        &at,
    )
    .await;
    let c = client(false);
    let requests = 100;
    for i in 0..requests {
        let got = get(&c, sy.addr("l"), &format!("/g{i}"), &[]).await;
        assert_eq!(got.status, 502);
    }
    let attempts = a.resets.load(Ordering::Relaxed) + b.resets.load(Ordering::Relaxed);
    let resends = attempts - requests;
    assert!(
        resends >= 15,
        "resends happened within the budget: {resends}"
    );
    assert!(resends <= 20, "{resends} resends for {requests} requests");
    let m = get(&c, sy.admin_addr.unwrap(), "/metrics", &[])
        .await
        .text();
    let failed: usize = m
        .lines()
        .filter(|l| l.starts_with("switchyard_http_requests_total{") && l.contains("5xx"))
        .filter(|l| l.contains(&a.raw.addr.to_string()) || l.contains(&b.raw.addr.to_string()))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(failed, requests, "every failure names a backend:\n{m}");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// `retries = 0` turns resending off; `retry_on = ["timeout"]` resends
/// only timeouts, so a reset is a 502.
#[tokio::test]
async fn retries_and_retry_on_turn_resending_off() {
    for extra in ["retries = 0", "retry_on = [\"timeout\"]"] {
        let bad = Resetting::start(true).await;
        let good = Counting::start(Duration::ZERO).await;
        let at = BTreeMap::from([("a", bad.raw.addr), ("b", good.addr)]);
        let sy = start_switchyard(&two_backends(extra), &at).await;
        let c = client(false);
        let mut statuses = Vec::new();
        for i in 0..6 {
            statuses.push(get(&c, sy.addr("l"), &format!("/g{i}"), &[]).await.status);
        }
        assert!(
            statuses.iter().any(|s| *s == 502),
            "{extra}: a reset is not resent: {statuses:?}"
        );
        sy.shutdown(Duration::from_secs(5)).await;
    }
}
