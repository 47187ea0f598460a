//! The TCP and UDP listeners over real loopback sockets: balancing, TLS
//! passthrough routed by SNI, half-close, bulk transfers, PROXY protocol to
//! backends, idle timeouts and max_connections.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ppp::PartialResult;
use sha2::{Digest, Sha256};
use switchyard_tests::tls::{TestCa, echo_backend};
use switchyard_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A TCP backend that writes `name\n` as soon as a client connects (a
/// server-speaks-first protocol, like SMTP), then echoes.
async fn named_echo(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Connects and reads the backend's first line (its name).
async fn greeting(at: SocketAddr) -> (BufReader<TcpStream>, String) {
    let s = TcpStream::connect(at).await.unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .expect("greeting in time")
        .unwrap();
    (r, line.trim_end().to_owned())
}

async fn echo_line(r: &mut BufReader<TcpStream>, text: &str) -> String {
    r.get_mut()
        .write_all(format!("{text}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .expect("echo in time")
        .unwrap();
    line.trim_end().to_owned()
}

#[tokio::test]
async fn tcp_round_robins_over_two_backends_without_waiting_for_the_client() {
    let (a, b) = (named_echo("a").await, named_echo("b").await);
    let sy = start_switchyard(
        r#"
[pools.echo]
backends = ["{a}", "{b}"]
[listeners.l]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "echo"
"#,
        &BTreeMap::from([("a", a), ("b", b)]),
    )
    .await;
    let mut names = Vec::new();
    for i in 0..4 {
        let started = Instant::now();
        let (mut r, name) = greeting(sy.addr("l")).await;
        // Server speaks first: no ClientHello peek without a policy.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "greeting took {:?}",
            started.elapsed()
        );
        assert_eq!(
            echo_line(&mut r, &format!("hello {i}")).await,
            format!("hello {i}")
        );
        names.push(name);
    }
    assert_eq!(names, ["a", "b", "a", "b"]);
}

const SNI: &str = r#"
[policies]
dir = "{policies}"
[pools.a]
backends = ["{a}"]
[pools.b]
backends = ["{b}"]
[pools.plain]
backends = ["{plain}"]
[listeners.edge]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "plain"
policy = "sni-router"
"#;

/// Completes a TLS handshake through `at` for `name` on a blocking socket,
/// writing the ClientHello `chunk` bytes at a time, and returns the
/// backend's greeting and the certificate it presented.
fn tls_greeting(
    at: SocketAddr,
    ca: &TestCa,
    name: &str,
    chunk: usize,
) -> (String, rustls::pki_types::CertificateDer<'static>) {
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(ca.client(&[]), server).unwrap();
    let mut sock = std::net::TcpStream::connect(at).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    for piece in hello.chunks(chunk) {
        sock.write_all(piece).unwrap();
        if chunk < hello.len() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tls.read(&mut byte).expect("handshake and greeting") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let cert = conn.peer_certificates().expect("peer certificate")[0].clone();
    (String::from_utf8(line).unwrap(), cert)
}

#[tokio::test]
async fn sni_passthrough_routes_each_name_to_its_backend_with_its_own_certificate() {
    let ca = Arc::new(TestCa::new("sni test CA"));
    let (leaf_a, leaf_b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    let a = echo_backend("a", &leaf_a).await;
    let b = echo_backend("b", &leaf_b).await;
    let plain = named_echo("plain").await;
    let sy = start_switchyard(SNI, &BTreeMap::from([("a", a), ("b", b), ("plain", plain)])).await;
    let at = sy.addr("edge");
    let check =
        |name: &'static str, chunk: usize, leaf: rustls::pki_types::CertificateDer<'static>| {
            let ca = ca.clone();
            tokio::task::spawn_blocking(move || {
                let (greeting, cert) = tls_greeting(at, &ca, &format!("{name}.test"), chunk);
                assert_eq!(greeting, name, "{name}.test, chunk {chunk}");
                assert_eq!(cert, leaf, "{name}.test presented its own certificate");
            })
        };
    check("a", usize::MAX, leaf_a.cert.clone()).await.unwrap();
    check("b", usize::MAX, leaf_b.cert.clone()).await.unwrap();
    // A ClientHello written one byte per segment still routes.
    check("b", 1, leaf_b.cert.clone()).await.unwrap();
    check("a", 1, leaf_a.cert.clone()).await.unwrap();
}

#[tokio::test]
async fn a_plain_tcp_client_on_an_sni_routed_listener_goes_to_the_default_pool() {
    let ca = TestCa::new("sni test CA");
    let a = echo_backend("a", &ca.leaf(&["a.test"])).await;
    let b = echo_backend("b", &ca.leaf(&["b.test"])).await;
    let plain = named_echo("plain").await;
    let sy = start_switchyard(SNI, &BTreeMap::from([("a", a), ("b", b), ("plain", plain)])).await;
    // The client speaks first, in plain text: routed at once, no SNI.
    let started = Instant::now();
    let mut s = TcpStream::connect(sy.addr("edge")).await.unwrap();
    s.write_all(b"EHLO plain\n").await.unwrap();
    let mut r = BufReader::new(s);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        lines.push(line.trim_end().to_owned());
    }
    assert_eq!(lines, ["plain", "EHLO plain"]);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// A backend that reads until the client's half-close, then answers with
/// the SHA-256 of what it read and `reply` bytes of `pattern`.
async fn digest_backend(reply: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => hash.update(&buf[..n]),
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&hash.finalize()).await;
                let body = pattern(reply);
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

const ONE_POOL: &str = r#"
[pools.p]
backends = ["{p}"]
[listeners.l]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "p"
"#;

/// Switchyard with one TCP listener `l` over pool `p` (backend `p`), with
/// `extra` lines added to the listener.
async fn one_pool(p: SocketAddr, extra: &str) -> switchyard::daemon::Running {
    start_switchyard(&format!("{ONE_POOL}{extra}\n"), &BTreeMap::from([("p", p)])).await
}

/// Sends `up` bytes, half-closes, and returns the digest the backend sent
/// back and the digest and length of everything after it.
async fn upload(at: SocketAddr, up: usize) -> (Vec<u8>, Vec<u8>, usize) {
    let s = TcpStream::connect(at).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let data = pattern(up);
        for piece in data.chunks(256 * 1024) {
            wr.write_all(piece).await.unwrap();
        }
        // Half-close: the backend sees EOF, and can still answer.
        wr.shutdown().await.unwrap();
        wr
    });
    let mut digest = vec![0u8; 32];
    rd.read_exact(&mut digest).await.unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = rd.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n;
    }
    drop(writer.await.unwrap());
    (digest, hash.finalize().to_vec(), total)
}

#[tokio::test]
async fn a_half_close_reaches_the_backend_and_the_answer_still_flows_back() {
    let sy = one_pool(digest_backend(5).await, "").await;
    let (digest, rest, len) =
        tokio::time::timeout(Duration::from_secs(10), upload(sy.addr("l"), 11))
            .await
            .expect("the backend saw EOF and answered");
    assert_eq!(digest, Sha256::digest(pattern(11)).to_vec());
    assert_eq!((rest, len), (Sha256::digest(pattern(5)).to_vec(), 5));
}

#[tokio::test]
async fn a_hundred_megabytes_each_way_arrive_intact() {
    const SIZE: usize = 100 * 1024 * 1024;
    let sy = one_pool(digest_backend(SIZE).await, "").await;
    let (digest, rest, len) =
        tokio::time::timeout(Duration::from_secs(120), upload(sy.addr("l"), SIZE))
            .await
            .expect("transfer in time");
    let expected = Sha256::digest(pattern(SIZE)).to_vec();
    assert_eq!(digest, expected, "upstream bytes intact");
    assert_eq!(len, SIZE);
    assert_eq!(rest, expected, "downstream bytes intact");
}

/// A UDP backend that answers each datagram with `name:payload`.
async fn udp_echo(name: &str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    });
    addr
}

async fn ask(s: &UdpSocket, to: SocketAddr, text: &str) -> Option<String> {
    s.send_to(text.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn udp_flows_reach_two_backends_and_replies_reach_the_right_clients() {
    let (a, b) = (udp_echo("a").await, udp_echo("b").await);
    let sy = start_switchyard(
        r#"
[pools.dns]
backends = ["{a}", "{b}"]
[listeners.u]
protocol = "udp"
bind = "127.0.0.1:0"
pool = "dns"
max_connections = 3
idle_timeout_ms = 300
"#,
        &BTreeMap::from([("a", a), ("b", b)]),
    )
    .await;
    let at = sy.addr("u");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    // Three flows, round-robin; each keeps its backend, and each client
    // gets only its own replies.
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let backend = ["a", "b", "a"][i];
            let text = format!("client {i} round {round}");
            assert_eq!(
                ask(c, at, &text).await.as_deref(),
                Some(format!("{backend}:{text}").as_str())
            );
        }
    }
    // A fourth flow is past max_connections: dropped.
    let fourth = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&fourth, at, "one too many").await, None);
    // Once the flows idle out (300 ms), new ones start; datagrams dropped
    // at the cap never reach the balancer, so round-robin goes on: b, a.
    let deadline = Instant::now() + Duration::from_secs(5);
    let later = loop {
        if let Some(reply) = ask(&fourth, at, "later").await {
            break reply;
        }
        assert!(Instant::now() < deadline, "no flow expired");
    };
    assert_eq!(later, "b:later");
    assert_eq!(
        ask(&clients[0], at, "again").await.as_deref(),
        Some("a:again")
    );
}

/// A backend that reads one PROXY header and answers with the client
/// address it names.
async fn proxy_header_reader() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                let mut have = 0;
                let answer = loop {
                    let n = s.read(&mut buf[have..]).await.unwrap_or(0);
                    if n == 0 {
                        break "no header".to_owned();
                    }
                    have += n;
                    let parsed = ppp::HeaderResult::parse(&buf[..have]);
                    if parsed.is_incomplete() {
                        continue;
                    }
                    break match parsed {
                        ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
                            ppp::v1::Addresses::Tcp4(a) => {
                                format!("v1 {}:{}", a.source_address, a.source_port)
                            }
                            other => format!("v1 {other:?}"),
                        },
                        ppp::HeaderResult::V2(Ok(h)) => match h.addresses {
                            ppp::v2::Addresses::IPv4(a) => {
                                format!("v2 {}:{}", a.source_address, a.source_port)
                            }
                            other => format!("v2 {other:?}"),
                        },
                        other => format!("bad header {other:?}"),
                    };
                };
                let _ = s.write_all(format!("{answer}\n").as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_backend_reads_the_real_client_from_a_proxy_v1_or_v2_header() {
    let p = proxy_header_reader().await;
    let sy = start_switchyard(
        r#"
[pools.v1]
backends = ["{p}"]
proxy_protocol = "v1"
[pools.v2]
backends = ["{p}"]
proxy_protocol = "v2"
[listeners.one]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "v1"
[listeners.two]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "v2"
"#,
        &BTreeMap::from([("p", p)]),
    )
    .await;
    for (listener, version) in [("one", "v1"), ("two", "v2")] {
        let s = TcpStream::connect(sy.addr(listener)).await.unwrap();
        let me = s.local_addr().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .expect("answer in time")
            .unwrap();
        assert_eq!(line.trim_end(), format!("{version} {me}"));
    }
}

#[tokio::test]
async fn a_connection_past_max_connections_is_refused_at_once_and_the_others_go_on() {
    let sy = one_pool(named_echo("e").await, "max_connections = 2").await;
    let at = sy.addr("l");
    let (mut one, _) = greeting(at).await;
    let (mut two, _) = greeting(at).await;
    // The third is closed without a byte, fast.
    let started = Instant::now();
    // The reset may come before the client's connect has completed (the
    // daemon serves on workers of its own): that is refused too.
    if let Ok(mut third) = TcpStream::connect(at).await {
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
            .await
            .expect("refused, not queued");
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(echo_line(&mut one, "still here").await, "still here");
    assert_eq!(echo_line(&mut two, "me too").await, "me too");
    // A slot freed is a slot taken.
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut s) = TcpStream::connect(at).await {
            let mut line = [0u8; 2];
            let read =
                tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut line)).await;
            if matches!(read, Ok(Ok(_))) && &line == b"e\n" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_quiet_tcp_connection_is_closed_after_the_idle_timeout() {
    let sy = one_pool(named_echo("e").await, "idle_timeout_ms = 300").await;
    let (mut r, _) = greeting(sy.addr("l")).await;
    // Traffic keeps it open past the timeout.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(echo_line(&mut r, &format!("{i}")).await, format!("{i}"));
    }
    let quiet = Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), r.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
}

/// A new flow whose policy call sleeps (a cold instance, a slow guest) is
/// set up off the receive loop: another client's datagrams go through at
/// once, and the datagrams that waited for the slow flow arrive in order
/// when it is ready.
#[tokio::test]
async fn a_udp_flow_whose_policy_sleeps_does_not_delay_another() {
    let echo = udp_echo("e").await;
    let fixtures = switchyard_tests::repo().join("tests/fixtures/wasm");
    let text = format!(
        r#"
[policies]
dir = "{}"
timeout_ms = 2000
max_call_wall_ms = 3000
[pools.e]
backends = ["{{e}}"]
[listeners.u]
protocol = "udp"
bind = "127.0.0.1:0"
pool = "e"
policy = "slow-connect"
"#,
        fixtures.display()
    );
    let sy = start_switchyard(&text, &BTreeMap::from([("e", echo)])).await;
    let listener = sy.addr("u");
    let slow = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let quick = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    for i in 0..3 {
        slow.send_to(format!("slow{i}").as_bytes(), listener)
            .await
            .unwrap();
    }
    let answer = ask(&quick, listener, "quick").await;
    let quick_took = started.elapsed();
    assert_eq!(answer.as_deref(), Some("e:quick"));
    assert!(
        quick_took < Duration::from_millis(400),
        "the quick flow waited {quick_took:?} behind the slow one"
    );
    let mut buf = vec![0u8; 1024];
    for i in 0..3 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(3), slow.recv_from(&mut buf))
            .await
            .expect("the slow flow's datagrams were held, not lost")
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("e:slow{i}"));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the policy did not sleep"
    );
    sy.shutdown(Duration::from_secs(5)).await;
}
