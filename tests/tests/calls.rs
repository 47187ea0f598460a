//! Policies that call other services (`http-call`), through a real
//! listener: the `forward-auth` example against a real auth service, the
//! listener's `policy_call_pools` and `policy_call_timeout_ms`, and a
//! worker that keeps serving while hundreds of calls wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use switchyard_tests::*;

/// An auth service: `/verify` says 200 with `x-auth-user: alice` to
/// `authorization: Bearer good`, and 401 with a challenge and a body to
/// anything else; it waits `delay` first. It counts what it was asked.
async fn auth_service(delay: Duration, asked: Arc<AtomicUsize>) -> RawBackend {
    auth_service_after(asked, move || tokio::time::sleep(delay)).await
}

/// The auth service of [`auth_service`], answering each request once
/// `wait()` has finished.
async fn auth_service_after<F, W>(asked: Arc<AtomicUsize>, wait: F) -> RawBackend
where
    F: Fn() -> W + Clone + Send + Sync + 'static,
    W: std::future::Future<Output = ()> + Send + 'static,
{
    http_backend(move |req: Request<Incoming>| {
        let asked = asked.clone();
        let wait = wait();
        async move {
            asked.fetch_add(1, Ordering::Relaxed);
            wait.await;
            let good = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer good");
            let uri = req
                .headers()
                .get("x-forwarded-uri")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            if good && req.uri().path() == "/verify" {
                Response::builder()
                    .header("x-auth-user", "alice")
                    .header("x-asked-for", uri)
                    .body(Full::new(Bytes::from_static(b"ok")))
                    .unwrap()
            } else {
                Response::builder()
                    .status(401)
                    .header("www-authenticate", "Bearer realm=\"test\"")
                    .header("content-type", "text/plain")
                    .header("x-internal", "not for the client")
                    .body(Full::new(Bytes::from_static(b"denied\n")))
                    .unwrap()
            }
        }
    })
    .await
}

/// `forward-auth` on `l`, in front of `web`, calling `auth` (at
/// `auth_addr`); `listener` extends the listener's section.
fn forward_auth(auth_addr: std::net::SocketAddr, head: &str, listener: &str) -> String {
    let head = format!(
        "[policies]\ndir = \"{{policies}}\"\n{head}\n[pools.auth]\nbackends = [\"{auth_addr}\"]\n\
         connect_timeout_ms = 5000"
    );
    one_http_pool(
        &head,
        "",
        &format!("policy = \"forward-auth\"\npolicy_call_pools = [\"auth\"]\n{listener}"),
    )
}

#[tokio::test]
async fn forward_auth_passes_the_refusal_through_and_the_user_on() {
    let asked = Arc::new(AtomicUsize::new(0));
    let auth = auth_service(Duration::ZERO, asked.clone()).await;
    let h = Harness::start(&forward_auth(auth.addr, "", ""), &["web"]).await;
    // No credentials: the auth service's 401, its challenge and body.
    let got = h.get("l", "/private?x=1").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.text(), "denied\n");
    assert_eq!(got.headers["www-authenticate"], "Bearer realm=\"test\"");
    assert!(
        !got.headers.contains_key("x-internal"),
        "only the listed headers"
    );
    assert!(
        h.backend("web").seen().is_empty(),
        "a refused request never left"
    );
    // Good credentials, and a forged user: the auth service's user wins.
    let got = get(
        &h.client,
        h.addr("l"),
        "/private?x=1",
        &[("authorization", "Bearer good"), ("x-auth-user", "mallory")],
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = h.backend("web").seen();
    assert_eq!(seen.len(), 1);
    let users: Vec<_> = seen[0].headers.get_all("x-auth-user").iter().collect();
    assert_eq!(users, ["alice"]);
    // The load-time smoke call may call no pool: only the two requests.
    assert_eq!(asked.load(Ordering::Relaxed), 2);
}

/// A pool the listener does not list is refused to the policy (which
/// fails closed: 503), and the service is never asked.
#[tokio::test]
async fn a_call_to_a_pool_the_listener_does_not_allow_is_an_error() {
    let asked = Arc::new(AtomicUsize::new(0));
    let auth = auth_service(Duration::ZERO, asked.clone()).await;
    let toml = forward_auth(auth.addr, "", "").replace(
        "policy_call_pools = [\"auth\"]",
        "policy_call_pools = [\"web\"]",
    );
    let h = Harness::start(&toml, &["web"]).await;
    let got = get(
        &h.client,
        h.addr("l"),
        "/",
        &[("authorization", "Bearer good")],
    )
    .await;
    assert_eq!(got.status, 503);
    assert_eq!(asked.load(Ordering::Relaxed), 0);
    assert!(h.backend("web").seen().is_empty());
}

/// The call has its own timer, and waiting on it does not count against
/// the policy's `timeout_ms`: a 100 ms auth service passes under a 20 ms
/// policy budget, a 3 s one runs into `policy_call_timeout_ms`.
#[tokio::test]
async fn a_slow_auth_service_runs_into_policy_call_timeout_ms() {
    let asked = Arc::new(AtomicUsize::new(0));
    let slowish = auth_service(Duration::from_millis(100), asked.clone()).await;
    let h = Harness::start(
        &forward_auth(
            slowish.addr,
            "timeout_ms = 20",
            "policy_call_timeout_ms = 1000",
        ),
        &["web"],
    )
    .await;
    let got = get(
        &h.client,
        h.addr("l"),
        "/",
        &[("authorization", "Bearer good")],
    )
    .await;
    assert_eq!(got.status, 200, "the wait is not the guest's time");
    drop(h);
    let slow = auth_service(Duration::from_secs(3), asked.clone()).await;
    let h = Harness::start(
        &forward_auth(slow.addr, "", "policy_call_timeout_ms = 200"),
        &["web"],
    )
    .await;
    let started = Instant::now();
    let got = get(
        &h.client,
        h.addr("l"),
        "/",
        &[("authorization", "Bearer good")],
    )
    .await;
    assert_eq!(got.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(h.backend("web").seen().is_empty());
}

/// 500 requests at once, each waiting on the auth service: while 250 of
/// them wait (one per instance) and the rest queue, a listener without a policy on the same workers answers with a
/// p99 under 20 ms (a waiting call holds an instance, not a thread), and
/// then all 500 pass. (The cost of a 20 ms call under load is measured in
/// `bench/`, not asserted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_waiting_calls_leave_the_worker_serving() {
    let asked = Arc::new(AtomicUsize::new(0));
    // The service holds every request until the test opens the gate, so
    // the first round waits however long the 250 calls take to arrive.
    let (gate, gated) = tokio::sync::watch::channel(false);
    let auth = auth_service_after(asked.clone(), move || {
        let mut gated = gated.clone();
        async move {
            let _ = gated.wait_for(|open| *open).await;
        }
    })
    .await;
    // 250 instances: 250 calls wait on the service at once, the rest
    // queue for them (two rounds in all).
    let head = "instances = 250\nmax_instances = 250\nmax_queued = 1024\n\
                queue_timeout_ms = 20000\nmax_call_wall_ms = 30000";
    let plain = "policy_call_timeout_ms = 10000\n[listeners.plain]\nprotocol = \"http\"\n\
                 bind = \"127.0.0.1:0\"\npool = \"web\"";
    let toml = forward_auth(auth.addr, head, plain);
    let h = Harness::start(&toml, &["web"]).await;
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..500 {
        let c = h.client.clone();
        let addr = h.addr("l");
        let finished = finished.clone();
        calls.spawn(async move {
            let got = get(
                &c,
                addr,
                &format!("/{i}"),
                &[("authorization", "Bearer good")],
            )
            .await;
            finished.lock().unwrap().push((i, got.status, got.text()));
            (got.status, got.text())
        });
    }
    wait_until(
        "250 calls wait on the auth service",
        Duration::from_secs(20),
        || asked.load(Ordering::Relaxed) >= 250,
    )
    .await;
    // Within the first round: the calls on the instances wait for the gate.
    let mut plain_ms = Vec::new();
    let window = Instant::now();
    while plain_ms.len() < 200 && window.elapsed() < Duration::from_millis(500) {
        let t = Instant::now();
        let got = h.get("plain", "/").await;
        assert_eq!(got.status, 200);
        plain_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let early = finished.lock().unwrap().clone();
    assert!(
        early.is_empty(),
        "calls finished while the plain listener was sampled: {early:?}"
    );
    gate.send_replace(true);
    let mut ok = 0;
    while let Some(r) = calls.join_next().await {
        let (status, text) = r.unwrap();
        let why = h.sy.policies()[0].stats.last_error.lock().unwrap().clone();
        assert_eq!(status, 200, "{text} {why:?}");
        ok += 1;
    }
    assert_eq!(ok, 500);
    assert_eq!(h.backend("web").seen().len(), 500 + plain_ms.len());
    assert!(plain_ms.len() >= 20, "{} samples", plain_ms.len());
    plain_ms.sort_by(f64::total_cmp);
    let p99 = plain_ms[plain_ms.len() * 99 / 100];
    eprintln!(
        "plain listener p99 {p99:.2} ms over {} requests",
        plain_ms.len()
    );
    assert!(p99 < 20.0, "plain listener p99 {p99:.1} ms");
}

/// A policy that calls in a loop gets 8 calls per hook call, then
/// errors: one client request cannot become an unbounded number of
/// requests to another service.
#[tokio::test]
async fn a_hook_call_makes_at_most_eight_calls() {
    let asked = Arc::new(AtomicUsize::new(0));
    let auth = auth_service(Duration::ZERO, asked.clone()).await;
    let head = format!(
        "[policies]\ndir = \"{}\"\n[pools.auth]\nbackends = [\"{}\"]",
        repo().join("tests/fixtures/wasm").display(),
        auth.addr
    );
    let toml = one_http_pool(
        &head,
        "",
        "policy = \"misbehave\"\npolicy_call_pools = [\"auth\"]",
    );
    let h = Harness::start(&toml, &["web"]).await;
    let got = h.get("l", "/call-loop").await;
    assert_eq!(got.status, 200);
    let text = got.text();
    assert!(
        text.starts_with("8 ") && text.contains("more than 8 calls in one hook call"),
        "{text}"
    );
    assert_eq!(asked.load(Ordering::Relaxed), 8);
    // The count is per hook call: the next request gets its own eight.
    let got = h.get("l", "/call-loop").await;
    assert!(got.text().starts_with("8 "), "{}", got.text());
    assert_eq!(asked.load(Ordering::Relaxed), 16);
}
