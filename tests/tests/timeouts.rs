//! A timeout at every phase (issue 18), over real loopback sockets:
//! connections that send nothing, slow uploads, slow readers, a stalled
//! upstream body and an HTTP/2 peer that ignores PINGs are each closed
//! within their timeout, and none of the client's slowness is charged to
//! a backend.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_pool(extra_pool: &str, extra_listener: &str) -> String {
    one_http_pool(
        "[admin]\nbind = \"127.0.0.1:0\"",
        extra_pool,
        extra_listener,
    )
}

/// SECURITY.md "slow clients": 1,000 connections that never send a byte
/// are each closed within the first-byte timeout plus 30%, while a normal
/// client is served throughout. The clock starts at the client's connect,
/// before the proxy accepts: on a loaded two-core CI machine, accepting
/// 1,000 connections and waking 1,000 readers took 110 ms once (stop 36).
#[tokio::test]
async fn connections_that_send_nothing_are_closed_within_the_first_byte_timeout() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "first_byte_timeout_ms = 1000"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let a = sy.addr("l");
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push((Instant::now(), TcpStream::connect(a).await.unwrap()));
    }
    // A normal client, served while they wait.
    let served = tokio::spawn(async move {
        let c = client(false);
        let mut ok = 0;
        for _ in 0..20 {
            if get(&c, a, "/", &[]).await.status == 200 {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ok
    });
    let closes = futures_util::future::join_all(idle.into_iter().map(|(at, mut s)| async move {
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        at.elapsed()
    }))
    .await;
    let slowest = closes.iter().max().unwrap();
    let fastest = closes.iter().min().unwrap();
    assert!(
        *fastest >= Duration::from_millis(950),
        "closed early: {fastest:?}"
    );
    assert!(
        *slowest <= Duration::from_millis(1300),
        "closed late: {slowest:?}"
    );
    assert_eq!(served.await.unwrap(), 20, "the normal client was served");
    assert_eq!(
        metric(&sy, "switchyard_timeouts_total", "phase=\"first_byte\"").await,
        1000.0
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "slow clients": an upload that stops is 408 within the
/// request-body timeout, and its backend is not charged (one failure
/// would eject it).
#[tokio::test]
async fn a_slow_upload_is_408_within_its_timeout_and_not_the_backends_fault() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool(
            "response_timeout_ms = 5000\n[pools.web.outlier]\nconsecutive_failures = 1\nmax_ejected_percent = 100",
            "request_body_timeout_ms = 300",
        ),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let a = sy.addr("l");
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&out);
    // /echo answers at once and streams the body back; the stall then cuts
    // it. Either the 408 or a cut response, within the timeout.
    assert!(
        out.starts_with("HTTP/1.1 408") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert!(took < Duration::from_millis(330 + 200), "{took:?}");
    assert_eq!(
        metric(&sy, "switchyard_timeouts_total", "phase=\"request_body\"").await,
        1.0
    );
    let got = get(&client(false), a, "/", &[]).await;
    assert_eq!(
        got.status,
        200,
        "the backend was not ejected: {}",
        got.text()
    );

    // A backend that waits for the whole body before answering: the
    // request-body timeout fires first, 408, and the backend keeps serving.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n01234")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    let got = get(&client(false), a, "/", &[]).await;
    assert_eq!(
        got.status,
        200,
        "the backend was not ejected: {}",
        got.text()
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "slow clients": a client that stops reading a large
/// response is cut off within the send timeout.
#[tokio::test]
async fn a_slow_reader_is_cut_off_within_the_send_timeout() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "send_timeout_ms = 300"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let mut s = TcpStream::connect(sy.addr("l")).await.unwrap();
    s.write_all(b"GET /bytes/30000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read nothing: the socket buffers fill, the proxy's writes stall, and
    // 300 ms later the connection is closed.
    let closed = wait_for_metric(
        &sy,
        "switchyard_timeouts_total",
        "phase=\"send\"",
        1.0,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(closed, 1.0);
    let (_, n) = until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the connection was closed");
    assert!(n < 30_000_000, "the whole response came: {n} bytes");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "upstream exhaustion": a backend that sends a response head
/// and then stalls its body: the client connection closes within the
/// pool's body timeout plus 10%, and the backend is charged (one failure
/// ejects it, so the next request is 503).
#[tokio::test]
async fn a_stalled_upstream_body_closes_the_client_and_charges_the_backend() {
    let backend = RawBackend::start(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let sy = start_switchyard(
        &one_pool(
            "body_timeout_ms = 400\n[pools.web.outlier]\nconsecutive_failures = 1\nmax_ejected_percent = 100",
            "",
        ),
        &BTreeMap::from([("web", backend.addr)]),
    )
    .await;
    let mut s = TcpStream::connect(sy.addr("l")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (took, n) = until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the client connection was closed");
    assert!(n > 0, "the head came through");
    assert!(
        took <= Duration::from_millis(440 + 60),
        "closed after {took:?}"
    );
    assert!(took >= Duration::from_millis(380), "closed early: {took:?}");
    assert_eq!(
        metric(&sy, "switchyard_timeouts_total", "phase=\"upstream_body\"").await,
        1.0
    );
    let got = get(&client(false), sy.addr("l"), "/", &[]).await;
    assert_eq!(got.status, 503, "the backend was charged and ejected");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "HTTP/2 floods and idle peers": an HTTP/2 peer that never
/// answers PINGs is closed within the keep-alive interval plus the PING
/// timeout.
#[tokio::test]
async fn an_http2_peer_that_ignores_pings_is_closed() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool(
            "",
            "http2_keepalive_interval_ms = 300\nhttp2_keepalive_timeout_ms = 300",
        ),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let mut s = TcpStream::connect(sy.addr("l")).await.unwrap();
    // The preface and an empty SETTINGS frame; then nothing, ever (no
    // SETTINGS ack, no PING ack).
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (took, _) = until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the connection was closed");
    assert!(took <= Duration::from_millis(1000), "closed after {took:?}");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "HTTP/2 floods and idle peers": an HTTP/2 connection with
/// no stream open is closed (GOAWAY) within the listener's idle timeout,
/// counted from its last response; one with a stream open is not.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_within_its_idle_timeout() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "idle_timeout_ms = 500"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let tcp = TcpStream::connect(sy.addr("l")).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let req = http::Request::get(format!("http://{}/bytes/10", sy.addr("l")))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let done = Instant::now();
    // The client keeps its handle: only the server's idle timeout ends it.
    let _keep = h2;
    let closed_at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the idle connection was closed")
        .unwrap();
    let idle = closed_at - done;
    assert!(idle >= Duration::from_millis(450), "closed early: {idle:?}");
    assert!(
        idle <= Duration::from_millis(550 + 100),
        "closed late: {idle:?}"
    );
    assert_eq!(
        metric(&sy, "switchyard_timeouts_total", "phase=\"idle\"").await,
        1.0
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// Opens a WebSocket-style tunnel through `at` to a TestBackend's `/ws`
/// (which echoes), and checks it echoes.
async fn open_tunnel(at: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    s
}

/// SECURITY.md "slow clients": an upgraded tunnel stays counted in
/// `max_connections` (a second client waits until it ends), and a quiet
/// one is closed after `tunnel_idle_timeout_ms`.
#[tokio::test]
async fn a_tunnel_counts_in_max_connections_and_idles_out() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "max_connections = 1\ntunnel_idle_timeout_ms = 600"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let a = sy.addr("l");
    let mut tunnel = open_tunnel(a).await;
    let opened = Instant::now();
    // The one slot is the tunnel's: a new client is answered only once
    // the tunnel has idled out and closed.
    let got = get(&client(false), a, "/", &[]).await;
    assert_eq!(got.status, 200);
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(550),
        "served while the tunnel held the slot: {waited:?}"
    );
    until_closed(&mut tunnel, Duration::from_secs(1))
        .await
        .expect("the quiet tunnel was closed");
    assert_eq!(
        metric(&sy, "switchyard_timeouts_total", "phase=\"tunnel\"").await,
        1.0
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "slow clients": drain waits for an open tunnel up to its
/// timeout, then closes it.
#[tokio::test]
async fn drain_waits_for_a_tunnel_then_closes_it() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let mut tunnel = open_tunnel(sy.addr("l")).await;
    let started = Instant::now();
    let drained = sy.shutdown(Duration::from_millis(700)).await;
    let took = started.elapsed();
    assert!(!drained, "the open tunnel kept the drain waiting");
    assert!(took >= Duration::from_millis(650), "{took:?}");
    until_closed(&mut tunnel, Duration::from_secs(2))
        .await
        .expect("the tunnel was closed after the drain timeout");
}

/// SECURITY.md "slow clients": a client that sends part of HTTP/2's
/// preface and then nothing is closed at the first-byte timeout like one
/// that sends nothing: the timer runs until the protocol is told, not
/// until the first byte.
#[tokio::test]
async fn a_trickled_http2_preface_is_closed_at_the_first_byte_timeout() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "first_byte_timeout_ms = 300"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let mut s = TcpStream::connect(sy.addr("l")).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (took, _) = until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the half-sent preface was closed");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(
        metric(&sy, "switchyard_timeouts_total", "phase=\"first_byte\"").await,
        1.0
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// A connection that has sent nothing yet (the protocol sniff is still
/// waiting, issue 26) does not hold a drain until its first-byte timeout:
/// it is closed at once, and the drain ends.
#[tokio::test]
async fn a_silent_connection_does_not_hold_a_drain() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", "first_byte_timeout_ms = 30000"),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let mut silent = TcpStream::connect(sy.addr("l")).await.unwrap();
    // Accepted and waiting in the sniff before the drain starts.
    let c = client(false);
    assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 200);
    drop(c);
    let started = Instant::now();
    let drained = sy.shutdown(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(drained, "the drain timed out");
    assert!(took < Duration::from_secs(3), "the drain took {took:?}");
    until_closed(&mut silent, Duration::from_secs(2))
        .await
        .expect("the silent connection was closed");
}

/// A connection accepted a moment before a drain, whose request arrives
/// just after the drain began, is answered (`DRAIN_GRACE`, 250 ms from
/// its accept), not closed with nothing: the upgrade test's client saw
/// that empty answer once the daemon served on workers of its own.
#[tokio::test]
async fn a_request_just_behind_the_drain_is_answered() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(&one_pool("", ""), &BTreeMap::from([("web", web.addr)])).await;
    let mut late = TcpStream::connect(sy.addr("l")).await.unwrap();
    wait_for_metric(
        &sy,
        "switchyard_worker_connections_total",
        "",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let at = sy.addr("l");
    let drained = tokio::spawn(sy.shutdown(Duration::from_secs(10)));
    // The drain has begun once the listener refuses; the request then
    // comes within the grace.
    wait_until(
        "the listener stops accepting",
        Duration::from_secs(5),
        || std::net::TcpStream::connect(at).is_err(),
    )
    .await;
    late.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut late).await.expect("an answer, not a close");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(drained.await.unwrap(), "the drain timed out");
}

/// SECURITY.md "upstream exhaustion": with `total_timeout_ms`, a backend
/// that trickles its body (never idle long enough for `body_timeout_ms`)
/// is cut at the total deadline, and one slow to answer is 504 by then.
#[tokio::test]
async fn the_total_timeout_bounds_a_trickling_or_slow_backend() {
    let backend = RawBackend::start(|mut s| async move {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        if head.starts_with("GET /slow") {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            .await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if s.write_all(b"x").await.is_err() {
                return;
            }
        }
    })
    .await;
    let sy = start_switchyard(
        &one_pool("total_timeout_ms = 600\nbody_timeout_ms = 400", ""),
        &BTreeMap::from([("web", backend.addr)]),
    )
    .await;
    let mut s = TcpStream::connect(sy.addr("l")).await.unwrap();
    s.write_all(b"GET /trickle HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (took, n) = until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the trickling response was cut");
    assert!(n < 100 + 200, "the whole body came: {n} bytes");
    assert!(
        took >= Duration::from_millis(550) && took <= Duration::from_millis(800),
        "cut after {took:?}"
    );
    let started = Instant::now();
    let got = get(&client(false), sy.addr("l"), "/slow", &[]).await;
    assert_eq!(got.status, 504);
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(800), "504 after {took:?}");
    assert_eq!(
        metric(&sy, "switchyard_timeouts_total", "phase=\"total\"").await,
        2.0
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "backend health": 20 client aborts mid-upload and 20
/// oversized uploads against one backend, with ejection after 5 failures,
/// do not eject it.
#[tokio::test]
async fn client_aborts_and_oversized_uploads_do_not_eject_a_backend() {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool(
            "[pools.web.outlier]\nconsecutive_failures = 5\nconsecutive_5xx = 5\nmax_ejected_percent = 100",
            "max_request_body_bytes = 1000",
        ),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let a = sy.addr("l");
    for _ in 0..20 {
        // Half a declared body, then the client goes away.
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n0123456789")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(s);
    }
    let c = client(false);
    for _ in 0..20 {
        // Chunked, so it is cut on the way: 413 or a cut response.
        let req = http::Request::post(format!("http://{a}/echo"))
            .body(streamed(vec![b'y'; 5000], 500))
            .unwrap();
        if let Ok(resp) = c.request(req).await {
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        }
    }
    for i in 0..5 {
        let got = get(&c, a, "/", &[]).await;
        assert_eq!(got.status, 200, "request {i} after: {}", got.text());
    }
    sy.shutdown(Duration::from_secs(5)).await;
}

/// Starts a listener that takes bodies of 1,000 bytes (`listener` adds
/// lines), sends it `POST /echo` declaring 1,000,000, and reads the 413
/// that comes before any body byte.
async fn refused_upload(listener: &str) -> (TestBackend, switchyard::daemon::Running, TcpStream) {
    let web = TestBackend::start("web").await;
    let sy = start_switchyard(
        &one_pool("", &format!("max_request_body_bytes = 1000\n{listener}")),
        &BTreeMap::from([("web", web.addr)]),
    )
    .await;
    let mut s = TcpStream::connect(sy.addr("l")).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await.expect("an answer before the body");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "the 413 says the connection ends: {head}"
    );
    let mut body = vec![0u8; content_length(&head)];
    s.read_exact(&mut body).await.unwrap();
    (web, sy, s)
}

/// Writes 1 KiB every 10 ms until a write fails (the proxy closed and
/// the kernel answered with a reset) or `limit` passes: how long the
/// writes went through and how many bytes.
async fn send_until_refused(s: &mut TcpStream, limit: Duration) -> (Duration, usize) {
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < limit {
        if s.write_all(&[b'x'; 1024]).await.is_err() {
            break;
        }
        sent += 1024;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (started.elapsed(), sent)
}

/// RFC 9112 §9.6, nginx's `lingering_close`: a client still sending the
/// body of a request that was answered early (a 413 on its declared
/// length) can send the rest and then read the end of the connection,
/// instead of meeting a reset that can cost it the answer.
#[tokio::test]
async fn a_client_still_sending_a_refused_body_is_not_reset() {
    let (web, sy, mut s) = refused_upload("").await;
    let (_, sent) = send_until_refused(&mut s, Duration::from_millis(500)).await;
    assert!(sent >= 30 * 1024, "writes failed after {sent} bytes");
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .await
        .expect("a clean end, not a reset");
    assert!(rest.is_empty(), "nothing after the 413");
    assert!(web.seen().is_empty(), "the body never reached the backend");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// SECURITY.md "lingering close": a client that keeps sending after an
/// early answer is closed at `lingering_time_ms`, not read forever.
#[tokio::test]
async fn a_lingering_close_ends_at_lingering_time() {
    let (_web, sy, mut s) = refused_upload("lingering_time_ms = 300").await;
    let (until, _) = send_until_refused(&mut s, Duration::from_secs(5)).await;
    assert!(
        until >= Duration::from_millis(250) && until < Duration::from_secs(3),
        "the linger ended after {until:?}"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}
