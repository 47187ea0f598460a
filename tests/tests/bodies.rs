//! Policies that read bodies (`switchyard:policy@0.3.0`), through a real
//! listener and a backend that echoes what it got: the request body read
//! for the body hook (whole, refused, forwarded unread, replaced, capped by
//! the listener), the upstream body read for the response hook, and the
//! `json-router` example.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use switchyard_tests::*;

fn fixtures() -> String {
    repo().join("tests/fixtures/wasm").display().to_string()
}

/// The `body-hook` fixture on `l` (default cap) and on `capped` (1 KiB).
fn body_hook() -> String {
    let head = format!("[policies]\ndir = \"{}\"", fixtures());
    let capped = "[listeners.capped]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\n\
                  pool = \"web\"\npolicy = \"body-hook\"\nmax_policy_body_bytes = 1024";
    let l = format!("policy = \"body-hook\"\nrequest_body_timeout_ms = 300\n{capped}");
    one_http_pool(&head, "", &l)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A body with a `Content-Length`.
fn sized(data: Vec<u8>) -> http_body_util::combinators::BoxBody<Bytes, hyper::Error> {
    Full::new(Bytes::from(data))
        .map_err(|never| match never {})
        .boxed()
}

async fn post_to(
    h: &Harness,
    listener: &str,
    path: &str,
    body: http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
) -> Got {
    let req = Request::post(format!("http://{}{path}", h.addr(listener)))
        .body(body)
        .unwrap();
    send(&h.client, req).await
}

fn header<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.headers.get(name).map(|v| v.to_str().unwrap())
}

/// A chunked body read for the hook: the hook sees all of it and its
/// context; the backend gets the same bytes, framed by a Content-Length.
#[tokio::test]
async fn the_body_hook_sees_the_whole_body_and_the_backend_gets_it_intact() {
    let h = Harness::start(&body_hook(), &["web"]).await;
    let data = pattern(70_000);
    let got = post_to(
        &h,
        "l",
        "/echo?read=100000&ctx=abc",
        streamed(data.clone(), 7000),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_ref(), &data[..], "the backend echoed it intact");
    let seen = h.backend("web").seen();
    let s = &seen[0];
    assert_eq!(header(s, "x-seen-len"), Some("70000"));
    assert_eq!(
        header(s, "x-seen-sum"),
        Some(fnv1a(&data).to_string().as_str())
    );
    assert_eq!(header(s, "x-seen-ctx"), Some("abc"));
    assert_eq!(header(s, "content-length"), Some("70000"));
    assert_eq!(header(s, "transfer-encoding"), None);
    // Two calls: on-request, then on-request-body.
    let calls = h.sy.policies()[0].stats.calls();
    assert_eq!(calls, 2);
}

/// The hook's replacement goes upstream with its own length, whatever
/// the client sent and however it framed it.
#[tokio::test]
async fn a_replacement_body_goes_upstream_with_its_own_length() {
    let h = Harness::start(&body_hook(), &["web"]).await;
    let got = post_to(
        &h,
        "l",
        "/echo?read=1000&replace=hello",
        streamed(pattern(500), 64),
    )
    .await;
    assert_eq!((got.status.as_u16(), got.text()), (200, "hello".to_owned()));
    let got = post_to(&h, "l", "/echo?read=1000&replace=hi", sized(pattern(900))).await;
    assert_eq!((got.status.as_u16(), got.text()), (200, "hi".to_owned()));
    // What described the client's body does not describe the policy's.
    let req = Request::post(format!(
        "http://{}/echo?read=1000&replace=plain",
        h.addr("l")
    ))
    .header("content-encoding", "gzip")
    .header("content-digest", "sha-256=:AAAA:")
    .header("expect", "100-continue")
    .body(sized(pattern(300)))
    .unwrap();
    let got = send(&h.client, req).await;
    assert_eq!(got.text(), "plain");
    // A request without a body that is read for the policy goes on
    // without a length.
    let got = h.get("l", "/echo?read=1000").await;
    assert_eq!(got.status, 200);
    let seen = h.backend("web").seen();
    assert_eq!(header(&seen[0], "content-length"), Some("5"));
    assert_eq!(header(&seen[0], "transfer-encoding"), None);
    assert_eq!(header(&seen[1], "content-length"), Some("2"));
    for gone in ["content-encoding", "content-digest", "expect"] {
        assert_eq!(header(&seen[2], gone), None, "{gone}");
    }
    assert_eq!(header(&seen[3], "content-length"), None);
    assert_eq!(header(&seen[3], "x-seen-len"), Some("0"));
}

/// A replacement body on an upgrade would be read by the backend as the
/// next request: the decision is refused, nothing is sent.
#[tokio::test]
async fn a_replacement_body_on_an_upgrade_is_refused() {
    let h = Harness::start(&body_hook(), &["web"]).await;
    let head = "GET /ws?read=10&replace=GET%20/x HTTP/1.1\r\nhost: x\r\n\
                connection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let answer = raw(h.addr("l"), head.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(h.backend("web").seen().is_empty());
}

/// Over the policy's limit: refused with 413 before anything reaches a
/// backend, or forwarded unread (what was read first, then the rest) as
/// the policy chose; a declared length over the limit is not read at all.
#[tokio::test]
async fn a_body_over_the_limit_is_refused_or_forwarded_unread_as_the_policy_chose() {
    let h = Harness::start(&body_hook(), &["web"]).await;
    let data = pattern(5000);
    let got = post_to(&h, "l", "/echo?read=100", streamed(data.clone(), 300)).await;
    assert_eq!(got.status, 413);
    let got = post_to(&h, "l", "/echo?read=100", sized(data.clone())).await;
    assert_eq!(got.status, 413);
    assert!(
        h.backend("web").seen().is_empty(),
        "a refused body never left"
    );
    for body in [streamed(data.clone(), 300), sized(data.clone())] {
        let got = post_to(&h, "l", "/echo?read=100&over=forward", body).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.as_ref(), &data[..], "forwarded whole");
    }
    let seen = h.backend("web").seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(header(s, "x-over"), Some("1"));
        assert_eq!(
            header(s, "x-seen-len"),
            None,
            "the body hook was not called"
        );
    }
}

/// `max_policy_body_bytes` caps the limit a policy names. The 413 comes
/// before the body's rest was read: the lingering close reads it, so the
/// client, still sending, gets the 413 and no reset.
#[tokio::test]
async fn the_listener_caps_what_a_policy_may_read() {
    let h = Harness::start(&body_hook(), &["web"]).await;
    let got = post_to(
        &h,
        "capped",
        "/echo?read=1000000",
        streamed(pattern(2000), 500),
    )
    .await;
    assert_eq!(got.status, 413);
    let got = post_to(
        &h,
        "capped",
        "/echo?read=1000000",
        streamed(pattern(1000), 500),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), 1000);
}

/// The body hook may answer itself; asking for the body again is an
/// invalid decision (refused: the listener's `on_error`).
#[tokio::test]
async fn the_body_hook_answers_or_is_refused_for_asking_again() {
    let h = Harness::start(&body_hook(), &["web"]).await;
    let got = post_to(&h, "l", "/echo?read=1000&answer=1", sized(pattern(321))).await;
    assert_eq!(
        (got.status.as_u16(), got.text()),
        (200, "policy saw 321 bytes".to_owned())
    );
    let got = post_to(&h, "l", "/echo?read=1000&again=1", sized(pattern(10))).await;
    assert_eq!(got.status, 503);
    assert!(h.backend("web").seen().is_empty());
    let last = h.sy.policies()[0]
        .stats
        .last_error
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert!(last.contains("read-body is not allowed here"), "{last}");
}

/// A client that stalls while its body is read for the policy gets 408
/// after `request_body_timeout_ms`, and nothing reaches the backend.
#[tokio::test]
async fn a_body_that_stalls_while_read_for_the_policy_gets_408() {
    let h = Harness::start(&body_hook(), &["web"]).await;
    let head = "POST /echo?read=1000 HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789";
    let answer = raw(h.addr("l"), head.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(h.backend("web").seen().is_empty());
}

fn misbehave() -> String {
    let head = format!("[policies]\ndir = \"{}\"", fixtures());
    one_http_pool(&head, "", "policy = \"misbehave\"")
}

/// The response hook reads the upstream body it asked for: whole (and may
/// replace the response by what it found), or told it was over the limit;
/// either way the client gets the body the backend sent.
#[tokio::test]
async fn the_response_hook_reads_the_upstream_body_up_to_its_limit() {
    let h = Harness::start(&misbehave(), &["web"]).await;
    let got = h.get("l", "/bytes/100?resp-limit=1000").await;
    assert_eq!(got.status, 200);
    let want = format!("read 100 {}", fnv1a(&pattern(100)));
    assert_eq!(got.headers["x-resp-body"], want.as_str());
    assert_eq!(got.body.as_ref(), &pattern(100)[..]);
    let got = h.get("l", "/bytes/50000?resp-limit=1000").await;
    assert_eq!(got.headers["x-resp-body"], "over-limit");
    assert_eq!(got.body.as_ref(), &pattern(50_000)[..], "streamed on whole");
    let got = post_to(
        &h,
        "l",
        "/echo?resp-limit=1000",
        sized(b"my secret".to_vec()),
    )
    .await;
    assert_eq!(
        (got.status.as_u16(), got.text()),
        (200, "redacted".to_owned())
    );
    // Not asked: the hook is not given the body.
    let got = h.get("l", "/edit").await;
    assert!(!got.headers.contains_key("x-resp-body"));
    // Responses without a body are not read: their framing stays the
    // backend's (a HEAD keeps the length of what a GET would get).
    let req = Request::head(format!("http://{}/bytes/100?resp-limit=1000", h.addr("l")))
        .body(sized(Vec::new()))
        .unwrap();
    let got = send(&h.client, req).await;
    assert_eq!(got.headers["content-length"], "100");
    assert!(got.body.is_empty());
    let empty = format!("read 0 {}", fnv1a(b""));
    assert_eq!(got.headers["x-resp-body"], empty.as_str());
    for code in [204, 304] {
        let got = h.get("l", &format!("/status/{code}?resp-limit=10")).await;
        assert_eq!(got.status.as_u16(), code);
        assert!(!got.headers.contains_key("content-length"), "{code}");
        assert!(got.body.is_empty());
    }
}

/// `json-router` with its config from the issue: a JSON body's `tenant`
/// picks the pool, anything else goes to the listener's pool (a body over
/// `max_body` unread and intact), and each route is counted.
#[tokio::test]
async fn json_router_routes_by_a_body_field_and_counts_each_route() {
    let toml = r#"
[policies]
dir = "{policies}"
[admin]
bind = "127.0.0.1:0"
[pools.pool_a]
backends = ["{a}"]
[pools.pool_b]
backends = ["{b}"]
[pools.web]
backends = ["{web}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "json-router"
"#;
    let h = Harness::start(toml, &["a", "b", "web"]).await;
    let metric = "switchyard_policy_json_router_requests_total";
    // The load-time smoke request counts too.
    let before = h.metric(metric, r#"route="default""#).await;
    let json = |s: &str| sized(s.as_bytes().to_vec());
    let got = post_to(&h, "l", "/echo", json(r#"{"tenant": "a", "n": 1}"#)).await;
    assert_eq!(got.text(), r#"{"tenant": "a", "n": 1}"#);
    post_to(
        &h,
        "l",
        "/",
        streamed(br#"{"n": 2, "tenant": "b"}"#.to_vec(), 5),
    )
    .await;
    post_to(&h, "l", "/", json(r#"{"tenant": "c"}"#)).await;
    post_to(&h, "l", "/", json(r#"{"tenant": 7}"#)).await;
    post_to(&h, "l", "/", json("not json")).await;
    h.get("l", "/").await;
    let mut big = br#"{"tenant": "a", "pad": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 70_000));
    big.extend(br#""}"#);
    let got = post_to(&h, "l", "/echo", sized(big.clone())).await;
    assert_eq!(
        got.body.as_ref(),
        &big[..],
        "over max_body: forwarded intact"
    );
    assert_eq!(h.backend("a").seen().len(), 1);
    assert_eq!(h.backend("b").seen().len(), 1);
    assert_eq!(h.backend("web").seen().len(), 5);
    assert_eq!(h.metric(metric, r#"route="a""#).await, 1.0);
    assert_eq!(h.metric(metric, r#"route="b""#).await, 1.0);
    assert_eq!(h.metric(metric, r#"route="default""#).await - before, 4.0);
}
