//! Health and failure detection, and the blind spot the seed names: an L4
//! balancer cannot see that a backend is up but answering 500; an L7 one
//! can.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request on a new connection (through an L4 listener).
async fn status_over_tcp(addr: SocketAddr) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answer within 5 s")
        .unwrap();
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_backend_answering_500_is_ejected_at_l7_and_invisible_to_l4_tcp_checks() {
    let good = TestBackend::start("good").await;
    let bad = TestBackend::failing("bad", 500).await;
    let sy = start_switchyard(
        r#"
[pools.l7]
backends = ["{good}", "{bad}"]
[pools.l7.outlier]
consecutive_5xx = 3
base_ejection_ms = 60000
[pools.tcp_checked]
backends = ["{good}", "{bad}"]
[pools.tcp_checked.health]
kind = "tcp"
interval_ms = 100
[pools.http_checked]
backends = ["{good}", "{bad}"]
[pools.http_checked.health]
kind = "http"
path = "/"
interval_ms = 100
timeout_ms = 500
unhealthy_threshold = 2
[listeners.web]
protocol = "http"
bind = "127.0.0.1:0"
pool = "l7"
[listeners.l4_tcp_checks]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "tcp_checked"
[listeners.l4_http_checks]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "http_checked"
"#,
        &BTreeMap::from([("good", good.addr), ("bad", bad.addr)]),
    )
    .await;

    // L7: the 500s eject the backend after three in a row.
    let c = client(false);
    for _ in 0..10 {
        get(&c, sy.addr("web"), "/", &[]).await;
    }
    let mut ok = 0;
    for _ in 0..50 {
        if get(&c, sy.addr("web"), "/", &[]).await.status == 200 {
            ok += 1;
        }
    }
    assert!(ok >= 48, "L7 after ejection: {ok} of 50 succeeded");

    // L4 with TCP checks: the backend accepts connections, so the checks
    // pass and it keeps its share — the blind spot, asserted. Five check
    // rounds (100 ms apart) leave it healthy throughout.
    let tcp_checked = sy.upstreams().pool("tcp_checked").unwrap().clone();
    holds_for(
        "TCP checks keep the backend that answers 500 in the pool",
        Duration::from_millis(500),
        || tcp_checked.backends[1].healthy(),
    )
    .await;
    let mut five_hundreds = 0;
    for _ in 0..40 {
        if status_over_tcp(sy.addr("l4_tcp_checks")).await == 500 {
            five_hundreds += 1;
        }
    }
    assert!(
        five_hundreds >= 10,
        "blind spot: L4 with TCP checks cannot see HTTP 500s, so the bad backend keeps its share \
         (got {five_hundreds} of 40)"
    );

    // An HTTP check on the L4 pool removes the blind spot.
    let upstreams = sy.upstreams();
    let pool = upstreams.pool("http_checked").unwrap().clone();
    wait_until(
        "the http check marks the 500 backend unhealthy",
        Duration::from_secs(5),
        || !pool.backends[1].healthy(),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(status_over_tcp(sy.addr("l4_http_checks")).await, 200);
    }
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_killed_backend_leaves_within_its_check_budget_and_rejoins() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let b_addr = b.addr;
    let sy = start_switchyard(
        r#"
[pools.web]
backends = ["{a}", "{b}"]
connect_timeout_ms = 300
[pools.web.health]
kind = "http"
path = "/"
interval_ms = 100
timeout_ms = 200
unhealthy_threshold = 2
healthy_threshold = 2
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
"#,
        &BTreeMap::from([("a", a.addr), ("b", b.addr)]),
    )
    .await;
    let c = client(false);
    let upstreams = sy.upstreams();
    let pool = upstreams.pool("web").unwrap().clone();

    drop(b);
    // GETs that hit the dead backend are retried on connect failure.
    for _ in 0..20 {
        assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 200);
    }
    // Two failed checks 100 ms (±10%) apart plus one 200 ms timeout: well
    // under a second; the bound leaves room for a loaded CI machine.
    let took = wait_until("b is marked unhealthy", Duration::from_secs(3), || {
        !pool.backends[1].healthy()
    })
    .await;
    eprintln!("b left after {took:?}");
    for _ in 0..20 {
        assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.text(), "a");
    }

    let b = TestBackend::start_on(b_addr, "b", None).await;
    wait_until(
        "b rejoins after two passing checks",
        Duration::from_secs(3),
        || pool.backends[1].healthy(),
    )
    .await;
    let mut to_b = 0;
    for _ in 0..20 {
        if get(&c, sy.addr("l"), "/", &[]).await.text() == "b" {
            to_b += 1;
        }
    }
    assert!(to_b >= 5, "b gets traffic again ({to_b} of 20)");

    // Every backend down: 503 at once, not after a connect timeout.
    drop(a);
    drop(b);
    wait_until("both unhealthy", Duration::from_secs(3), || {
        pool.backends.iter().all(|x| !x.healthy())
    })
    .await;
    let started = Instant::now();
    let got = get(&c, sy.addr("l"), "/", &[]).await;
    assert_eq!(got.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    sy.shutdown(Duration::from_secs(5)).await;
}
