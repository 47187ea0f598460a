//! The HTTP listener over real loopback sockets: routing by policy,
//! rewriting, streaming, upgrades, balancing, upstream failures and
//! request-smuggling defences.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr_of(r: &switchyard::daemon::Running, listener: &str) -> SocketAddr {
    r.addr(listener)
}

#[tokio::test]
async fn path_router_sends_each_prefix_to_its_pool_and_strips() {
    let h = Harness::start(&three_pools("{policies}"), &["web", "api", "images"]).await;
    assert_eq!(h.get("public", "/api/users?id=7").await.text(), "api");
    assert_eq!(
        h.get("public", "/images/cat.png?s=2").await.text(),
        "images"
    );
    assert_eq!(h.get("public", "/").await.text(), "web");
    assert_eq!(
        h.backend("api").seen()[0].uri,
        "/api/users?id=7",
        "no strip for /api/"
    );
    assert_eq!(
        h.backend("images").seen()[0].uri,
        "/cat.png?s=2",
        "the backend sees the stripped path"
    );
    let seen = &h.backend("web").seen()[0].headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["host"],
        h.addr("public").to_string().as_str(),
        "the client's Host is kept"
    );
}

/// Switchyard with one HTTP listener `l` whose policy is the `misbehave`
/// fixture, in front of `web`.
async fn behind_misbehave(web: &TestBackend) -> switchyard::daemon::Running {
    start_switchyard(
        r#"
[pools.web]
backends = ["{web}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
[policies]
dir = "{fixtures}"
"#
        .replace(
            "{fixtures}",
            &repo().join("tests/fixtures/wasm").display().to_string(),
        )
        .as_str(),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await
}

#[tokio::test]
async fn header_edits_apply_both_ways_and_hop_by_hop_headers_stop() {
    let web = TestBackend::start("web").await;
    let sy = behind_misbehave(&web).await;
    let c = client(false);
    let got = get(
        &c,
        addr_of(&sy, "l"),
        "/edit",
        &[
            ("x-remove-me", "1"),
            ("x-kept", "2"),
            ("connection", "x-secret"),
            ("x-secret", "3"),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["x-policy"], "edited");
    assert_eq!(
        got.headers["x-upstream-status"], "200",
        "on-response saw the response"
    );
    assert!(
        !got.headers.contains_key("keep-alive"),
        "hop-by-hop from the backend stops"
    );
    let seen = &web.seen()[0].headers;
    assert_eq!(seen["x-added"], "by-policy");
    assert_eq!(seen["x-kept"], "2");
    assert!(!seen.contains_key("x-remove-me"));
    assert!(
        !seen.contains_key("x-secret"),
        "a field named by Connection is hop-by-hop"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// The policy reads the request, its connection and the upstream response
/// on demand (`request-head`, `connection`, `response-head` handles); what
/// it reads is the request as the client sent it (and the `x-request-id`
/// and `traceparent` stamped before it: 5 headers sent, 7 seen), and the
/// request it lent comes back intact for the backend.
#[tokio::test]
async fn a_policy_reads_request_connection_and_response_on_demand() {
    let web = TestBackend::start("web").await;
    let sy = behind_misbehave(&web).await;
    let c = client(false);
    let l = addr_of(&sy, "l");
    let probe = [
        ("x-probe", "p1"),
        ("x-multi", "1"),
        ("x-multi", "2"),
        ("cookie", "a=b; id=7"),
    ];
    let got = get(&c, l, "/echo?q=1", &probe).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        format!(
            "method=GET scheme=http authority={l} path=/echo query=q=1 version=1.1 \
             probe=p1 PROBE=p1 multi=1|2 cookie=7 headers=7 \
             client=127.0.0.1 local-port={} listener=l pool=web transport=tcp",
            l.port()
        )
    );
    assert!(web.seen().is_empty(), "a direct answer reaches no backend");

    let got = get(&c, l, "/echo?inspect", &probe).await;
    assert_eq!(got.status, 200);
    let seen = got.headers["x-seen-response"].to_str().unwrap();
    assert!(
        seen.starts_with("request-path=/echo probe=p1 upstream-header=web headers="),
        "{seen}"
    );
    let upstream = &web.seen()[0];
    assert_eq!(upstream.uri, "/echo?inspect", "the lent request came back");
    assert_eq!(upstream.headers["x-probe"], "p1");
    assert_eq!(upstream.headers.get_all("x-multi").iter().count(), 2);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rate_limit_answers_429_directly() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        r#"
[policies]
dir = "{policies}"
[pools.web]
backends = ["{web}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "rate-limit"
"#,
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    // policies/rate-limit.json: 10 per second, burst 20.
    let c = client(false);
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(get(&c, addr_of(&sy, "l"), "/", &[]).await.status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let forwarded = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        web.seen().len(),
        forwarded,
        "a 429 never reaches the backend"
    );
    let got = get(&c, addr_of(&sy, "l"), "/", &[]).await;
    if got.status == 429 {
        assert!(got.headers.contains_key("retry-after"));
    }
    sy.shutdown(Duration::from_secs(5)).await;
}

fn one_pool(extra_pool: &str, extra_listener: &str) -> String {
    format!(
        r#"
[pools.web]
backends = ["{{web}}"]
{extra_pool}
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
{extra_listener}
"#
    )
}

#[tokio::test]
async fn http2_client_to_http1_backend_and_back() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let got = get(&client(true), addr_of(&sy, "l"), "/h2", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "web");
    assert_eq!(
        web.seen()[0].headers["host"],
        addr_of(&sy, "l").to_string().as_str()
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn five_megabytes_stream_up_and_down_intact() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let a = addr_of(&sy, "l");
    let data = pattern(5 * 1024 * 1024);
    let want = Sha256::digest(&data);
    for h2 in [false, true] {
        let req = Request::post(format!("http://{a}/echo"))
            .body(streamed(data.clone(), 64 * 1024))
            .unwrap();
        let got = send(&client(h2), req).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), data.len());
        assert_eq!(
            Sha256::digest(&got.body),
            want,
            "upload echoed intact (h2: {h2})"
        );
    }
    let got = get(&client(false), a, &format!("/bytes/{}", data.len()), &[]).await;
    assert_eq!(Sha256::digest(&got.body), want, "download intact");
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_both_ways() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let mut s = tokio::net::TcpStream::connect(addr_of(&sy, "l"))
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"hello"[..], b"through the tunnel"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_two_backends() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let sy = start_switchyard(
        r#"
[pools.web]
algorithm = "round_robin"
backends = ["{a}", "{b}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
"#,
        &BTreeMap::from([("a", a.addr), ("b", b.addr)]),
    )
    .await;
    let c = client(false);
    let mut to_a = 0;
    for _ in 0..1000 {
        if get(&c, addr_of(&sy, "l"), "/", &[]).await.text() == "a" {
            to_a += 1;
        }
    }
    assert!((450..=550).contains(&to_a), "a got {to_a} of 1000");
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_dead_backend_is_passed_over_for_any_method_and_is_502_alone() {
    let live = TestBackend::start("live").await;
    let dead = dead_addr().await;
    let sy = start_switchyard(
        r#"
[pools.web]
backends = ["{dead}", "{live}"]
connect_timeout_ms = 500
[pools.gone]
backends = ["{dead}"]
connect_timeout_ms = 500
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
[listeners.gone]
protocol = "http"
bind = "127.0.0.1:0"
pool = "gone"
"#,
        &BTreeMap::from([("dead", dead), ("live", live.addr)]),
    )
    .await;
    let c = client(false);
    for _ in 0..6 {
        let got = get(&c, addr_of(&sy, "l"), "/", &[]).await;
        assert_eq!(got.status, 200, "a GET is retried on the live backend");
        assert_eq!(got.text(), "live");
    }
    // A POST that could not connect reached no backend: it is resent too,
    // body and all, and arrives once.
    for i in 0..4 {
        let post = Request::post(format!("http://{}/echo", addr_of(&sy, "l")))
            .body(streamed(format!("post {i}").into_bytes(), 3))
            .unwrap();
        let got = send(&c, post).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), format!("post {i}"));
    }
    let posts = live.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 4, "each POST reached the live backend once");
    let got = get(&c, addr_of(&sy, "gone"), "/", &[]).await;
    assert_eq!(got.status, 502);
    let post = Request::post(format!("http://{}/", addr_of(&sy, "gone")))
        .body(streamed(b"data".to_vec(), 4))
        .unwrap();
    assert_eq!(send(&c, post).await.status, 502);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn no_backend_available_is_a_fast_503() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    for b in &sy.upstreams().pool("web").unwrap().backends {
        b.set_healthy(false);
    }
    let started = Instant::now();
    let got = get(&client(false), addr_of(&sy, "l"), "/", &[]).await;
    assert_eq!(got.status, 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(web.seen().is_empty());
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_backend_that_never_answers_is_a_504_after_the_timeout() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("response_timeout_ms = 300", ""),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let started = Instant::now();
    let got = get(&client(false), addr_of(&sy, "l"), "/hang", &[]).await;
    assert_eq!(got.status, 504);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn differing_duplicate_content_length_is_400_and_never_forwarded() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let out = raw(
        addr_of(&sy, "l"),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(
        addr_of(&sy, "l"),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "obs-fold: {out}");
    assert!(web.seen().is_empty(), "{:?}", web.seen());
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_request_hidden_in_a_cl_te_body_never_reaches_the_backend() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    // Read as chunked (the body ends at "0\r\n\r\n"), the rest would be a
    // second request; read by Content-Length it is part of the body.
    let hidden = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut req = b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 45\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        .to_vec();
    req.extend_from_slice(hidden);
    let out = raw(addr_of(&sy, "l"), &req, Duration::from_secs(3)).await;
    let responses = out.matches("HTTP/1.1 ").count();
    assert!(responses <= 1, "{out}");
    let seen: Vec<String> = web.seen().iter().map(|s| s.uri.clone()).collect();
    assert!(!seen.iter().any(|u| u.contains("smuggled")), "{seen:?}");
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn header_and_body_caps_give_431_and_413() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "max_headers = 20\nmax_request_body_bytes = 1000"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let a = addr_of(&sy, "l");
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = raw(
        a,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let c = client(false);
    let big = Request::post(format!("http://{a}/echo"))
        .header("content-length", "5000")
        .body(
            http_body_util::Full::new(Bytes::from(vec![b'x'; 5000]))
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap();
    assert_eq!(send(&c, big).await.status, 413);
    let chunked = Request::post(format!("http://{a}/echo"))
        .body(streamed(vec![b'y'; 5000], 500))
        .unwrap();
    let got = c.request(chunked).await;
    // A chunked body over the cap is cut: 413 if the backend has not
    // answered yet, else the response body fails.
    if let Ok(resp) = got
        && resp.status() == 200
    {
        assert!(resp.into_body().collect().await.is_err());
    }
    assert!(web.seen().is_empty() || web.seen().iter().all(|s| s.uri == "/echo"));
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_client_address_comes_from_x_forwarded_for_only_via_trusted_proxies() {
    let web = TestBackend::start("web").await;
    let cfg = |trusted: &str| {
        format!(
            r#"
[policies]
dir = "{{policies}}"
[pools.web]
backends = ["{{web}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "deny-list"
{trusted}
"#
        )
    };
    // policies/deny-list.json denies 203.0.113.0/24.
    let spoof = [("x-forwarded-for", "203.0.113.9")];
    let sy = start_switchyard(&cfg(""), &BTreeMap::from([("web", web.addr)])).await;
    let got = get(&client(false), addr_of(&sy, "l"), "/", &spoof).await;
    assert_eq!(
        got.status, 200,
        "an untrusted client cannot pick its address"
    );
    assert_eq!(web.seen()[0].headers["x-forwarded-for"], "127.0.0.1");
    sy.shutdown(Duration::from_secs(5)).await;

    let sy = start_switchyard(
        &cfg("trusted_proxies = [\"127.0.0.1/32\"]"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let got = get(&client(false), addr_of(&sy, "l"), "/", &spoof).await;
    assert_eq!(
        got.status, 403,
        "through a trusted proxy the forwarded client is seen"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_failing_policy_fails_closed_unless_told_to_fall_back() {
    let web = TestBackend::start("web").await;
    let fixtures = repo().join("tests/fixtures/wasm").display().to_string();
    // No `on_error` key: the default must be to refuse, and a refused
    // request must never reach the backend.
    for (on_error, want) in [
        ("", 503),
        ("on_error = \"reject\"", 503),
        ("on_error = \"fallback\"", 200),
    ] {
        let text = format!(
            r#"
[policies]
dir = "{fixtures}"
[pools.web]
backends = ["{{web}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
{on_error}
"#
        );
        let sy = start_switchyard(&text, &BTreeMap::from([("web", web.addr)])).await;
        let c = client(false);
        for path in ["/panic", "/loop", "/crlf", "/hog"] {
            let got = get(&c, addr_of(&sy, "l"), path, &[]).await;
            assert_eq!(got.status.as_u16(), want, "{on_error:?} {path}");
            let reached = web.seen().iter().any(|s| s.uri == path);
            assert_eq!(
                reached,
                want == 200,
                "{on_error:?} {path} reached the backend"
            );
        }
        assert_eq!(get(&c, addr_of(&sy, "l"), "/", &[]).await.status, 200);
        sy.shutdown(Duration::from_secs(5)).await;
        web.seen.lock().unwrap().clear();
    }
}

#[tokio::test]
async fn a_pool_with_http2_speaks_h2c_to_its_backends() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("http2 = true", ""),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let c = client(false);
    for _ in 0..5 {
        assert_eq!(get(&c, addr_of(&sy, "l"), "/", &[]).await.text(), "web");
    }
    let data = pattern(300_000);
    let req = Request::post(format!("http://{}/echo", addr_of(&sy, "l")))
        .body(streamed(data.clone(), 10_000))
        .unwrap();
    assert_eq!(send(&c, req).await.body.as_ref(), data.as_slice());
    assert_eq!(
        web.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "every request multiplexed on one h2 connection"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn max_connections_holds_new_clients_until_a_slot_frees() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "max_connections = 1"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let a = addr_of(&sy, "l");
    // The first client holds the only slot with an open keep-alive connection.
    let mut first = tokio::net::TcpStream::connect(a).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A second client is not served while the first stays.
    let second = tokio::spawn(raw(
        a,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    ));
    holds_for(
        "no second client served past max_connections",
        Duration::from_millis(300),
        || !second.is_finished() && web.seen().len() == 1,
    )
    .await;
    drop(first);
    let out = second.await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_backend_given_by_dns_name_is_resolved() {
    let web = TestBackend::start("web").await;
    let text = format!(
        r#"
[pools.web]
backends = ["localhost:{}"]
resolve_interval_ms = 200
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
"#,
        web.addr.port()
    );
    let sy = start_switchyard(&text, &BTreeMap::new()).await;
    let got = get(&client(false), addr_of(&sy, "l"), "/", &[]).await;
    assert_eq!(got.text(), "web");
    // Every address of the name is a backend, named `NAME~ADDRESS`
    // (`localhost` may also have ::1; `dns.rs` tests sets in full).
    let u = sy.upstreams();
    let b = u
        .pool("web")
        .unwrap()
        .backend(&format!("localhost:{}~127.0.0.1", web.addr.port()))
        .expect("localhost's 127.0.0.1 is a backend")
        .clone();
    assert_eq!(b.address().socket, web.addr);
    sy.shutdown(Duration::from_secs(5)).await;

    // A name that does not resolve refuses the start, naming pool and backend.
    let bad = text.replace("localhost", "no-such-host.invalid");
    let config =
        switchyard::config::Config::parse(std::path::Path::new("/tmp/x.toml"), &bad).unwrap();
    let e = switchyard::daemon::start(config)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("pools.web.backends[0]"), "{e}");
}

#[tokio::test]
async fn a_proxy_protocol_header_from_a_trusted_peer_sets_the_client_address() {
    let web = TestBackend::start("web").await;
    let cfg = |trusted: &str| {
        format!(
            r#"
[policies]
dir = "{{policies}}"
[pools.web]
backends = ["{{web}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "deny-list"
accept_proxy_protocol = true
trusted_proxies = ["{trusted}"]
"#
        )
    };
    let sy = start_switchyard(&cfg("127.0.0.1/32"), &BTreeMap::from([("web", web.addr)])).await;
    let a = addr_of(&sy, "l");
    let get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // v1, from a denied network (policies/deny-list.json: 203.0.113.0/24).
    let mut v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 80\r\n".to_vec();
    v1.extend_from_slice(get);
    assert!(
        raw(a, &v1, Duration::from_secs(3))
            .await
            .starts_with("HTTP/1.1 403")
    );
    // v1 from an allowed client: forwarded, and the backend sees it.
    let mut ok = b"PROXY TCP4 198.51.100.20 127.0.0.1 5000 80\r\n".to_vec();
    ok.extend_from_slice(get);
    assert!(
        raw(a, &ok, Duration::from_secs(3))
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(web.seen()[0].headers["x-forwarded-for"], "198.51.100.20");
    // v2 (binary), from the denied network.
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "203.0.113.10:5000".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let mut v2req = v2.clone();
    v2req.extend_from_slice(get);
    assert!(
        raw(a, &v2req, Duration::from_secs(3))
            .await
            .starts_with("HTTP/1.1 403")
    );
    // No header: closed without an answer.
    assert_eq!(raw(a, get, Duration::from_secs(3)).await, "");
    sy.shutdown(Duration::from_secs(5)).await;

    // From a peer outside trusted_proxies, even a valid header is refused.
    let sy = start_switchyard(&cfg("10.0.0.0/8"), &BTreeMap::from([("web", web.addr)])).await;
    assert_eq!(
        raw(addr_of(&sy, "l"), &ok, Duration::from_secs(3)).await,
        ""
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let c = client(false);
    for _ in 0..50 {
        assert_eq!(get(&c, addr_of(&sy, "l"), "/", &[]).await.text(), "web");
    }
    assert_eq!(
        web.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one keep-alive connection to the backend"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pooled_connections_close_after_the_pool_idle_timeout() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("idle_timeout_ms = 200", ""),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let c = client(false);
    let connections = || web.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&c, addr_of(&sy, "l"), "/", &[]).await.status, 200);
    assert_eq!(get(&c, addr_of(&sy, "l"), "/", &[]).await.status, 200);
    assert_eq!(connections(), 1, "reused within the idle timeout");
    // The pool closes its idle connection: the backend sees it go.
    let closed = wait_until(
        "the pooled connection closes",
        Duration::from_secs(5),
        || web.open.load(std::sync::atomic::Ordering::Relaxed) == 0,
    )
    .await;
    assert!(
        closed >= Duration::from_millis(150),
        "closed after {closed:?}, before the 200 ms idle timeout"
    );
    assert_eq!(get(&c, addr_of(&sy, "l"), "/", &[]).await.status, 200);
    assert_eq!(connections(), 2, "a new connection after the idle timeout");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// Issue 26: a pooled HTTP/1.1 connection has no task of its own; the
/// request and then its response body drive it. A body of many reads and
/// a streamed upload both go through whole, and the same backend
/// connection then carries the next requests.
#[tokio::test]
async fn large_bodies_stream_through_a_pooled_connection_that_is_reused() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let c = client(false);
    for _ in 0..2 {
        let got = get(&c, addr_of(&sy, "l"), "/bytes/8388608", &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), 8 << 20, "the whole 8 MiB response");
    }
    let upload: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let req = Request::post(format!("http://{}/echo", addr_of(&sy, "l")))
        .body(streamed(upload.clone(), 16 << 10))
        .unwrap();
    let got = send(&c, req).await;
    assert_eq!(got.status, 200);
    assert!(got.body == upload, "the 3 MiB upload came back whole");
    assert_eq!(get(&c, addr_of(&sy, "l"), "/", &[]).await.status, 200);
    assert_eq!(
        web.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "every request went on the one pooled connection"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_backend_that_closes_idle_connections_costs_no_request() {
    // Answers one request per connection, then hangs up after 20 ms
    // without saying so (like a short keep-alive timeout).
    let backend = RawBackend::start(|mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    })
    .await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", backend.addr)])).await;
    let c = client(false);
    for i in 0..5 {
        let got = get(&c, addr_of(&sy, "l"), "/", &[]).await;
        assert_eq!(
            (i, got.status.as_u16(), got.text()),
            (i, 200, "ok".to_owned())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.accepted(), 5);
    sy.shutdown(Duration::from_secs(5)).await;
}

/// A Host that is not `uri-host [":" port]` (here: not ASCII) is not a
/// valid Host (RFC 9110 §7.2): 400, never forwarded (docs/SECURITY.md).
#[tokio::test]
async fn a_host_that_is_not_visible_ascii_is_400_and_never_forwarded() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let reply = raw(
        addr_of(&sy, "l"),
        b"GET /odd HTTP/1.1\r\nHost: caf\xe9.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(web.seen().is_empty(), "{:?}", web.seen());
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_http2_backend_that_sends_goaway_after_each_request_costs_no_request() {
    use hyper::server::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    // Every connection says GOAWAY as soon as it has answered one request
    // (like a backend with max requests per connection = 1).
    let backend = RawBackend::start(|s| async move {
        let answered = std::sync::Arc::new(tokio::sync::Notify::new());
        let signal = answered.clone();
        let svc = hyper::service::service_fn(move |_req| {
            signal.notify_one();
            async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"h2"),
                )))
            }
        });
        let conn = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(s), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = answered.notified() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    })
    .await;
    let sy = start_switchyard(
        &one_pool("http2 = true", ""),
        &BTreeMap::from([("web", backend.addr)]),
    )
    .await;
    let c = client(false);
    let at = addr_of(&sy, "l");
    // Concurrent requests, so some reach the shared connection while its
    // GOAWAY is on the way: those must go out again on a new connection.
    for round in 0..10 {
        let batch: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { get(&c, at, "/", &[]).await })
            })
            .collect();
        for b in batch {
            let got = b.await.unwrap();
            assert_eq!(
                (round, got.status.as_u16(), got.text()),
                (round, 200, "h2".to_owned())
            );
        }
    }
    assert!(backend.accepted() >= 2);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_that_sends_its_head_too_slowly_is_disconnected() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "header_read_timeout_ms = 300"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(addr_of(&sy, "l"))
        .await
        .unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Drip: ")
        .await
        .unwrap();
    // One byte every 100 ms, never finishing the head (slowloris).
    let started = Instant::now();
    let mut closed = None;
    while started.elapsed() < Duration::from_secs(3) {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => {} // a 408 is fine too; keep reading until closed
            Err(_) => {
                if s.write_all(b"a").await.is_err() {
                    closed = Some(started.elapsed());
                    break;
                }
            }
        }
    }
    let closed = closed.expect("the connection was still open after 3 s");
    assert!(
        closed < Duration::from_millis(1500),
        "closed after {closed:?}"
    );
    assert!(web.seen().iter().all(|r| r.uri != "/slow"));
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn http2_clients_get_at_most_the_configured_concurrent_streams() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    // A backend that takes 300 ms per request.
    let backend = RawBackend::start(|s| async move {
        let svc = hyper::service::service_fn(|_req| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"slow"),
            )))
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await;
    let sy = start_switchyard(
        &one_pool("", "http2_max_concurrent_streams = 2"),
        &BTreeMap::from([("web", backend.addr)]),
    )
    .await;
    // One HTTP/2 connection, six requests at once: with two streams at a
    // time they take three rounds of 300 ms. (A first request lets the
    // client read the server's SETTINGS; streams a client opens past the
    // limit before that are refused with REFUSED_STREAM.)
    let c = client(true);
    let at = addr_of(&sy, "l");
    assert_eq!(get(&c, at, "/", &[]).await.text(), "slow");
    let started = Instant::now();
    let all: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { get(&c, at, "/", &[]).await })
        })
        .collect();
    for r in all {
        assert_eq!(r.await.unwrap().text(), "slow");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(850),
        "six 300 ms requests over two streams took only {took:?}"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_http2_reset_flood_is_cut_off_and_barely_reaches_the_backend() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let tcp = tokio::net::TcpStream::connect(addr_of(&sy, "l"))
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    // "Rapid reset" (CVE-2023-44487): open a stream and cancel it at once,
    // thousands of times, never waiting for an answer.
    let mut sent = 0;
    for _ in 0..5_000 {
        let req = Request::get("http://x/flood").body(()).unwrap();
        let Ok(ready) = h2.clone().ready().await else {
            break;
        };
        h2 = ready;
        match h2.send_request(req, true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
    }
    // The server ends the connection (GOAWAY) rather than serving them all.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    let forwarded = web.seen().iter().filter(|s| s.uri == "/flood").count();
    assert!(
        ended.is_ok(),
        "the connection survived {sent} reset streams"
    );
    assert!(
        forwarded < 1_000,
        "{forwarded} of {sent} cancelled streams reached the backend"
    );
    // The listener still serves others.
    assert_eq!(
        get(&client(false), addr_of(&sy, "l"), "/", &[])
            .await
            .status,
        200
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_http2_header_list_over_the_cap_never_reaches_the_backend() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "max_header_bytes = 8192"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let c = client(true);
    let at = addr_of(&sy, "l");
    let big = "v".repeat(32 * 1024);
    let req = Request::get(format!("http://{at}/big-h2"))
        .header("x-big", big.as_str())
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap();
    match c.request(req).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => eprintln!("refused: {e}"), // a stream reset is fine too
    }
    assert!(web.seen().iter().all(|s| s.uri != "/big-h2"));
    // The same client, under the cap, is served.
    assert_eq!(get(&c, at, "/", &[]).await.status, 200);
    sy.shutdown(Duration::from_secs(5)).await;
}
