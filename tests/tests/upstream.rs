//! Bounded upstream connections (issue 18): one HTTP/2 client with 200
//! concurrent streams, in front of an HTTP/1.1 backend, never makes
//! Switchyard open more than `max_connections_per_backend` sockets to
//! it; a request that finds the cap reached waits up to the connect
//! timeout for a connection, then gets 503.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchyard_tests::*;
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 backend that answers after `delay` and counts the
/// connections it accepted and the most it had open at once.
struct Slow {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    peak_open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Slow {
    async fn start(delay: Duration) -> Slow {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let peak_open = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, p) = (accepted.clone(), peak_open.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                let now = open.fetch_add(1, Ordering::Relaxed) + 1;
                p.fetch_max(now, Ordering::Relaxed);
                let open = open.clone();
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("ok"))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Slow {
            addr,
            accepted,
            peak_open,
            task,
        }
    }
}

fn config(extra_pool: &str) -> String {
    format!(
        r#"
[pools.web]
backends = ["{{web}}"]
{extra_pool}
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
http2_max_concurrent_streams = 250
"#
    )
}

/// 200 concurrent HTTP/2 streams; each request's status and how long it
/// took.
async fn burst(at: SocketAddr) -> Vec<(u16, Duration)> {
    let tcp = TcpStream::connect(at).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let mut waits = Vec::new();
    for i in 0..200 {
        let req = Request::get(format!("http://{at}/r{i}")).body(()).unwrap();
        let started = Instant::now();
        let (resp, _) = h2.send_request(req, true).unwrap();
        waits.push(tokio::spawn(async move {
            let resp = tokio::time::timeout(Duration::from_secs(20), resp)
                .await
                .expect("an answer within 20 s")
                .unwrap();
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            while let Some(chunk) = body.data().await {
                chunk.unwrap();
            }
            (status, started.elapsed())
        }));
        h2 = h2.ready().await.unwrap();
    }
    let mut out = Vec::new();
    for w in waits {
        out.push(w.await.unwrap());
    }
    out
}

#[tokio::test]
async fn two_hundred_streams_open_at_most_the_cap_of_upstream_connections() {
    let web = Slow::start(Duration::from_millis(40)).await;
    let sy = start_switchyard(
        &config("max_connections_per_backend = 16\nconnect_timeout_ms = 3000"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let results = burst(sy.addr("l")).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 200, "every request waited for a connection and got one");
    assert!(
        web.accepted.load(Ordering::Relaxed) <= 16,
        "{} upstream connections opened",
        web.accepted.load(Ordering::Relaxed)
    );
    assert!(web.peak_open.load(Ordering::Relaxed) <= 16);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_request_that_cannot_get_a_connection_in_time_is_503() {
    let web = Slow::start(Duration::from_millis(1500)).await;
    let sy = start_switchyard(
        &config("max_connections_per_backend = 4\nconnect_timeout_ms = 400"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let results = burst(sy.addr("l")).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok + busy.len(), 200, "{results:?}");
    assert!(ok >= 4, "the four connections served: {ok}");
    assert!(
        busy.len() >= 150,
        "the rest waited, then 503: {}",
        busy.len()
    );
    for (_, took) in &busy {
        assert!(
            *took >= Duration::from_millis(350) && *took <= Duration::from_millis(1200),
            "a 503 after {took:?}"
        );
    }
    assert!(web.accepted.load(Ordering::Relaxed) <= 4);
    sy.shutdown(Duration::from_secs(5)).await;
}

/// A backend that accepts and hangs up at once: the request fails (502)
/// after one new connection, not in a loop of reconnects.
#[tokio::test]
async fn a_backend_that_hangs_up_at_once_is_a_prompt_502_not_a_loop() {
    let web = RawBackend::start(|s| async move { drop(s) }).await;
    let sy = start_switchyard(&config(""), &BTreeMap::from([("web", web.addr)])).await;
    let started = Instant::now();
    let got = get(&client(false), sy.addr("l"), "/", &[]).await;
    assert_eq!(got.status, 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        web.accepted() <= 2,
        "{} connections for one request",
        web.accepted()
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// A request cut by the response timeout gives its connection slot back:
/// with `max_connections_per_backend = 2`, six requests in a row that each
/// time out (504) leave the backend reachable, and the next one is not a
/// 503 after the connect timeout. Before the slot guard, each timed-out
/// request kept its slot counted, and the third was refused as saturated.
#[tokio::test]
async fn timed_out_requests_give_their_connection_slots_back() {
    let web = Slow::start(Duration::from_millis(400)).await;
    let sy = start_switchyard(
        &config(
            "max_connections_per_backend = 2\nconnect_timeout_ms = 300\nresponse_timeout_ms = 100",
        ),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let c = client(false);
    for i in 0..6 {
        let got = get(&c, sy.addr("l"), &format!("/slow{i}"), &[]).await;
        assert_eq!(got.status, 504, "request {i}");
    }
    assert!(
        web.accepted.load(Ordering::Relaxed) >= 3,
        "six timed-out requests reached the backend on {} connections",
        web.accepted.load(Ordering::Relaxed)
    );
    sy.shutdown(Duration::from_secs(5)).await;
}
