//! Edge hardening over real loopback sockets (issue 17): no request
//! smuggling through upgrades, strict request and response framing, one
//! normalized path for the policy and the backend, honest forwarding
//! headers, and gRPC trailers through an HTTP/2 pool. Each test names the
//! `docs/SECURITY.md` row it proves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_pool(extra_pool: &str, extra_listener: &str) -> String {
    one_http_pool(
        "[policies]\ndir = \"{policies}\"",
        extra_pool,
        extra_listener,
    )
}

/// A backend as nginx, Go and hyper behave: it answers a request as soon
/// as its head is read, then discards the body the head declared, and
/// reads the next head on the same connection. Records every head.
struct Discarding {
    raw: RawBackend,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Discarding {
    async fn start() -> Discarding {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let raw = RawBackend::start(move |mut s| {
            let seen = seen.clone();
            async move {
                while let Some(head) = read_head(&mut s).await {
                    seen.lock().unwrap().push(head.clone());
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut skip = vec![0u8; content_length(&head)];
                    if s.read_exact(&mut skip).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        Discarding { raw, heads }
    }

    fn request_lines(&self) -> Vec<String> {
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect()
    }
}

/// SECURITY.md "smuggling: upgrade with a body". The exchange of issue 17
/// hole 1: an upgrade request declaring a body whose length is that of the
/// head Switchyard forwards for the next request; before the fix the
/// backend read the next request's body as a request of its own.
#[tokio::test]
async fn an_upgrade_request_with_a_body_smuggles_nothing() {
    let backend = Discarding::start().await;
    let sy = start_switchyard(
        &one_pool("", ""),
        &BTreeMap::from([("web", backend.raw.addr)]),
    )
    .await;
    let a = sy.addr("l");
    let hidden = "GET /SMUGGLED-ADMIN HTTP/1.1\r\nHost: x\r\n\r\n";
    let post = format!(
        "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    // Calibrate: the length of the head Switchyard forwards for that POST.
    let out = raw(a, post.as_bytes(), Duration::from_millis(500)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let forwarded_head = backend.heads.lock().unwrap()[0].len();

    let body = "x".repeat(forwarded_head);
    let upgrade = format!(
        "GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\
         Content-Length: {forwarded_head}\r\n\r\n{body}"
    );
    let refused = raw(a, upgrade.as_bytes(), Duration::from_millis(500)).await;
    let out = raw(a, post.as_bytes(), Duration::from_millis(500)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let lines = backend.request_lines();
    assert!(
        !lines.iter().any(|l| l.contains("SMUGGLED")),
        "the hidden request reached the backend: {lines:?}"
    );
    assert!(
        refused.starts_with("HTTP/1.1 400"),
        "an upgrade with a body is refused: {refused}"
    );
    assert_eq!(lines, ["POST /ok HTTP/1.1", "POST /ok HTTP/1.1"]);
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "smuggling: upgrade refused by the backend". An upgrade
/// goes on a connection of its own, closed after an answer other than
/// 101: the next request opens another.
#[tokio::test]
async fn an_upgrade_the_backend_declines_closes_its_upstream_connection() {
    let backend = Discarding::start().await;
    let sy = start_switchyard(
        &one_pool("", ""),
        &BTreeMap::from([("web", backend.raw.addr)]),
    )
    .await;
    let a = sy.addr("l");
    let c = client(false);
    assert_eq!(get(&c, a, "/warm", &[]).await.status, 200);
    assert_eq!(backend.raw.accepted(), 1);
    let out = raw(
        a,
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        backend.raw.accepted(),
        2,
        "the upgrade did not use the pooled connection"
    );
    for _ in 0..3 {
        assert_eq!(get(&c, a, "/after", &[]).await.status, 200);
    }
    assert_eq!(
        backend.raw.accepted(),
        2,
        "later requests reuse the pooled connection, never the upgrade's"
    );
    let lines = backend.request_lines();
    assert_eq!(lines.iter().filter(|l| l.starts_with("GET /x ")).count(), 1);
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "path confusion". Every way of spelling `/admin/` that a
/// backend resolves to `/admin/` meets the deny-list's rule (403), or is
/// refused outright (400: climbs above the root, encoded slash); nothing
/// reaches the backend.
#[tokio::test]
async fn every_spelling_of_a_denied_path_is_denied() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "policy = \"deny-list\""),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let a = sy.addr("l");
    let forbidden = [
        "/admin/",
        "/x/../admin/",
        "//admin/",
        "/./admin/",
        "/%61dmin/",
        "/%61%64%6D%69%6E/",
        "/x/%2e%2e/admin/",
        "/x/.%2E/admin/",
        "///admin///x",
        "/admin/./x",
        "/ADMIN/../admin/",
        "/x/y/z/../../../admin/",
        "/.%2e%2e/../admin/",
    ];
    let refused = [
        "/%2e%2e/admin/",
        "/../admin/",
        "/x/../../admin/",
        "/x/..%2fadmin/",
        "/admin%2f",
        "/x%5c..%5cadmin/",
        "/%zzadmin/",
        "/.%2e/x/../../admin/",
    ];
    for p in forbidden {
        let req = format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = raw(a, req.as_bytes(), Duration::from_millis(300)).await;
        assert!(out.starts_with("HTTP/1.1 403"), "{p}: {out}");
    }
    for p in refused {
        let req = format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = raw(a, req.as_bytes(), Duration::from_millis(300)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{p}: {out}");
    }
    // HTTP/2 too.
    let h2 = client(true);
    for p in ["/x/../admin/", "/%61dmin/", "//admin/"] {
        assert_eq!(get(&h2, a, p, &[]).await.status, 403, "{p} over h2");
    }
    assert!(web.seen().is_empty(), "{:?}", web.seen());

    // What passes is forwarded as the policy saw it: normalized.
    let c = client(false);
    for (sent, forwarded) in [
        ("/a/./b//c", "/a/b/c"),
        ("/%7Euser/x%2dy", "/~user/x-y"),
        ("/caf%c3%a9?q=%2e%2e/x", "/caf%C3%A9?q=%2e%2e/x"),
        ("/adminx/../ok", "/ok"),
    ] {
        assert_eq!(get(&c, a, sent, &[]).await.status, 200, "{sent}");
        let seen = web.seen().last().unwrap().uri.clone();
        assert_eq!(seen, forwarded, "{sent}");
    }
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "path confusion": `path-router` strips a prefix from the
/// normalized path, so `/images/../internal` is `/internal` (web), never
/// `/../internal` on the images pool.
#[tokio::test]
async fn a_prefix_router_cannot_be_climbed_out_of() {
    let (web, images, api) = (
        TestBackend::start("web").await,
        TestBackend::start("images").await,
        TestBackend::start("api").await,
    );
    let sy = start_switchyard(
        r#"
[policies]
dir = "{policies}"
[pools.web]
backends = ["{web}"]
[pools.api]
backends = ["{api}"]
[pools.images]
backends = ["{images}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "path-router"
"#,
        &BTreeMap::from([
            ("web", web.addr),
            ("images", images.addr),
            ("api", api.addr),
        ]),
    )
    .await;
    let a = sy.addr("l");
    let out = raw(
        a,
        b"GET /images/../internal HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert!(out.ends_with("web"), "{out}");
    assert_eq!(web.seen()[0].uri, "/internal");
    let out = raw(
        a,
        b"GET /images/%2e%2e/%2e%2e/etc HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(
        a,
        b"GET //images//cat.png HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert!(out.ends_with("images"), "{out}");
    assert_eq!(images.seen()[0].uri, "/cat.png");
    assert_eq!(images.seen().len(), 1);
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "path confusion": the listener keys. `keep` forwards an
/// encoded slash as it came (upper-cased), `unescape` makes it a segment
/// boundary, `normalize_path = false` forwards the raw path.
#[tokio::test]
async fn escaped_slashes_and_raw_paths_follow_the_listener_keys() {
    let web = TestBackend::start("web").await;
    let at = BTreeMap::from([("web", web.addr)]);
    for (key, sent, forwarded) in [
        (
            "path_with_escaped_slashes = \"keep\"",
            "/a%2fb/./c",
            "/a%2Fb/c",
        ),
        (
            "path_with_escaped_slashes = \"unescape\"",
            "/a/x%2f..%2fb",
            "/a/b",
        ),
        ("normalize_path = false", "/a/../b//%2e", "/a/../b//%2e"),
    ] {
        let sy = start_switchyard(&one_pool("", key), &at).await;
        let req = format!("GET {sent} HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = raw(sy.addr("l"), req.as_bytes(), Duration::from_millis(300)).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{key}: {out}");
        assert_eq!(web.seen().last().unwrap().uri, forwarded, "{key}");
        sy.shutdown(Duration::from_secs(5)).await;
    }
}

/// SECURITY.md "smuggling: ambiguous request framing" and "header
/// injection". Each gets its status and never reaches the backend.
#[tokio::test]
async fn ambiguous_requests_get_their_4xx_and_never_reach_the_backend() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let a = sy.addr("l");
    let long = format!("/{}", "a".repeat(9000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (
            "two Hosts",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a Host with userinfo",
            b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "chunked twice",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "400",
        ),
        (
            "chunked on two lines",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "400",
        ),
        (
            "gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "501",
        ),
        (
            "chunked, gzip",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "400",
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "bare CR in a header value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "NUL in the target",
            b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "CR in the request line",
            b"GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a target over max_uri_bytes",
            format!("GET {long} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes(),
            "414",
        ),
    ];
    for (what, bytes, status) in cases {
        let out = raw(a, &bytes, Duration::from_secs(2)).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {out}"
        );
    }
    // HTTP/2: a `host` that names another authority than `:authority`.
    let tcp = TcpStream::connect(a).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{a}/"))
        .header("host", "other.test")
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 400);
    let req = Request::get(format!("http://{a}/"))
        .header("host", a.to_string())
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200, "a matching host is fine");
    assert_eq!(web.seen().len(), 1, "{:?}", web.seen());
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "smuggling: CL.TE". Pinned: hyper reads the body as
/// chunked, drops the length, answers once and closes the connection
/// (nginx 1.21+ answers 400 instead).
#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_and_closes() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let mut s = TcpStream::connect(sy.addr("l")).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the connection closes after the answer")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\r\nhello\r\n"),
        "the body was read as chunked: {out}"
    );
    assert_eq!(web.seen()[0].headers.get("content-length"), None);
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "bad request body". A body that breaks its own chunked
/// framing after the head went upstream: the client gets 400, the
/// upstream connection is aborted, and the backend is not charged (with
/// one failure ejecting it, it still serves the next request).
#[tokio::test]
async fn a_malformed_request_body_is_the_clients_400_not_the_backends_failure() {
    let aborted = Arc::new(Mutex::new(Vec::<bool>::new()));
    let seen = aborted.clone();
    let backend = RawBackend::start(move |mut s| {
        let seen = seen.clone();
        async move {
            let Some(head) = read_head(&mut s).await else {
                return;
            };
            if head.starts_with("POST") {
                // Reads the body until the proxy gives up on it.
                let mut buf = [0u8; 1024];
                let ended = loop {
                    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break true,
                        Ok(Ok(_)) => continue,
                        Err(_) => break false,
                    }
                };
                seen.lock().unwrap().push(ended);
            } else {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let sy = start_switchyard(
        &one_pool(
            "[pools.web.outlier]\nconsecutive_failures = 1\nmax_ejected_percent = 100",
            "",
        ),
        &BTreeMap::from([("web", backend.addr)]),
    )
    .await;
    let a = sy.addr("l");
    for bad in [
        &b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"[..],
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabcdef\r\n",
    ] {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }
    wait_until(
        "the backend sees both uploads end",
        Duration::from_secs(5),
        || aborted.lock().unwrap().len() == 2,
    )
    .await;
    assert_eq!(
        *aborted.lock().unwrap(),
        [true, true],
        "each upstream connection was closed, not left for reuse"
    );
    let got = get(&client(false), a, "/after", &[]).await;
    assert_eq!(
        got.status,
        200,
        "the backend was not ejected: {}",
        got.text()
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "upstream framing". Responses whose framing could be read
/// two ways are 502, and their connection is never used again, even when
/// the body was complete.
#[tokio::test]
async fn ambiguous_backend_framing_is_502_and_the_connection_is_dropped() {
    for (what, response) in [
        (
            "CL and TE",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked twice",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "gzip, chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "differing lengths",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        ),
    ] {
        let good = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood";
        let backend = RawBackend::start(move |mut s| async move {
            while let Some(head) = read_head(&mut s).await {
                let answer = if head.starts_with("GET /bad") {
                    response
                } else {
                    good
                };
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let sy =
            start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", backend.addr)])).await;
        let a = sy.addr("l");
        let c = client(false);
        assert_eq!(get(&c, a, "/bad", &[]).await.status, 502, "{what}");
        assert_eq!(get(&c, a, "/next", &[]).await.text(), "good", "{what}");
        assert_eq!(
            backend.accepted(),
            2,
            "{what}: the next request used a new connection"
        );
        sy.shutdown(Duration::from_secs(5)).await;
    }
}

/// SECURITY.md "forwarding-header spoofing".
#[tokio::test]
async fn forwarding_headers_cannot_be_forged_or_lost() {
    let web = TestBackend::start("web").await;
    let at = BTreeMap::from([("web", web.addr)]);
    let headers = |raw_extra: &str| format!("GET / HTTP/1.1\r\nHost: x\r\n{raw_extra}\r\n");

    // A trusted front proxy: every X-Forwarded-For line is chained, and a
    // Connection line naming it cannot drop it.
    let sy = start_switchyard(&one_pool("", "trusted_proxies = [\"127.0.0.1/32\"]"), &at).await;
    let a = sy.addr("l");
    raw(
        a,
        headers("X-Forwarded-For: 203.0.113.1\r\nX-Forwarded-For: 203.0.113.2, 10.0.0.1\r\nX-Real-IP: 203.0.113.2\r\n")
            .as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    let h = &web.seen()[0].headers;
    assert_eq!(
        h["x-forwarded-for"],
        "203.0.113.1, 203.0.113.2, 10.0.0.1, 127.0.0.1"
    );
    assert_eq!(h["x-real-ip"], "203.0.113.2", "kept from a trusted peer");
    raw(
        a,
        headers("Connection: X-Forwarded-For, Forwarded\r\nX-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\n")
            .as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    let h = &web.seen()[1].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        h["forwarded"],
        "for=203.0.113.9, for=127.0.0.1;host=\"x\";proto=http"
    );
    sy.shutdown(Duration::from_secs(5)).await;

    // An untrusted client: its X-Real-IP is removed, its chain replaced,
    // and Connection cannot remove what the proxy sets.
    let sy = start_switchyard(&one_pool("", ""), &at).await;
    raw(
        sy.addr("l"),
        headers("X-Real-IP: 203.0.113.7\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: x-forwarded-proto, x-forwarded-host\r\n")
            .as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    let h = &web.seen()[2].headers;
    assert_eq!(h.get("x-real-ip"), None);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "x");
    sy.shutdown(Duration::from_secs(5)).await;
}

type H2Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// What the gRPC backend saw: headers, body, trailers.
type GrpcSeen = (HeaderMap, Bytes, Option<HeaderMap>);

/// SECURITY.md (gRPC row in "hop-by-hop"). A gRPC-shaped exchange through
/// an h2c pool: `te: trailers` reaches the backend, request trailers reach
/// it, and response trailers (`grpc-status`) reach the client.
#[tokio::test]
async fn grpc_trailers_cross_an_h2c_pool_both_ways() {
    let got: Arc<Mutex<Option<GrpcSeen>>> = Arc::default();
    let record = got.clone();
    let backend = RawBackend::start(move |s| {
        let record = record.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let collected = body.collect().await?;
                    let trailers = collected.trailers().cloned();
                    let data = collected.to_bytes();
                    *record.lock().unwrap() = Some((parts.headers, data.clone(), trailers));
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    t.insert("grpc-message", "ok".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, hyper::Error>> =
                        vec![Ok(Frame::data(data)), Ok(Frame::trailers(t))];
                    let mut resp =
                        Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    resp.headers_mut()
                        .insert("trailer", "grpc-status, grpc-message".parse().unwrap());
                    Ok::<_, hyper::Error>(resp)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    let sy = start_switchyard(
        &one_pool("http2 = true", ""),
        &BTreeMap::from([("web", backend.addr)]),
    )
    .await;
    let tcp = TcpStream::connect(sy.addr("l")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, H2Body>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req_trailers = HeaderMap::new();
    req_trailers.insert("x-checksum", "abc".parse().unwrap());
    let message = Bytes::from_static(b"\0\0\0\0\x05hello");
    let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = vec![
        Ok(Frame::data(message.clone())),
        Ok(Frame::trailers(req_trailers)),
    ];
    let req = Request::post(format!("http://{}/pkg.Svc/Call", sy.addr("l")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["trailer"], "grpc-status, grpc-message");
    let body = resp.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(body.to_bytes(), message);
    let (headers, data, trailers) = got.lock().unwrap().clone().expect("the backend was called");
    assert_eq!(headers["te"], "trailers");
    assert_eq!(data, message);
    assert_eq!(trailers.expect("request trailers")["x-checksum"], "abc");
    sy.shutdown(Duration::from_secs(5)).await;
}
